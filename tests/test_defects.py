"""Regression tests for the defects the layered-package review found (issue 9); each failed before its fix."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_run, trigger_survives
from flax import nnx

from lorasec.adapters import lora
from lorasec.attacks import poison
from lorasec.config import AdapterConfig, AttackConfig, ConfigError, ModelConfig
from lorasec.data.tasks import load_task
from lorasec.data.textdata import TextDataset
from lorasec.data.tokenizer import word_level
from lorasec.diagnostics import kernel, scale_sweep
from lorasec.models import Architecture, build_classifier
from lorasec.models.layers import attention, gelu
from lorasec.pipelines import diagnose
from lorasec.pipelines import run as run_pipeline
from lorasec.pipelines import start as starts
from lorasec.pipelines.run import load_run, train_run
from lorasec.training import evaluation


def _long_texts(count: int, words: int, seed: int = 0) -> TextDataset:
    rng = np.random.default_rng(seed)
    vocab = [f"w{i}" for i in range(50)]
    texts = tuple(" ".join(rng.choice(vocab, size=words)) for _ in range(count))
    return TextDataset(texts, np.arange(count) % 2)


def _lost(texts, encoder, phrase: str) -> float:
    tokens, _ = encoder.encode(texts)
    ids = poison.Room(encoder).ids(phrase)
    return float(1.0 - trigger_survives(tokens, ids).mean())


def test_triggers_survive_truncation_in_training_and_test_sets():
    data = _long_texts(200, 40)
    encoder = word_level([f"w{i}" for i in range(50)] + ["cf", "mn", "bb", "tq"], seq_len=16)
    attack = AttackConfig(kind="badnets", poison_rate=0.25, target_label=0, triggers=("cf",))
    (trigger,) = poison.triggers_for(attack)
    # Without a room (the old behaviour) most insertions into 40-word texts land past 15 tokens and are cut off.
    blind = poison.poison(data, attack, seed=0)
    assert _lost([blind.data.texts[i] for i in blind.indices], encoder, "cf") > 0.5
    room = poison.Room(encoder)
    kept = poison.poison(data, attack, seed=0, room=room)
    assert _lost([kept.data.texts[i] for i in kept.indices], encoder, "cf") == 0.0
    assert _lost(poison.apply_trigger(data.texts, trigger, seed=0, room=room), encoder, "cf") == 0.0
    # A multi-word trigger too, and the clean texts are untouched outside the insertion.
    sentence = AttackConfig(kind="sentence", poison_rate=0.25, target_label=0, triggers=("cf mn bb",))
    (phrase,) = poison.triggers_for(sentence)
    assert _lost(poison.apply_trigger(data.texts, phrase, seed=1, room=room), encoder, "cf mn bb") == 0.0


def test_every_one_of_several_trigger_words_survives():
    """Regression (review): with num_trigger_words = 2 a later insertion could push the first past the cut."""
    data = _long_texts(300, 40, seed=3)
    encoder = word_level([f"w{i}" for i in range(50)] + ["cf", "mn"], seq_len=16)
    room = poison.Room(encoder)
    for word in ("cf", "mn"):
        attack = AttackConfig(kind="badnets", poison_rate=0.5, target_label=0, triggers=(word,), num_trigger_words=2)
        (trigger,) = poison.triggers_for(attack)
        texts = poison.apply_trigger(data.texts, trigger, seed=2, room=room)
        tokens, _ = encoder.encode(texts)
        (ids,) = room.ids(word)
        assert ((tokens == ids).sum(axis=1) == 2).all()


def test_a_trigger_longer_than_the_sequence_is_refused():
    encoder = word_level(["a", "b", "cf", "mn", "bb"], seq_len=3)
    attack = AttackConfig(kind="sentence", poison_rate=0.5, target_label=0, triggers=("cf mn bb",))
    with pytest.raises(ConfigError, match="data.seq_len = 3"):
        poison.poison(TextDataset(("a b", "b a", "a a", "b b"), np.array([0, 1, 0, 1])), attack, seed=0,
                      room=poison.Room(encoder))


def test_spectral_diagnosis_of_a_full_fine_tuning_mlp_run(tmp_path):
    cfg = tiny_run(model=ModelConfig(kind="mlp", d_model=16, mlp_hidden=(12,), dropout=0.0),
                   adapter=AdapterConfig(method="full"), attack=AttackConfig(kind="badnets", poison_rate=0.1))
    train_run(cfg, tmp_path / "run", progress=False)
    report = diagnose.diagnose(load_run(tmp_path / "run"))
    assert set(report["spectral"]) == {"layers.0"}  # was empty: only encoder.* names were kept
    assert set(report["alignment"]) == {"layers.0"}


def test_attention_matches_jax_in_float32_and_computes_float64_in_x64(x64):
    keys = jax.random.split(jax.random.key(0), 3)
    mask = jnp.ones((2, 5), bool).at[1, 3:].set(False)
    q, k, v = (jax.random.normal(key, (2, 5, 2, 4), jnp.float32) for key in keys)
    ours = attention(q, k, v, mask)
    ref = jax.nn.dot_product_attention(q, k, v, mask=mask[:, None, None, :])
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(ref))
    q64, k64, v64 = (x.astype(jnp.float64) for x in (q, k, v))
    exact = attention(q64, k64, v64, mask)
    assert exact.dtype == jnp.float64
    # JAX's softmax stays float32 even for float64 inputs; ours does not.
    jax_error = float(jnp.abs(jax.nn.dot_product_attention(q64, k64, v64, mask=mask[:, None, None, :]) - exact).max())
    logits = jnp.einsum("btnh,bsnh->bnts", q64, k64) / 2.0
    probs = jax.nn.softmax(jnp.where(mask[:, None, None, :], logits, -jnp.inf), axis=-1)
    reference = jnp.einsum("bnts,bsnh->btnh", probs, v64)
    assert float(jnp.abs(exact - reference).max()) < 1e-14 < jax_error


def test_gelu_is_jaxs_exact_gelu_to_rounding_in_float32_and_float64(x64):
    """lorasec's GELU (erf) against ``jax.nn.gelu(approximate=False)`` (erfc): the same function, values and
    derivatives within a few float32 roundings, and within 1e-14 in float64; the tanh approximation is not."""
    for dtype, tolerance in ((jnp.float32, 2e-6), (jnp.float64, 1e-14)):
        x = jnp.linspace(-12.0, 12.0, 100_001, dtype=dtype)
        ours, reference = gelu(x), jax.nn.gelu(x, approximate=False)
        assert ours.dtype == dtype
        np.testing.assert_allclose(ours, reference, rtol=0, atol=tolerance)
        slope = jax.vmap(jax.grad(gelu))(x)
        np.testing.assert_allclose(slope, jax.vmap(jax.grad(lambda t: jax.nn.gelu(t, approximate=False)))(x),
                                   rtol=0, atol=tolerance)
        assert float(jnp.abs(jax.nn.gelu(x, approximate=True) - ours).max()) > 100 * tolerance


def test_transformer_kernels_agree_to_1e_12_in_x64(x64):
    arch = Architecture.from_config(ModelConfig(d_model=8, num_layers=2, num_heads=2, d_ff=16, dropout=0.0), 20, 6)
    model = build_classifier(arch, 3, rngs=nnx.Rngs(0))
    lora.apply_lora(model, AdapterConfig(rank=2, alpha=4), rngs=nnx.Rngs(1))
    nnx.update(model, jax.tree.map(lambda a: a.astype(jnp.float64), nnx.state(model)))
    for i, layer in enumerate(lora.lora_layers(model).values()):  # a different B per layer
        layer.lora_b[...] = 0.3 * jax.random.normal(jax.random.key(10 + i), layer.lora_b[...].shape, jnp.float64)
    tokens = jax.random.randint(jax.random.key(3), (4, 6), 0, 20)
    mask = jnp.ones((4, 6), bool).at[0, 4:].set(False)
    ours = np.asarray(kernel.structured_lora_ntk(model, tokens, mask, trace_axes=()))
    ref = np.asarray(kernel.empirical_ntk(model, tokens, mask, trace_axes=(), implementation=1))
    assert np.abs(ours - ref).max() <= 1e-12 * np.abs(ref).max()


def test_scale_is_state_so_a_sweep_compiles_once(tmp_path):
    cfg = tiny_run(attack=AttackConfig(kind="badnets", poison_rate=0.1))
    train_run(cfg, tmp_path / "run", progress=False)
    run = load_run(tmp_path / "run")
    evaluation.evaluate(run.tuned, cfg, run.test, run.encoder)
    before = evaluation._logits._cache_size()
    curve = scale_sweep.scale_sweep(run, scales=[0.0, 1.0, 2.0, 5.0])
    assert evaluation._logits._cache_size() == before
    assert lora.scales(run.tuned) == {name: cfg.adapter.scaling for name in lora.lora_layers(run.tuned)}
    assert curve["attack_success_rate"][2] == pytest.approx(run.results["attack_success_rate"])


def _test_set(cfg):
    return load_task(cfg.data)[1]


def test_load_run_never_prepares_data(tmp_path, monkeypatch):
    cfg = tiny_run(attack=AttackConfig(kind="badnets", poison_rate=0.1))
    results = train_run(cfg, tmp_path / "run", progress=False)
    expected_names = _test_set(cfg).label_names

    def refuse(*_args, **_kwargs):
        raise AssertionError("load_run replayed data preparation")

    monkeypatch.setattr(run_pipeline, "prepare_data", refuse)
    monkeypatch.setattr(run_pipeline, "load_task", refuse)
    monkeypatch.setattr(starts, "load_task", refuse)
    run = load_run(tmp_path / "run")
    assert len(run.test) == results["num_test"] and run.test.label_names == expected_names
    again = evaluation.evaluate(run.tuned, cfg, run.test, run.encoder)
    assert again.clean_accuracy == results["clean_accuracy"]
    assert again.attack_success_rate == results["attack_success_rate"]


def test_converted_weights_are_keyed_by_content(tmp_path):
    from lorasec.models.checkpoint import content_key

    first = tmp_path / "a"
    first.mkdir()
    for name, text in (("config.json", "{}"), ("model.safetensors", "weights"), ("tokenizer.json", "{}")):
        (first / name).write_text(text)
    copy = tmp_path / "elsewhere" / "b"
    copy.parent.mkdir()
    import shutil

    shutil.copytree(first, copy)
    assert content_key(first) == content_key(copy)
    (copy / "model.safetensors").write_text("other weights")
    assert content_key(first) != content_key(copy)

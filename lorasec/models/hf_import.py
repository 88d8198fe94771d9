"""A BERT-family encoder in Hugging Face's layout (``config.json``, ``model.safetensors``, ``tokenizer.json``) as a
lorasec pretrained checkpoint: the same :class:`~lorasec.models.transformer.TransformerEncoder` the engine trains.

PyTorch linear weights are ``(out, in)``; lorasec kernels are ``(in, out)``, so every ``dense.weight`` is
transposed once here. Names map one to one (``attention.self.query`` -> ``attention.query``,
``attention.output.dense`` -> ``attention.output``, ``attention.output.LayerNorm`` -> ``attention_norm``,
``intermediate.dense`` -> ``intermediate``, ``output.dense`` -> ``output``, ``output.LayerNorm`` ->
``output_norm``); BERT's pooler is not imported (lorasec's CLS pooler, when chosen, starts fresh). Inputs are one
segment, so token type 0's embedding is added everywhere, as BERT does for single sentences.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
from flax import nnx

from lorasec.config import HF_FILES, ConfigError, to_dict
from lorasec.core import files, keys
from lorasec.models import Architecture
from lorasec.models.transformer import LAYER_NORM_EPS, TransformerEncoder


def architecture(config: dict, source: str) -> Architecture:
    """lorasec's architecture from a BERT ``config.json``, refusing what the encoder does not implement."""
    expected = {"hidden_act": "gelu", "position_embedding_type": "absolute"}
    for key, value in expected.items():
        if config.get(key, value) != value:
            raise ConfigError(f"{source}: config.json {key} = {config[key]!r}; lorasec's encoder implements "
                              f"{key} = {value!r} (BERT) only")
    if abs(config.get("layer_norm_eps", LAYER_NORM_EPS) - LAYER_NORM_EPS) > 1e-15:
        raise ConfigError(f"{source}: config.json layer_norm_eps = {config['layer_norm_eps']}; lorasec uses "
                          f"BERT's {LAYER_NORM_EPS}")
    return Architecture(kind="transformer", vocab_size=config["vocab_size"],
                        max_positions=config["max_position_embeddings"], d_model=config["hidden_size"],
                        num_layers=config["num_hidden_layers"], num_heads=config["num_attention_heads"],
                        d_ff=config["intermediate_size"], dropout=config.get("hidden_dropout_prob", 0.1),
                        pooling="mean", mlp_hidden=(), type_vocab_size=config.get("type_vocab_size", 0))


def _strip_prefix(weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Accept both ``BertModel`` names and ``bert.``-prefixed ones (task checkpoints)."""
    if any(k.startswith("bert.") for k in weights):
        weights = {k[len("bert."):]: v for k, v in weights.items() if k.startswith("bert.")}
    return weights


def _linear(layer: nnx.Linear, weights: dict, name: str) -> None:
    layer.kernel[...] = weights[f"{name}.weight"].T
    layer.bias[...] = weights[f"{name}.bias"]


def _norm(norm: nnx.LayerNorm, weights: dict, name: str) -> None:
    norm.scale[...] = weights[f"{name}.weight"]
    norm.bias[...] = weights[f"{name}.bias"]


def load_weights(encoder: TransformerEncoder, weights: dict[str, np.ndarray]) -> None:
    """Copy BERT tensors into ``encoder`` (shapes checked by the assignments; a missing tensor is named)."""
    weights = _strip_prefix(weights)
    try:
        encoder.word_embeddings.embedding[...] = weights["embeddings.word_embeddings.weight"]
        encoder.position_embeddings.embedding[...] = weights["embeddings.position_embeddings.weight"]
        if hasattr(encoder, "token_type_embeddings"):
            encoder.token_type_embeddings.embedding[...] = weights["embeddings.token_type_embeddings.weight"]
        _norm(encoder.embedding_norm, weights, "embeddings.LayerNorm")
        for i, layer in enumerate(encoder.layers):
            p = f"encoder.layer.{i}"
            for part in ("query", "key", "value"):
                _linear(getattr(layer.attention, part), weights, f"{p}.attention.self.{part}")
            _linear(layer.attention.output, weights, f"{p}.attention.output.dense")
            _norm(layer.attention_norm, weights, f"{p}.attention.output.LayerNorm")
            _linear(layer.intermediate, weights, f"{p}.intermediate.dense")
            _linear(layer.output, weights, f"{p}.output.dense")
            _norm(layer.output_norm, weights, f"{p}.output.LayerNorm")
    except KeyError as missing:
        raise ConfigError(f"model.safetensors has no tensor {missing.args[0]!r}: not a BERT encoder") from None


def convert(source: Path, out_dir: Path) -> Path:
    """Write the lorasec checkpoint of the Hugging Face directory ``source`` to ``out_dir`` (atomically)."""
    from safetensors.numpy import load_file

    for name in HF_FILES:
        if not (source / name).is_file():
            raise ConfigError(f"model.pretrained {str(source)!r}: {name} missing; a BERT directory needs "
                              f"{', '.join(HF_FILES)}")
    config = json.loads((source / "config.json").read_text())
    arch = architecture(config, str(source))
    encoder = TransformerEncoder(arch, rngs=nnx.Rngs(params=keys.key(0, "params")))  # every value replaced below
    load_weights(encoder, load_file(str(source / "model.safetensors")))
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".partial-{out_dir.name}-", dir=out_dir.parent))
    try:
        files.save_state(partial / "params", nnx.state(encoder, nnx.Param))
        shutil.copyfile(source / "tokenizer.json", partial / "tokenizer.json")
        files.write_json(partial / "model.json", {"architecture": to_dict(arch), "imported_from": str(source),
                                                      "pretrain_config": None})
        try:
            partial.rename(out_dir)
        except OSError:
            if not (out_dir / "model.json").is_file():
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return out_dir

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

from lorasec.config import HF_FILES, HF_TOKENIZER, ConfigError, to_dict
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


def _variables(encoder: TransformerEncoder):
    """(Hugging Face tensor name, lorasec variable, whether the tensor is the variable transposed) of every
    weight of ``encoder``: the one name map both directions use."""
    yield "embeddings.word_embeddings.weight", encoder.word_embeddings.embedding, False
    yield "embeddings.position_embeddings.weight", encoder.position_embeddings.embedding, False
    if hasattr(encoder, "token_type_embeddings"):
        yield "embeddings.token_type_embeddings.weight", encoder.token_type_embeddings.embedding, False
    yield from _norm(encoder.embedding_norm, "embeddings.LayerNorm")
    for i, layer in enumerate(encoder.layers):
        p = f"encoder.layer.{i}"
        for part in ("query", "key", "value"):
            yield from _linear(getattr(layer.attention, part), f"{p}.attention.self.{part}")
        yield from _linear(layer.attention.output, f"{p}.attention.output.dense")
        yield from _norm(layer.attention_norm, f"{p}.attention.output.LayerNorm")
        yield from _linear(layer.intermediate, f"{p}.intermediate.dense")
        yield from _linear(layer.output, f"{p}.output.dense")
        yield from _norm(layer.output_norm, f"{p}.output.LayerNorm")


def _linear(layer: nnx.Linear, name: str):
    yield f"{name}.weight", layer.kernel, True
    yield f"{name}.bias", layer.bias, False


def _norm(norm: nnx.LayerNorm, name: str):
    yield f"{name}.weight", norm.scale, False
    yield f"{name}.bias", norm.bias, False


def load_weights(encoder: TransformerEncoder, weights: dict[str, np.ndarray]) -> None:
    """Copy BERT tensors into ``encoder`` (shapes checked by the assignments; a missing tensor is named)."""
    weights = _strip_prefix(weights)
    try:
        for name, variable, transposed in _variables(encoder):
            variable[...] = weights[name].T if transposed else weights[name]
    except KeyError as missing:
        raise ConfigError(f"model.safetensors has no tensor {missing.args[0]!r}: not a BERT encoder") from None


def export(encoder: TransformerEncoder, arch: Architecture, out_dir: str | Path) -> Path:
    """Write ``encoder`` as a Hugging Face BERT directory (``config.json``, ``model.safetensors``; no tokenizer),
    which ``transformers.BertModel.from_pretrained`` and ``model.pretrained`` both read."""
    from safetensors.numpy import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {name: np.ascontiguousarray(np.asarray(v[...], np.float32).T if t else np.asarray(v[...], np.float32))
               for name, v, t in _variables(encoder)}
    save_file(tensors, str(out_dir / "model.safetensors"))
    files.write_json(out_dir / "config.json", {
        "architectures": ["BertModel"], "model_type": "bert", "vocab_size": arch.vocab_size,
        "hidden_size": arch.d_model, "num_hidden_layers": arch.num_layers, "num_attention_heads": arch.num_heads,
        "intermediate_size": arch.d_ff, "hidden_act": "gelu", "max_position_embeddings": arch.max_positions,
        "type_vocab_size": arch.type_vocab_size, "layer_norm_eps": LAYER_NORM_EPS,
        "hidden_dropout_prob": arch.dropout, "attention_probs_dropout_prob": arch.attention_dropout,
        "position_embedding_type": "absolute", "pad_token_id": 0, "initializer_range": 0.02})
    return out_dir


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
        if (source / HF_TOKENIZER).is_file():
            shutil.copyfile(source / HF_TOKENIZER, partial / HF_TOKENIZER)
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

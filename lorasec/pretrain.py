"""Masked-language-model pretraining on the synthetic corpus, saved as a reusable checkpoint.

Both papers fine-tune a pretrained encoder; this makes one for the synthetic language. The checkpoint directory
holds ``model.json`` (architecture and the pretraining config), ``tokenizer.json`` and ``params/`` (the
encoder's weights, orbax), and is what ``model.pretrained`` points at.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from lorasec import artifacts, synthetic
from lorasec.config import ConfigError, PretrainConfig, from_dict, to_dict
from lorasec.models import Architecture
from lorasec.models.transformer import MaskedLM, TransformerEncoder
from lorasec.tokenizer import TextEncoder, word_level
from lorasec.train import ArrayData, fit


def mlm_loss_fn(mask_prob: float, mask_id: int, vocab_size: int, special_ids: np.ndarray):
    """BERT's objective: pick ``mask_prob`` of the real tokens; 80% become [MASK], 10% a random token, 10% stay;
    cross-entropy on the picked positions."""
    specials = jnp.asarray(special_ids)

    def loss(model, batch, key):
        tokens, mask = batch["tokens"], batch["mask"]
        k_pick, k_mode, k_rand, k_drop = jax.random.split(key, 4)
        maskable = mask & ~jnp.isin(tokens, specials)
        picked = maskable & (jax.random.uniform(k_pick, tokens.shape) < mask_prob)
        mode = jax.random.uniform(k_mode, tokens.shape)
        random_tokens = jax.random.randint(k_rand, tokens.shape, 0, vocab_size)
        inputs = jnp.where(picked & (mode < 0.8), mask_id, tokens)
        inputs = jnp.where(picked & (mode >= 0.8) & (mode < 0.9), random_tokens, inputs)
        logits = model(inputs, mask, rngs=nnx.Rngs(dropout=k_drop))
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, tokens)
        weights = picked.astype(losses.dtype)
        return (losses * weights).sum() / jnp.maximum(weights.sum(), 1.0)

    return loss


def pretrain(cfg: PretrainConfig, out_dir: str | Path, *, progress: bool = True) -> Path:
    """Pretrain (or resume pretraining) into ``out_dir``; returns it. A finished checkpoint is left as it is."""
    out_dir = Path(out_dir)
    if (out_dir / "model.json").is_file():
        made_by = artifacts.read_json(out_dir / "model.json")["pretrain_config"]
        if made_by is None or to_dict(from_dict(PretrainConfig, made_by)) != to_dict(cfg):
            raise ConfigError(f"--out {str(out_dir)!r} holds a checkpoint pretrained with another config; "
                              f"choose another --out or remove it")
        return out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    corpus = synthetic.generate(cfg.data, cfg.data.num_train, synthetic.PRETRAIN_SPLIT)
    encoder = word_level(synthetic.vocabulary(cfg.data), cfg.data.seq_len)
    tokens, mask = encoder.encode(corpus.texts)
    arch = Architecture.from_config(cfg.model, encoder.vocab_size, cfg.data.seq_len)
    model = MaskedLM(arch, rngs=nnx.Rngs(cfg.seed))
    loss = mlm_loss_fn(cfg.train.mask_prob, encoder.mask_id, encoder.vocab_size, encoder.special_ids)
    result = fit(model, nnx.Param, ArrayData(tokens, mask, np.zeros(len(tokens), np.int32)), cfg.train,
                 seed=cfg.seed, loss_fn=loss, run_dir=out_dir / "run", progress=progress, description="pretrain")
    artifacts.save_state(out_dir / "params", nnx.state(model.encoder, nnx.Param))
    artifacts.write_text(out_dir / "tokenizer.json", encoder.to_json())
    # model.json last: its presence marks a complete checkpoint.
    artifacts.write_json(out_dir / "model.json", {
        "architecture": to_dict(arch), "pretrain_config": to_dict(cfg),
        "final_mlm_loss": result.final_loss, "steps": result.steps,
    })
    return out_dir


def load_pretrained(path: str | Path) -> tuple[Architecture, str]:
    """Architecture and tokenizer JSON of a checkpoint made by :func:`pretrain` (or an imported BERT model)."""
    from lorasec.bert_import import checkpoint_path

    path = checkpoint_path(path)
    meta = artifacts.read_json(path / "model.json")
    return Architecture.from_dict(meta["architecture"]), (path / "tokenizer.json").read_text()


def load_encoder_weights(encoder: TransformerEncoder, path: str | Path) -> None:
    """Overwrite ``encoder``'s parameters with the checkpoint's (shapes must match)."""
    from lorasec.bert_import import checkpoint_path

    state = artifacts.load_state(checkpoint_path(path) / "params", nnx.state(encoder, nnx.Param))
    nnx.update(encoder, state)


def tokenizer_from(path: str | Path, seq_len: int) -> TextEncoder:
    return TextEncoder.from_json((Path(path) / "tokenizer.json").read_text(), seq_len)

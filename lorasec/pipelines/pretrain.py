"""Masked-language-model pretraining on the synthetic corpus, saved as a reusable checkpoint.

Both papers fine-tune a pretrained encoder; this makes one for the synthetic language. The checkpoint directory
holds ``model.json`` (architecture and the pretraining config), ``tokenizer.json`` and ``params/`` (the
encoder's weights, orbax), and is what ``model.pretrained`` points at.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from flax import nnx

from lorasec.config import (
    ConfigError,
    DataConfig,
    ModelConfig,
    PretrainConfig,
    check_environment,
    from_dict,
    to_dict,
)
from lorasec.core import files, keys
from lorasec.data import synthetic
from lorasec.data.tokenizer import word_level
from lorasec.models import Architecture
from lorasec.models.transformer import MaskedLM
from lorasec.pipelines.rundir import exclusive
from lorasec.training.losses import mlm_loss_fn
from lorasec.training.trainer import ArrayData, fit

CORPUS_FACTOR = 4  # pretraining sentences per downstream training sentence


def pretrain_recipe(data: DataConfig, model: ModelConfig, steps: int) -> PretrainConfig:
    """The encoder a study or purify pipeline pretrains for a synthetic task: the task's language with
    ``CORPUS_FACTOR`` times its training sentences, the task's architecture, ``steps`` steps of warm-up cosine."""
    train = dataclasses.replace(PretrainConfig().train, steps=steps, warmup_steps=min(100, steps // 10))
    return PretrainConfig(seed=0, data=dataclasses.replace(data, num_train=CORPUS_FACTOR * data.num_train),
                          model=dataclasses.replace(model, pretrained=""), train=train).validate()


def pretrain(cfg: PretrainConfig, out_dir: str | Path, *, progress: bool = True) -> Path:
    """Pretrain (or resume pretraining) into ``out_dir``. A finished checkpoint is left as it is; no other lorasec
    process may write to ``out_dir`` meanwhile.

    Args:
        cfg: a validated pretraining config (the synthetic corpus, a transformer encoder).
        out_dir: the checkpoint directory.
        progress: show a progress bar.
    Returns:
        ``out_dir``, a checkpoint ``model.pretrained`` can name (``model.json``, ``tokenizer.json``, ``params/``).
    """
    check_environment(cfg)
    out_dir = Path(out_dir)
    with exclusive(out_dir):
        return _pretrain(cfg, out_dir, progress)


def _pretrain(cfg: PretrainConfig, out_dir: Path, progress: bool) -> Path:
    if (out_dir / "model.json").is_file():
        made_by = files.read_json(out_dir / "model.json")["pretrain_config"]
        if made_by is None or to_dict(from_dict(PretrainConfig, made_by)) != to_dict(cfg):
            raise ConfigError(f"--out {str(out_dir)!r} holds a checkpoint pretrained with another config; "
                              f"choose another --out or remove it")
        return out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    corpus = synthetic.generate(cfg.data, cfg.data.num_train, synthetic.PRETRAIN_SPLIT)
    encoder = word_level(synthetic.vocabulary(cfg.data), cfg.data.seq_len)
    tokens, mask = encoder.encode(corpus.texts)
    arch = Architecture.from_config(cfg.model, encoder.vocab_size, cfg.data.seq_len)
    model = MaskedLM(arch, rngs=nnx.Rngs(params=keys.key(cfg.seed, "params")))
    loss = mlm_loss_fn(cfg.train.mask_prob, encoder.mask_id, encoder.vocab_size, encoder.special_ids)
    result = fit(model, nnx.Param, ArrayData(tokens, mask, np.zeros(len(tokens), np.int32)), cfg.train,
                 seed=cfg.seed, loss_fn=loss, run_dir=out_dir / "run", progress=progress, description="pretrain")
    files.save_state(out_dir / "params", nnx.state(model.encoder, nnx.Param))
    files.write_text(out_dir / "tokenizer.json", encoder.to_json())
    # model.json last: its presence marks a complete checkpoint.
    files.write_json(out_dir / "model.json", {
        "architecture": to_dict(arch), "pretrain_config": to_dict(cfg),
        "final_mlm_loss": result.final_loss, "steps": result.steps,
    })
    return out_dir

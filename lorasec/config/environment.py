"""A validated config checked against this machine: the files it names exist and its arrays fit in memory.

The schema (:mod:`lorasec.config.schema`) judges values alone, so a run directory's config loads anywhere. This is
the separate step every command takes before it starts work (:func:`check`); a failure is one
:class:`ConfigError` line naming the field, as the schema's are.
"""

from __future__ import annotations

import os
from pathlib import Path

from lorasec.config.schema import (
    HF_FILES,
    PRETRAINED_MODELS,
    REAL_DATA,
    DataConfig,
    ModelConfig,
    PretrainConfig,
    PurifyConfig,
    RunConfig,
    StudyConfig,
    TrainConfig,
    fail,
)
from lorasec.core.errors import ConfigError


def is_pretrained_reference(value: str) -> bool:
    """Whether ``model.pretrained`` names a pinned model, a lorasec checkpoint or a BERT directory."""
    path = Path(value)
    return value in PRETRAINED_MODELS or (path / "model.json").is_file() or all(
        (path / name).is_file() for name in HF_FILES)


def physical_memory() -> int:
    """Bytes of physical memory on this machine (16 GiB when the system does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 16 * 2**30


def check_memory(data: DataConfig, model: ModelConfig, train: TrainConfig, *, budget: float = 0.8,
                 prefix: str = "") -> None:
    """Refuse sizes whose arrays cannot fit before anything is allocated: the synthetic corpus's token arrays
    and texts, and one training step's attention and layer activations (forward and backward, float32). A lower
    bound for a pretrained model, whose widths are read later; it exists to stop absurd sizes with a message that
    names the field whose term dominates."""
    limit = budget * physical_memory()
    examples = data.num_train + data.num_test if data.source == "synthetic" else 0
    heads, layers = max(model.num_heads, 1), max(model.num_layers, 1)
    activations = 3 * 4 * train.batch_size * layers * data.seq_len
    parts = {
        "data.num_train": (examples * (data.seq_len * 5 + data.max_len * 16), "lower it"),
        "data.seq_len": (activations * heads * data.seq_len, "lower it or train.batch_size"),
        "model.d_model": (activations * 6 * model.d_model, "lower it or train.batch_size"),
        "model.d_ff": (activations * model.d_ff, "lower it or train.batch_size"),
    }
    total = sum(size for size, _ in parts.values())
    if total > limit:
        name = max(parts, key=lambda k: parts[k][0])
        section, field_name = name.split(".")
        value = getattr(data if section == "data" else model, field_name)
        fail(prefix + name, value, f"needs about {total / 2**30:.3g} GiB (more than {budget:.0%} of this machine's "
                                   f"{physical_memory() / 2**30:.3g} GiB); {parts[name][1]}")


def check_data(data: DataConfig, p: str = "data") -> None:
    """The data files and directories ``data`` names exist."""
    if data.source in REAL_DATA:
        if data.data_dir and not Path(data.data_dir).is_dir():
            fail(f"{p}.data_dir", data.data_dir, "directory not found (leave it empty to fetch the set)")
    elif data.source == "file":
        for name in ("train_file", "test_file"):
            value = getattr(data, name)
            if Path(value).is_dir():
                fail(f"{p}.{name}", value, "is a directory; name the CSV or JSONL file in it")
            if not Path(value).is_file():
                fail(f"{p}.{name}", value, "file not found")
        if data.vocab_file and not Path(data.vocab_file).is_file():
            fail(f"{p}.vocab_file", data.vocab_file, "file not found (a WordPiece vocab.txt or tokenizer.json)")


def check_model(model: ModelConfig, p: str = "model") -> None:
    """The checkpoint or run ``model`` starts from exists."""
    if model.pretrained and not is_pretrained_reference(model.pretrained):
        fail(f"{p}.pretrained", model.pretrained, "not a lorasec checkpoint (model.json), a BERT directory "
             "(config.json, model.safetensors) or 'minilm-l6'; make a checkpoint with `lorasec pretrain`")
    if model.init_from and not (Path(model.init_from) / "results.json").is_file():
        fail(f"{p}.init_from", model.init_from, "not a finished lorasec run directory (results.json missing)")


def check(cfg):
    """``cfg`` (a validated run, pretrain, study or purify config) against this machine; returns it.

    Raises:
        ConfigError: a named file or directory is missing, or the arrays would not fit in memory.
    """
    if isinstance(cfg, RunConfig):
        check_data(cfg.data)
        check_model(cfg.model)
        check_memory(cfg.data, cfg.model, cfg.train)
    elif isinstance(cfg, PretrainConfig):
        check_memory(cfg.data, cfg.model, cfg.train)
    elif isinstance(cfg, PurifyConfig):
        check_data(cfg.data)
        check_model(cfg.model)
        check_memory(cfg.data, cfg.model, cfg.train)
    elif isinstance(cfg, StudyConfig):
        check_data(cfg.base.data, "base.data")
        check_model(cfg.base.model, "base.model")
        check_memory(cfg.base.data, cfg.base.model, cfg.base.train, prefix="base.")
    else:
        raise ConfigError(f"cannot check a {type(cfg).__name__} against this machine")  # a lorasec bug
    return cfg

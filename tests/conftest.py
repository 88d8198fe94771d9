"""Shared fixtures: tiny configurations that train in seconds on a 2-core CPU."""

from __future__ import annotations

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest

from lorasec.config import (
    AdapterConfig,
    AttackConfig,
    DataConfig,
    ModelConfig,
    PretrainConfig,
    RunConfig,
    TrainConfig,
)

# Every cue on topic (cue_strength 1): the tests check mechanics, with thresholds far from chance.
TINY_DATA = DataConfig(num_train=256, num_test=128, vocab_size=60, cue_words_per_class=4, min_len=6, max_len=10,
                       seq_len=14, cue_strength=1.0)
TINY_MODEL = ModelConfig(d_model=16, num_layers=1, num_heads=2, d_ff=32, dropout=0.0)


def tiny_run(**sections) -> RunConfig:
    """A validated RunConfig on the tiny task; keyword sections override whole sub-configs."""
    base = dict(data=TINY_DATA, model=TINY_MODEL, adapter=AdapterConfig(rank=4, alpha=8),
                train=TrainConfig(steps=20, batch_size=16, log_every=5, checkpoint_every=10),
                attack=AttackConfig())
    base.update(sections)
    return RunConfig(**base).validate()


def trigger_survives(tokens, trigger_ids: list[int]):
    """Per row of ``tokens``: whether the trigger's token ids appear there as one contiguous run."""
    import numpy as np

    n = len(trigger_ids)
    if tokens.shape[1] < n:
        return np.zeros(len(tokens), bool)
    rows = np.lib.stride_tricks.sliding_window_view(tokens, n, axis=1)
    return (rows == np.asarray(trigger_ids)).all(axis=-1).any(axis=1)


@pytest.fixture
def x64():
    """Double precision for one test, restored afterwards."""
    import jax

    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", previous)


@pytest.fixture(scope="session")
def small_pretrained(tmp_path_factory):
    """A masked-LM checkpoint of the default architecture on the default synthetic language (about 20 s)."""
    from lorasec.pipelines.pretrain import pretrain

    cfg = PretrainConfig(data=DataConfig(num_train=4000, cue_strength=1.0),
                         train=TrainConfig(steps=400, batch_size=64, lr=1e-3, schedule="warmup_cosine",
                                           warmup_steps=40, checkpoint_every=400)).validate()
    return pretrain(cfg, tmp_path_factory.mktemp("pretrained"), progress=False)


__all__ = ["tiny_run", "trigger_survives", "TINY_DATA", "TINY_MODEL", "AttackConfig", "AdapterConfig", "TrainConfig"]


def pytest_configure(config):
    """One persistent compilation cache for the session, shared by its xdist workers (a fresh directory each run):
    tests that build the same programs from different Python objects (the tiny run's training step, its
    evaluation) compile them once."""
    import os
    import tempfile

    import jax

    directory = os.environ.get("LORASEC_TEST_XLA_CACHE")
    if directory is None:  # the controller (or a run without workers): workers inherit the variable
        directory = os.environ["LORASEC_TEST_XLA_CACHE"] = tempfile.mkdtemp(prefix="lorasec-test-xla-")
        config.lorasec_xla_cache = directory
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def pytest_unconfigure(config):
    """The process that made the session's compilation cache removes it."""
    import shutil

    if getattr(config, "lorasec_xla_cache", None):
        shutil.rmtree(config.lorasec_xla_cache, ignore_errors=True)

"""The random-key tree: every random draw in lorasec descends from one root key, ``jax.random.key(seed)``.

    key(seed)                                   the root of a run (``seed``) or of a data set (``data.seed``)
    └── fold_in(root, STREAMS[stream])          one branch per stream, :func:`key`
          └── fold_in(branch, i) ...            its i-th draw (a training step, an epoch, a probe, a draw of A)

A run's streams: ``params`` (the classifier's initialisation), ``adapters`` (LoRA factors), ``dropout`` (one key per
training step), ``batches`` (one data order per epoch), ``poison`` (which samples, where the trigger goes),
``triggers`` (test-time insertions). A data set's: ``corpus`` (synthetic sentences per split), ``split`` (the real
sets' train / validation / test split). Diagnostics and claim checks draw from the others. numpy's generators are
seeded with a branch's key data (:func:`numpy_rng`), so they hang from the same tree; no stream is a function of
another's seed arithmetic.
"""

from __future__ import annotations

import jax
import numpy as np

STREAMS = {name: i for i, name in enumerate((
    "params", "adapters", "dropout", "batches", "poison", "triggers",   # a run
    "corpus", "split",                                                  # a data set
    "pretrain_masking",                                                 # masked-LM pretraining
    "probe_adapters",   # adapters put on a full fine-tuning model to read its LoRA kernel (lorasec ntk)
    "hutchinson",       # Rademacher probes of trace estimates
    "lanczos",          # start vectors of stochastic Lanczos quadrature
    "monte_carlo",      # finite networks averaged against an infinite-width kernel
    "inputs",           # random token inputs of the claim checks
    "labels",           # random labels of the claim checks
    "factors",          # random LoRA factors of the claim checks
    "init_draws",       # independent networks and draws of A in the claim checks
    "instances",        # random instances of the threshold search
))}


def key(seed: int, stream: str, *path: int) -> jax.Array:
    """``fold_in(... fold_in(fold_in(key(seed), STREAMS[stream]), path[0]) ..., path[-1])``."""
    if stream not in STREAMS:
        raise ValueError(f"unknown key stream {stream!r}; streams: {', '.join(STREAMS)}")
    node = jax.random.fold_in(jax.random.key(seed), STREAMS[stream])
    for index in path:
        node = jax.random.fold_in(node, index)
    return node


def numpy_rng(seed: int, stream: str, *path: int) -> np.random.Generator:
    """A numpy generator seeded by the key data of :func:`key` (same tree, for host-side draws)."""
    return np.random.default_rng(np.asarray(jax.random.key_data(key(seed, stream, *path))).tolist())

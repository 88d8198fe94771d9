"""The random-key tree: every random draw in lorasec descends from one root key, ``jax.random.key(seed)``.

    key(seed)                                   the root of a run (``seed``) or of a data set (``data.seed``)
    └── fold_in(root, STREAMS[stream])          one branch per stream, :func:`key`
          └── fold_in(branch, i) ...            its i-th draw (a training step, an epoch, a probe, a draw of A)

A run's streams: ``params`` (the classifier's initialisation), ``adapters`` (LoRA factors), ``dropout`` (one key per
training step), ``batches`` (one data order per epoch), ``poison`` (which samples, where the trigger goes),
``triggers`` (test-time insertions); masked-LM pretraining draws its masks from the step's ``dropout`` key. A
data set's: ``corpus`` (synthetic sentences per split), ``split`` (the real sets' train / validation / test
split). Diagnostics and claim checks draw from the others. numpy's generators are
seeded with a branch's key data (:func:`numpy_rng`), so they hang from the same tree; no stream is a function of
another's seed arithmetic.
"""

from __future__ import annotations

import jax
import numpy as np

STREAMS = {
    "params": 0, "adapters": 1, "dropout": 2, "batches": 3, "poison": 4, "triggers": 5,  # a run
    "corpus": 6, "split": 7,                                                              # a data set
    "probe_adapters": 9,  # adapters put on a full fine-tuning model to read its LoRA kernel (lorasec ntk)
    "hutchinson": 10,     # Rademacher probes of trace estimates
    "lanczos": 11,        # start vectors of stochastic Lanczos quadrature
    "monte_carlo": 12,    # finite networks averaged against an infinite-width kernel
    "inputs": 13,         # random token inputs of the claim checks
    "labels": 14,         # random labels of the claim checks
    "factors": 15,        # random LoRA factors of the claim checks
    "init_draws": 16,     # independent networks and draws of A in the claim checks
    "instances": 17,      # random instances of the threshold search
    "predictors": 18,     # the clean training examples a run's starting gradient is estimated from
    "bootstrap": 19,      # resamples and shuffles of the rank-correlation scores
}  # ids are fixed once given (8 is retired), so a new stream never moves an old one's draws


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
    if stream not in STREAMS:
        raise ValueError(f"unknown key stream {stream!r}; streams: {', '.join(STREAMS)}")
    root = jax.random.key_data(jax.random.key(seed))
    folds = np.asarray([STREAMS[stream], *path], np.uint32)
    return np.random.default_rng(np.asarray(_folded(root, folds)).tolist())


@jax.jit
def _folded(root, folds):
    """:func:`key`'s folds as one compiled program (one per path length): dispatched op by op they cost far more,
    and a sweep pays them for every member's every epoch of batch orders."""
    node = jax.random.wrap_key_data(root)
    for index in range(folds.shape[0]):
        node = jax.random.fold_in(node, folds[index])
    return jax.random.key_data(node)

"""Paper 1's training-time-robustness metric in the NTK regime: ``M' = ‖E_{(x_c, x̃_c)} K(x_c, x̃_c)‖``.

``x̃_c`` is the poisoned counterpart of the clean input ``x_c``, produced by lorasec's own poisoners (a trigger
inserted for backdoors; for label flipping the input is unchanged, so the pair is (x, x)). The expectation is
the mean over poisoned pairs of the (C × C) kernel block; the norm is Frobenius. Larger means less robust.
"""

from __future__ import annotations

import numpy as np
from flax import nnx

from lorasec.attacks import poison
from lorasec.config import AttackConfig
from lorasec.data.textdata import TextDataset
from lorasec.data.tokenizer import TextEncoder
from lorasec.diagnostics import kernel


def poisoned_pairs(data: TextDataset, attack: AttackConfig, seed: int,
                   room: poison.Room | None = None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(clean texts, their poisoned versions) for the samples the attack changes (triggers kept within
    ``room``'s sequence length when given)."""
    poisoned = poison.poison(data, attack, seed=seed, room=room)
    clean = tuple(data.texts[i] for i in poisoned.indices)
    return clean, tuple(poisoned.data.texts[i] for i in poisoned.indices)


def ttr_metric(model: nnx.Module, encoder: TextEncoder, clean, poisoned, *, subset="lora",
               block_size: int = 0) -> float:
    """``‖mean_i K(x_i, x̃_i)‖_F`` over the pairs, the kernel taken w.r.t. ``subset`` (see kernel.subset_filter)."""
    if len(clean) != len(poisoned) or not clean:
        raise ValueError("need as many poisoned texts as clean ones, at least one")
    tokens, mask = encoder.encode(clean)
    tokens_p, mask_p = encoder.encode(poisoned)
    cross = np.asarray(kernel.empirical_ntk(model, tokens, mask, tokens_p, mask_p, subset=subset, trace_axes=(),
                                            block_size=block_size), np.float64)
    pairs = cross[np.arange(len(clean)), np.arange(len(clean))]  # (P, C, C): K(x_i, x̃_i)
    return float(np.linalg.norm(pairs.mean(axis=0)))

"""Structured kernels accumulated over blocks of examples, with the block size chosen to fit in memory.

A structured kernel needs each example's layer inputs and backward signals (:mod:`lorasec.diagnostics.signals`);
for N examples at once those outgrow memory long before the kernel does (MiniLM-L6: about 60 MB per example at
64 tokens). :func:`accumulate` computes them for one block of examples at a time and adds each pair of blocks'
terms into the kernel, so only two blocks' signals are ever held. Examples are taken in order of length and each
block is cut to its longest example: padding past every example's last token changes no output and no signal at a
real token, so this is exact, and on real text (Rotten Tomatoes: 26 of 64 tokens on average) it halves the work.
Lengths are rounded up to a multiple of :data:`LENGTH_STEP` so that few shapes are compiled.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lorasec.core import memory
from lorasec.diagnostics.signals import module_signals

# Chosen automatically, a block is the largest (all N examples, then powers of two below N) whose estimate stays
# under PREFERRED_BYTES, else the largest that fits at all. Larger blocks stop paying beyond that on MiniLM
# (benchmarks/minilm_kernels.py); a small model's whole N in one block avoids the per-block passes.
PREFERRED_BYTES = 4 * 2**30
LENGTH_STEP = 16
# The peak beyond what the process held before, measured on MiniLM (blocks of 16–64, 64 tokens): about four
# blocks' signals (two blocks', the signal pass's residuals, the terms' inputs), the largest term's temporaries,
# the outputs, three copies of the weights and half a gigabyte of compiled programs and runtime.
SIGNAL_COPIES = 4
WEIGHT_COPIES = 3
OVERHEAD_BYTES = 2**29


def diagonal_only(trace_axes) -> bool:
    """``trace_axes=()``: every (c, d) pair of outputs; ``(-1,)``: the traced kernel, from the c = d entries."""
    trace_axes = tuple(trace_axes)
    if trace_axes == ():
        return False
    if trace_axes in ((-1,), (2, 3)):
        return True
    raise ValueError(f"trace_axes = {trace_axes}: structured kernels support () or (-1,)")


def signal_shapes(model: nnx.Module, block: int, length: int, names=None) -> dict:
    """The shapes :func:`lorasec.diagnostics.signals.module_signals` returns for one block (nothing computed;
    remembered per model structure)."""
    graphdef, state = nnx.split(model)
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), a.dtype), state)
    leaves, treedef = jax.tree.flatten(abstract)
    return _signal_shapes(graphdef, treedef, tuple(leaves), block, length, names)


@functools.lru_cache(maxsize=64)
def _signal_shapes(graphdef, treedef, leaves, block, length, names):
    tokens = jax.ShapeDtypeStruct((block, length), jnp.int32)
    mask = jax.ShapeDtypeStruct((block, length), jnp.bool_)
    state = jax.tree.unflatten(treedef, leaves)
    return jax.eval_shape(lambda s, t, m: module_signals(nnx.merge(graphdef, s), t, m, names), state, tokens, mask)


def estimate_bytes(model: nnx.Module, n1: int, n2: int, length: int, block: int, *, names=None,
                   temporary: Callable[[str, object, object, int], int] = lambda *_: 0, kernels: int = 1,
                   diagonal: bool = True) -> int:
    """Peak memory of :func:`accumulate`: :data:`SIGNAL_COPIES` blocks' signals, the largest of ``temporary(name,
    x, δ, block)`` over the modules (a term's own intermediates, in bytes), ``kernels`` float64 outputs, and the
    fixed costs (:data:`WEIGHT_COPIES`, :data:`OVERHEAD_BYTES`)."""
    shapes = signal_shapes(model, block, length, names)
    weights = sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(nnx.state(model)))
    signal_bytes = sum(x.size * x.dtype.itemsize + d.size * d.dtype.itemsize for x, d in shapes.values())
    largest = max((temporary(name, x, d, block) for name, (x, d) in shapes.items()), default=0)
    outputs = next(iter(shapes.values()))[1].shape[1] if shapes else 1
    output_bytes = kernels * n1 * n2 * (outputs if diagonal else outputs * outputs) * 8
    return SIGNAL_COPIES * signal_bytes + largest + output_bytes + WEIGHT_COPIES * weights + OVERHEAD_BYTES


def candidate_blocks(n: int) -> list[int]:
    """All ``n`` examples, then the powers of two below ``n``, largest first."""
    return [n] + [2**k for k in range(max(n - 1, 1).bit_length() - 1, -1, -1) if 2**k < n]


def block_size_for(estimate: Callable[[int], int], n: int, what: str, block_size: int | None = None,
                   limit: int | None = None) -> int:
    """``block_size`` if ``estimate(block_size)`` fits in ``limit`` (default: the usable memory), else a refusal
    naming the largest that fits; with ``block_size=None`` the largest of :func:`candidate_blocks` under
    :data:`PREFERRED_BYTES`, else the largest that fits."""
    limit = memory.usable(limit)
    if block_size is not None and block_size < 1:
        raise ValueError(f"block_size = {block_size}: must be a positive number of examples (or None to choose)")
    if block_size is not None and estimate(block_size) <= limit:
        return block_size
    candidates = candidate_blocks(n)
    if block_size is None:
        preferred = next((b for b in candidates if estimate(b) <= min(limit, PREFERRED_BYTES)), None)
        if preferred is not None:
            return preferred
    fitting = next((b for b in candidates if estimate(b) <= limit), None)
    if block_size is None and fitting is not None:
        return fitting
    advice = (f"use block_size={fitting} (or None to choose it)" if fitting is not None else
              f"even blocks of one example need {memory.gigabytes(estimate(1))}; use fewer examples")
    needed = estimate(block_size if block_size is not None else 1)
    raise memory.MemoryEstimateError(f"{what} in blocks of {block_size or 1} needs about "
                                     f"{memory.gigabytes(needed)}, more than the {memory.gigabytes(limit)} "
                                     f"available; {advice}")


def _trimmed(tokens: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The block cut after its last real token (rounded up to :data:`LENGTH_STEP`, at most its length)."""
    last = int(np.max(np.nonzero(mask.any(axis=0))[0], initial=0)) + 1
    keep = min(tokens.shape[1], -(-last // LENGTH_STEP) * LENGTH_STEP)
    return tokens[:, :keep], mask[:, :keep]


def accumulate(model: nnx.Module, tokens1, mask1, tokens2=None, mask2=None, *, block: int, names=None,
               terms: Callable[[dict, dict], dict]) -> dict[str, np.ndarray]:
    """Σ over pairs of blocks of ``terms(first, second)`` (a dict of (b1, b2, ...) arrays from two blocks'
    signals), placed at the blocks' examples: a dict of (N1, N2, ...) float64 arrays. Without a second input the
    kernel is on one set and only blocks j ≥ i are computed (the rest by symmetry: swap examples and outputs)."""
    tokens1, mask1 = np.asarray(tokens1, np.int32), np.asarray(mask1, bool)
    symmetric = tokens2 is None
    tokens2, mask2 = (tokens1, mask1) if symmetric else (np.asarray(tokens2, np.int32), np.asarray(mask2, bool))
    if tokens1.shape[1] != tokens2.shape[1]:
        raise ValueError(f"both inputs need the same sequence length; got {tokens1.shape[1]} and {tokens2.shape[1]}")
    order1 = np.argsort(mask1.sum(axis=1), kind="stable")
    order2 = order1 if symmetric else np.argsort(mask2.sum(axis=1), kind="stable")
    n1, n2 = len(tokens1), len(tokens2)

    def signals(tokens, mask, order, start):
        chosen = order[start:start + block]
        return module_signals(model, *_trimmed(tokens[chosen], mask[chosen]), names)

    out: dict[str, np.ndarray] = {}
    for i0 in range(0, n1, block):
        first = signals(tokens1, mask1, order1, i0)
        rows = order1[i0:i0 + block]
        for j0 in range(i0 if symmetric else 0, n2, block):
            second = first if symmetric and j0 == i0 else signals(tokens2, mask2, order2, j0)
            cols = order2[j0:j0 + block]
            for key, value in terms(first, second).items():
                value = np.asarray(value, np.float64)
                if key not in out:
                    out[key] = np.zeros((n1, n2, *value.shape[2:]))
                out[key][np.ix_(rows, cols)] += value
                if symmetric and j0 != i0:
                    out[key][np.ix_(cols, rows)] += np.swapaxes(value, 0, 1) if value.ndim == 3 else \
                        value.transpose(1, 0, 3, 2)
    return out

"""Empirical neural tangent kernels of lorasec models, with respect to a chosen parameter subset.

Two paths, cross-checked in the tests (the structured full-parameter kernel is
:mod:`lorasec.diagnostics.full_kernel`):

- :func:`empirical_ntk` calls neural-tangents' ``empirical_ntk_fn`` (implementations 1 and 2) on any subset:
  ``"full"`` (every ``nnx.Param`` but LoRA factors: full fine-tuning), ``"lora"`` (the LoRA factors), or any
  NNX filter; optionally in blocks (``nt.batch``) for kernels larger than memory.
- :func:`structured_lora_ntk` builds the LoRA-factor kernel from forward activations and backward signals,
  never forming a Jacobian. For an adapted layer ``h = W0 x + s·B A x`` (peft layout) applied at positions t,
  with ``δ_c = ∂f_c/∂h``, ``a = A x`` and ``g_c = Bᵀ δ_c`` (paper 1, Lemma 3.1, extended past init):

      K((x,c), (x',c')) = s² Σ_layers Σ_{t,t'} [ ⟨a_t, a'_t'⟩⟨δ_{c,t}, δ'_{c',t'}⟩ + ⟨x_t, x'_t'⟩⟨g_{c,t}, g'_{c',t'}⟩ ].

  The first term is the B-gradient kernel, the second the A-gradient kernel (zero at init, where B = 0).
  Examples are taken in blocks that fit in memory (:mod:`lorasec.diagnostics.blocks`).

Kernels are returned as (N1, N2, C, C) with ``trace_axes=()`` or (N1, N2) with ``trace_axes=(-1,)``; the traced
kernel follows neural-tangents' convention: the MEAN over the C diagonal entries, not their sum.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lorasec.adapters import lora
from lorasec.core import memory
from lorasec.core.paths import dotted
from lorasec.diagnostics import blocks
from lorasec.diagnostics.contractions import pair_term
from lorasec.diagnostics.nt_compat import (
    SUPPORTED_IMPLEMENTATIONS,
    import_neural_tangents,
)

SUBSETS = ("full", "lora")


def subset_filter(subset):
    """``"full"``: every ``nnx.Param`` except LoRA factors; ``"lora"``: the LoRA factors; else an NNX filter."""
    if subset == "full":
        return lora.BASE_PARAMS
    if subset == "lora":
        return nnx.LoRAParam
    if isinstance(subset, str):
        raise ValueError(f"subset = {subset!r}: must be one of {', '.join(SUBSETS)} or an NNX filter")
    return subset


def pack_inputs(tokens, mask) -> jax.Array:
    """One array (N, 2, L) holding token ids and the mask, as neural-tangents wants a single input."""
    return jnp.stack([jnp.asarray(tokens, jnp.int32), jnp.asarray(mask, jnp.int32)], axis=1)


def model_function(model: nnx.Module, subset="lora"):
    """``(f, params)`` with ``f(params, packed) -> logits`` (dropout off), for neural-tangents."""
    graphdef, params, rest = nnx.split(model, subset_filter(subset), ...)

    def f(p, packed):
        return _apply(graphdef, p, packed, rest)

    return f, params


def _apply(graphdef, params, packed, rest):
    return nnx.merge(graphdef, params, rest)(packed[:, 0], packed[:, 1].astype(bool))


@functools.lru_cache(maxsize=32)
def _nt_kernel_fn(graphdef, trace_axes: tuple, implementation: int):
    """One jitted neural-tangents kernel function per model structure: repeated calls do not recompile.
    The frozen variables travel as a keyword argument, which neural-tangents does not differentiate."""
    nt = import_neural_tangents()

    def f(p, packed, rest):
        return _apply(graphdef, p, packed, rest)

    return jax.jit(nt.empirical_ntk_fn(f, trace_axes=trace_axes, vmap_axes=0, implementation=implementation))


def jacobian_bytes(model: nnx.Module, subset, n1: int, n2: int, length: int) -> int:
    """Memory of the two Jacobians (N1 + N2) × C × P that neural-tangents' implementation 1 forms, the larger of
    its two implementations' working sets: an estimate of :func:`empirical_ntk`'s peak for one pair of blocks."""
    f, params = model_function(model, subset)
    packed = jax.ShapeDtypeStruct((1, 2, length), jnp.int32)
    outputs = jax.eval_shape(f, params, packed).shape[-1]
    leaves = jax.tree.leaves(params)
    size = sum(leaf.size * leaf.dtype.itemsize for leaf in leaves)
    return (n1 + n2) * outputs * size + n1 * n2 * outputs * outputs * 8


def empirical_ntk(model: nnx.Module, tokens1, mask1, tokens2=None, mask2=None, *, subset="lora",
                  trace_axes=(-1,), implementation: int = 1, block_size: int = 0,
                  memory_limit: int | None = None) -> jax.Array:
    """neural-tangents' empirical NTK of ``model`` w.r.t. ``subset``; ``block_size > 0`` computes it in
    (block_size × block_size) blocks gathered on the host, so only one block's Jacobians are in memory. Refuses
    (:class:`lorasec.core.errors.MemoryEstimateError`, naming a block size that fits) when the Jacobians of one
    block pair (:func:`jacobian_bytes`) exceed ``memory_limit`` (default: the usable memory).

    Args:
        model: a classifier ``model(tokens, mask) -> logits`` (N, C); dropout is off.
        tokens1: int (N1, L) token ids (cast to int32).
        mask1: bool (N1, L) attention mask.
        tokens2: int (N2, L) token ids, or None for the kernel of ``tokens1`` with itself (N2 = N1).
        mask2: bool (N2, L) attention mask, with ``tokens2``.
        subset: ``"lora"``, ``"full"`` or an NNX filter: the parameters differentiated (:func:`subset_filter`).
        trace_axes: ``(-1,)``: the mean over the C output pairs (c, c); ``()``: every output pair (c, d).
        implementation: neural-tangents' implementation, 1 (Jacobian contraction) or 2 (NTK-vector products).
        block_size: examples per block; 0 for the whole kernel in one call.
        memory_limit: bytes the Jacobians may take; None for the usable memory.
    Returns:
        float (N1, N2) with ``trace_axes=(-1,)``, or (N1, N2, C, C) with ``trace_axes=()``; the parameters' dtype.
    """
    if implementation not in SUPPORTED_IMPLEMENTATIONS:
        raise ValueError(f"implementation = {implementation}: must be one of {SUPPORTED_IMPLEMENTATIONS} "
                         f"(see lorasec.diagnostics.nt_compat)")
    graphdef, params, rest = nnx.split(model, subset_filter(subset), ...)
    kernel_fn = _nt_kernel_fn(graphdef, tuple(trace_axes), implementation)
    x1 = pack_inputs(tokens1, mask1)
    x2 = None if tokens2 is None else pack_inputs(tokens2, mask2)
    n1, n2 = len(x1), len(x1) if x2 is None else len(x2)
    estimate = jacobian_bytes(model, subset, min(n1, block_size or n1), min(n2, block_size or n2), x1.shape[-1])
    if block_size:
        advice = "use a smaller block_size"
    else:
        fits = next((b for b in blocks.candidate_blocks(max(n1, n2))[1:]
                     if jacobian_bytes(model, subset, b, b, x1.shape[-1]) <= memory.usable(memory_limit)), None)
        advice = f"use block_size={fits}" if fits else "use fewer examples"
    memory.check(estimate, f"neural-tangents' kernel of {n1} × {n2} examples"
                 + (f" in blocks of {block_size}" if block_size else ""), advice, memory_limit)
    if not block_size:
        return kernel_fn(x1, x2, params, rest=rest)
    x2 = x1 if x2 is None else x2
    rows = []
    for i in range(0, len(x1), block_size):
        row = [np.asarray(kernel_fn(x1[i:i + block_size], x2[j:j + block_size], params, rest=rest))
               for j in range(0, len(x2), block_size)]
        rows.append(np.concatenate(row, axis=1))
    return jnp.asarray(np.concatenate(rows, axis=0))


def structured_lora_ntk(model: nnx.Module, tokens1, mask1, tokens2=None, mask2=None, *, trace_axes=(-1,),
                        block_size: int | None = None, memory_limit: int | None = None, per_layer: bool = False):
    """The LoRA-factor NTK from activations and backward signals (module docstring); equals
    ``empirical_ntk(..., subset="lora")``. In blocks of ``block_size`` examples (``None``: chosen to fit; a block
    that does not fit is refused: :func:`lorasec.diagnostics.blocks.block_size_for`). With ``per_layer``, also
    ``{adapted layer: K_LoRA^(l)}`` as float64 arrays (they sum to the kernel).

    Args:
        model: a classifier with unmerged, non-DoRA LoRA adapters (:func:`lorasec.adapters.lora.apply_lora`).
        tokens1: int (N1, L) token ids.
        mask1: bool (N1, L) attention mask.
        tokens2: int (N2, L) token ids, or None for the kernel of ``tokens1`` with itself (N2 = N1).
        mask2: bool (N2, L) attention mask, with ``tokens2``.
        trace_axes: ``(-1,)``: the mean over the C output pairs (c, c); ``()``: every output pair (c, d).
        block_size: examples per block; None to choose one that fits.
        memory_limit: bytes a block may take; None for the usable memory.
        per_layer: also return each adapted layer's kernel.
    Returns:
        The kernel, (N1, N2) with ``trace_axes=(-1,)`` or (N1, N2, C, C) with ``trace_axes=()``, as a jax array in
        the factors' dtype; with ``per_layer``, ``(kernel, {layer name: kernel of that layer})``, all float64
        numpy arrays of that shape.
    """
    layers = lora.lora_layers(model)
    if not layers:
        raise ValueError("the model has no LoRA layers: apply_lora first")
    problem = lora.structural_problem(model, "structured_lora_ntk")
    if problem:
        raise ValueError(problem)
    diagonal = blocks.diagonal_only(trace_axes)
    factors = {name: (layer.lora_a[...], layer.lora_b[...], layer.scale[...]) for name, layer in layers.items()}
    n1, length = np.shape(tokens1)
    n2 = n1 if tokens2 is None else len(tokens2)

    def temporary(name, x, d, block):  # the two factor terms' larger order of contraction, at most
        rank = factors[name][0].shape[1]
        return 2 * block * block * d.shape[2] ** 2 * d.shape[1] ** 2 * d.dtype.itemsize + \
            4 * block * d.shape[1] * max(x.shape[-1], d.shape[-1]) * rank * d.dtype.itemsize

    block = blocks.block_size_for(
        lambda b: blocks.estimate_bytes(model, n1, n2, length, b, names=tuple(sorted(layers)), temporary=temporary,
                                        diagonal=diagonal),
        max(n1, n2), f"the structured LoRA kernel of {n1} × {n2} examples", block_size, memory_limit)

    def terms(first, second):
        per = _contract(factors, first, second, diagonal)
        return per if per_layer else {"lora": sum(per.values())}

    kernels = blocks.accumulate(model, tokens1, mask1, tokens2, mask2, block=block, names=tuple(sorted(layers)),
                                terms=terms)
    if diagonal:
        kernels = {name: k.mean(axis=-1) for name, k in kernels.items()}
    if per_layer:
        return sum(kernels.values()), kernels
    return jnp.asarray(kernels["lora"], jnp.result_type(*(a for a, _, _ in factors.values())))


@jax.jit(static_argnums=3)
def _contract(factors, first, second, diagonal):
    out = {}
    for name, (a, b, scale) in factors.items():
        # x: (N, T, n), δ: (N, C, T, m); inputs may arrive in a lower precision than the factors.
        dtype = jnp.result_type(a, b, first[name][1])
        x1, d1 = (v.astype(dtype) for v in first[name])
        x2, d2 = (v.astype(dtype) for v in second[name])
        b_term = pair_term(x1 @ a, x2 @ a, d1, d2, diagonal)            # ⟨A x, A x'⟩⟨δ, δ'⟩
        a_term = pair_term(x1, x2, d1 @ b.T, d2 @ b.T, diagonal)        # ⟨x, x'⟩⟨Bᵀδ, Bᵀδ'⟩
        out[name] = scale**2 * (b_term + a_term)
    return out


def lora_ntk(model: nnx.Module, tokens1, mask1, tokens2=None, mask2=None, *, trace_axes=(-1,),
             memory_limit: int | None = None) -> tuple[jax.Array, str]:
    """The LoRA-factor NTK by the faster path, and which: neural-tangents implementation 1 whenever its Jacobians
    fit in memory whole (the LoRA subset is small: on MiniLM-L6 with r 8 on query and value, N = 64, it took 4.6 s
    against the structured kernel's 7.4 s, `benchmarks/minilm_kernels.py`), else the structured kernel in blocks."""
    n1, length = np.shape(tokens1)
    n2 = n1 if tokens2 is None else len(tokens2)
    if jacobian_bytes(model, "lora", n1, n2, length) <= memory.usable(memory_limit):
        k = empirical_ntk(model, tokens1, mask1, tokens2, mask2, subset="lora", trace_axes=trace_axes,
                          memory_limit=memory_limit)
        return k, "neural-tangents implementation 1"
    k = structured_lora_ntk(model, tokens1, mask1, tokens2, mask2, trace_axes=trace_axes, memory_limit=memory_limit)
    return k, "structured"


def path_is(name: str):
    """NNX filter for the one variable at dotted path ``name``."""
    return lambda path, _value: dotted(path) == name


def path_under(prefix: str):
    """NNX filter for every variable whose dotted path starts with ``prefix``."""
    return lambda path, _value: dotted(path).startswith(prefix)


def layer_kernels(model: nnx.Module, layer: str, tokens1, mask1, tokens2=None, mask2=None, *,
                  trace_axes=(-1,)) -> tuple[jax.Array, jax.Array]:
    """Per-layer kernels of paper 1's Lemma 3.1 for the adapted layer ``layer``: ``K_FF^(l)`` w.r.t. its weight
    matrix W0 (bias excluded) and ``K_LoRA^(l)`` w.r.t. its factors A and B.

    Args:
        model: a classifier with LoRA adapters.
        layer: an adapted layer's dotted name (a key of :func:`lorasec.adapters.lora.lora_layers`).
        tokens1: int (N1, L) token ids.
        mask1: bool (N1, L) attention mask.
        tokens2: int (N2, L) token ids, or None for the kernels of ``tokens1`` with itself (N2 = N1).
        mask2: bool (N2, L) attention mask, with ``tokens2``.
        trace_axes: as :func:`empirical_ntk`'s.
    Returns:
        ``(K_FF^(l), K_LoRA^(l))``, each float (N1, N2) with ``trace_axes=(-1,)`` or (N1, N2, C, C) with ``()``.
    """
    if layer not in lora.lora_layers(model):
        raise ValueError(f"layer {layer!r} carries no LoRA adapter; adapted: {sorted(lora.lora_layers(model))}")
    problem = lora.structural_problem(model, "layer_kernels")
    if problem:
        raise ValueError(problem)
    args = (tokens1, mask1, tokens2, mask2)
    full = empirical_ntk(model, *args, subset=path_is(f"{layer}.base.kernel"), trace_axes=trace_axes)
    factors = empirical_ntk(model, *args, subset=path_under(f"{layer}.lora_"), trace_axes=trace_axes)
    return full, factors

"""Empirical neural tangent kernels of lorasec models, with respect to a chosen parameter subset.

Two paths, cross-checked in the tests:

- :func:`empirical_ntk` calls neural-tangents' ``empirical_ntk_fn`` (implementations 1 and 2) on any subset:
  ``"full"`` (every ``nnx.Param`` but LoRA factors: full fine-tuning), ``"lora"`` (the LoRA factors), or any
  NNX filter; optionally in blocks (``nt.batch``) for kernels larger than memory.
- :func:`structured_lora_ntk` builds the LoRA-factor kernel from forward activations and backward signals,
  never forming a Jacobian. For an adapted layer ``h = W0 x + s·B A x`` (peft layout) applied at positions t,
  with ``δ_c = ∂f_c/∂h``, ``a = A x`` and ``g_c = Bᵀ δ_c`` (paper 1, Lemma 3.1, extended past init):

      K((x,c), (x',c')) = s² Σ_layers Σ_{t,t'} [ ⟨a_t, a'_t'⟩⟨δ_{c,t}, δ'_{c',t'}⟩ + ⟨x_t, x'_t'⟩⟨g_{c,t}, g'_{c',t'}⟩ ].

  The first term is the B-gradient kernel, the second the A-gradient kernel (zero at init, where B = 0).

Kernels are returned as (N1, N2, C, C) with ``trace_axes=()`` or (N1, N2) with ``trace_axes=(-1,)``; the traced
kernel follows neural-tangents' convention: the MEAN over the C diagonal entries, not their sum.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lorasec import lora
from lorasec.nt_compat import SUPPORTED_IMPLEMENTATIONS, import_neural_tangents

SUBSETS = ("full", "lora")


def subset_filter(subset):
    """``"full"``: every ``nnx.Param`` except LoRA factors; ``"lora"``: the LoRA factors; else an NNX filter."""
    if subset == "full":
        return nnx.All(nnx.Param, nnx.Not(nnx.LoRAParam))
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
        return nnx.merge(graphdef, p, rest)(packed[:, 0], packed[:, 1].astype(bool))

    return f, params


def empirical_ntk(model: nnx.Module, tokens1, mask1, tokens2=None, mask2=None, *, subset="lora",
                  trace_axes=(-1,), implementation: int = 1, block_size: int = 0) -> jax.Array:
    """neural-tangents' empirical NTK of ``model`` w.r.t. ``subset``; ``block_size > 0`` computes it in
    (block_size × block_size) blocks gathered on the host, so only one block's Jacobians are in memory."""
    if implementation not in SUPPORTED_IMPLEMENTATIONS:
        raise ValueError(f"implementation = {implementation}: must be one of {SUPPORTED_IMPLEMENTATIONS} "
                         f"(see lorasec.nt_compat)")
    nt = import_neural_tangents()
    f, params = model_function(model, subset)
    x1 = pack_inputs(tokens1, mask1)
    x2 = None if tokens2 is None else pack_inputs(tokens2, mask2)
    kernel_fn = jax.jit(nt.empirical_ntk_fn(f, trace_axes=tuple(trace_axes), vmap_axes=0,
                                            implementation=implementation))
    if not block_size:
        return kernel_fn(x1, x2, params)
    # nt.batch cannot take the parameters as an argument (it splits every array keyword), hence our own loop.
    x2 = x1 if x2 is None else x2
    rows = []
    for i in range(0, len(x1), block_size):
        row = [np.asarray(kernel_fn(x1[i:i + block_size], x2[j:j + block_size], params))
               for j in range(0, len(x2), block_size)]
        rows.append(np.concatenate(row, axis=1))
    return jnp.asarray(np.concatenate(rows, axis=0))


def _signals(graphdef, state, tokens, mask):
    """Per adapted layer: its inputs x (T, n) and the backward signals δ (C, T, m) for ONE example."""
    model = nnx.merge(graphdef, state)
    layers = lora.lora_layers(model)
    if any(layer.merged for layer in layers.values()):
        raise ValueError("structured_lora_ntk needs unmerged adapters; call lora.unmerge(model) first")

    def forward(probes):
        inputs: dict[int, jax.Array] = {}
        by_id = {id(layer): probes[name] for name, layer in layers.items()}
        with lora.tap(by_id, inputs):
            logits = model(tokens[None], mask[None])[0]
        return logits, {name: inputs[id(layer)] for name, layer in layers.items()}

    def probe_shapes():
        inputs: dict[int, jax.Array] = {}
        zeros = {id(layer): 0.0 for layer in layers.values()}
        with lora.tap(zeros, inputs):
            model(tokens[None], mask[None])
        return {name: inputs[id(layer)].shape[:-1] + (layer.base.out_features,) for name, layer in layers.items()}

    probes = {name: jnp.zeros(shape, state_dtype(state)) for name, shape in probe_shapes().items()}
    deltas, inputs = jax.jacrev(forward, has_aux=True)(probes)
    out = {}
    for name in layers:
        x, d = inputs[name], deltas[name]
        out[name] = (x.reshape(-1, x.shape[-1]), d.reshape(d.shape[0], -1, d.shape[-1]))
    return out


def state_dtype(state) -> jnp.dtype:
    leaves = [x for x in jax.tree_util.tree_leaves(state) if jnp.issubdtype(x.dtype, jnp.floating)]
    return leaves[0].dtype


def structured_lora_ntk(model: nnx.Module, tokens1, mask1, tokens2=None, mask2=None, *,
                        trace_axes=(-1,)) -> jax.Array:
    """The LoRA-factor NTK from activations and backward signals (module docstring); equals
    ``empirical_ntk(..., subset="lora")``."""
    graphdef, state = nnx.split(model)
    factors = {name: (layer.lora_a[...], layer.lora_b[...], layer.scaling)
               for name, layer in lora.lora_layers(model).items()}
    if not factors:
        raise ValueError("the model has no LoRA layers: apply_lora first")
    per_example = jax.vmap(_signals, in_axes=(None, None, 0, 0))
    tokens1, mask1 = jnp.asarray(tokens1), jnp.asarray(mask1, bool)
    first = jax.jit(per_example, static_argnums=0)(graphdef, state, tokens1, mask1)
    if tokens2 is None:
        second = first
    else:
        second = jax.jit(per_example, static_argnums=0)(graphdef, state, jnp.asarray(tokens2),
                                                         jnp.asarray(mask2, bool))
    return _contract(factors, first, second, tuple(trace_axes))


@jax.jit(static_argnums=3)
def _contract(factors, first, second, trace_axes):
    total = 0.0
    for name, (a, b, scale) in factors.items():
        x1, d1 = first[name]   # x: (N, T, n), δ: (N, C, T, m)
        x2, d2 = second[name]
        a1, a2 = x1 @ a, x2 @ a                      # A x, (N, T, r)
        g1, g2 = d1 @ b.T, d2 @ b.T                  # Bᵀ δ, (N, C, T, r)
        b_term = jnp.einsum("itr,jsr,icto,jdso->ijcd", a1, a2, d1, d2, optimize="optimal")
        a_term = jnp.einsum("itn,jsn,ictr,jdsr->ijcd", x1, x2, g1, g2, optimize="optimal")
        total = total + scale**2 * (b_term + a_term)
    if trace_axes == ():
        return total
    if trace_axes in ((-1,), (2, 3)):
        return jnp.einsum("ijcc->ij", total) / total.shape[-1]
    raise ValueError(f"trace_axes = {trace_axes}: structured kernels support () or (-1,)")

"""The full-fine-tuning NTK of a lorasec model over every parameter, from layer inputs and backward signals.

K_FF(x, x') = Σ_θ ⟨∂f/∂θ (x), ∂f/∂θ (x')⟩ over every weight a classifier has: embeddings (word, position,
segment), every dense kernel and bias (attention, feed-forward, pooler, head) and every LayerNorm's scale and
shift; LoRA factors are not in it. Each module records its input (or ids) and the backward signal at its output
(:mod:`lorasec.models.layers`), and :mod:`lorasec.diagnostics.contractions` turns those into the module's kernel
terms (paper 1, Lemma 3.1, extended from adapted layers to every weight). Examples are taken in blocks, and per
pair of blocks one layer's gradient block at most is formed: the Jacobian (MiniLM-L6: 22.6 M parameters × C × N)
never is. The peak memory is estimated before anything runs, and the call refuses, naming the block size that
fits, when the estimate exceeds the memory available.

Kernels come back as float64 numpy arrays (sums of the model's precision), (N1, N2, C, C) with
``trace_axes=()`` or (N1, N2) with ``trace_axes=(-1,)``, the mean over outputs as neural-tangents traces.
"""

from __future__ import annotations

import functools

import jax
import numpy as np
from flax import nnx

from lorasec.adapters import lora
from lorasec.diagnostics import blocks, contractions
from lorasec.diagnostics.kernel import subset_filter
from lorasec.diagnostics.signals import captured_modules
from lorasec.models.layers import Dense, Embed, LayerNorm


def parameter_modules(model: nnx.Module) -> dict[str, tuple[str, str]]:
    """Every full-fine-tuning parameter's dotted path → (the recording module's signal name, its attribute).
    Refuses a parameter outside lorasec's ``Dense``, ``Embed`` and ``LayerNorm``, which no structured term covers."""
    modules = captured_modules(model)
    out = {}
    for path, _ in nnx.to_flat_state(nnx.state(model, subset_filter("full"))):
        names = [str(p) for p in path]
        owner = names[:-2] if len(names) > 2 and names[-2] == "base" else names[:-1]
        owner_name = ".".join(owner)
        if owner_name not in modules:
            raise ValueError(f"parameter {'.'.join(names)!r} is not in a Dense, Embed or LayerNorm layer of "
                             f"lorasec.models.layers, so the structured full kernel cannot cover it; use "
                             f"kernel.empirical_ntk(subset='full') for this model")
        out[".".join(names)] = (owner_name, names[-1])
    return out


def unsupported(model: nnx.Module) -> str:
    """Why :func:`structured_full_ntk` cannot take this model (empty when it can)."""
    problem = lora.structural_problem(model, "structured_full_ntk")
    if problem:
        return problem
    try:
        parameter_modules(model)
    except ValueError as err:
        return str(err)
    return ""


@functools.partial(jax.jit, static_argnums=4)
def _dense_terms(x1, x2, d1, d2, diagonal):
    return {"kernel": contractions.pair_term(x1, x2, d1, d2, diagonal),
            "bias": contractions.summed_term(d1, d2, diagonal)}


@functools.partial(jax.jit, static_argnums=4)
def _embed_terms(ids1, ids2, d1, d2, diagonal):
    return {"embedding": contractions.embedding_term(ids1, ids2, d1, d2, diagonal)}


@functools.partial(jax.jit, static_argnums=(4, 5))
def _norm_terms(x1, x2, d1, d2, epsilon, diagonal):
    scale, bias = contractions.layer_norm_terms(x1, x2, d1, d2, epsilon, diagonal)
    return {"scale": scale, "bias": bias}


def _module_terms(module, first, second, diagonal):
    (x1, d1), (x2, d2) = first, second
    dtype = d1.dtype
    if isinstance(module, Dense):
        return _dense_terms(x1.astype(dtype), x2.astype(dtype), d1, d2, diagonal)
    if isinstance(module, Embed):
        return _embed_terms(x1, x2, d1, d2, diagonal)
    if isinstance(module, LayerNorm):
        return _norm_terms(x1.astype(dtype), x2.astype(dtype), d1, d2, float(module.epsilon), diagonal)
    raise TypeError(f"no structured kernel term for {type(module).__name__}")  # captured_modules admits no other


def _temporary_bytes(modules, diagonal):
    """The largest temporary a module's terms form for one pair of blocks, as the contractions choose their order."""

    def temporary(name, x, d, block):
        module, (c, t, q) = modules[name], d.shape[1:]
        pairs = c if diagonal else c * c
        gram = block * block * t * t * (1 + pairs)
        if isinstance(module, Dense):
            ordered_by_gram = contractions.gram_order(block, block, t, t, x.shape[-1], q, c, diagonal)
            elements = gram if ordered_by_gram else 2 * block * c * x.shape[-1] * q
        elif isinstance(module, Embed):
            elements = gram
        else:
            elements = 2 * block * c * q
        return elements * d.dtype.itemsize

    return temporary


def estimate_bytes(model: nnx.Module, n1: int, n2: int, length: int, block: int, *, diagonal: bool = True,
                   per_parameter: bool = False) -> int:
    """Estimated peak memory of :func:`structured_full_ntk` on N1 × N2 examples of ``length`` tokens in blocks of
    ``block`` (:func:`lorasec.diagnostics.blocks.estimate_bytes`)."""
    kernels = 1 + (len(parameter_modules(model)) if per_parameter else 0)
    return blocks.estimate_bytes(model, n1, n2, length, block, temporary=_temporary_bytes(captured_modules(model),
                                                                                          diagonal),
                                 kernels=kernels, diagonal=diagonal)


def structured_full_ntk(model: nnx.Module, tokens1, mask1, tokens2=None, mask2=None, *, trace_axes=(-1,),
                        block_size: int | None = None, per_parameter: bool = False, memory_limit: int | None = None):
    """K_FF over every parameter (module docstring), in blocks of ``block_size`` examples (``None``: chosen to fit,
    :func:`lorasec.diagnostics.blocks.block_size_for`; a block that does not fit is refused). With
    ``per_parameter``, also ``{parameter path: its kernel}`` (they sum to K_FF)."""
    diagonal = blocks.diagonal_only(trace_axes)
    reason = unsupported(model)
    if reason:
        raise ValueError(reason)
    owners = parameter_modules(model)
    modules = captured_modules(model)
    n1, length = np.shape(tokens1)
    n2 = n1 if tokens2 is None else len(tokens2)
    block = blocks.block_size_for(
        lambda b: estimate_bytes(model, n1, n2, length, b, diagonal=diagonal, per_parameter=per_parameter),
        max(n1, n2), f"the structured full kernel of {n1} × {n2} examples", block_size, memory_limit)

    def terms(first, second):
        by_module = {name: _module_terms(modules[name], first[name], second[name], diagonal) for name in first}
        # A module the forward pass never calls records nothing: its parameters' gradients are zero.
        per = {path: by_module[owner][attribute] for path, (owner, attribute) in owners.items()
               if owner in by_module}
        return per if per_parameter else {"total": sum(per.values())}

    kernels = blocks.accumulate(model, tokens1, mask1, tokens2, mask2, block=block, terms=terms)
    if diagonal:
        kernels = {key: k.mean(axis=-1) for key, k in kernels.items()}
    if not per_parameter:
        return kernels["total"]
    shape = next(iter(kernels.values())).shape
    per = {path: kernels.get(path, np.zeros(shape)) for path in owners}
    return sum(per.values()), per

"""LoRA adapters for Flax NNX linear layers, and the trainable-parameter filters of each fine-tuning method.

Weight layout: lorasec keeps Flax's ``(in, out)`` kernels, ``y = x @ kernel + bias``. PyTorch/peft store
``W`` as ``(out, in)`` with ``y = W x``, so ``kernel = Wᵀ``. The factors are stored in the same layout:
``lora_a = Aᵀ`` with shape ``(in, r)`` and ``lora_b = Bᵀ`` with shape ``(r, out)``, so that

    kernel_eff = kernel + s · lora_a @ lora_b  =  (W + s · B A)ᵀ,

peft's effective weight exactly, with ``s = alpha / r`` or ``alpha / sqrt(r)`` (rsLoRA). ``B = 0`` at init;
``A`` is drawn with variance ``init_scale / fan_in`` (peft's default, kaiming-uniform with a = sqrt(5), is
``init_scale = 1/3``). The scale s is state (:class:`LoRAScale`, never trained), so a rescale (RoRA's Pt, a scale
sweep) is a state update that reuses the compiled program. ``init='pissa'`` is PiSSA (Meng et al. 2024, eq. 2-3,
peft's scaling convention): with ``W0 = U S Vᵀ``, ``B = U_r √(S_r/s)``, ``A = √(S_r/s) V_rᵀ`` and the frozen
weight becomes the residual ``W0 − s·B A``, so the effective weight at init is W0 exactly.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lorasec.config import AdapterConfig, ConfigError
from lorasec.core.paths import dotted
from lorasec.models.layers import dropout as apply_dropout


class LoRAScale(nnx.Variable):
    """An adapter's scale s (α/r, α/√r, or what a rescale set): state that is not trained."""


class LoRALinear(nnx.Module):
    """``y = base(x) + s · dropout(x) @ lora_a @ lora_b`` around a frozen ``nnx.Linear`` (LoRA, eq. 3 of Hu et al.).

    ``frozen_dropout = p > 0`` is RoRA's Cl part (Luong & Chen 2026): in training the frozen path's output
    ``W_pre x + b`` goes through dropout p, ``h = Dropout_p(W_pre x + b) + s·B A x``; evaluation is unchanged.

    ``dora=True`` is DoRA (Liu et al. 2024, eq. 5): ``W' = m ⊙ (W0 + s·B A) / ‖W0 + s·B A‖`` with the norm taken per
    output unit (peft's per-row norm of the (out, in) matrix) and treated as a constant in the gradient, and a
    trainable magnitude ``m`` initialised to ``‖W0‖``. As in peft the output is
    ``base(x) + (m/‖W'‖ − 1)·W0 x + (m/‖W'‖)·s·B A dropout(x)``, equal to ``W' x + b`` without dropout."""

    def __init__(self, base: nnx.Linear, rank: int, scale: float, *, init: str = "kaiming_uniform",
                 init_scale: float = 1.0 / 3.0, dropout: float = 0.0, frozen_dropout: float = 0.0,
                 dora: bool = False, rngs: nnx.Rngs):
        fan_in, fan_out = base.in_features, base.out_features
        self.base = base
        self.rank = rank
        dtype = base.kernel[...].dtype
        self.scale = LoRAScale(jnp.asarray(scale, dtype))
        self.dropout_rate = dropout
        self.frozen_dropout = frozen_dropout
        self.merged = False
        key = rngs.params()
        b = jnp.zeros((rank, fan_out), dtype)
        if init == "pissa":
            u, s, vt = jnp.linalg.svd(base.kernel[...].T, full_matrices=False)  # W0 = kernelᵀ, (out, in)
            root = jnp.sqrt(s[:rank] / scale)
            a, b = (root[:, None] * vt[:rank]).T, (u[:, :rank] * root[None, :]).T
            base.kernel[...] = base.kernel[...] - scale * (a @ b)
        elif init == "gaussian":
            a = jax.random.normal(key, (fan_in, rank), dtype) * jnp.sqrt(init_scale / fan_in)
        else:
            bound = jnp.sqrt(3.0 * init_scale / fan_in)
            a = jax.random.uniform(key, (fan_in, rank), dtype, -bound, bound)
        self.lora_a = nnx.LoRAParam(a.astype(dtype))
        self.lora_b = nnx.LoRAParam(b.astype(dtype))
        self.dora = dora
        if dora:
            self.magnitude = nnx.LoRAParam(jnp.linalg.norm(base.kernel[...], axis=0))

    def dora_scale(self) -> jax.Array:
        """``m / ‖W0 + s·B A‖`` per output unit (gradient stopped through the norm, as DoRA prescribes)."""
        norm = jnp.linalg.norm(self.base.kernel[...] + self.delta(), axis=0)
        return self.magnitude[...] / jax.lax.stop_gradient(norm)

    def effective_kernel(self) -> jax.Array:
        """The adapted layer's kernel in lorasec's (in, out) layout: ``W0 + s·A B`` or DoRA's ``W'``."""
        kernel = self.base.kernel[...] + self.delta()
        return kernel * self.dora_scale()[None, :] if self.dora else kernel

    def delta(self) -> jax.Array:
        """``s · lora_a @ lora_b``, the update in kernel layout (``(s·B A)ᵀ`` in peft's)."""
        return self.scale[...] * (self.lora_a[...] @ self.lora_b[...])

    def __call__(self, x: jax.Array, rngs: nnx.Rngs | None = None) -> jax.Array:
        y = self.base(x)
        if self.merged:
            return y
        if self.dora:
            scale = self.dora_scale()
            y = y + (scale - 1.0) * (x @ self.base.kernel[...])
        y = apply_dropout(y, self.frozen_dropout, rngs)
        x = apply_dropout(x, self.dropout_rate, rngs)
        a, b = self.lora_a[...], self.lora_b[...]
        if self.base.dtype is not None:  # bfloat16 compute (lorasec.models.layers.set_compute_dtype)
            x, a, b = x.astype(self.base.dtype), a.astype(self.base.dtype), b.astype(self.base.dtype)
        # Tokens on one axis, so the factors' gradients contract a single axis: contracting (batch, length), XLA's
        # CPU backend copied the output gradient transposed and ran a much slower product.
        rows = x.reshape(-1, x.shape[-1])
        update = (self.scale[...].astype(x.dtype) * ((rows @ a) @ b)).reshape(*x.shape[:-1], b.shape[-1])
        return y + (scale * update if self.dora else update)


def _matches(name: str, pattern: str) -> bool:
    """peft's ``target_modules`` rule: the full dotted name equals the pattern or ends in ``.pattern``;
    a pattern starting ``re:`` is a regular expression matched against the whole name."""
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], name) is not None
    return name == pattern or name.endswith("." + pattern)


def linear_layers(model: nnx.Module) -> dict[str, nnx.Linear]:
    return {dotted(path): m for path, m in nnx.iter_modules(model) if isinstance(m, nnx.Linear)}


def select_targets(model: nnx.Module, targets: tuple[str, ...], exclude: tuple[str, ...] = ()) -> list[str]:
    """Names of the linear layers matched by ``targets`` (``all-linear`` = every one outside ``exclude``)."""
    names = [n for n in linear_layers(model) if not any(_matches(n, p) for p in exclude)]
    chosen = set()
    for pattern in targets:
        hits = names if pattern == "all-linear" else [n for n in names if _matches(n, pattern)]
        if not hits:
            raise ConfigError(f"adapter.targets = {list(targets)!r}: {pattern!r} matches no linear layer; "
                              f"layers: {', '.join(names)}")
        chosen.update(hits)
    return [n for n in names if n in chosen]


def _set_child(model: nnx.Module, name: str, module: nnx.Module) -> None:
    *parents, last = name.split(".")
    node = model
    for part in parents:
        node = node[int(part)] if part.isdigit() else getattr(node, part)
    if last.isdigit():
        node[int(last)] = module
    else:
        setattr(node, last, module)


def apply_lora(model: nnx.Module, cfg: AdapterConfig, *, rngs: nnx.Rngs) -> list[str]:
    """Wrap each target ``nnx.Linear`` of ``model`` in place with :class:`LoRALinear`; return their names.

    Args:
        model: the NNX model, edited in place.
        cfg: the adapter: ``targets`` (peft patterns, ``re:`` regexes or ``all-linear``), ``modules_to_save``
            (never wrapped), ``rank``, the scale ``scaling``, ``init``, ``init_scale``, ``dropout``, ``rora_cl``
            and ``dora``.
        rngs: NNX rngs; ``rngs.params()`` draws the A factors.
    Returns:
        The wrapped layers' dotted names, in the model's order.
    """
    layers = linear_layers(model)
    modules = [dotted(path) for path, _ in nnx.iter_modules(model) if path]
    for pattern in cfg.modules_to_save:
        if not any(_matches(name, pattern) for name in modules):
            raise ConfigError(f"adapter.modules_to_save = {list(cfg.modules_to_save)!r}: {pattern!r} matches no "
                              f"module, so nothing of it would train; top-level modules: "
                              f"{', '.join(n for n in modules if '.' not in n)}")
    names = select_targets(model, cfg.targets, exclude=cfg.modules_to_save)
    for name in names:
        base = layers[name]
        limit = min(base.in_features, base.out_features)
        if cfg.rank > limit:
            raise ConfigError(f"adapter.rank = {cfg.rank}: above min(in, out) = {limit} of layer {name}")
        _set_child(model, name, LoRALinear(base, cfg.rank, cfg.scaling, init=cfg.init, init_scale=cfg.init_scale,
                                           dropout=cfg.dropout, frozen_dropout=cfg.rora_cl, dora=cfg.dora,
                                           rngs=rngs))
    return names


def lora_layers(model: nnx.Module) -> dict[str, LoRALinear]:
    """Every :class:`LoRALinear` adapter of ``model``, by the dotted name of the layer it wraps.

    Args:
        model: an NNX model, usually after :func:`apply_lora`.
    Returns:
        ``{dotted name: LoRALinear}`` in the model's order; empty for a model without adapters.
    """
    return {dotted(path): m for path, m in nnx.iter_modules(model) if isinstance(m, LoRALinear)}


def structural_problem(model: nnx.Module, what: str) -> str:
    """Why ``what`` (a computation that reads the adapters' factors and base weights apart) cannot take ``model``:
    merged adapters, or DoRA's rescaled ones; empty when it can."""
    layers = lora_layers(model).values()
    if any(layer.merged for layer in layers):
        return f"{what} needs unmerged adapters (the base weights are separate parameters); call lora.unmerge(model)"
    if any(layer.dora for layer in layers):
        return f"{what} covers plain LoRA; use kernel.empirical_ntk for DoRA adapters"
    return ""


def merge(model: nnx.Module) -> None:
    """Fold every LoRA update into its base kernel (inference speed; the factors are kept for unmerge)."""
    for name, layer in lora_layers(model).items():
        if layer.dora:
            raise ValueError(f"layer {name} uses DoRA, whose merge rescales W0 and cannot be undone exactly; "
                             f"evaluate it unmerged or read layer.effective_kernel()")
        if not layer.merged:
            layer.base.kernel[...] = layer.base.kernel[...] + layer.delta()
            layer.merged = True


def unmerge(model: nnx.Module) -> None:
    """Undo :func:`merge` (exact up to float rounding of one add and one subtract)."""
    for layer in lora_layers(model).values():
        if layer.merged:
            layer.base.kernel[...] = layer.base.kernel[...] - layer.delta()
            layer.merged = False


def path_filter(patterns: tuple[str, ...]):
    """An NNX filter selecting variables whose module path matches one of ``patterns`` (peft rule)."""

    def predicate(path, _value) -> bool:
        name = dotted(path)
        prefixes = [".".join(name.split(".")[:k]) for k in range(1, name.count(".") + 1)]
        return any(_matches(prefix, p) for prefix in prefixes for p in patterns)

    return predicate


# Every parameter but LoRA factors: what full fine-tuning trains, and the weights of a model's full NTK.
BASE_PARAMS = nnx.All(nnx.Param, nnx.Not(nnx.LoRAParam))


def trainable_filter(cfg: AdapterConfig):
    """Which variables train: every ``nnx.Param`` for full fine-tuning; for LoRA the factors (``lora_b`` only
    with ``freeze_a``) plus the ``modules_to_save`` (the new classification head)."""
    if cfg.method == "full":
        return BASE_PARAMS
    factors = nnx.LoRAParam
    if cfg.freeze_a:
        factors = nnx.All(nnx.LoRAParam, nnx.Not(nnx.PathContains("lora_a")))
    if not cfg.modules_to_save:
        return factors
    return nnx.Any(factors, nnx.All(nnx.Param, path_filter(cfg.modules_to_save)))


def count_params(state) -> int:
    return int(sum(x.size for x in jax.tree_util.tree_leaves(state)))


def set_scales(model: nnx.Module, scales: dict[str, float] | float) -> None:
    """Set adapter scales in place: one value for every adapter, or ``{layer name: s}``.

    Args:
        model: a model with LoRA adapters, edited in place (a state update: nothing recompiles).
        scales: one scale s for every adapter, or ``{name: s}`` keyed as :func:`lora_layers`; adapters it does not
            name keep their scale. Cast to each adapter's dtype.
    Raises:
        ValueError: ``scales`` names a layer that carries no adapter.
    """
    layers = lora_layers(model)
    unknown = sorted(set(scales) - set(layers)) if isinstance(scales, dict) else []
    if unknown:
        raise ValueError(f"set_scales: {unknown[0]!r} carries no adapter; adapted layers: {', '.join(layers)}")
    for name, layer in layers.items():
        value = scales if not isinstance(scales, dict) else scales.get(name)
        if value is not None:
            layer.scale[...] = jnp.asarray(value, layer.scale[...].dtype)


def scales(model: nnx.Module) -> dict[str, float]:
    return {name: float(layer.scale[...]) for name, layer in lora_layers(model).items()}


def set_rank(model: nnx.Module, rank: int) -> None:
    """Give every LoRA factor pair ``rank`` columns of A / rows of B: zeros appended, or removed (which must be
    zeros). Zero-padded factors stay exactly zero under training (their gradients and AdamW updates are 0), so a
    rank-r run padded to R trains as the rank-r run, and runs of several ranks can share one program."""
    for name, layer in lora_layers(model).items():
        a, b = np.asarray(layer.lora_a[...]), np.asarray(layer.lora_b[...])
        current = a.shape[1]
        if rank >= current:
            a = np.pad(a, ((0, 0), (0, rank - current)))
            b = np.pad(b, ((0, rank - current), (0, 0)))
        else:
            if np.any(a[:, rank:]) or np.any(b[rank:]):
                raise RuntimeError(f"{name}: the padding of a rank-{rank} adapter is not zero after training "
                                   f"(a lorasec bug)")
            a, b = a[:, :rank], b[:rank]
        layer.lora_a.set_value(jnp.asarray(a))
        layer.lora_b.set_value(jnp.asarray(b))
        layer.rank = rank

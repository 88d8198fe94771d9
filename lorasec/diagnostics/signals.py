"""Layer inputs and backward signals of any lorasec model, read through NNX's capture machinery.

Every model's linear layers are :class:`lorasec.models.layers.Dense`, which under :func:`flax.nnx.capture` sows
its input ``x`` and exposes its output ``h`` to a zero perturbation (its ``Embed`` and ``LayerNorm`` layers do the
same, read by :func:`module_signals`); the gradient with respect to that
perturbation is the backward signal ``δ_c = ∂f_c/∂h``. The output perturbed is the frozen path's (``base``) for an
adapted layer, and an adapter adds its update to that output, so ``δ`` is the adapted layer's signal as well.
Names are the layers' dotted paths with an adapter's ``.base`` dropped, as :func:`lorasec.adapters.lora.lora_layers`
names them. Dropout is off (no keys).

Examples do not interact in lorasec's models (no batch statistics; attention stays within an example), so
``∂(Σ_i f_c(x_i))/∂h_j = ∂f_c(x_j)/∂h_j``: one batched forward and C vector-Jacobian products give every example's
signals, instead of N·C backward passes.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from lorasec.core.paths import dotted
from lorasec.models.layers import Dense, Embed, LayerNorm


def _forward(model, tokens, mask):
    return model(tokens, mask)


def _layer_name(path: tuple) -> str:
    name = dotted(path[:-1])
    return name[: -len(".base")] if name.endswith(".base") else name


@functools.partial(jax.jit, static_argnums=(0, 4))
def _signals(graphdef, state, tokens, mask, names: tuple[str, ...] | None):
    _, zeros = nnx.capture(_forward, nnx.Perturbation)(nnx.merge(graphdef, state), tokens, mask)

    def run(perturbations):
        return nnx.capture(_forward, nnx.Intermediate, init=perturbations)(nnx.merge(graphdef, state), tokens, mask)

    logits, pullback, captured = jax.vjp(run, zeros, has_aux=True)
    num_classes = logits.shape[-1]
    cotangents = jnp.broadcast_to(jnp.eye(num_classes, dtype=logits.dtype)[:, None, :],
                                  (num_classes, *logits.shape))
    (deltas,) = jax.vmap(pullback)(cotangents)  # every leaf (C, N, *positions, m)
    sown = {_layer_name(path): value.get_value() for path, value in nnx.to_flat_state(captured)}
    repeated = [name for name, calls in sown.items() if len(calls) != 1]
    if repeated:  # a perturbation would sum the calls' signals while only one input is kept
        raise ValueError(f"layer {repeated[0]!r} is called {len(sown[repeated[0]])} times in one forward pass; "
                         f"the structured signals need each Dense layer called once")
    inputs = {name: calls[0] for name, calls in sown.items()}
    grads = {_layer_name(path): value.get_value() for path, value in nnx.to_flat_state(deltas)}
    out = {}
    for name, x in inputs.items():
        if names is not None and name not in names:
            continue
        d, n = grads[name], x.shape[0]
        x = x.reshape(n, -1) if jnp.issubdtype(x.dtype, jnp.integer) else x.reshape(n, -1, x.shape[-1])
        out[name] = (x, jnp.moveaxis(d, 0, 1).reshape(n, num_classes, -1, d.shape[-1]))
    return out


def captured_modules(model: nnx.Module) -> dict[str, nnx.Module]:
    """Every module that records signals (lorasec's ``Dense``, ``Embed``, ``LayerNorm``), by signal name."""
    return {_layer_name((*path, "")): module for path, module in nnx.iter_modules(model)
            if isinstance(module, (Dense, Embed, LayerNorm))}


def module_signals(model: nnx.Module, tokens, mask, names=None) -> dict[str, tuple[jax.Array, jax.Array]]:
    """Per recording module of ``model`` (or the ``names`` given): its inputs (N, T, n), or its ids (N, T) for an
    embedding, and the logits' backward signals δ (N, C, T, m) at its output; T = 1 for layers applied once per
    example."""
    graphdef, state = nnx.split(model)
    chosen = None if names is None else tuple(sorted(names))
    return _signals(graphdef, state, jnp.asarray(tokens), jnp.asarray(mask, bool), chosen)


def layer_signals(model: nnx.Module, tokens, mask, names=None) -> dict[str, tuple[jax.Array, jax.Array]]:
    """Per linear layer of ``model`` (or the ``names`` given): its inputs x (N, T, n) and the logits' backward
    signals δ (N, C, T, m); T = 1 for layers applied once per example.

    Args:
        model: a lorasec classifier ``model(tokens, mask) -> logits`` (N, C) built of ``Dense`` layers.
        tokens: int (N, L) token ids.
        mask: bool (N, L) attention mask.
        names: layer names (dotted paths, an adapter's ``.base`` dropped); None for every ``Dense`` layer.
    Returns:
        ``{name: (x, δ)}``: x float (N, T, n), the layer's inputs, and δ (N, C, T, m) in the logits' dtype,
        ``∂f_c/∂h`` at its output; T = L for per-token layers.
    """
    if names is None:
        names = [name for name, module in captured_modules(model).items() if isinstance(module, Dense)]
    graphdef, state = nnx.split(model)
    chosen = tuple(sorted(names))
    signals = _signals(graphdef, state, jnp.asarray(tokens), jnp.asarray(mask, bool), chosen)
    missing = set(chosen) - set(signals)
    if missing:
        raise ValueError(f"no Dense layer named {sorted(missing)[0]!r} (only lorasec.models.layers.Dense records "
                         f"signals); layers: {', '.join(sorted(signals))}")
    return signals

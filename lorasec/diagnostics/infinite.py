"""Infinite-width kernels through ``neural_tangents.stax``, and their finite-width estimates.

``stax_mlp(depth, width, ...)`` mirrors lorasec's MLP hidden stack (Dense + ReLU per hidden layer, a Dense readout)
in the standard or the NTK parameterisation. ``stax_encoder(...)`` describes lorasec's transformer classifier as far as
stax expresses it (see its docstring for what differs). Each ``kernel_fn`` gives the analytic NNGP and NTK;
:func:`monte_carlo_kernels` averages empirical kernels of finite networks drawn at init and :func:`finite_kernels`
returns each draw's kernels, to measure how far one finite network is from the limit (neural-tangents' check).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import jax
import jax.numpy as jnp

from lorasec.core import keys
from lorasec.diagnostics.nt_compat import import_neural_tangents

PARAMETERIZATIONS = ("ntk", "standard")


@dataclass(frozen=True)
class StaxNetwork:
    init_fn: object
    apply_fn: object
    kernel_fn: object


def stax_mlp(depth: int, width: int, num_outputs: int, *, parameterization: str = "ntk", w_std: float = 1.5,
        b_std: float = 0.05) -> StaxNetwork:
    """``depth`` hidden Dense(width)+ReLU layers and a Dense(num_outputs) readout.

    Args:
        depth: number of hidden layers.
        width: hidden width of the finite networks.
        num_outputs: C, the readout's width.
        parameterization: ``"ntk"`` or ``"standard"``.
        w_std: weight standard deviation of every Dense layer.
        b_std: bias standard deviation of every Dense layer.
    Returns:
        :class:`StaxNetwork` ``(init_fn, apply_fn, kernel_fn)`` taking float (N, d) inputs to (N, C) outputs;
        ``kernel_fn`` is jitted with ``get`` static.
    """
    if parameterization not in PARAMETERIZATIONS:
        raise ValueError(f"parameterization = {parameterization!r}: must be one of {', '.join(PARAMETERIZATIONS)}")
    stax = import_neural_tangents().stax
    layers = []
    for _ in range(depth):
        layers += [stax.Dense(width, W_std=w_std, b_std=b_std, parameterization=parameterization), stax.Relu()]
    layers.append(stax.Dense(num_outputs, W_std=w_std, b_std=b_std, parameterization=parameterization))
    init_fn, apply_fn, kernel_fn = stax.serial(*layers)
    return StaxNetwork(init_fn, apply_fn, jax.jit(kernel_fn, static_argnames="get"))


def stax_encoder(num_layers: int, width: int, num_classes: int, *, ff_ratio: int = 4, parameterization: str = "ntk",
            w_std: float = 1.0, b_std: float = 0.05) -> StaxNetwork:
    """lorasec's ``TransformerClassifier`` (post-LN BERT layers, mean pooling, linear head) as a stax network.

    Input: one-hot tokens concatenated with one-hot positions, shape (N, T, vocab + T), so the first Dense is the
    sum of word and position embeddings. Each layer: ``LN(x + Attn(x))`` then ``LN(x + W2·GELU(W1·x))`` with
    ``d_ff = ff_ratio·width``; then the mean over positions and a Dense head. What differs from lorasec's model:
    attention is neural-tangents' tractable variant (query and key weights tied, logits scaled by ``1/width``
    instead of ``1/√d_head``, one head, always NTK-parameterised; softmax attention with independent Q, K and
    ``1/√d`` scaling has no closed-form limit), LayerNorms carry no gain or bias, positions are all tokens (no
    padding mask), and there is no segment embedding or dropout.

    Args:
        num_layers: encoder layers.
        width: the model width (embedding, attention and residual stream).
        num_classes: C, the head's width.
        ff_ratio: feed-forward width over ``width``.
        parameterization: ``"ntk"`` or ``"standard"`` for the Dense layers (attention is always NTK).
        w_std: weight standard deviation of every layer.
        b_std: bias standard deviation.
    Returns:
        :class:`StaxNetwork` taking float (N, T, vocab + T) inputs (:func:`stax_inputs`) to (N, C) outputs;
        ``kernel_fn`` is jitted with ``get`` static.
    """
    if parameterization not in PARAMETERIZATIONS:
        raise ValueError(f"parameterization = {parameterization!r}: must be one of {', '.join(PARAMETERIZATIONS)}")
    stax = import_neural_tangents().stax

    def dense(out):
        return stax.Dense(out, W_std=w_std, b_std=b_std, parameterization=parameterization)

    def residual(block):
        return stax.serial(stax.FanOut(2), stax.parallel(stax.Identity(), block), stax.FanInSum(),
                           stax.LayerNorm(axis=-1))

    # neural-tangents warns, on every call, of what this docstring states: tied query/key weights, and residual
    # sums that are exact because each branch ends in a zero-mean random layer.
    warnings.filterwarnings("ignore", message="Linear scaling attention used", module="neural_tangents")
    warnings.filterwarnings("ignore", message="`FanIn` layers assume independent", module="neural_tangents")
    attention = stax.GlobalSelfAttention(width, width, width, n_heads=1, linear_scaling=True, W_key_std=w_std,
                                         W_value_std=w_std, W_query_std=w_std, W_out_std=w_std, b_std=b_std)
    feed_forward = stax.serial(dense(ff_ratio * width), stax.Gelu(approximate=False), dense(width))
    layers = [dense(width), stax.LayerNorm(axis=-1)]
    for _ in range(num_layers):
        layers += [residual(attention), residual(feed_forward)]
    layers += [stax.GlobalAvgPool(), dense(num_classes)]
    init_fn, apply_fn, kernel_fn = stax.serial(*layers)
    return StaxNetwork(init_fn, apply_fn, jax.jit(kernel_fn, static_argnames="get"))


def encoder_memory_bytes(num_layers: int, width: int, examples: int, length: int, vocab: int, *,
                         num_classes: int = 2, ff_ratio: int = 4) -> int:
    """A lower bound on the larger working set of :func:`stax_encoder`'s kernels, from shapes: one finite network's
    Jacobian and its contraction (N · C · P parameters, float32, twice), or the limit's position-pair covariances
    (N² T² float32 entries, eight arrays live through a layer)."""
    params = (vocab + length + 1) * width + num_layers * (4 + 2 * ff_ratio) * width * width + (width + 1) * num_classes
    finite = 2 * examples * num_classes * params * 4
    analytic = 8 * examples * examples * length * length * 4
    return max(finite, analytic)


def stax_inputs(tokens, vocab_size: int):
    """``stax_encoder``'s input: one-hot tokens (N, T) concatenated with one-hot positions, (N, T, vocab + T).

    Args:
        tokens: int (N, T) token ids, each below ``vocab_size``.
        vocab_size: V, the width of the token one-hots.
    Returns:
        float32 (float64 under x64) (N, T, V + T) input of :func:`stax_encoder`: token one-hots, then positions'.
    """
    tokens = jnp.asarray(tokens)
    positions = jnp.broadcast_to(jnp.eye(tokens.shape[1]), (*tokens.shape, tokens.shape[1]))
    return jnp.concatenate([jax.nn.one_hot(tokens, vocab_size), positions], axis=-1)


def finite_kernels(network: StaxNetwork, x1, *, draws: int = 4, seed: int = 0) -> dict:
    """The empirical NNGP (output Gram per output) and NTK (traced over outputs) of ``draws`` finite networks at
    init, each (draws, N, N); the network's own ``width`` sets their size.

    Args:
        network: a :class:`StaxNetwork` (:func:`stax_mlp`, :func:`stax_encoder`).
        x1: float (N, ...) inputs of the network.
        draws: number of networks drawn.
        seed: seed of the draws' initialisations.
    Returns:
        ``{"nngp": (draws, N, N), "ntk": (draws, N, N)}``: per draw ``f fᵀ / C`` of the (N, C) outputs f, and the
        NTK averaged over the C outputs (neural-tangents' ``trace_axes=(-1,)``), as :func:`infinite_kernels`.
    """
    nt = import_neural_tangents()
    ntk_fn = jax.jit(nt.empirical_ntk_fn(network.apply_fn, trace_axes=(-1,), implementation=1))
    nngp, ntk = [], []
    for draw in range(draws):
        _, params = network.init_fn(keys.key(seed, "monte_carlo", draw), x1.shape)
        out = network.apply_fn(params, x1)
        nngp.append(out @ out.T / out.shape[-1])
        ntk.append(ntk_fn(x1, None, params))
    return {"nngp": jnp.stack(nngp), "ntk": jnp.stack(ntk)}


def relative_error(finite, limit) -> jax.Array:
    """``‖K − K_∞‖_F / ‖K_∞‖_F`` for one kernel or a stack of them (the leading axis).

    Args:
        finite: float (N1, N2) kernel K, or a (draws, N1, N2) stack (:func:`finite_kernels`').
        limit: float (N1, N2) limit K_∞ (:func:`infinite_kernels`').
    Returns:
        Float array: () for one kernel, (draws,) for a stack.
    """
    finite = jnp.asarray(finite)
    axes = (-2, -1)
    return jnp.linalg.norm(finite - limit, axis=axes) / jnp.linalg.norm(limit)


def infinite_kernels(network: StaxNetwork, x1, x2=None) -> dict:
    """Infinite-width NNGP and NTK (per output, i.e. traced over the output axis).

    Args:
        network: a :class:`StaxNetwork`.
        x1: float (N1, ...) inputs.
        x2: float (N2, ...) inputs, or None for ``x1`` with itself (N2 = N1).
    Returns:
        ``{"nngp": (N1, N2), "ntk": (N1, N2)}`` float arrays.
    """
    kernels = network.kernel_fn(x1, x2, get=("nngp", "ntk"))
    return {"nngp": kernels.nngp, "ntk": kernels.ntk}


def monte_carlo_kernels(network: StaxNetwork, x1, x2=None, *, samples: int = 64, seed: int = 0) -> dict:
    """Average over ``samples`` random finite networks of their empirical NNGP and NTK (same conventions).

    Args:
        network: a :class:`StaxNetwork`.
        x1: float (N1, ...) inputs.
        x2: float (N2, ...) inputs, or None for ``x1`` with itself (N2 = N1).
        samples: number of networks averaged.
        seed: seed of their initialisations.
    Returns:
        ``{"nngp": (N1, N2), "ntk": (N1, N2)}`` float arrays, each averaged over the C outputs.
    """
    nt = import_neural_tangents()
    fn = nt.monte_carlo_kernel_fn(network.init_fn, network.apply_fn, keys.key(seed, "monte_carlo"), samples,
                                  implementation=1, trace_axes=(-1,))
    kernels = fn(x1, x2, get=("nngp", "ntk"))
    return {"nngp": kernels.nngp, "ntk": kernels.ntk}

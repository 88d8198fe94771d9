"""Infinite-width kernels of MLPs through ``neural_tangents.stax``, and their finite-width Monte-Carlo estimates.

``mlp(depth, width, ...)`` mirrors lorasec's MLP hidden stack (Dense + ReLU per hidden layer, a Dense readout)
in the standard or the NTK parameterisation; its ``kernel_fn`` gives the analytic NNGP and NTK, and
:func:`monte_carlo` averages empirical kernels of finite networks drawn at init (neural-tangents' own check
that finite networks converge to the analytic limit).
"""

from __future__ import annotations

from dataclasses import dataclass

import jax

from lorasec.core import keys
from lorasec.diagnostics.nt_compat import import_neural_tangents

PARAMETERIZATIONS = ("ntk", "standard")


@dataclass(frozen=True)
class StaxNetwork:
    init_fn: object
    apply_fn: object
    kernel_fn: object


def mlp(depth: int, width: int, num_outputs: int, *, parameterization: str = "ntk", w_std: float = 1.5,
        b_std: float = 0.05) -> StaxNetwork:
    """``depth`` hidden Dense(width)+ReLU layers and a Dense(num_outputs) readout."""
    if parameterization not in PARAMETERIZATIONS:
        raise ValueError(f"parameterization = {parameterization!r}: must be one of {', '.join(PARAMETERIZATIONS)}")
    stax = import_neural_tangents().stax
    layers = []
    for _ in range(depth):
        layers += [stax.Dense(width, W_std=w_std, b_std=b_std, parameterization=parameterization), stax.Relu()]
    layers.append(stax.Dense(num_outputs, W_std=w_std, b_std=b_std, parameterization=parameterization))
    init_fn, apply_fn, kernel_fn = stax.serial(*layers)
    return StaxNetwork(init_fn, apply_fn, jax.jit(kernel_fn, static_argnames="get"))


def analytic(network: StaxNetwork, x1, x2=None) -> dict:
    """Infinite-width NNGP and NTK (per output, i.e. traced over the output axis)."""
    kernels = network.kernel_fn(x1, x2, get=("nngp", "ntk"))
    return {"nngp": kernels.nngp, "ntk": kernels.ntk}


def monte_carlo(network: StaxNetwork, x1, x2=None, *, samples: int = 64, seed: int = 0) -> dict:
    """Average over ``samples`` random finite networks of their empirical NNGP and NTK (same conventions)."""
    nt = import_neural_tangents()
    fn = nt.monte_carlo_kernel_fn(network.init_fn, network.apply_fn, keys.key(seed, "monte_carlo"), samples,
                                  implementation=1, trace_axes=(-1,))
    kernels = fn(x1, x2, get=("nngp", "ntk"))
    return {"nngp": kernels.nngp, "ntk": kernels.ntk}

"""Infinite-width stax kernels against Monte-Carlo averages of finite networks (neural-tangents' own check)."""

import jax
import jax.numpy as jnp
import pytest

from lorasec.diagnostics import infinite


def _error(a, b):
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(a))


@pytest.mark.parametrize("parameterization", infinite.PARAMETERIZATIONS)
def test_monte_carlo_approaches_the_analytic_kernels(parameterization):
    x1 = jax.random.normal(jax.random.key(0), (5, 8))
    x2 = jax.random.normal(jax.random.key(1), (4, 8))
    network = infinite.mlp(2, 256, 32, parameterization=parameterization)
    exact = infinite.analytic(network, x1, x2)
    estimate = infinite.monte_carlo(network, x1, x2, samples=32)
    # 32 networks × 32 outputs: sampling error of a few percent (measured 0.07 NNGP, 0.03 NTK).
    assert _error(exact["nngp"], estimate["nngp"]) < 0.15
    assert _error(exact["ntk"], estimate["ntk"]) < 0.08
    # A different prior (W_std 1.0 instead of 1.5) is far off: the check can fail.
    other = infinite.analytic(infinite.mlp(2, 256, 32, parameterization=parameterization, w_std=1.0), x1, x2)
    assert _error(other["ntk"], estimate["ntk"]) > 0.3


def test_bad_parameterization():
    with pytest.raises(ValueError, match="parameterization = 'mup'"):
        infinite.mlp(1, 8, 1, parameterization="mup")

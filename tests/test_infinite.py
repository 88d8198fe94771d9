"""Infinite-width stax kernels against Monte-Carlo averages of finite networks (neural-tangents' own check)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lorasec.diagnostics import infinite


def _error(a, b):
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(a))


@pytest.mark.parametrize("parameterization", infinite.PARAMETERIZATIONS)
def test_monte_carlo_approaches_the_analytic_kernels(parameterization):
    x1 = jax.random.normal(jax.random.key(0), (5, 8))
    x2 = jax.random.normal(jax.random.key(1), (4, 8))
    network = infinite.stax_mlp(2, 256, 32, parameterization=parameterization)
    exact = infinite.infinite_kernels(network, x1, x2)
    estimate = infinite.monte_carlo_kernels(network, x1, x2, samples=32)
    # 32 networks × 32 outputs: sampling error of a few percent (measured 0.07 NNGP, 0.03 NTK).
    assert _error(exact["nngp"], estimate["nngp"]) < 0.15
    assert _error(exact["ntk"], estimate["ntk"]) < 0.08
    # A different prior (W_std 1.0 instead of 1.5) is far off: the check can fail.
    other = infinite.infinite_kernels(infinite.stax_mlp(2, 256, 32, parameterization=parameterization, w_std=1.0), x1, x2)
    assert _error(other["ntk"], estimate["ntk"]) > 0.3


def test_bad_parameterization():
    with pytest.raises(ValueError, match="parameterization = 'mup'"):
        infinite.stax_mlp(1, 8, 1, parameterization="mup")


def _tokens(seed, n=5, length=6, vocab=12):
    tokens = jax.random.randint(jax.random.key(seed), (n, length), 0, vocab)
    return infinite.stax_inputs(tokens, vocab)


@pytest.mark.slow
@pytest.mark.parametrize("parameterization", infinite.PARAMETERIZATIONS)
def test_encoder_kernels_match_wide_finite_encoders_within_their_standard_error(parameterization):
    x = _tokens(0)
    network = infinite.stax_encoder(1, 256, 4, parameterization=parameterization)
    exact = infinite.infinite_kernels(network, x)
    finite = infinite.finite_kernels(network, x, draws=24)
    for name in ("nngp", "ntk"):
        draws = np.asarray(finite[name], np.float64)
        mean, limit = draws.mean(0), np.asarray(exact[name], np.float64)
        standard_error = np.linalg.norm(draws.std(0, ddof=1) / np.sqrt(len(draws)))
        # Measured (ntk parameterisation): NNGP 0.20 against a standard error of 0.13 (relative), NTK 0.010 / 0.012.
        assert np.linalg.norm(mean - limit) <= 3 * standard_error, name
    # A network of another prior is many standard errors away: the check can fail.
    other = infinite.infinite_kernels(infinite.stax_encoder(1, 256, 4, parameterization=parameterization, w_std=1.5), x)
    draws = np.asarray(finite["ntk"], np.float64)
    standard_error = np.linalg.norm(draws.std(0, ddof=1) / np.sqrt(len(draws)))
    assert np.linalg.norm(draws.mean(0) - np.asarray(other["ntk"])) > 10 * standard_error


@pytest.mark.slow
def test_encoder_ntk_of_one_network_approaches_the_limit_with_width():
    x = _tokens(1)
    errors = {}
    for width in (16, 256):
        network = infinite.stax_encoder(1, width, 2)
        errors[width] = float(infinite.relative_error(infinite.finite_kernels(network, x, draws=6)["ntk"],
                                                      infinite.infinite_kernels(network, x)["ntk"]).mean())
    # Fluctuations of a finite NTK shrink like 1/sqrt(width): a 16x wider network is about 4x closer.
    assert errors[256] < errors[16] / 2, errors


def test_one_hot_tokens_are_word_and_position_indicators():
    x = infinite.stax_inputs(jnp.array([[3, 0]]), 4)
    assert x.shape == (1, 2, 6)
    assert jnp.array_equal(x[0], jnp.array([[0, 0, 0, 1, 1, 0], [1, 0, 0, 0, 0, 1]], dtype=x.dtype))


@pytest.mark.slow
def test_infinite_command_writes_the_convergence_report(tmp_path, capsys):
    from lorasec.cli import main

    assert main(["infinite", "--out", str(tmp_path), "--widths", "8", "64", "--draws", "3", "--n", "4"]) == 0
    report = json.loads((tmp_path / "infinite.json").read_text())
    assert report["widths"] == [8, 64] and np.asarray(report["errors"]).shape == (2, 3) and "devices" in report["made"]
    assert report["mean"][1] < report["mean"][0]   # 8x wider: about 2.8x closer
    assert (tmp_path / "encoder_convergence.png").stat().st_size > 0 and (tmp_path / "encoder_convergence.pdf").exists()
    assert "fitted slope" in capsys.readouterr().out


@pytest.mark.parametrize("args, field", [(["--widths", "64", "32"], "--widths"), (["--widths", "16"], "--widths"),
                                         (["--draws", "1"], "--draws"), (["--widths", "16", "8192"], "--widths")])
def test_infinite_command_refuses_bad_arguments(tmp_path, capsys, args, field):
    from lorasec.cli import main

    assert main(["infinite", "--out", str(tmp_path), *args]) == 2
    err = capsys.readouterr().err
    assert f"infinite {field}" in err and "Traceback" not in err


def test_infinite_command_refuses_kernels_larger_than_memory(tmp_path, capsys):
    """N² T² covariances of 2,048 sentences of 512 tokens (8.8 TB): refused in one line before anything starts."""
    from lorasec.cli import main

    assert infinite.encoder_memory_bytes(1, 64, 2048, 512, 16) > 2**40
    assert main(["infinite", "--out", str(tmp_path / "inf"), "--n", "2048", "--length", "512"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "lower --n, --length or the largest --widths" in err
    assert not (tmp_path / "inf").exists()

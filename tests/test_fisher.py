"""Fisher information: the NTK-dual spectrum equals the explicit P×P Fisher's non-zero spectrum (Theorem 2.2),
for the true and the empirical Fisher; Hutchinson and SLQ estimates fall within their error bars of the exact
values; spectrum summaries behave as defined."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lorasec.adapters import lora
from lorasec.config import AdapterConfig, ModelConfig
from lorasec.diagnostics import fisher, information, kernel
from lorasec.models import Architecture, build_classifier

N, C = 8, 3
LABELS = np.array([0, 1, 2, 0, 1, 2, 0, 1])


def _setup(subset):
    arch = Architecture.from_config(ModelConfig(kind="mlp", d_model=6, mlp_hidden=(10,), dropout=0.0), 20, 6)
    model = build_classifier(arch, C, rngs=nnx.Rngs(0))
    if subset == "lora":
        lora.apply_lora(model, AdapterConfig(rank=2, alpha=4), rngs=nnx.Rngs(1))
        for layer in lora.lora_layers(model).values():
            layer.lora_b[...] = 0.5 * jax.random.normal(jax.random.key(2), layer.lora_b[...].shape)
    nnx.update(model, jax.tree.map(lambda a: a.astype(jnp.float64), nnx.state(model)))
    tokens = jax.random.randint(jax.random.key(3), (N, 6), 0, 20)
    mask = jnp.ones((N, 6), bool)
    f, params = kernel.model_function(model, subset)
    x = kernel.pack_inputs(tokens, mask)
    kernel4 = kernel.empirical_ntk(model, tokens, mask, subset=subset, trace_axes=())
    return f, params, x, kernel4


def _explicit(f, params, x):
    jac = jax.jacrev(f)(params, x)
    j = np.concatenate([np.asarray(leaf).reshape(N, C, -1) for leaf in jax.tree_util.tree_leaves(jac)], -1)
    p = np.asarray(jax.nn.softmax(f(params, x)))
    true = sum(j[i].T @ (np.diag(p[i]) - np.outer(p[i], p[i])) @ j[i] for i in range(N)) / N
    grads = [j[i].T @ (p[i] - np.eye(C)[LABELS[i]]) for i in range(N)]
    empirical = sum(np.outer(g, g) for g in grads) / N
    return true, empirical


@pytest.mark.parametrize("subset", ["full", "lora"])
def test_ntk_dual_spectrum_equals_explicit_fisher(subset, x64):
    f, params, x, kernel4 = _setup(subset)
    true, empirical = _explicit(f, params, x)
    logits = f(params, x)
    for matrix, dual in ((true, fisher.fisher_spectrum(kernel4, logits)),
                         (empirical, fisher.fisher_spectrum(kernel4, logits, kind="empirical", labels=LABELS))):
        explicit = np.sort(np.linalg.eigvalsh(matrix))[::-1]
        rank = information.nonzero(dual).size
        assert rank == information.nonzero(explicit).size
        np.testing.assert_allclose(dual[:rank], explicit[:rank], rtol=1e-9, atol=1e-14)
        assert np.all(np.abs(explicit[rank:]) < 1e-12 * explicit[0])
    assert information.nonzero(fisher.fisher_spectrum(kernel4, logits)).size <= N * (C - 1)


def test_hutchinson_and_slq_within_error_bars(x64):
    f, params, x, kernel4 = _setup("full")
    true, _ = _explicit(f, params, x)
    dim = true.shape[0]
    fvp = fisher.fisher_vector_product(f, params, x)
    v = jax.tree.map(jnp.ones_like, params)
    flat_fv = jax.flatten_util.ravel_pytree(fvp(v))[0]
    np.testing.assert_allclose(flat_fv, true @ np.ones(dim), rtol=1e-10, atol=1e-14)
    trace = fisher.hutchinson_trace(fvp, params, probes=100)
    assert abs(trace.value - np.trace(true)) < 4 * trace.standard_error
    dual = fisher.fisher_spectrum(kernel4, f(params, x))
    exact = fisher.exact_logdet(information.nonzero(dual), dim, 1e-3)
    np.testing.assert_allclose(exact, np.linalg.slogdet(true + 1e-3 * np.eye(dim))[1], rtol=1e-10)
    estimate = fisher.slq_logdet(fvp, params, shift=1e-3, probes=12, steps=60)
    assert abs(estimate.value - exact) < 4 * estimate.standard_error + 1e-3 * abs(exact)


def test_spectrum_summaries():
    lam = np.array([4.0, 2.0, 1.0, 1.0, 0.0])
    p = lam[:4] / 8
    assert information.renyi_entropy(lam, 1.0) == pytest.approx(-(p * np.log(p)).sum())
    assert information.renyi_entropy(lam, 2.0) == pytest.approx(-np.log((p**2).sum()))
    assert information.renyi_entropy(lam, 1.0 + 1e-7) == pytest.approx(information.renyi_entropy(lam, 1.0), abs=1e-5)
    assert information.renyi_entropy(3 * lam, 2.0) == pytest.approx(information.renyi_entropy(lam, 2.0))
    assert information.log_power_sum(3 * lam, 2.0) == pytest.approx(information.log_power_sum(lam, 2.0) + 2 * np.log(3))
    assert information.effective_rank(np.ones(5)) == pytest.approx(5.0)
    assert information.condition_number(lam) == 4.0
    assert information.information_bits(lam) == pytest.approx(0.5 * np.log2(5 * 3 * 2 * 2))
    with pytest.raises(ValueError, match="negative eigenvalue"):
        information.renyi_entropy(np.array([1.0, -0.5]), 2.0)


def test_kernel_target_alignment():
    labels = np.array([0, 0, 1, 1])
    ideal = np.eye(2)[labels] @ np.eye(2)[labels].T
    assert information.kernel_target_alignment(ideal, labels) == pytest.approx(1.0)
    assert information.kernel_target_alignment(ideal, labels, centred=True) == pytest.approx(1.0)
    constant = np.ones((4, 4))
    assert information.kernel_target_alignment(constant, labels) == pytest.approx(1 / np.sqrt(2))
    rng = np.random.default_rng(0)
    z = rng.normal(size=(4, 3))
    assert abs(information.kernel_target_alignment(z @ z.T, labels, centred=True)) <= 1.0


def test_alignment_undefined_for_one_class_is_nan():
    assert np.isnan(information.kernel_target_alignment(np.eye(3), np.array([1, 1, 1]), centred=True))

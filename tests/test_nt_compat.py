"""neural-tangents 0.6.5 imports on current JAX without TensorFlow, and its NTK implementations agree
(with each other and with an explicit Jacobian contraction) on stax and on lorasec's own NNX models."""

import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lorasec.adapters import lora
from lorasec.config import AdapterConfig, ModelConfig
from lorasec.diagnostics.nt_compat import (
    SUPPORTED_IMPLEMENTATIONS,
    import_neural_tangents,
)
from lorasec.models import Architecture, build_classifier

nt = import_neural_tangents()
RTOL = 5e-4  # float32; the implementations reorder sums differently


def _explicit_ntk(f, params, x1, x2):
    """Θ(x1, x2)[i, j, a, b] = Σ_p ∂f(x1_i)_a/∂p · ∂f(x2_j)_b/∂p, from full Jacobians."""
    def flat_jacobian(x):
        jac = jax.jacrev(f)(params, x)
        leaves = jax.tree_util.tree_leaves(jac)
        return jnp.concatenate([leaf.reshape(leaf.shape[0], leaf.shape[1], -1) for leaf in leaves], axis=-1)

    j1, j2 = jax.jit(flat_jacobian)(x1), jax.jit(flat_jacobian)(x2)
    return jnp.einsum("iap,jbp->ijab", j1, j2)


def test_import_needs_no_tensorflow():
    assert "tensorflow" not in sys.modules
    with pytest.raises(AttributeError, match="needs TensorFlow"):
        nt.experimental.empirical_ntk_fn_tf  # noqa: B018


def test_stax_implementations_agree_and_match_explicit_jacobians():
    init_fn, apply_fn, kernel_fn = nt.stax.serial(nt.stax.Dense(32), nt.stax.Relu(), nt.stax.Dense(3))
    x1 = jax.random.normal(jax.random.key(0), (5, 8))
    x2 = jax.random.normal(jax.random.key(1), (4, 8))
    _, params = init_fn(jax.random.key(2), x1.shape)
    reference = _explicit_ntk(apply_fn, params, x1, x2)
    for implementation in SUPPORTED_IMPLEMENTATIONS:
        ntk = jax.jit(nt.empirical_ntk_fn(apply_fn, trace_axes=(), implementation=implementation))(x1, x2, params)
        np.testing.assert_allclose(ntk, reference, rtol=RTOL, atol=1e-5)
    analytic = kernel_fn(x1, x2, "ntk")
    assert analytic.shape == (5, 4) and np.all(np.isfinite(analytic))


@pytest.mark.parametrize("kind", ["mlp", pytest.param("transformer", marks=pytest.mark.slow)])
@pytest.mark.parametrize("subset", ["lora", "full"])
def test_lorasec_model_ntk_implementations_agree(kind, subset):
    arch = Architecture.from_config(ModelConfig(kind=kind, d_model=8, num_layers=1, num_heads=2, d_ff=16,
                                                dropout=0.0, mlp_hidden=(12,)), 20, 6)
    model = build_classifier(arch, 3, rngs=nnx.Rngs(0))
    cfg = AdapterConfig(method=subset, rank=2, alpha=4)
    if subset == "lora":
        lora.apply_lora(model, cfg, rngs=nnx.Rngs(1))
        # B = 0 would silence the A-gradients: use trained-like B, a different one per layer
        for i, layer in enumerate(lora.lora_layers(model).values()):
            layer.lora_b[...] = 0.3 * jax.random.normal(jax.random.key(5 + i), layer.lora_b[...].shape)
    graphdef, params, rest = nnx.split(model, lora.trainable_filter(cfg), ...)

    def f(p, tokens):
        return nnx.merge(graphdef, p, rest)(tokens, jnp.ones(tokens.shape, bool))

    x1 = jax.random.randint(jax.random.key(3), (4, 6), 0, 20)
    x2 = jax.random.randint(jax.random.key(4), (3, 6), 0, 20)
    reference = _explicit_ntk(f, params, x1, x2)
    for implementation in SUPPORTED_IMPLEMENTATIONS:
        ntk = jax.jit(nt.empirical_ntk_fn(f, trace_axes=(), implementation=implementation))(x1, x2, params)
        np.testing.assert_allclose(ntk, reference, rtol=RTOL, atol=1e-5)
    # neural-tangents' traced kernel is the MEAN over the traced axis, trace / C, not the trace.
    traced = jax.jit(nt.empirical_ntk_fn(f, trace_axes=(-1,), implementation=1))(x1, x2, params)
    np.testing.assert_allclose(traced, jnp.einsum("ijaa->ij", reference) / 3, rtol=RTOL, atol=1e-5)


def test_the_mse_closed_form_equals_linearised_gradient_descent_and_runs_under_jit(x64):
    """nt.predict.gradient_descent_mse (the closed form of gradient flow on ½‖f − y‖² / y.size, its normalisation,
    in the NTK) against the
    network linearised at its start trained by plain gradient descent: they agree up to the discretisation, also
    under jax.jit (it raised UnexpectedTracerError before lorasec.diagnostics.nt_compat); max_learning_rate runs on
    current scipy."""
    k1, k2, k3, k4, k5 = jax.random.split(jax.random.key(0), 5)
    params = {"w1": jax.random.normal(k1, (3, 16)) / np.sqrt(3), "w2": jax.random.normal(k2, (16, 2)) / 4}
    x_train, x_test = jax.random.normal(k3, (10, 3)), jax.random.normal(k4, (4, 3))
    y = jax.random.normal(k5, (10, 2))

    def f(p, x):
        return jnp.tanh(x @ p["w1"]) @ p["w2"]

    ntk = nt.empirical_ntk_fn(f, trace_axes=(), vmap_axes=0)
    k_train, k_test = ntk(x_train, None, params), ntk(x_test, x_train, params)
    largest = np.linalg.eigvalsh(np.asarray(k_train).transpose(0, 2, 1, 3).reshape(20, 20))[-1]
    lr, steps = 0.01 * y.size / largest, 100

    def linear(p, x):
        return f(params, x) + jax.jvp(lambda q: f(q, x), (params,), (jax.tree.map(jnp.subtract, p, params),))[1]

    loss = jax.jit(jax.grad(lambda p: 0.5 * jnp.sum((linear(p, x_train) - y) ** 2) / y.size))
    trained = params
    for _ in range(steps):
        trained = jax.tree.map(lambda w, g: w - lr * g, trained, loss(trained))
    descent_train, descent_test = linear(trained, x_train), linear(trained, x_test)

    def closed_form(k_train, y, k_test, t):
        predict = nt.predict.gradient_descent_mse(k_train, y, learning_rate=lr, trace_axes=())
        return predict(t, f(params, x_train), f(params, x_test), k_test)

    for fn in (closed_form, jax.jit(closed_form)):
        flow_train, flow_test = fn(k_train, y, k_test, float(steps))
        start = f(params, x_test)
        assert np.allclose(flow_train, descent_train, rtol=0, atol=2e-2 * float(jnp.abs(y).max()))
        # the change the training made, not the starting value, is what the two must share
        change = np.abs(np.asarray(descent_test - start)).max()
        assert np.abs(np.asarray(flow_test - descent_test)).max() < 2e-2 * change
    assert nt.predict.max_learning_rate(k_train) == pytest.approx(2 * 20 / np.linalg.eigvalsh(
        np.asarray(k_train).transpose(0, 2, 1, 3).reshape(20, 20))[-1], rel=1e-6)

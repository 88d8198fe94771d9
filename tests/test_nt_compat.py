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

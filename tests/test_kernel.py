"""NTKs: our structured LoRA kernel agrees with every working neural-tangents implementation (x64: 1e-5),
at init and after training, on the MLP and the transformer (1e-10 against implementation 1); blocked kernels equal
unblocked ones."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TINY_DATA, tiny_run
from flax import nnx

from lorasec.adapters import lora
from lorasec.config import AdapterConfig, ModelConfig, TrainConfig
from lorasec.diagnostics import kernel
from lorasec.diagnostics.nt_compat import SUPPORTED_IMPLEMENTATIONS
from lorasec.models import Architecture, build_classifier
from lorasec.data.tasks import load_task
from lorasec.pipelines import start as starts
from lorasec.pipelines.run import build_model
from lorasec.training.trainer import ArrayData, fit


def _model(kind, dtype):
    arch = Architecture.from_config(ModelConfig(kind=kind, d_model=8, num_layers=2, num_heads=2, d_ff=16,
                                                dropout=0.0, mlp_hidden=(12,)), 20, 6)
    model = build_classifier(arch, 3, rngs=nnx.Rngs(0))
    lora.apply_lora(model, AdapterConfig(rank=2, alpha=4), rngs=nnx.Rngs(1))
    nnx.update(model, jax.tree.map(lambda a: a.astype(dtype), nnx.state(model)))
    return model


def _inputs():
    t1 = jax.random.randint(jax.random.key(3), (4, 6), 0, 20)
    m1 = jnp.ones((4, 6), bool).at[0, 4:].set(False)  # one padded example
    t2 = jax.random.randint(jax.random.key(4), (2, 6), 0, 20)
    return t1, m1, t2, jnp.ones((2, 6), bool)


@pytest.mark.parametrize("kind", ["mlp", pytest.param("transformer", marks=pytest.mark.slow)])
@pytest.mark.parametrize("stage", ["init", "trained"])
def test_structured_lora_ntk_matches_neural_tangents_in_x64(kind, stage, x64):
    model = _model(kind, jnp.float64)
    if stage == "trained":  # B ≠ 0 switches on the A-gradient term
        for i, layer in enumerate(lora.lora_layers(model).values()):  # a different B per layer
            layer.lora_b[...] = 0.3 * jax.random.normal(jax.random.key(5 + i), layer.lora_b[...].shape, jnp.float64)
    t1, m1, t2, m2 = _inputs()
    ours = kernel.structured_lora_ntk(model, t1, m1, t2, m2, trace_axes=())
    assert ours.dtype == jnp.float64 and ours.shape == (4, 2, 3, 3)
    # Implementation 1 (Jacobian contraction) agrees to rounding; implementation 2 (NTK-vector products) carries
    # its own ~2e-8 error on the transformer in float64, inside the 1e-5.
    for implementation, rtol in zip(SUPPORTED_IMPLEMENTATIONS, (1e-10, 1e-5)):
        ref = kernel.empirical_ntk(model, t1, m1, t2, m2, trace_axes=(), implementation=implementation)
        np.testing.assert_allclose(ours, ref, rtol=rtol, atol=rtol * 1e-2 * float(jnp.abs(ref).max()))
    traced = kernel.structured_lora_ntk(model, t1, m1, t2, m2)
    np.testing.assert_allclose(traced, kernel.empirical_ntk(model, t1, m1, t2, m2), rtol=1e-10)


def test_structured_kernel_after_real_training_float32():
    cfg = tiny_run(train=TrainConfig(steps=30, batch_size=16, lr=3e-3))
    train, _ = load_task(cfg.data)
    start = starts.resolve(cfg, train)
    tokens, mask = start.encoder.encode(train.texts)
    model = build_model(cfg, start)
    fit(model, lora.trainable_filter(cfg.adapter), ArrayData(tokens, mask, train.labels), cfg.train, seed=0,
        progress=False)
    assert any(float(jnp.abs(layer.lora_b[...]).max()) > 0 for layer in lora.lora_layers(model).values())
    ours = kernel.structured_lora_ntk(model, tokens[:6], mask[:6], trace_axes=())
    ref = kernel.empirical_ntk(model, tokens[:6], mask[:6], trace_axes=())
    np.testing.assert_allclose(ours, ref, rtol=5e-3, atol=5e-3 * float(jnp.abs(ref).max()))
    assert TINY_DATA.seq_len == tokens.shape[1]


@pytest.mark.slow
def test_blocked_kernel_equals_whole_kernel():
    model = _model("transformer", jnp.float32)
    t1 = jax.random.randint(jax.random.key(7), (4, 6), 0, 20)
    m1 = jnp.ones((4, 6), bool)
    whole = kernel.empirical_ntk(model, t1, m1, subset="full")
    blocked = kernel.empirical_ntk(model, t1, m1, subset="full", block_size=2)
    np.testing.assert_allclose(blocked, whole, rtol=5e-5, atol=1e-6)
    np.testing.assert_allclose(whole, whole.T, rtol=1e-5, atol=1e-6)  # a kernel on one set is symmetric
    assert np.all(np.linalg.eigvalsh(np.asarray(whole, np.float64)) > -1e-3 * float(np.abs(whole).max()))


def test_bad_subset_and_implementation_are_refused():
    model = _model("mlp", jnp.float32)
    t1, m1, _, _ = _inputs()
    with pytest.raises(ValueError, match="subset = 'lorra'"):
        kernel.empirical_ntk(model, t1, m1, subset="lorra")
    with pytest.raises(ValueError, match="implementation = 3"):
        kernel.empirical_ntk(model, t1, m1, implementation=3)


def test_transformer_kernels_agree_to_1e_12_in_x64(x64):
    arch = Architecture.from_config(ModelConfig(d_model=8, num_layers=2, num_heads=2, d_ff=16, dropout=0.0), 20, 6)
    model = build_classifier(arch, 3, rngs=nnx.Rngs(0))
    lora.apply_lora(model, AdapterConfig(rank=2, alpha=4), rngs=nnx.Rngs(1))
    nnx.update(model, jax.tree.map(lambda a: a.astype(jnp.float64), nnx.state(model)))
    for i, layer in enumerate(lora.lora_layers(model).values()):  # a different B per layer
        layer.lora_b[...] = 0.3 * jax.random.normal(jax.random.key(10 + i), layer.lora_b[...].shape, jnp.float64)
    tokens = jax.random.randint(jax.random.key(3), (4, 6), 0, 20)
    mask = jnp.ones((4, 6), bool).at[0, 4:].set(False)
    ours = np.asarray(kernel.structured_lora_ntk(model, tokens, mask, trace_axes=()))
    ref = np.asarray(kernel.empirical_ntk(model, tokens, mask, trace_axes=(), implementation=1))
    assert np.abs(ours - ref).max() <= 1e-12 * np.abs(ref).max()

"""LoRA adapters: peft's effective weight, initialisation law, merge/unmerge, targets and trainable subsets."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lorasec.adapters import lora
from lorasec.config import AdapterConfig, ConfigError, ModelConfig
from lorasec.models import Architecture, build_classifier


def _hand_built(rank=2, scaling=3.0):
    """nnx.Linear(in=3, out=2) with a known torch-layout W (out, in), bias b, and factors A (r, in), B (out, r)."""
    W = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])          # (out, in), as peft/torch store it
    b = np.array([0.5, -0.5])
    A = np.array([[1.0, 0.0, -1.0], [0.0, 2.0, 1.0]])         # (r, in)
    B = np.array([[1.0, -1.0], [0.5, 2.0]])                    # (out, r)
    base = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    base.kernel[...] = jnp.asarray(W.T)                        # lorasec/Flax layout: (in, out)
    base.bias[...] = jnp.asarray(b)
    layer = lora.LoRALinear(base, rank, scaling, rngs=nnx.Rngs(1))
    layer.lora_a[...] = jnp.asarray(A.T)                       # (in, r)
    layer.lora_b[...] = jnp.asarray(B.T)                       # (r, out)
    return layer, W, b, A, B


def test_effective_weight_equals_peft_formula():
    scaling = 16 / 2
    layer, W, b, A, B = _hand_built(scaling=scaling)
    W_eff = W + scaling * B @ A                                # peft: W + (alpha/r) B A, (out, in)
    x = np.array([[1.0, -2.0, 0.5], [0.0, 1.0, 3.0]])
    np.testing.assert_allclose(np.asarray(layer(jnp.asarray(x))), x @ W_eff.T + b, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(layer.base.kernel[...] + layer.delta()), W_eff.T, rtol=1e-6)


def test_merge_then_unmerge_restores_outputs():
    layer, W, b, A, B = _hand_built()
    x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 3)))
    before = layer(x)
    lora.merge(layer)
    assert layer.merged
    np.testing.assert_allclose(np.asarray(layer(x)), np.asarray(before), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(layer.base.kernel[...]), (W + 3.0 * B @ A).T, rtol=1e-6)
    lora.unmerge(layer)
    np.testing.assert_allclose(np.asarray(layer.base.kernel[...]), W.T, atol=1e-6)
    np.testing.assert_allclose(np.asarray(layer(x)), np.asarray(before), rtol=1e-5)


def test_scaling_lora_and_rslora():
    assert AdapterConfig(rank=8, alpha=16).scaling == 2.0
    assert AdapterConfig(rank=16, alpha=16, rslora=True).scaling == 4.0


@pytest.mark.parametrize("init", ["kaiming_uniform", "gaussian"])
@pytest.mark.parametrize("c", [1.0 / 3.0, 1.0])
def test_init_variance_is_c_over_fan_in(init, c):
    fan_in, rank = 512, 64
    base = nnx.Linear(fan_in, 256, rngs=nnx.Rngs(0))
    layer = lora.LoRALinear(base, rank, 1.0, init=init, init_scale=c, rngs=nnx.Rngs(3))
    a = np.asarray(layer.lora_a[...], np.float64).ravel()
    n = a.size
    target = c / fan_in
    # Sample variance of n iid draws has sd ≈ target·sqrt(κ − 1 + 2/(n−1))/sqrt(n), κ the kurtosis
    # (3 for gaussian, 1.8 for uniform); allow 5 standard errors.
    kurtosis = 3.0 if init == "gaussian" else 1.8
    se = target * np.sqrt((kurtosis - 1) / n)
    assert abs(a.var() - target) < 5 * se
    assert abs(a.mean()) < 5 * np.sqrt(target / n)
    assert np.all(np.asarray(layer.lora_b[...]) == 0.0)
    if init == "kaiming_uniform":
        assert np.abs(a).max() <= np.sqrt(3 * c / fan_in) + 1e-7


def test_peft_default_kaiming_uniform_bound():
    """peft's kaiming_uniform(a=√5) draws A uniformly within ±gain·√(3/fan_in) = ±1/√fan_in; lorasec's default
    adapter must draw from exactly that interval (19,200 draws reach within 0.1% of its edge)."""
    fan_in = 300
    bound = np.sqrt(2.0 / (1 + 5.0)) * np.sqrt(3.0 / fan_in)
    cfg = AdapterConfig()
    layer = lora.LoRALinear(nnx.Linear(fan_in, 200, rngs=nnx.Rngs(0)), 64, 1.0, init=cfg.init,
                            init_scale=cfg.init_scale, rngs=nnx.Rngs(2))
    a = np.abs(np.asarray(layer.lora_a[...], np.float64))
    assert 0.999 * bound < a.max() <= bound * (1 + 1e-6)


def _model(**adapter):
    arch = Architecture.from_config(ModelConfig(d_model=16, num_layers=2, num_heads=2, d_ff=32, dropout=0.0), 30, 8)
    model = build_classifier(arch, 3, rngs=nnx.Rngs(0))
    cfg = AdapterConfig(rank=4, alpha=8, **adapter)
    return model, cfg


def test_adapter_leaves_initial_function_unchanged():
    model, cfg = _model()
    tokens = jnp.arange(16).reshape(2, 8) % 30
    mask = jnp.ones((2, 8), bool)
    before = model(tokens, mask)
    lora.apply_lora(model, cfg, rngs=nnx.Rngs(1))
    np.testing.assert_array_equal(np.asarray(model(tokens, mask)), np.asarray(before))


def test_targets_follow_peft_names():
    model, cfg = _model(targets=("query", "value"))
    names = lora.apply_lora(model, cfg, rngs=nnx.Rngs(1))
    assert names == [f"encoder.layers.{i}.attention.{n}" for i in (0, 1) for n in ("query", "value")]
    model, cfg = _model(targets=("re:encoder\\.layers\\.1\\..*",))
    names = lora.apply_lora(model, cfg, rngs=nnx.Rngs(1))
    assert all(n.startswith("encoder.layers.1.") for n in names) and len(names) == 6
    model, cfg = _model()  # all-linear: every linear layer except the head
    names = lora.apply_lora(model, cfg, rngs=nnx.Rngs(1))
    assert len(names) == 12 and "head" not in names


def test_unknown_target_and_excessive_rank_are_config_errors():
    model, cfg = _model(targets=("qkv",))
    with pytest.raises(ConfigError, match="adapter.targets"):
        lora.apply_lora(model, cfg, rngs=nnx.Rngs(1))
    model, _ = _model()
    with pytest.raises(ConfigError, match=r"adapter.rank = 17: above min\(in, out\) = 16"):
        lora.apply_lora(model, AdapterConfig(rank=17), rngs=nnx.Rngs(1))


def _trainable_paths(model, cfg):
    _, state, _ = nnx.split(model, lora.trainable_filter(cfg), ...)
    return {".".join(map(str, p)) for p, _ in nnx.to_flat_state(state)}


def test_trainable_subsets_by_variable_type_and_path():
    model, cfg = _model()
    lora.apply_lora(model, cfg, rngs=nnx.Rngs(1))
    paths = _trainable_paths(model, cfg)
    assert paths == {p for p in paths if "lora_" in p or p.startswith("head.")}
    assert {"head.kernel", "head.bias"} <= paths and len(paths) == 2 + 2 * 12
    frozen_a = _trainable_paths(model, AdapterConfig(rank=4, freeze_a=True))
    assert not any("lora_a" in p for p in frozen_a) and any("lora_b" in p for p in frozen_a)
    full = _trainable_paths(model, AdapterConfig(method="full"))
    assert not any("lora_" in p for p in full) and "encoder.word_embeddings.embedding" in full


def test_lora_dropout_only_in_training():
    layer, *_ = _hand_built()
    layer.dropout_rate = 0.5
    layer.lora_b[...] = jnp.ones_like(layer.lora_b[...])
    x = jnp.ones((64, 3))
    evaluation = layer(x)
    np.testing.assert_array_equal(np.asarray(layer(x)), np.asarray(evaluation))
    training = layer(x, rngs=nnx.Rngs(dropout=0))
    assert not np.allclose(np.asarray(training), np.asarray(evaluation))
    base = layer.base(x)  # dropout touches the adapter path only
    # Expected value over dropout masks equals the no-dropout adapter output.
    draws = jnp.stack([layer(x, rngs=nnx.Rngs(dropout=k)) for k in range(200)]).mean(0)
    np.testing.assert_allclose(np.asarray(draws - base).mean(), np.asarray(evaluation - base).mean(), rtol=0.05)


def test_dora_effective_weight_matches_its_formula():
    layer, W, b, A, B = _hand_built(scaling=2.0)
    base = layer.base
    dora = lora.LoRALinear(base, 2, 2.0, dora=True, rngs=nnx.Rngs(1))
    x = jnp.asarray(np.random.default_rng(1).normal(size=(4, 3)))
    # At init B = 0 and m = ‖W0‖ per output unit: DoRA is the base layer.
    np.testing.assert_allclose(np.asarray(dora(x)), np.asarray(base(x)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(dora.magnitude[...]), np.linalg.norm(W, axis=1), rtol=1e-6)
    dora.lora_a[...] = jnp.asarray(A.T)
    dora.lora_b[...] = jnp.asarray(B.T)
    m = np.array([2.0, 0.5])
    dora.magnitude[...] = jnp.asarray(m)
    direction = W + 2.0 * B @ A                                 # (out, in), peft layout
    W_dora = m[:, None] * direction / np.linalg.norm(direction, axis=1, keepdims=True)
    np.testing.assert_allclose(np.asarray(dora(x)), np.asarray(x) @ W_dora.T + b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(dora.effective_kernel()), W_dora.T, rtol=1e-5)
    with pytest.raises(ValueError, match="DoRA"):
        lora.merge(dora)


def test_dora_magnitude_trains_with_the_lora_subset():
    model, cfg = _model(dora=True)
    lora.apply_lora(model, cfg, rngs=nnx.Rngs(1))
    paths = _trainable_paths(model, cfg)
    assert sum(p.endswith(".magnitude") for p in paths) == 12

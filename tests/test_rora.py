"""RoRA's parts: Pt sets the spectral-norm ratio exactly, Tr is plain L2 with full bases and differs when
truncated, Cl's dropout touches the frozen path only; all three compose with DoRA in a training run."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_run
from flax import nnx

from lorasec import config
from lorasec.adapters import lora, rora
from lorasec.config import AdapterConfig, ConfigError, ModelConfig, TrainConfig
from lorasec.models import Architecture, build_classifier
from lorasec.pipelines.run import train_run


def _model():
    arch = Architecture.from_config(ModelConfig(d_model=16, num_layers=3, num_heads=2, d_ff=24, dropout=0.0), 30, 8)
    model = build_classifier(arch, 2, rngs=nnx.Rngs(0))
    lora.apply_lora(model, AdapterConfig(rank=4, alpha=8), rngs=nnx.Rngs(1))
    for k, layer in enumerate(lora.lora_layers(model).values()):
        layer.lora_b[...] = 0.1 * jax.random.normal(jax.random.key(k), layer.lora_b[...].shape)
    return model


def test_pt_sets_the_spectral_norm_ratio_exactly_in_the_top_layers():
    model = _model()
    before = lora.scales(model)
    scales = rora.post_training_rescale(model, top_layers=2)
    assert scales and all(".layers.0." not in n for n in scales)
    assert {n.split(".")[2] for n in scales} == {"1", "2"}
    for name, layer in lora.lora_layers(model).items():
        w_pre = np.asarray(layer.base.kernel[...], np.float64)
        update = np.asarray(layer.delta(), np.float64)
        ratio = np.linalg.norm(w_pre, 2) / np.linalg.norm(update, 2)
        if name in scales:
            assert ratio == pytest.approx(1.0, rel=1e-5)
        else:
            assert float(layer.scale[...]) == before[name] and abs(ratio - 1.0) > 1e-3


def test_tr_is_plain_l2_with_full_bases_and_differs_when_truncated():
    layer = next(iter(lora.lora_layers(_model()).values()))
    full = rora.trigger_penalty(layer, rora.top_singular_bases(layer, 10_000))
    l2 = jnp.sum(layer.lora_a[...] ** 2) + jnp.sum(layer.lora_b[...] ** 2)
    assert float(full) == pytest.approx(float(l2), rel=1e-5)
    truncated = float(rora.trigger_penalty(layer, rora.top_singular_bases(layer, 2)))
    assert 0 < truncated < float(l2) * 0.9
    # Only the top-k directions count: B orthogonal to U_k costs nothing on the B side.
    u_k, v_k = rora.top_singular_bases(layer, 2)
    layer.lora_b[...] = layer.lora_b[...] - (layer.lora_b[...] @ u_k) @ u_k.T
    assert float(jnp.sum((layer.lora_b[...] @ u_k) ** 2)) < 1e-10


def test_cl_dropout_acts_on_the_frozen_path_only():
    base = nnx.Linear(6, 5, rngs=nnx.Rngs(0))
    layer = lora.LoRALinear(base, 2, 1.5, frozen_dropout=0.5, rngs=nnx.Rngs(1))
    layer.lora_b[...] = jnp.ones_like(layer.lora_b[...])
    x = jax.random.normal(jax.random.key(2), (32, 6))
    adapter = 1.5 * (x @ layer.lora_a[...]) @ layer.lora_b[...]
    frozen = base(x)
    np.testing.assert_allclose(layer(x), frozen + adapter, rtol=1e-5, atol=1e-6)  # evaluation: no dropout
    frozen_part = np.asarray(layer(x, rngs=nnx.Rngs(dropout=3)) - adapter)
    kept = np.isclose(frozen_part, 2 * np.asarray(frozen), rtol=1e-5)
    dropped = np.isclose(frozen_part, 0.0, atol=1e-6)
    assert np.all(kept | dropped) and 0.3 < dropped.mean() < 0.7


def test_dora_plus_rora_trains_and_validation():
    adapter = AdapterConfig(rank=4, alpha=8, dora=True, rora_cl=0.1, rora_tr=5.0, rora_tr_k=4, rora_pt_layers=1)
    results = train_run(tiny_run(adapter=adapter, train=TrainConfig(steps=8, batch_size=16)), progress=False)
    assert results["rora_pt_scales"] and all(s > 0 for s in results["rora_pt_scales"].values())
    with pytest.raises(ConfigError, match="need method = 'lora'"):
        config.load(config.RunConfig, None, ["adapter.method=full", "adapter.rora_cl=0.1"])
    with pytest.raises(ConfigError, match="adapter.rora_cl = 1.0"):
        config.load(config.RunConfig, None, ["adapter.rora_cl=1.0"])

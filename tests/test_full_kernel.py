"""The structured full-parameter NTK: equal to neural-tangents (implementations 1 and 2) in x64 on BERT-shaped
models with every kind of weight (word, position and segment embeddings, LayerNorms, attention, feed-forward,
pooler, head); its per-parameter kernels sum to it and each equals neural-tangents on that one parameter; blocks
change nothing; and it refuses, before computing, what it cannot do or cannot fit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lorasec.adapters import lora
from lorasec.config import AdapterConfig, ModelConfig
from lorasec.core import memory
from lorasec.diagnostics import blocks, full_kernel, kernel
from lorasec.diagnostics.nt_compat import SUPPORTED_IMPLEMENTATIONS
from lorasec.models import Architecture, build_classifier


def _model(kind="transformer", pooling="cls", types=2, dtype=jnp.float64, positions=7):
    """A small BERT-shaped classifier whose every weight is away from its init: LayerNorm scales and shifts, and
    biases, are random too (at init they are 1 and 0, which would hide a wrong term), with LoRA probes whose B ≠ 0."""
    shape = ModelConfig(kind=kind, d_model=8, num_layers=2, num_heads=2, d_ff=16, dropout=0.0, pooling=pooling,
                        mlp_hidden=(12,))
    arch = Architecture.from_config(shape, 20, positions).with_(type_vocab_size=types)
    model = build_classifier(arch, 3, rngs=nnx.Rngs(0))
    lora.apply_lora(model, AdapterConfig(rank=2, alpha=4), rngs=nnx.Rngs(1))
    state = nnx.state(model, nnx.Param)
    leaves, treedef = jax.tree.flatten(state)
    rng = np.random.default_rng(9)  # host draws: no program compiled per leaf shape
    moved = [jnp.asarray(np.asarray(a) + 0.3 * rng.normal(size=a.shape), dtype) for a in leaves]
    nnx.update(model, jax.tree.unflatten(treedef, moved))
    return model


def _inputs():
    rng = np.random.default_rng(3)
    m1 = np.ones((5, 7), bool)
    m1[0, 4:], m1[2, 6:] = False, False  # padded examples
    return rng.integers(0, 20, (5, 7)), m1, rng.integers(0, 20, (3, 7)), np.ones((3, 7), bool)


@pytest.mark.slow  # the fast loop checks the transformer per parameter against neural-tangents
@pytest.mark.parametrize("kind,pooling,types", [("transformer", "cls", 2), ("transformer", "mean", 0),
                                                ("mlp", "mean", 0)])
def test_structured_full_ntk_matches_neural_tangents_in_x64(kind, pooling, types, x64):
    model = _model(kind, pooling, types)
    t1, m1, t2, m2 = _inputs()
    for args in ((t1, m1, t2, m2), (t1, m1)):
        ours = full_kernel.structured_full_ntk(model, *args, trace_axes=())
        assert ours.dtype == np.float64 and ours.shape == (5, len(args[-2]), 3, 3)
        # Implementation 1 agrees to rounding; implementation 2 carries its own ~1e-8 error in float64.
        for implementation, rtol in zip(SUPPORTED_IMPLEMENTATIONS, (1e-10, 1e-5)):
            ref = np.asarray(kernel.empirical_ntk(model, *args, subset="full", trace_axes=(),
                                                  implementation=implementation))
            np.testing.assert_allclose(ours, ref, rtol=rtol, atol=rtol * 1e-2 * np.abs(ref).max())
        traced = full_kernel.structured_full_ntk(model, *args, block_size=2)
        np.testing.assert_allclose(traced, kernel.empirical_ntk(model, *args, subset="full"), rtol=1e-10)


def test_per_parameter_kernels_sum_to_the_kernel_and_each_is_that_parameters_own(x64):
    model = _model()
    t1, m1, _, _ = _inputs()
    total, per = full_kernel.structured_full_ntk(model, t1, m1, trace_axes=(), per_parameter=True)
    full_params = nnx.to_flat_state(nnx.state(model, kernel.subset_filter("full")))
    assert set(per) == {".".join(str(p) for p in path) for path, _ in full_params}
    np.testing.assert_allclose(sum(per.values()), total, rtol=1e-12)
    for path in ("encoder.word_embeddings.embedding", "encoder.embedding_norm.scale",  # an embedding, a norm and
                 "encoder.layers.0.attention.query.base.kernel"):  # a dense kernel (the slow tests: every kind)
        assert path in per, path
        ref = np.asarray(kernel.empirical_ntk(model, t1, m1, subset=kernel.path_is(path), trace_axes=()))
        np.testing.assert_allclose(per[path], ref, rtol=1e-10, atol=1e-12 * np.abs(ref).max(), err_msg=path)
        assert np.abs(ref).max() > 0, path


@pytest.mark.slow  # 15-35 s: the transformer's fast check is the per-parameter one
def test_blocks_cut_to_their_longest_example_change_no_entry(x64):
    """Examples are blocked in order of length and each block is cut after its last real token: exact."""
    model = _model(positions=40)
    lengths = np.array([3, 35, 5, 9, 2, 12])
    tokens = jax.random.randint(jax.random.key(5), (6, 40), 1, 20)
    mask = jnp.asarray(np.arange(40)[None, :] < lengths[:, None])
    ref_full = np.asarray(kernel.empirical_ntk(model, tokens, mask, subset="full", trace_axes=()))
    ref_lora = np.asarray(kernel.empirical_ntk(model, tokens, mask, subset="lora", trace_axes=()))
    for block in (2, 4):
        np.testing.assert_allclose(full_kernel.structured_full_ntk(model, tokens, mask, trace_axes=(),
                                                                   block_size=block), ref_full, rtol=1e-10)
        np.testing.assert_allclose(kernel.structured_lora_ntk(model, tokens, mask, trace_axes=(), block_size=block),
                                   ref_lora, rtol=1e-10, atol=1e-12 * np.abs(ref_lora).max())


@pytest.mark.slow  # 15-35 s: the transformer's fast check is the per-parameter one
def test_float32_kernel_equals_neural_tangents_to_float32_rounding():
    model = _model(dtype=jnp.float32)
    t1, m1, _, _ = _inputs()
    ours = full_kernel.structured_full_ntk(model, t1, m1, trace_axes=(), block_size=3)
    ref = np.asarray(kernel.empirical_ntk(model, t1, m1, subset="full", trace_axes=()), np.float64)
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())
    np.testing.assert_allclose(ours, ours.transpose(1, 0, 3, 2), rtol=1e-5, atol=1e-6 * np.abs(ours).max())  # symmetric


def test_a_kernel_too_large_for_memory_is_refused_with_the_block_size_that_fits():
    model = _model(dtype=jnp.float32)
    t1, m1, _, _ = _inputs()
    fits = full_kernel.estimate_bytes(model, 5, 5, 7, 1, diagonal=True)
    with pytest.raises(memory.MemoryEstimateError, match="use block_size=1 "):
        full_kernel.structured_full_ntk(model, t1, m1, block_size=4, memory_limit=fits)
    # Left to choose, it takes the block that fits.
    estimate = lambda b: full_kernel.estimate_bytes(model, 5, 5, 7, b)  # noqa: E731
    assert blocks.block_size_for(estimate, 5, "kernel", limit=fits) == 1
    assert blocks.block_size_for(estimate, 5, "kernel") == 5  # all examples in one block when it fits
    with pytest.raises(memory.MemoryEstimateError, match="even blocks of one example need .*use fewer examples"):
        full_kernel.structured_full_ntk(model, t1, m1, memory_limit=fits - 1)
    with pytest.raises(ValueError, match="block_size = 0"):
        full_kernel.structured_full_ntk(model, t1, m1, block_size=0)
    # The estimate grows with the block (signals) and with per-parameter outputs.
    assert full_kernel.estimate_bytes(model, 5, 5, 7, 4) > full_kernel.estimate_bytes(model, 5, 5, 7, 2)
    assert full_kernel.estimate_bytes(model, 5, 5, 7, 2, per_parameter=True) > full_kernel.estimate_bytes(
        model, 5, 5, 7, 2)


@pytest.mark.slow  # 15-35 s: the transformer's fast check is the per-parameter one
def test_every_kernel_entry_point_refuses_what_does_not_fit():
    model = _model(dtype=jnp.float32)
    t1, m1, _, _ = _inputs()
    whole = kernel.jacobian_bytes(model, "full", 5, 5, 7)
    weights = sum(v.size for v in jax.tree.leaves(nnx.state(model, kernel.subset_filter("full"))))
    assert whole == (5 + 5) * 3 * weights * 4 + 5 * 5 * 9 * 8  # two Jacobians of float32, the float64 kernel
    with pytest.raises(memory.MemoryEstimateError, match="neural-tangents' kernel of 5 × 5 examples needs about "
                                                         ".*use block_size=4"):
        kernel.empirical_ntk(model, t1, m1, subset="full", memory_limit=whole - 1)
    blocked = kernel.empirical_ntk(model, t1, m1, subset="full", block_size=4, memory_limit=whole - 1)
    np.testing.assert_allclose(blocked, kernel.empirical_ntk(model, t1, m1, subset="full"), rtol=1e-5)
    with pytest.raises(memory.MemoryEstimateError, match="structured LoRA kernel of 5 × 5 examples in blocks of 5 "
                                                         "needs about .* use fewer examples"):
        kernel.structured_lora_ntk(model, t1, m1, block_size=5, memory_limit=1)


def test_the_lora_kernel_takes_the_faster_path_that_fits_and_says_which(monkeypatch):
    model = _model(dtype=jnp.float32)
    t1, m1, t2, m2 = _inputs()
    nt, path = kernel.lora_ntk(model, t1, m1, t2, m2, trace_axes=())
    assert path == "neural-tangents implementation 1"
    monkeypatch.setattr(kernel, "jacobian_bytes", lambda *_: 2**50)  # Jacobians larger than any memory
    structured, path = kernel.lora_ntk(model, t1, m1, t2, m2, trace_axes=())
    assert path == "structured"
    np.testing.assert_allclose(structured, nt, rtol=1e-4, atol=1e-6 * float(jnp.abs(nt).max()))


def test_what_no_structured_term_covers_is_refused():
    model = _model(dtype=jnp.float32)
    model.extra = nnx.Param(jnp.zeros(3))  # a weight outside Dense, Embed and LayerNorm
    t1, m1, _, _ = _inputs()
    with pytest.raises(ValueError, match="parameter 'extra' is not in a Dense, Embed or LayerNorm"):
        full_kernel.structured_full_ntk(model, t1, m1)
    with pytest.raises(ValueError, match=r"trace_axes = \(0,\)"):
        full_kernel.structured_full_ntk(_model(dtype=jnp.float32), t1, m1, trace_axes=(0,))

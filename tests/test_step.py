"""The public step API on a model with no tokenizer: a Hugging Face BERT directory lorasec exported, read back
by ``model.pretrained``, built and stepped without a vocabulary size or ``tokenizer.json``."""

import os

import numpy as np
import pytest
from flax import nnx

from lorasec import config
from lorasec.config import ConfigError
from lorasec.core import keys
from lorasec.models import Architecture
from lorasec.models.hf_import import _variables, export
from lorasec.models.transformer import TransformerEncoder
from lorasec.pipelines.run import build_model, prepare_data, prepare_step

ARCH = Architecture(kind="transformer", vocab_size=97, max_positions=24, d_model=16, num_layers=2, num_heads=2,
                    d_ff=32, dropout=0.1, pooling="mean", mlp_hidden=(), type_vocab_size=2)


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    encoder = TransformerEncoder(ARCH, rngs=nnx.Rngs(params=keys.key(5, "params")))
    return export(encoder, ARCH, tmp_path_factory.mktemp("tiny-bert")), encoder


def _cfg(directory, **adapter):
    return config.from_dict(config.RunConfig, {
        "data": {"seq_len": 16, "max_len": 12, "min_len": 4}, "model": {"pretrained": str(directory), "dropout": 0.1, "attention_dropout": 0.1,
                                           "head_dropout": 0.0},
        "adapter": {"rank": 2, "alpha": 4, "targets": ["query", "value"], **adapter},
        "train": {"batch_size": 4, "lr": 1e-3}}).validate()


def test_exported_bert_round_trips_and_steps_without_tokenizer(bert_dir):
    directory, encoder = bert_dir
    assert sorted(p.name for p in directory.iterdir()) == ["config.json", "model.safetensors"]
    loaded = build_model(_cfg(directory, method="full")).encoder
    pairs = list(zip(_variables(loaded), _variables(encoder)))
    assert len(pairs) == 5 + 16 * ARCH.num_layers
    for (name, ours, _), (_, theirs, _) in pairs:
        np.testing.assert_array_equal(np.asarray(ours[...]), np.asarray(theirs[...]), err_msg=name)
    step = prepare_step(_cfg(directory))
    rng = np.random.default_rng(0)
    batch = {"tokens": rng.integers(0, 97, (4, 16)), "mask": np.ones((4, 16), bool),
             "labels": rng.integers(0, 2, 4)}
    losses = [float(step(batch)) for _ in range(3)]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0] and step.compilations == 1


def test_attention_dropout_draws_new_masks_and_is_off_without_keys(bert_dir):
    directory, _ = bert_dir
    model = build_model(_cfg(directory, method="full"))
    tokens, mask = np.arange(32).reshape(2, 16) % 97, np.ones((2, 16), bool)
    clean = model(tokens, mask)
    np.testing.assert_array_equal(clean, model(tokens, mask))
    noisy = [model(tokens, mask, rngs=nnx.Rngs(dropout=k)) for k in (1, 2)]
    assert not np.allclose(noisy[0], clean) and not np.allclose(noisy[0], noisy[1])
    assert model.encoder.layers[0].attention.attention_dropout == 0.1 and model.dropout == 0.0


def test_text_needs_the_tokenizer_and_a_config_model_needs_a_vocabulary(bert_dir):
    directory, _ = bert_dir
    cfg = _cfg(directory)
    with pytest.raises(ConfigError, match="has no tokenizer.json"):
        prepare_data(cfg)
    model = build_model(config.RunConfig())  # from scratch: the synthetic language's own vocabulary
    assert model.encoder.word_embeddings.embedding[...].shape[0] == prepare_data(config.RunConfig())[2].vocab_size


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lora", "full"])
def test_the_benchmarks_model_flops_match_xlas_count(method, tmp_path):
    """benchmarks/vs_peft.py reports GFLOP/s from a count made from the shapes; XLA counts the compiled step
    (elementwise work and AdamW included), so the two agree to a few percent on a model of realistic shape."""
    import importlib.util
    import sys
    from pathlib import Path

    folder = Path(__file__).parents[1] / "benchmarks"
    sys.path.insert(0, str(folder))  # the benchmarks run as scripts from their folder
    spec = importlib.util.spec_from_file_location("vs_peft", folder / "vs_peft.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    sizes = dict(num_layers=2, d_model=128, num_heads=4, d_ff=512)
    arch = Architecture(kind="transformer", vocab_size=2000, max_positions=64, dropout=0.0, pooling="mean",
                        mlp_hidden=(), type_vocab_size=2, **sizes)
    directory = export(TransformerEncoder(arch, rngs=nnx.Rngs(params=keys.key(0, "params"))), arch, tmp_path / "b")
    args = type("Args", (), dict(model_dir=str(directory), seq_len=64, method=method, dropout=0.0,
                                 dtype="float32"))()
    batch = bench._batches(1, 64, 2000)[0]
    counted = bench._lorasec_step(args).flops(batch)
    assert bench.model_flops(sizes, 64, method) == pytest.approx(counted, rel=0.06)


def test_the_matmul_floor_finds_every_product_of_a_compiled_function_and_counts_its_flops():
    """benchmarks/matmul_floor.py reads a step's matrix products from XLA's optimised HLO: a function with a plain,
    a batched and a transposed product gives all three back with their shapes, dimensions and FLOPs."""
    import sys
    from pathlib import Path

    import jax
    import jax.numpy as jnp

    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    import matmul_floor

    def three(x, w, q, k, y):
        return jnp.tanh(x @ w).sum() + jnp.einsum("bth,bsh->bts", q, k).sum() + jnp.tanh(x.T @ y).sum()

    args = (jnp.ones((24, 16)), jnp.ones((16, 8)), jnp.ones((3, 5, 4)), jnp.ones((3, 6, 4)), jnp.ones((24, 10)))
    found = matmul_floor.products(jax.jit(three).lower(*args).compile().as_text())
    assert len(found) == 3
    assert sorted(matmul_floor.flops(*p) for p in found) == sorted([2 * 24 * 16 * 8, 2 * 3 * 5 * 6 * 4,
                                                                    2 * 24 * 16 * 10])
    assert any(lhs == (3, 5, 4) and numbers[1] == ((0,), (0,)) for lhs, _, numbers in found)


def test_huge_pages_environment_and_restart():
    import subprocess
    import sys

    from lorasec.core import hugepages

    assert hugepages.environment({"LORASEC_HUGE_PAGES": "0"}) is None
    assert hugepages.environment({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}) is None
    env = hugepages.environment({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"})
    if env is None:
        pytest.skip("not Linux with glibc 2.35+ and transparent huge pages on request")
    assert env["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
    code = ("import os; from lorasec.core.hugepages import restart_with_huge_pages; print('start', flush=True); "
            "restart_with_huge_pages(); print(os.environ['GLIBC_TUNABLES'])")
    clean = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "LORASEC_HUGE_PAGES")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=clean, check=True)
    assert out.stdout.split() == ["start", "start", "glibc.malloc.hugetlb=1"]  # started twice, then set

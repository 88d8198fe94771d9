"""Issue 32: the linearised network, kernel drift, the first-order kernel predictions and the rank-correlation scorer,
each against a case whose answer is known."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import AdapterConfig, AttackConfig, TrainConfig, tiny_run
from flax import nnx

from lorasec.adapters import lora
from lorasec.core import ranking
from lorasec.diagnostics import drift, linearised, predictors
from lorasec.training.evaluation import evaluation_inputs
from lorasec.training.trainer import fit


def _backdoor(method: str = "lora", lr: float = 1e-2, steps: int = 20) -> object:
    return tiny_run(adapter=AdapterConfig(method=method, rank=4, alpha=8),
                    attack=AttackConfig(kind="badnets", poison_rate=0.1, target_label=1),
                    train=TrainConfig(steps=steps, batch_size=16, lr=lr, log_every=5, checkpoint_every=10))


def _logits(model, tokens, mask):
    return np.asarray(model(jnp.asarray(tokens), jnp.asarray(mask)), np.float64)


@pytest.fixture(scope="module")
def prepared_lora():
    from lorasec.pipelines.run import prepare_run

    return prepare_run(_backdoor())


def test_the_linearised_network_equals_the_network_at_its_start(prepared_lora):
    model = prepared_lora.model
    linear = linearised.Linearised(nnx.clone(model), lora.trainable_filter(prepared_lora.cfg.adapter))
    tokens, mask = prepared_lora.member.data.tokens[:8], prepared_lora.member.data.mask[:8]
    assert np.allclose(_logits(linear, tokens, mask), _logits(model, tokens, mask), atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lora", "full"])
def test_linearised_training_follows_the_real_run_at_a_tiny_rate_and_departs_at_a_large_one(method):
    """The gap between the trained network and the trained linearisation, relative to how far training moved the
    logits: second order in the step, so small at lr 1e-5 and of the order of the change itself at a large rate."""
    from lorasec.pipelines.run import prepare_run

    gaps = {}
    for lr in (1e-5, 1e-1 if method == "lora" else 3e-2):
        cfg = _backdoor(method, lr)
        run = prepare_run(cfg)
        trainable = lora.trainable_filter(cfg.adapter)
        tokens, mask = run.member.data.tokens[:64], run.member.data.mask[:64]
        start = _logits(run.model, tokens, mask)
        real, linear = nnx.clone(run.model), linearised.Linearised(nnx.clone(run.model), trainable)
        for model in (real, linear):
            fit(model, trainable, run.member.data, cfg.train, seed=cfg.seed, progress=False)
        moved = np.abs(_logits(real, tokens, mask) - start).max()
        gaps[lr] = np.abs(_logits(real, tokens, mask) - _logits(linear, tokens, mask)).max() / moved
    small, large = gaps.values()
    assert small < 0.02, gaps
    assert large > 0.1, gaps


def test_the_linearised_network_trains_with_dropout():
    """The synthetic task's default dropout (0.1): a stream of the loss's Rngs may not advance inside the jvp, so
    the key is drawn before it (this raised TraceContextError)."""
    from conftest import TINY_MODEL

    from lorasec.pipelines.run import prepare_run

    cfg = tiny_run(model=dataclasses.replace(TINY_MODEL, dropout=0.1), adapter=AdapterConfig(rank=4, alpha=8),
                   attack=AttackConfig(kind="badnets", poison_rate=0.1, target_label=1),
                   train=TrainConfig(steps=4, batch_size=16, log_every=2, checkpoint_every=4))
    run = prepare_run(cfg)
    trainable = lora.trainable_filter(cfg.adapter)
    linear = linearised.Linearised(nnx.clone(run.model), trainable)
    tokens, mask = jnp.asarray(run.member.data.tokens[:8]), jnp.asarray(run.member.data.mask[:8])
    key = jax.random.key(3)
    same = np.asarray(run.model(tokens, mask, rngs=nnx.Rngs(dropout=nnx.Rngs(dropout=key).dropout())))
    assert np.allclose(np.asarray(linear(tokens, mask, rngs=nnx.Rngs(dropout=key))), same, atol=1e-5)
    result = fit(linear, trainable, run.member.data, cfg.train, seed=cfg.seed, progress=False)
    assert np.isfinite(result.final_loss)


def test_the_linearised_run_refuses_what_it_does_not_model():
    cfg = tiny_run(adapter=AdapterConfig(rank=4, alpha=8, rora_tr=1.0))
    with pytest.raises(linearised.ConfigError, match="adapter.rora_tr"):
        linearised.check_linearisable(cfg)


def _planted_probe(k_size: int = 6):
    """Clean rows 0-5 (labels 0,0,0,1,1,1), triggered rows 6-8 (labels 0), target 1."""
    labels = np.array([0, 0, 0, 1, 1, 1, 0, 0, 0])
    kind = np.array(["clean"] * 6 + ["triggered"] * 3)
    return drift.Probe(np.zeros((9, 4), np.int32), np.ones((9, 4), bool), labels, kind,
                       np.array([0, 1, 2, 3, 4, 5, 0, 1, 2]), 1)


def test_trigger_target_alignment_on_planted_kernels():
    probe = _planted_probe()
    toward_target = np.eye(9)
    toward_target[np.ix_([6, 7, 8], [3, 4, 5])] = toward_target[np.ix_([3, 4, 5], [6, 7, 8])] = 0.8
    assert drift.trigger_target_alignment(toward_target, probe) == pytest.approx(0.8)
    toward_own = np.eye(9)
    toward_own[np.ix_([6, 7, 8], [0, 1, 2])] = toward_own[np.ix_([0, 1, 2], [6, 7, 8])] = 0.5
    assert drift.trigger_target_alignment(toward_own, probe) == pytest.approx(-0.5)
    twins_only = np.eye(9)  # each triggered sentence close to its own clean copy alone: no pull either way
    twins_only[[6, 7, 8], [0, 1, 2]] = twins_only[[0, 1, 2], [6, 7, 8]] = 0.9
    assert drift.trigger_target_alignment(twins_only, probe) == pytest.approx(0.0)
    assert drift.relative_change(toward_own, toward_own) == 0.0
    assert drift.relative_change(np.eye(2), 2 * np.eye(2)) == pytest.approx(1.0)


@pytest.mark.slow
def test_drift_replays_the_run_it_measures(tmp_path):
    from lorasec.pipelines.drift import drift_of_run
    from lorasec.pipelines.run import train_run

    train_run(_backdoor(), tmp_path / "run", progress=False)
    record = drift_of_run(tmp_path / "run", every=10, probe_size=8)
    assert record["replay_difference"] < 1e-5  # one run trained alone, replayed alone: float32 noise only
    assert [s["step"] for s in record["snapshots"]] == [0, 10, 20]
    assert record["snapshots"][0]["relative_change"] == 0.0
    assert record["snapshots"][-1]["relative_change"] > 0.0
    assert record["probe"] == {"clean": 8, "triggered": 8, "poisoned": 8}
    from lorasec import cli

    # two clean sentences may hold one class only: an undefined alignment is written as null, not a traceback
    assert cli.main(["drift", str(tmp_path / "run"), "--every", "10", "--probe", "2",
                     "--json", str(tmp_path / "drift.json")]) == 0
    assert (tmp_path / "drift.json").is_file()


@pytest.mark.slow
def test_the_first_order_prediction_scales_with_the_schedule_and_the_gradient_estimate_is_exact_in_full(
        prepared_lora):
    run = prepared_lora
    cfg = run.cfg
    trainable = lora.trainable_filter(cfg.adapter)
    data = run.member.data
    everything = predictors.start_gradient(run.model, trainable, data.tokens, data.mask, data.labels,
                                           run.poisoned.indices, sample=len(data), seed=cfg.seed)
    graphdef, params, rest = nnx.split(run.model, trainable, ...)

    def mean_loss(p):
        from lorasec.training.losses import classification_loss

        batch = {"tokens": jnp.asarray(data.tokens), "mask": jnp.asarray(data.mask), "labels": jnp.asarray(data.labels)}
        return classification_loss(nnx.merge(graphdef, p, rest), batch, None)

    exact = nnx.to_pure_dict(jax.grad(mean_loss)(params))
    for a, b in zip(jax.tree.leaves(everything), jax.tree.leaves(exact)):
        assert np.allclose(a, b, atol=1e-5 * max(1.0, float(np.abs(b).max())))
    inputs = evaluation_inputs(cfg, run.test, run.encoder)
    # the NTK direction is the kernel regime's: J(x) g0 = (1/n) sum_i K(x, x_i) r_i, r_i = softmax - onehot
    from lorasec.diagnostics import kernel

    probe_t, probe_m = inputs.clean[0][:4], inputs.clean[1][:4]
    k = np.asarray(kernel.empirical_ntk(run.model, probe_t, probe_m, data.tokens, data.mask, subset=trainable,
                                        trace_axes=()), np.float64)  # (4, n, C, C)
    logits = _logits(run.model, data.tokens, data.mask)
    residual = np.exp(logits - logits.max(-1, keepdims=True))
    residual = residual / residual.sum(-1, keepdims=True) - np.eye(logits.shape[-1])[data.labels]
    via_kernel = np.einsum("injc,nc->ij", k, residual) / len(data)
    _, push = predictors._programs(graphdef)
    _, (via_gradient,) = push(nnx.to_pure_dict(params), nnx.to_pure_dict(rest), jnp.asarray(probe_t),
                              jnp.asarray(probe_m), (everything,))
    assert np.allclose(np.asarray(via_gradient), via_kernel, rtol=1e-3, atol=1e-6 * np.abs(via_kernel).max())
    one = predictors.first_order(run.model, trainable, everything, cfg.train, inputs, 1)
    twice = predictors.first_order(run.model, trainable, everything,
                                   dataclasses.replace(cfg.train, lr=2 * cfg.train.lr), inputs, 1)
    assert twice["sign_margin_push"] == pytest.approx(2 * one["sign_margin_push"], rel=1e-4)
    assert predictors.schedule_sum(dataclasses.replace(cfg.train, lr=2 * cfg.train.lr)) == pytest.approx(
        2 * predictors.schedule_sum(cfg.train))
    none = predictors.first_order(run.model, trainable, everything, dataclasses.replace(cfg.train, lr=0.0), inputs, 1)
    own = np.mean(np.argmax(_logits(run.model, *inputs.clean), -1) == inputs.labels)
    assert none["ntk_clean_accuracy"] == pytest.approx(own) and none["sign_clean_accuracy"] == pytest.approx(own)


def _planted(relationship: bool, cells: int = 40, seeds: int = 5, noise: float = 0.05):
    rng = np.random.default_rng(1)
    rows = []
    for cell in range(cells):
        truth = cell / cells
        for _ in range(seeds):
            predicted = truth + noise * rng.normal()
            measured = (truth if relationship else rng.random()) + noise * rng.normal()
            rows.append((cell, predicted, measured))
    return rows


def test_the_scorer_recovers_a_planted_relationship_and_rejects_a_planted_absence():
    present = ranking.score(_planted(True), draws=500, permutations=2000)
    assert present["spearman"] > 0.9 and present["spearman_ci95"][0] > 0.8
    assert present["kendall"] > 0.7 and present["p_permutation"] < 0.001
    absent = ranking.score(_planted(False), draws=500, permutations=2000)
    low, high = absent["spearman_ci95"]
    assert low < 0 < high and absent["p_permutation"] > 0.05 and abs(absent["spearman"]) < 0.35


def test_rank_correlations_match_known_values():
    from scipy import stats

    x, y = [1, 2, 3, 4, 5], [2, 1, 4, 3, 5]
    got = ranking.rank_correlations(x, y)
    assert got["spearman"] == pytest.approx(stats.spearmanr(x, y).statistic) == pytest.approx(0.8)
    assert got["kendall"] == pytest.approx(0.6)
    assert np.isnan(ranking.rank_correlations([1, 1, 1], [1, 2, 3])["spearman"])
    # a predictor given for one seed of each cell stands for the cell
    rows = [(c, float(c) if s == 0 else None, c + 0.1 * s) for c in range(6) for s in range(3)]
    scored = ranking.score(rows, draws=200, permutations=200)
    assert scored["spearman"] == pytest.approx(1.0) and scored["runs"] == 18


TINY_SWEEP = """
seeds = [0, 1]
[axes]
"train.lr" = [1e-3, 1e-2, 3e-2]
[base]
model = {d_model = 16, num_layers = 1, num_heads = 2, d_ff = 32, dropout = 0.0}
adapter = {rank = 4, alpha = 8}
train = {steps = 10, batch_size = 16, log_every = 5, checkpoint_every = 10}
attack = {kind = "badnets", poison_rate = 0.1, target_label = 1}
[base.data]
num_train = 256
num_test = 128
vocab_size = 60
cue_words_per_class = 4
min_len = 6
max_len = 10
seq_len = 14
cue_strength = 1.0
"""


def _tiny_predict(tmp_path, claims: str = "") -> str:
    (tmp_path / "sweep.toml").write_text(TINY_SWEEP)
    (tmp_path / "predict.toml").write_text('sweep = "sweep.toml"\nprobe_size = 4\ngradient_sample = 16\n'
                                           'drift_every = 5\nbootstrap_draws = 100\n' + claims)
    return str(tmp_path / "predict.toml")


def test_predict_and_drift_refuse_bad_input_in_one_line(tmp_path, capsys):
    from lorasec import cli

    spec = _tiny_predict(tmp_path, '[[claims]]\npredictor = "m_primes"\n')
    assert cli.main(["predict", spec, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "claims[0].predictor = 'm_primes'" in err
    (tmp_path / "predict.toml").write_text('sweep = "missing.toml"\n')
    assert cli.main(["predict", spec, "--out", str(tmp_path / "out")]) == 2
    assert "no such sweep spec" in capsys.readouterr().err
    spec = _tiny_predict(tmp_path, "")
    assert cli.main(["predict", spec, "--out", str(tmp_path / "out"), "--set", "predictor_seeds=[9]"]) == 2
    assert "predictor_seeds = [9]: seed 9 is not one of the sweep's seeds" in capsys.readouterr().err
    assert cli.main(["drift", str(tmp_path)]) == 2
    assert "not a finished lorasec run" in capsys.readouterr().err
    assert cli.main(["drift", str(tmp_path), "--every", "0"]) == 2


@pytest.mark.slow
def test_predict_writes_predictions_before_training_then_scores_them(tmp_path, capsys):
    import json

    from lorasec import cli

    spec = _tiny_predict(tmp_path, '[[claims]]\npredictor = "sign_margin_push"\nspearman_at_least = 0.5\n'
                                   'lower_at_least = -1.0\n')
    out = tmp_path / "out"
    assert cli.main(["predict", spec, "--out", str(out), "--no-train", "--no-progress"]) == 0
    assert len(list((out / "predictors").glob("*.json"))) == 6
    assert not list((out / "sweep" / "runs").glob("*/results.json"))  # nothing trained yet
    assert cli.main(["predict", spec, "--out", str(out), "--no-progress"]) == 0
    summary = json.loads((out / "report" / "summary.json").read_text())
    assert summary["cells"] == 3 and len(summary["runs"]) == 6
    assert all(row["attack_success_rate"] is not None for row in summary["runs"])
    assert sum(row.get("linearised_attack_success_rate") is not None for row in summary["runs"]) == 3  # seed 0
    assert summary["claims"][0]["verdict"] in ("agrees", "disagrees", "inconclusive")
    assert max(d["replay_difference"] for d in summary["drift"]) < 1e-4
    for name in ("report.md", "results.csv", "calibration-attack_success_rate.png", "drift.png"):
        assert (out / "report" / name).is_file(), name
    assert "sign_margin_push" in capsys.readouterr().out
    # one seed per cell: the other seeds' records are neither scored nor counted in the cost
    assert cli.main(["predict", spec, "--out", str(out), "--no-progress", "--set", "predictor_seeds=[0]"]) == 0
    one = json.loads((out / "report" / "summary.json").read_text())
    assert one["predictor_seeds"] == [0] and summary["predictor_seeds"] == [0, 1]
    assert all((row.get("sign_margin_push") is None) == (row["seed"] != 0) for row in one["runs"])
    records = {p.stem: json.loads(p.read_text())["wall_seconds"] for p in (out / "predictors").glob("*.json")}
    assert len(records) == 6 and one["cost"]["predictors_seconds"] == pytest.approx(
        sum(v for k, v in records.items() if k.endswith("-seed0")))
    assert "predictors computed for seed 0 of each cell" in (out / "report" / "report.md").read_text()
    # a changed setting makes its records again; the others are kept
    before = {p.name: p.stat().st_mtime_ns for p in (out / "linearised").glob("*.json")}
    assert cli.main(["predict", spec, "--out", str(out), "--no-train", "--no-progress", "--set", "probe_size=5"]) == 0
    assert all(json.loads(p.read_text())["key"].endswith("-probe5-sample16") for p in (out / "predictors").glob("*"))
    assert before == {p.name: p.stat().st_mtime_ns for p in (out / "linearised").glob("*.json")}
    # a moved output keeps its records: the sweep's own encoder is named relative to the output
    moved = tmp_path / "elsewhere" / "out"
    moved.parent.mkdir()
    out.rename(moved)
    kept = {p.name: p.stat().st_mtime_ns for p in (moved / "linearised").glob("*.json")}
    assert cli.main(["predict", spec, "--out", str(moved), "--no-train", "--no-progress", "--set", "probe_size=5"]) == 0
    assert kept == {p.name: p.stat().st_mtime_ns for p in (moved / "linearised").glob("*.json")}


def test_batches_pad_to_one_shape_and_mark_the_real_rows():
    batches = list(predictors._batches(5, 2))
    assert [real for _, real in batches] == [2, 2, 1]
    assert all(len(rows) == 2 for rows, _ in batches) and batches[-1][0].tolist() == [4, 0]
    assert list(predictors._batches(0, 0)) == [] and list(predictors._batches(0, 4)) == []

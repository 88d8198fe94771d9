"""Trainer: compiles once, resumes bit-identically after a kill, stops on a non-finite loss."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_run
from flax import nnx

from lorasec import config
from lorasec.adapters import lora
from lorasec.config import TrainConfig
from lorasec.core.errors import ConfigError, TrainingDiverged
from lorasec.data.tasks import load_task
from lorasec.pipelines import start as starts
from lorasec.pipelines.run import build_model, train_run
from lorasec.training import trainer
from lorasec.training.step import TrainStep, make_schedule


def _setup(cfg):
    train_set, _ = load_task(cfg.data)
    start = starts.resolve(cfg, train_set)
    tokens, mask = start.encoder.encode(train_set.texts)
    return build_model(cfg, start), trainer.ArrayData(tokens, mask, train_set.labels)


def test_train_step_compiles_once_for_host_committed_and_uncommitted_inputs():
    cfg = tiny_run()
    model, data = _setup(cfg)
    step = TrainStep(model, lora.trainable_filter(cfg.adapter), cfg.train, seed=0)
    device = jax.devices()[0]
    host = [data.take(trainer.batch_indices(k, len(data), 16, seed=0)) for k in range(6)]
    placed = [host[0], host[1], jax.device_put(host[2], device), jax.device_put(host[3]),
              jax.tree.map(jnp.asarray, host[4]), {**host[5], "tokens": host[5]["tokens"].astype(np.int64)}]
    losses = [float(step(batch)) for batch in placed]
    assert step.compilations == 1 and step.steps == 6 and all(np.isfinite(losses))


@pytest.mark.slow
def test_train_step_repeats_fit_and_its_scan_repeats_single_steps():
    cfg = tiny_run(train=TrainConfig(steps=6, batch_size=16, log_every=3, steps_per_dispatch=3))
    model, data = _setup(cfg)
    filt = lora.trainable_filter(cfg.adapter)
    batches = [data.take(trainer.batch_indices(k, len(data), 16, seed=cfg.seed)) for k in range(6)]
    single = TrainStep(model, filt, cfg.train, seed=cfg.seed)
    for batch in batches:
        single(batch)
    scanned = TrainStep(model, filt, cfg.train, seed=cfg.seed)
    stacked = {name: np.stack([b[name] for b in batches]) for name in batches[0]}
    losses = scanned.run({name: value[:3] for name, value in stacked.items()})
    scanned.run({name: value[3:] for name, value in stacked.items()})
    assert losses.shape == (3,) and scanned.compilations == 1
    fitted = trainer.fit(model, filt, data, cfg.train, seed=cfg.seed, progress=False)
    trained = nnx.state(model, filt)  # fit wrote its result into the model; the steps left it alone until now
    for step in (single, scanned):
        for ours, theirs in zip(jax.tree.leaves(jax.device_get(step.trainable)), jax.tree.leaves(trained)):
            np.testing.assert_allclose(ours, theirs, rtol=2e-5, atol=1e-6)
    assert np.isfinite(fitted.final_loss)


def test_train_step_refuses_a_malformed_batch_by_name():
    cfg = tiny_run()
    model, data = _setup(cfg)
    step = TrainStep(model, lora.trainable_filter(cfg.adapter), cfg.train)
    batch = data.take(np.arange(16))
    with pytest.raises(ConfigError, match="missing labels"):
        step({"tokens": batch["tokens"], "mask": batch["mask"]})
    with pytest.raises(ConfigError, match="disagree"):
        step({**batch, "labels": batch["labels"][:8]})
    with pytest.raises(ConfigError, match="steps, B, L"):
        step.run(batch)


def test_fit_compiles_once_across_checkpoints_and_resume(tmp_path):
    cfg = tiny_run(train=TrainConfig(steps=12, batch_size=16, checkpoint_every=4, log_every=2))
    first = train_run(config.replace_config(cfg, train={"steps": 8}), tmp_path / "a", progress=False)
    assert first["train_step_compilations"] == 1
    results = train_run(cfg, tmp_path / "b", progress=False)
    assert results["train_step_compilations"] == 1 and results["steps"] == 12


def test_batches_are_a_pure_function_of_seed_and_step():
    a = trainer.batch_indices(37, 100, 16, seed=3)
    assert np.array_equal(a, trainer.batch_indices(37, 100, 16, seed=3))
    epoch = np.concatenate([trainer.batch_indices(s, 100, 16, seed=3) for s in range(6)])
    assert len(set(epoch.tolist())) == 96  # one epoch visits distinct examples, tail of 4 dropped


def test_schedules():
    warm = make_schedule(TrainConfig(lr=1.0, steps=10, warmup_steps=5, schedule="warmup_linear"))
    assert float(warm(0)) == 0.0 and float(warm(5)) == pytest.approx(1.0) and float(warm(10)) == pytest.approx(0.0)
    assert float(make_schedule(TrainConfig(lr=0.3))(1000)) == pytest.approx(0.3)


@pytest.mark.parametrize("schedule", config.SCHEDULES)
def test_every_schedule_takes_a_traced_learning_rate_as_ensembles_need(schedule):
    import jax
    import optax

    cfg = TrainConfig(lr=0.5, steps=10, warmup_steps=4 if schedule != "constant" else 0, schedule=schedule)
    steps = np.arange(11)
    traced = jax.vmap(lambda lr: jax.vmap(make_schedule(cfg, lr))(steps))(np.float32([0.5, 1.0]))
    plain = np.array([make_schedule(cfg)(s) for s in steps])
    np.testing.assert_allclose(traced[0], plain, rtol=1e-6)
    np.testing.assert_allclose(traced[1], 2 * plain, rtol=1e-6)
    if schedule == "warmup_cosine":  # the spelled-out form equals optax's own
        reference = optax.warmup_cosine_decay_schedule(0.0, 0.5, 4, 10)
        np.testing.assert_allclose(plain, [reference(s) for s in steps], rtol=1e-6, atol=1e-9)


def test_non_finite_loss_stops_with_step_and_last_finite_loss():
    cfg = tiny_run(train=TrainConfig(steps=30, batch_size=16, lr=1e30, grad_clip=0.0))
    model, data = _setup(config.replace_config(cfg, adapter={"method": "full"}))
    with pytest.raises(TrainingDiverged, match=r"loss became nan or inf in steps \d+–\d+; last finite loss"):
        trainer.fit(model, nnx.Param, data, cfg.train, seed=0, progress=False)


def _params(run_dir: Path):
    import orbax.checkpoint as ocp

    with ocp.StandardCheckpointer() as ckpt:
        return ckpt.restore((run_dir / "params").resolve())


@pytest.mark.slow
def test_resume_after_kill_is_bit_identical(tmp_path):
    cfg = tiny_run(train=TrainConfig(steps=400, batch_size=16, checkpoint_every=25, log_every=25),
                   attack=config.AttackConfig(kind="badnets", poison_rate=0.05))
    path = tmp_path / "run.json"
    path.write_text(json.dumps(config.to_dict(cfg)))
    command = [sys.executable, "-m", "lorasec.cli", "train", str(path), "--no-progress"]
    killed = tmp_path / "killed"
    proc = subprocess.Popen(command + ["--out", str(killed)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    checkpoints = killed / "checkpoints"
    while time.time() < deadline and proc.poll() is None:
        if checkpoints.is_dir() and any(p.name.isdigit() and int(p.name) >= 50 for p in checkpoints.iterdir()):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed: " + proc.stderr.read().decode()[-500:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "results.json").exists()

    resumed = subprocess.run(command + ["--out", str(killed)], capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    straight = subprocess.run(command + ["--out", str(tmp_path / "straight")], capture_output=True, text=True,
                              timeout=600)
    assert straight.returncode == 0, straight.stderr[-2000:]

    results = json.loads((killed / "results.json").read_text())
    assert 0 < results["resumed_from_step"] < 400
    a, b = _params(killed), _params(tmp_path / "straight")
    leaves_a, tree_a = jax.tree_util.tree_flatten(a)
    leaves_b, tree_b = jax.tree_util.tree_flatten(b)
    assert tree_a == tree_b
    for x, y in zip(leaves_a, leaves_b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    steps = [json.loads(line)["step"] for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(25, 401, 25))  # no step logged twice after the resume


def test_finished_run_is_not_redone_and_other_config_is_refused(tmp_path):
    cfg = tiny_run(train=TrainConfig(steps=4, batch_size=16))
    first = train_run(cfg, tmp_path, progress=False)
    assert train_run(cfg, tmp_path, progress=False) == first
    with pytest.raises(config.ConfigError, match="holds a run with train.lr"):
        train_run(config.replace_config(cfg, train={"lr": 5e-4}), tmp_path, progress=False)
    # a run made before a field existed (here data.max_train) still counts as the same run at its default
    stored = json.loads((tmp_path / "config.json").read_text())
    del stored["data"]["max_train"]
    (tmp_path / "config.json").write_text(json.dumps(stored))
    assert train_run(cfg, tmp_path, progress=False) == first


def test_a_synthetic_knob_decides_a_synthetic_run_only(tmp_path):
    """The synthetic generator's knobs (their defaults may change: cue_strength went 1.0 -> 0.9) do not decide a run
    on a file or real data set, so its finished run is reused; on the synthetic task they do."""
    import csv

    from lorasec.data import synthetic

    train, test = synthetic.train_test(config.DataConfig(num_train=64, num_test=32))
    for name, data in (("train.csv", train), ("test.csv", test)):
        with (tmp_path / name).open("w", newline="") as handle:
            csv.writer(handle).writerows([("text", "label"), *zip(data.texts, map(str, data.labels))])
    steps = TrainConfig(steps=2, batch_size=16)
    on_file = tiny_run(data=config.DataConfig(source="file", train_file=str(tmp_path / "train.csv"),
                                              test_file=str(tmp_path / "test.csv"), cue_strength=1.0), train=steps)
    first = train_run(on_file, tmp_path / "file", progress=False)
    assert train_run(config.replace_config(on_file, data={"cue_strength": 0.9}), tmp_path / "file", progress=False) == first
    synthetic_run = tiny_run(train=steps)
    train_run(synthetic_run, tmp_path / "synthetic", progress=False)
    with pytest.raises(ConfigError, match="holds a run with data.cue_strength"):
        train_run(config.replace_config(synthetic_run, data={"cue_strength": 0.5}), tmp_path / "synthetic", progress=False)


def test_train_on_a_run_directory_uses_it(tmp_path, capsys, monkeypatch):
    from lorasec import cli

    monkeypatch.chdir(tmp_path)
    run = tmp_path / "elsewhere" / "myrun"
    first = train_run(tiny_run(train=TrainConfig(steps=3, batch_size=16)), run, progress=False)
    assert cli.main(["train", str(run), "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out.split("run directory")[0])["clean_accuracy"] == first["clean_accuracy"]
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_training_runs_in_float64_under_x64(x64):
    cfg = tiny_run(train=TrainConfig(steps=6, batch_size=16, log_every=3, steps_per_dispatch=4))
    results = train_run(cfg, progress=False)  # the last dispatch holds 2 steps and 2 skipped ones
    model, data = _setup(cfg)
    step = TrainStep(model, lora.trainable_filter(cfg.adapter), cfg.train)
    assert step(data.take(np.arange(16))).dtype == np.float64
    assert np.isfinite(results["final_loss"]) and results["steps"] == 6


@pytest.mark.slow
def test_bfloat16_compute_keeps_float32_master_weights_and_tracks_float32_losses():
    cfg = tiny_run()
    model, data = _setup(cfg)
    filt = lora.trainable_filter(cfg.adapter)
    batches = [data.take(trainer.batch_indices(k, len(data), 16, seed=0)) for k in range(8)]
    runs = {}
    for dtype in ("float32", "bfloat16"):
        step = TrainStep(model, filt, config.replace_config(cfg, train={"compute_dtype": dtype}).train, dropout=False)
        runs[dtype] = np.array([float(step(b)) for b in batches])
        assert {leaf.dtype for leaf in jax.tree.leaves(step.trainable)} == {np.dtype(np.float32)}
    gap = np.abs(runs["bfloat16"] - runs["float32"])
    assert gap.max() < 0.05 * runs["float32"].max() and gap.max() > 0  # bfloat16 rounds: close, not equal


def test_host_draws_follow_the_key_tree():
    from lorasec.core import keys

    for seed, stream, path in [(0, "batches", (0,)), (7, "batches", (3,)), (2**31 + 3, "poison", ()),
                               (12, "dropout", (1, 2, 3))]:
        reference = np.random.default_rng(np.asarray(jax.random.key_data(keys.key(seed, stream, *path))).tolist())
        assert np.array_equal(keys.numpy_rng(seed, stream, *path).integers(0, 2**31, 8),
                              reference.integers(0, 2**31, 8))
    with pytest.raises(ValueError, match="unknown key stream"):
        keys.numpy_rng(0, "nope")

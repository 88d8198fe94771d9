"""Sweeps: ensemble members equal single runs; 8 devices and 2 processes equal 1; a killed sweep resumes; specs
are validated with one-line errors; tables and plots."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from conftest import TINY_DATA, TINY_MODEL

from lorasec import config
from lorasec.config import ConfigError
from lorasec.core import files
from lorasec.pipelines import rundir
from lorasec.pipelines.run import train_run
from lorasec.pipelines.sweep import read_table, run_name, run_sweep
from lorasec.sweep_spec import load_spec

BASE = {
    "data": config.to_dict(TINY_DATA),
    "model": config.to_dict(TINY_MODEL),
    "adapter": {"rank": 4, "alpha": 8},
    "train": {"steps": 20, "batch_size": 16, "log_every": 5, "checkpoint_every": 10},
    "attack": {"kind": "badnets"},
}
SPEC = {
    "seeds": [0, 1],
    "base": BASE,
    "axes": {"attack.poison_rate": [0.05, 0.2]},
    "zip": [{"adapter.method": ["full", "lora"], "train.lr": [1e-3, 3e-3]}],
}


def _write(path: Path, spec: dict) -> Path:
    path.write_text(json.dumps(spec))
    return path


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    spec = load_spec(_write(root / "spec.json", SPEC))
    run_sweep(spec, root / "out", progress=False)
    return spec, root / "out"


def _params(run_dir: Path):
    with ocp.StandardCheckpointer() as ckpt:
        return ckpt.restore((run_dir / "params").resolve())


def test_ensemble_member_equals_the_same_run_trained_alone(swept, tmp_path):
    spec, out = swept
    rows = read_table(out)
    assert {r["group_members"] for r in rows} == {4}  # full and LoRA: two programs of 4 runs each
    for cell in (spec.cells()[1], spec.cells()[2]):  # a LoRA cell and a full fine-tuning cell
        cfg = cell.configs[1]
        alone = train_run(cfg, tmp_path / str(cell.index), progress=False)
        member = json.loads((out / "runs" / run_name(cell, 1) / "results.json").read_text())
        for key in ("clean_accuracy", "attack_success_rate", "triggered_accuracy", "per_trigger"):
            assert alone[key] == member[key], key
        assert alone["final_loss"] == pytest.approx(member["final_loss"], rel=1e-5)
        a = jax.tree_util.tree_flatten_with_path(_params(tmp_path / str(cell.index)))[0]
        b = jax.tree.leaves(_params(out / "runs" / run_name(cell, 1)))
        for (path, x), y in zip(a, b):
            diff = float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
            name = jax.tree_util.keystr(path)
            if "'key'" in name and "'bias'" in name:
                # The key bias has a zero gradient in exact arithmetic (softmax ignores a per-query shift), so its
                # gradient is round-off, which Adam normalises to steps of about lr: bounded, not small.
                assert diff <= 2 * cfg.train.lr * cfg.train.steps, name
            else:
                assert diff <= 1e-5 * max(1.0, float(np.max(np.abs(np.asarray(x))))), (name, diff)


@pytest.mark.slow
def test_ranks_share_one_program_and_a_padded_member_equals_its_rank_alone(tmp_path):
    spec = dict(SPEC, seeds=[0], axes={}, zip=[{"adapter.rank": [2, 4, 8], "adapter.alpha": [4.0, 8.0, 16.0]}])
    path = _write(tmp_path / "spec.json", spec)
    run_sweep(load_spec(path), tmp_path / "out", progress=False)
    table = read_table(tmp_path / "out")
    assert [r["group_members"] for r in table] == [3, 3, 3]  # one program, padded to rank 8
    for index in (0, 1):
        cell = load_spec(path).cells()[index]
        alone = train_run(cell.configs[0], tmp_path / f"alone{index}", progress=False)
        member_dir = tmp_path / "out" / "runs" / run_name(cell, 0)
        member = json.loads((member_dir / "results.json").read_text())
        assert alone["clean_accuracy"] == member["clean_accuracy"]
        assert alone["attack_success_rate"] == member["attack_success_rate"]
        assert alone["trainable_parameters"] == member["trainable_parameters"]
        a, b = _params(tmp_path / f"alone{index}"), _params(member_dir)
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
            assert np.asarray(x).shape == np.asarray(y).shape  # saved at the run's own rank
            np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)


def test_tables_hold_every_run_and_cell(swept):
    spec, out = swept
    rows = read_table(out)
    assert len(rows) == 8 and {r["seed"] for r in rows} == {0, 1}
    assert {(r["attack.poison_rate"], r["adapter.method"], r["train.lr"]) for r in rows} == {
        (0.05, "full", 1e-3), (0.05, "lora", 3e-3), (0.2, "full", 1e-3), (0.2, "lora", 3e-3)}
    header = (out / "results.csv").read_text().splitlines()[0].split(",")
    assert header[:4] == ["cell", "attack.poison_rate", "adapter.method", "train.lr"]
    groups = list((out / "groups").iterdir())  # finished groups keep their record, not their checkpoints
    assert groups and all((g / "group.json").is_file() and not (g / "checkpoints").exists() for g in groups)
    summary = json.loads((out / "summary.json").read_text())["cells"]
    for cell in summary:
        values = [r["clean_accuracy"] for r in rows if r["cell"] == cell["cell"]]
        assert cell["clean_accuracy"]["mean"] == pytest.approx(np.mean(values))
        assert cell["clean_accuracy"]["n"] == 2
        assert cell["clean_accuracy"]["ci95"] == pytest.approx(12.706 * np.std(values, ddof=1) / np.sqrt(2), rel=1e-3)


def test_a_finished_sweep_run_again_trains_nothing_and_keeps_its_table(swept):
    spec, out = swept
    before = read_table(out)
    stamps = sorted((p, p.stat().st_mtime_ns) for p in (out / "runs").glob("*/results.json"))
    run_sweep(spec, out, progress=False)
    assert read_table(out) == before
    assert sorted((p, p.stat().st_mtime_ns) for p in (out / "runs").glob("*/results.json")) == stamps


def test_a_group_killed_while_writing_its_runs_resumes_from_its_own_checkpoint(swept, tmp_path, monkeypatch):
    spec, straight = swept
    from lorasec.pipelines import sweep

    written = []
    real_finish = sweep.finish_run

    def finish_then_die(*args, **kwargs):
        if len(written) == 3:
            raise KeyboardInterrupt  # killed after three runs of the first group were written
        written.append(real_finish(*args, **kwargs))
        return written[-1]

    monkeypatch.setattr(sweep, "finish_run", finish_then_die)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        run_sweep(spec, out, progress=False)
    (group,) = [g for g in (out / "groups").iterdir() if (g / "checkpoints").is_dir()]
    monkeypatch.setattr(sweep, "finish_run", real_finish)
    run_sweep(spec, out, progress=False)
    assert _metrics(out) == _metrics(straight) and np.array_equal(_losses(out), _losses(straight))
    rest = [r for r in read_table(out) if r["run"] in json.loads((group / "group.json").read_text())["runs"]
            and r["resumed_from_step"]]
    assert len(rest) == 1 and rest[0]["resumed_from_step"] == rest[0]["steps"]  # nothing was trained again
    assert sorted(g.name for g in (out / "groups").iterdir()) == sorted(g.name for g in (straight / "groups").iterdir())
    assert not any((g / "checkpoints").exists() for g in (out / "groups").iterdir())  # none left behind


def test_a_moved_sweep_is_read_and_resumed_where_it_is_now(tmp_path):
    spec = load_spec(_write(tmp_path / "spec.json", dict(SPEC, seeds=[0], axes={}, pretrain_steps=5, zip=[
        {"adapter.method": ["lora", "full"], "train.lr": [3e-3, 1e-3]}])))
    run_sweep(spec, tmp_path / "there", progress=False)
    before = _metrics(tmp_path / "there")
    shutil.move(tmp_path / "there", tmp_path / "moved")
    out = tmp_path / "moved"
    runs = sorted((out / "runs").iterdir())
    stamps = [(r / "params").stat().st_mtime_ns for r in runs]
    from lorasec.pipelines.run import load_run

    loaded = load_run(runs[0])  # read where it is now, before anything rewrote it
    assert loaded.results["clean_accuracy"] == json.loads((runs[0] / "results.json").read_text())["clean_accuracy"]
    run_sweep(spec, out, progress=False)
    assert _metrics(out) == before and [(r / "params").stat().st_mtime_ns for r in runs] == stamps
    for run in runs:  # re-anchored in place: the config names the encoder where it is now
        assert json.loads((run / "config.json").read_text())["model"]["pretrained"] == str((out / "pretrained")
                                                                                          .resolve())
        load_run(run)


@pytest.mark.slow
def test_a_spec_that_gains_an_axis_value_reuses_the_runs_it_already_finished(swept, tmp_path):
    spec, out = swept
    grown_out = tmp_path / "grown"
    shutil.copytree(out, grown_out)
    before = {(r["attack.poison_rate"], r["adapter.method"], r["seed"]): r for r in read_table(out)}
    stamps = {p.name.split("-", 1)[1]: [(p / f).stat().st_mtime_ns for f in ("results.json", "metrics.jsonl")]
              for p in (grown_out / "runs").iterdir() if (p / "results.json").is_file()}
    grown = dict(SPEC, axes={"attack.poison_rate": [0.01, 0.05, 0.2]})  # every cell number moves
    run_sweep(load_spec(_write(tmp_path / "grown.json", grown)), grown_out, progress=False)
    rows = read_table(grown_out)
    assert len(rows) == 12
    for row in rows:
        key = (row["attack.poison_rate"], row["adapter.method"], row["seed"])
        if key in before:
            assert row["clean_accuracy"] == before[key]["clean_accuracy"]
            run = grown_out / "runs" / row["run"]  # neither retrained nor its loss log rewritten
            assert [(run / f).stat().st_mtime_ns for f in ("results.json", "metrics.jsonl")] == stamps[
                row["run"].split("-", 1)[1]]
        else:
            assert row["attack.poison_rate"] == 0.01 and row["resumed_from_step"] == 0
            new = files.read_json(grown_out / "runs" / row["run"] / "results.json")
            assert new["group_members"] == 2  # its method's two new runs alone, not the 4 finished beside them


def test_plot_writes_png_and_pdf_and_names_bad_columns(swept, tmp_path):
    from lorasec.cli import main

    _, out = swept
    assert main(["plot", str(out), "--x", "attack.poison_rate", "--hue", "adapter.method",
                 "--out", str(tmp_path / "p")]) == 0
    assert (tmp_path / "p.png").stat().st_size > 1000 and (tmp_path / "p.pdf").stat().st_size > 1000
    assert main(["plot", str(out), "--x", "attack.poison_rat"]) == 2
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "results.jsonl").write_text('{"cell": 0,\n')
    with pytest.raises(ConfigError, match="is damaged .*run the same `lorasec sweep` again"):
        read_table(damaged)


def test_a_second_sweep_on_the_same_directory_is_refused(tmp_path):
    spec = load_spec(_write(tmp_path / "spec.json", SPEC))
    with rundir.exclusive(tmp_path / "out"):
        with pytest.raises(ConfigError, match="in use by another lorasec process"):
            run_sweep(spec, tmp_path / "out", progress=False)


def test_a_diverging_member_is_reported_and_leaves_the_others_alone(tmp_path):
    spec = dict(SPEC, seeds=[0], axes={}, zip=[{"train.lr": [1e-3, 1e30]}])
    spec["base"] = dict(BASE, adapter={"method": "full"}, train=dict(BASE["train"], grad_clip=0.0))
    rows = run_sweep(load_spec(_write(tmp_path / "spec.json", spec)), tmp_path / "out", progress=False)
    table = read_table(tmp_path / "out")
    assert table[0]["diverged_steps"] is None and table[0]["clean_accuracy"] is not None
    first, last = table[1]["diverged_steps"]
    assert 1 <= first <= last <= 20 and table[1]["clean_accuracy"] is None
    assert rows[1]["clean_accuracy"]["n"] == 0
    alone = train_run(spec_config(tmp_path / "spec.json", 0), tmp_path / "alone", progress=False)
    assert alone["clean_accuracy"] == table[0]["clean_accuracy"]


def spec_config(path: Path, cell: int):
    return load_spec(path).cells()[cell].configs[0]


@pytest.mark.parametrize("change, message", [
    ({"axes": {"attack.poison_rat": [0.1]}}, r"^axes\.attack\.poison_rat: unknown field; did you mean 'poison_rate'"),
    ({"axes": {"attack": [0.1]}}, r"^axes\.attack: is a section"),
    ({"axes": {"seed": [1, 2]}}, r"^axes\.seed: list the seeds in `seeds`"),
    ({"axes": {"train.lr": []}}, r"^axes\.train\.lr = \[\]: must be a non-empty list"),
    ({"axes": {"train.lr": [0.1, -1.0]}}, r"^train\.lr = -1\.0: must be > 0 \(sweep cell 1: train\.lr=-1\.0, seed 0\)"),
    ({"zip": [{"train.lr": [1e-3, 1e-4], "adapter.method": ["full"]}]}, r"^zip\[0\]\.adapter\.method: has 1 values"),
    ({"axes": {"train.lr": [1e-3]}, "zip": {"train.lr": [1e-4]}}, r"^train\.lr: appears in two axes"),
    ({"seeds": [0, 0]}, r"^seeds = \[0, 0\]: lists a seed twice"),
    ({"seeds": []}, r"^seeds = \[\]: must list at least one seed"),
    ({"base": "missing.toml"}, r"^base = 'missing\.toml': run config file not found"),
    ({"base": {"train": {"lr": "fast"}}}, r"^base\.train\.lr = 'fast': must be a number"),
    ({"sweeps": 3}, r"^sweeps: unknown sweep field"),
    ({"max_members": -1}, r"^max_members = -1: must be >= 0"),
    ({"pad_ranks": "yes"}, r"^pad_ranks = 'yes': must be true or false"),
    ({"pretrain_steps": 10, "axes": {"model.d_model": [16, 32]}}, r"^axes: model\.d_model cannot vary"),
])
def test_spec_errors_are_one_line_and_name_the_field(tmp_path, change, message):
    path = _write(tmp_path / "spec.json", {"seeds": [0], "base": BASE, **change})
    with pytest.raises(ConfigError, match=message) as err:
        load_spec(path)
    assert "\n" not in str(err.value)


def test_set_overrides_change_the_base_of_every_cell(tmp_path):
    path = _write(tmp_path / "spec.json", SPEC)
    spec = load_spec(path, ["train.steps=7", "adapter.dropout=0.2"])
    assert {c.train.steps for cell in spec.cells() for c in cell.configs} == {7}
    assert {c.adapter.dropout for cell in spec.cells() for c in cell.configs} == {0.2}
    with pytest.raises(ConfigError, match=r"^train\.steps = 0: must be >= 1 \(sweep cell 0"):
        load_spec(path, ["train.steps=0"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sweep_command(spec: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "lorasec.cli", "sweep", str(spec), "--out", str(out), "--no-progress", *extra]


def _env(devices: int = 1) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return env


def _metrics(out: Path) -> list[tuple]:
    return [(r["run"], r["clean_accuracy"], r["attack_success_rate"], r["triggered_accuracy"])
            for r in read_table(out)]


def _losses(out: Path) -> np.ndarray:
    return np.array([r["final_loss"] for r in read_table(out)])


@pytest.mark.slow
def test_eight_devices_and_two_processes_give_the_table_of_one_device(tmp_path):
    spec = _write(tmp_path / "spec.json", dict(SPEC, seeds=[0, 1, 2]))  # 12 runs: 2 groups of 6, padded to 8
    one, eight, two = tmp_path / "one", tmp_path / "eight", tmp_path / "two"
    for out, devices in ((one, 1), (eight, 8)):
        done = subprocess.run(_sweep_command(spec, out), env=_env(devices), capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
    port = _free_port()
    procs = [subprocess.Popen(_sweep_command(spec, two, "--coordinator", f"127.0.0.1:{port}", "--num-processes",
                                             "2", "--process-id", str(i)), env=_env(1), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    for proc in procs:
        _, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, stderr[-2000:]
    for other in (eight, two):
        assert _metrics(other) == _metrics(one)
        np.testing.assert_allclose(_losses(other), _losses(one), rtol=1e-5)
    assert {r["group_members"] for r in read_table(two)} == {6}


_SAVING_ALONE = """
import sys, time
from pathlib import Path
import jax, numpy as np
process, port, out = int(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
jax.distributed.initialize(f"127.0.0.1:{port}", 2, process, initialization_timeout=60)
import orbax.checkpoint as ocp
from orbax.checkpoint._src.futures import future
from lorasec.config import TrainConfig
from lorasec.core import files
from lorasec.training import trainer

waiting = future.wait_for_signals
def late(*args, **kwargs):  # widens the window in which one process's clean-up meets the other's wait
    time.sleep(0.02)
    return waiting(*args, **kwargs)
future.wait_for_signals = late
state = {"w": np.full((16, 16), process, np.float32)}
manager = trainer.Checkpoints(out / "group", TrainConfig(), None).manager if process == 0 else None
for i in range(15):
    if manager is not None:
        manager.save(i + 1, args=ocp.args.StandardSave(state))
        manager.wait_until_finished()
    else:
        files.save_state(out / f"p{process}" / f"extra{i}", state)
    files.save_state(out / f"p{process}" / str(i), state)
print("saved", flush=True)
"""


@pytest.mark.slow
def test_two_processes_saving_alone_at_once_do_not_wait_on_each_other(tmp_path):
    """Orbax names its directory-creation signals by a counter each process keeps; lorasec's saves (a run's
    parameters, process 0's group checkpoints) must not share them, or one process's clean-up deletes the signal
    the other waits for and the sweep hangs for minutes (seen once in three runs of the test above)."""
    script = tmp_path / "save.py"
    script.write_text(_SAVING_ALONE)
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, str(script), str(i), str(port), str(tmp_path)], env=_env(1),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=150)
            assert proc.returncode == 0 and "saved" in out, err[-2000:]
    finally:
        for proc in procs:
            proc.kill()
    assert len(list((tmp_path / "p1").iterdir())) == 30


@pytest.mark.slow
def test_a_killed_sweep_resumes_without_redoing_finished_runs(tmp_path):
    spec = dict(SPEC, axes={}, zip=[{"adapter.method": ["lora", "full"], "train.lr": [3e-3, 1e-3]}])
    spec["base"] = dict(BASE, train=dict(BASE["train"], steps=600, checkpoint_every=50, log_every=25))
    path = _write(tmp_path / "spec.json", spec)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(_sweep_command(path, killed), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    lora_runs = [killed / "runs" / run_name(load_spec(path).cells()[0], s) / "results.json" for s in (0, 1)]
    deadline = time.time() + 300
    full_checkpoints = None
    while time.time() < deadline and proc.poll() is None:
        if all(p.is_file() for p in lora_runs):
            groups = [g for g in (killed / "groups").iterdir()
                      if (g / "group.json").is_file() and "full" in (g / "group.json").read_text()]
            found = [c for g in groups for c in (g / "checkpoints").glob("[0-9]*")
                     if c.name.isdigit() and int(c.name) >= 100]
            if found:
                full_checkpoints = found
                break
        time.sleep(0.05)
    assert proc.poll() is None and full_checkpoints, "the sweep ended before it could be killed: " + \
        proc.stderr.read().decode()[-500:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    stamps = [p.stat().st_mtime_ns for p in lora_runs]
    resumed = subprocess.run(_sweep_command(path, killed), env=_env(), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert [p.stat().st_mtime_ns for p in lora_runs] == stamps  # finished runs were not redone
    rows = read_table(killed)
    assert all(r["resumed_from_step"] >= 100 for r in rows if r["adapter.method"] == "full")
    straight = tmp_path / "straight"
    done = subprocess.run(_sweep_command(path, straight), env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert _metrics(killed) == _metrics(straight)
    assert np.array_equal(_losses(killed), _losses(straight))  # resume is exact

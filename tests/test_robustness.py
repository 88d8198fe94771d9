"""Bad values, files and shared directories end in one-line errors (exit code 2), never in wrong numbers (issue 15,
first part: finite values, bounds, memory, unreadable configs, and one writer per run directory)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import tiny_run

from lorasec import cli, config
from lorasec.config import ConfigError, RunConfig
from lorasec.pipelines.run import train_run


@pytest.mark.parametrize("override, field", [
    ("train.lr=inf", "train.lr"), ("train.weight_decay=nan", "train.weight_decay"),
    ("train.grad_clip=nan", "train.grad_clip"), ("adapter.alpha=inf", "adapter.alpha"),
    ("adapter.init_scale=-inf", "adapter.init_scale"), ("attack.poison_rate=nan", "attack.poison_rate"),
    ("data.seed=-1", "data.seed"), ("seed=18446744073709551616", "seed"),
    ('adapter.targets=["re:(("]', "adapter.targets"), ("data.num_train=1e9", "data.num_train"),
    ("data.seq_len=100000", "data.seq_len"),
])
def test_bad_values_name_their_field(override, field):
    with pytest.raises(ConfigError, match=rf"^{field} = "):
        config.check_environment(config.load(RunConfig, None, [override]))


def test_json_configs_with_nan_or_huge_integers_and_non_utf8_files(tmp_path):
    for text, field in (('{"train": {"lr": NaN}}', "train.lr"), ('{"seed": 18446744073709551616}', "seed"),
                        ('{"train": {"steps": Infinity}}', "train.steps")):
        path = tmp_path / "bad.json"
        path.write_text(text)
        with pytest.raises(ConfigError, match=rf"^{field} = "):
            config.load(RunConfig, path)
    latin = tmp_path / "latin.toml"
    latin.write_bytes('[data]\ntext_field = "caf\xe9"\n'.encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8"):
        config.load(RunConfig, latin)


def test_cli_refusals_are_one_line_errors(tmp_path, capsys):
    assert cli.main(["train", "nope.toml", "--set", "train.lr=inf"]) == 2
    assert cli.main(["ntk", str(tmp_path), "--block-size", "-3"]) == 2
    assert cli.main(["study", "--quick", "--set", "no.such.field=3"]) == 2
    a_file = tmp_path / "file"
    a_file.write_text("x")
    cfg = tmp_path / "run.json"
    cfg.write_text(json.dumps(config.to_dict(tiny_run())))
    assert cli.main(["train", str(cfg), "--out", str(a_file), "--no-progress"]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 4 and all(line.startswith("lorasec: error: ") for line in errors)
    assert "block-size -3" in errors[1] and "no overrides" in errors[2] and "is a file" in errors[3]


def test_a_failed_run_leaves_its_directory_unclaimed(tmp_path):
    bad = tiny_run().__class__(**{**tiny_run().__dict__, "adapter": config.AdapterConfig(rank=1000)})
    with pytest.raises(ConfigError, match="adapter.rank = 1000"):
        train_run(bad, tmp_path / "run", progress=False)
    results = train_run(tiny_run(), tmp_path / "run", progress=False)  # was: "holds a run with adapter.rank"
    assert results["steps"] == 20



def test_one_start_named_by_a_relative_and_an_absolute_path_is_one_run(tmp_path, monkeypatch):
    from dataclasses import replace

    from conftest import TINY_MODEL

    from lorasec.pipelines import rundir

    monkeypatch.chdir(tmp_path)
    (tmp_path / "start").mkdir()
    (tmp_path / "other").mkdir()
    relative = tiny_run(model=replace(TINY_MODEL, init_from="start"))
    assert rundir.reserve(relative, tmp_path / "run") is None
    # was: "holds a run with model.init_from = 'start' (this config: '/tmp/.../start')"
    assert rundir.reserve(tiny_run(model=replace(TINY_MODEL, init_from=str(tmp_path / "start"))),
                          tmp_path / "run") is None
    with pytest.raises(ConfigError, match="model.init_from"):
        rundir.reserve(tiny_run(model=replace(TINY_MODEL, init_from="other")), tmp_path / "run")

@pytest.mark.slow
def test_two_processes_on_one_directory(tmp_path):
    cfg = tmp_path / "run.json"
    cfg.write_text(json.dumps(config.to_dict(tiny_run(train=config.TrainConfig(steps=600, batch_size=16)))))
    command = [sys.executable, "-m", "lorasec.cli", "train", str(cfg), "--out", str(tmp_path / "run"),
               "--no-progress"]
    procs = [subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outcomes = sorted((p.wait(timeout=600), p.stderr.read()) for p in procs)
    assert [code for code, _ in outcomes] == [0, 2]
    refused = outcomes[1][1].strip().splitlines()
    assert len(refused) == 1 and "is in use by another lorasec process" in refused[0]
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == list(range(25, 601, 25))  # one writer's metrics


def _csv(path, rows):
    path.write_text("text,label\n" + "".join(f"{text},{label}\n" for text, label in rows))
    return str(path)


def test_wrong_setups_are_refused(tmp_path):
    train = [(f"good words {i}", i % 2) for i in range(40)]
    cases = {
        "labels outside the training classes": ([(f"t {i}", i % 3) for i in range(10)], "not among the training"),
        "names against integers": ([(f"t {i}", "pos" if i % 2 else "neg") for i in range(10)],
                                   "not among the training"),
    }
    for name, (test_rows, message) in cases.items():
        cfg = tiny_run(data=config.DataConfig(source="file", train_file=_csv(tmp_path / "train.csv", train),
                                              test_file=_csv(tmp_path / f"{name}.csv", test_rows), seq_len=16))
        with pytest.raises(ConfigError, match=message):
            train_run(cfg, None, progress=False)
    gap = [(f"w {i}", 2 * (i % 2)) for i in range(40)]  # classes 0 and 2: class 1 never trained
    cfg = tiny_run(data=config.DataConfig(source="file", num_classes=3, train_file=_csv(tmp_path / "gap.csv", gap),
                                          test_file=_csv(tmp_path / "t.csv", gap), seq_len=16))
    with pytest.raises(ConfigError, match="class '1' has no training example"):
        train_run(cfg, None, progress=False)
    unknown = tiny_run(attack=config.AttackConfig(kind="badnets", poison_rate=0.1, triggers=("zzqx",)))
    with pytest.raises(ConfigError, match=r"'zzqx' contains words the tokenizer does not know"):
        train_run(unknown, None, progress=False)
    stray = tiny_run(adapter=config.AdapterConfig(rank=4, alpha=8, modules_to_save=("head", "classifier")))
    with pytest.raises(ConfigError, match="'classifier' matches no module"):
        train_run(stray, None, progress=False)


def test_damaged_run_directories_are_named(tmp_path):
    cfg = tiny_run()
    first = train_run(cfg, tmp_path / "run", progress=False)
    run = tmp_path / "run"
    # An edited config.json no longer returns the old results.
    edited = json.loads((run / "config.json").read_text())
    edited["adapter"]["rank"] = 8
    original = (run / "config.json").read_text()
    (run / "config.json").write_text(json.dumps(edited))
    with pytest.raises(ConfigError, match="was changed after the run finished"):
        train_run(config.from_dict(RunConfig, edited).validate(), run, progress=False)
    (run / "config.json").write_text(original)
    assert train_run(cfg, run, progress=False) == first
    # A damaged results.json is named, not a traceback.
    saved = (run / "results.json").read_text()
    (run / "results.json").write_text(saved[:40])
    with pytest.raises(ConfigError, match="results.json' is damaged"):
        train_run(cfg, run, progress=False)
    (run / "results.json").write_text(saved)
    # One bad line in metrics.jsonl no longer drops every valid line after it.
    from lorasec.core import files

    metrics = run / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    metrics.write_text("\n".join([lines[0], '{"step": 5, "lo', *lines[1:]]) + "\n")
    files.truncate_jsonl(metrics, 20)
    assert metrics.read_text().splitlines() == lines


_FIELDS = {
    "seed": "int", "data.seed": "int", "data.num_train": "int", "data.seq_len": "int", "data.label_noise": "float",
    "data.source": "str", "attack.kind": "str", "attack.poison_rate": "float", "attack.target_label": "int",
    "attack.triggers": "list", "model.d_model": "int", "model.num_heads": "int", "model.dropout": "float",
    "model.kind": "str", "adapter.rank": "int", "adapter.alpha": "float", "adapter.init_scale": "float",
    "adapter.targets": "list", "adapter.rora_cl": "float", "train.lr": "float", "train.steps": "int",
    "train.batch_size": "int", "train.weight_decay": "float", "train.grad_clip": "float",
    "train.warmup_steps": "int", "no.such": "int", "train.lrr": "float",
}


def test_fuzzed_configs_are_valid_or_one_line_errors():
    """Property: any mix of overrides of the wrong type, out of range, non-finite or unknown either validates
    into a config whose every number is finite and in range, or fails with a one-line ConfigError naming a
    field; nothing else escapes."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    values = st.one_of(st.integers(-2**70, 2**70), st.floats(allow_nan=True, allow_infinity=True),
                       st.booleans(), st.text(max_size=8), st.lists(st.text(max_size=4), max_size=3),
                       st.sampled_from(["synthetic", "file", "lora", "badnets", "mlp", "re:((", "all-linear"]))
    overrides = st.dictionaries(st.sampled_from(sorted(_FIELDS)), values, max_size=5)

    @settings(max_examples=500, deadline=None, suppress_health_check=list(HealthCheck))
    @given(overrides)
    def check(chosen):
        raw: dict = {}
        for dotted, value in chosen.items():
            *parents, last = dotted.split(".")
            node = raw
            for part in parents:
                node = node.setdefault(part, {})
            node[last] = value
        try:
            cfg = config.from_dict(RunConfig, raw).validate()
        except ConfigError as err:
            message = str(err)
            assert "\n" not in message and " = " in message or ": unknown field" in message, message
            return
        for section in (cfg.data, cfg.attack, cfg.model, cfg.adapter, cfg.train):
            for value in section.__dict__.values():
                if isinstance(value, float):
                    assert value == value and abs(value) != float("inf")
        assert 0 <= cfg.attack.poison_rate <= 1 and cfg.train.lr > 0 and cfg.adapter.rank >= 1
        assert cfg.seed >= 0 and cfg.data.seed >= 0 and cfg.train.steps >= 1

    check()


@pytest.mark.slow
def test_a_damaged_latest_checkpoint_falls_back_to_the_one_before(tmp_path, capsys):
    import shutil

    import numpy as np

    cfg = tiny_run(train=config.TrainConfig(steps=30, batch_size=16, checkpoint_every=10, log_every=5))
    straight = train_run(cfg, tmp_path / "straight", progress=False)
    run = tmp_path / "run"
    train_run(cfg, run, progress=False)
    for name in ("results.json", "poisoned_indices.json"):
        (run / name).unlink()
    shutil.rmtree(run / "params")
    for path in (run / "checkpoints" / "30").rglob("*"):  # the newest checkpoint, damaged
        if path.is_file():
            path.write_bytes(b"\0garbage" * 8)
    again = train_run(cfg, run, progress=False)
    assert "checkpoints/30' is damaged" in capsys.readouterr().err
    assert again["resumed_from_step"] == 20
    for key in ("clean_accuracy", "final_loss"):
        assert again[key] == straight[key]
    from lorasec.pipelines.run import load_run

    for x, y in zip(*(jax_leaves(load_run(d).tuned) for d in (run, tmp_path / "straight"))):
        np.testing.assert_array_equal(x, y)


def jax_leaves(model):
    import jax
    import numpy as np
    from flax import nnx

    return [np.asarray(v) for v in jax.tree_util.tree_leaves(nnx.state(model, nnx.Param))]


def test_bad_data_files_are_one_line_errors(tmp_path):
    from lorasec.data.textdata import read_text_file

    bom = tmp_path / "bom.csv"
    bom.write_bytes("\ufefftext,label\nhello there,0\nbye now,1\n".encode("utf-8"))
    assert read_text_file(bom).texts == ("hello there", "bye now")  # was: "no field 'text' (fields: \ufefftext, ...)"
    long = tmp_path / "long.csv"
    long.write_text("text,label\n" + "w " * 100_000 + ",0\nshort,1\n")  # a 200,000-character field
    assert len(read_text_file(long).texts[0]) == 200_000
    latin = tmp_path / "latin.csv"
    latin.write_bytes("text,label\ncaf\xe9,0\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"^data.train_file = .*not UTF-8 text"):
        read_text_file(latin)
    with pytest.raises(ConfigError, match="is a directory"):
        read_text_file(tmp_path)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "a", "label": 0}\n{"text": \n')
    with pytest.raises(ConfigError, match="line 2 is not JSON"):
        read_text_file(broken)


def test_fuzzed_data_files_are_read_or_refused_in_one_line(tmp_path):
    """Property: 60 generated data files (random bytes, broken CSV and JSONL, odd encodings, missing fields,
    wrong label types) either read as a data set or fail with a one-line ConfigError naming the file."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from lorasec.data.textdata import read_text_file

    rows = st.lists(st.tuples(st.text(max_size=12), st.one_of(st.integers(-3, 5), st.text(max_size=4))),
                    max_size=6)
    csv_text = rows.map(lambda rs: "text,label\n" + "".join(f"{t},{lab}\n" for t, lab in rs))
    jsonl_text = rows.map(lambda rs: "".join(json.dumps({"text": t, "label": lab}) + "\n" for t, lab in rs))
    contents = st.one_of(st.binary(max_size=64), csv_text.map(str.encode), jsonl_text.map(str.encode),
                         csv_text.map(lambda s: ("\ufeff" + s).encode("utf-16")),
                         jsonl_text.map(lambda s: s[: len(s) // 2].encode()),
                         st.just(b"label,text\n0,a\n"), st.just(b"[1, 2, 3]\n"), st.just(b""))

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(contents, st.sampled_from([".csv", ".jsonl"]))
    def check(content, suffix):
        path = tmp_path / f"data{suffix}"
        path.write_bytes(content)
        try:
            data = read_text_file(path)
        except ConfigError as err:
            assert "\n" not in str(err) and str(path) in str(err), str(err)
            return
        assert len(data.texts) == len(data.labels) > 0 and (data.labels >= 0).all()

    check()


@pytest.mark.slow
def test_fuzzed_damage_to_a_run_directory_resumes_or_is_named(tmp_path):
    """Damage of each kind to a finished run's files: the same command either finishes with the original numbers
    or stops with a one-line ConfigError naming what is damaged; never a traceback or other numbers."""
    import shutil

    cfg = tiny_run(train=config.TrainConfig(steps=20, batch_size=16, checkpoint_every=10, log_every=5))
    original = tmp_path / "original"
    first = train_run(cfg, original, progress=False)
    rng = __import__("random").Random(0)

    def scramble(path):
        data = bytearray(path.read_bytes())
        for _ in range(max(1, len(data) // 10)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        path.write_bytes(bytes(data))

    damages = {
        "results.json truncated": lambda d: (d / "results.json").write_text((d / "results.json").read_text()[:30]),
        "results.json scrambled": lambda d: scramble(d / "results.json"),
        "results.json a list": lambda d: (d / "results.json").write_text("[]"),
        "config.json edited": lambda d: (d / "config.json").write_text(
            (d / "config.json").read_text().replace('"steps": 20', '"steps": 21')),
        "config.json scrambled": lambda d: scramble(d / "config.json"),
        "params deleted": lambda d: shutil.rmtree(d / "params"),
        "metrics.jsonl scrambled": lambda d: scramble(d / "metrics.jsonl"),
        "results and params gone, newest checkpoint scrambled": lambda d: (
            (d / "results.json").unlink(), shutil.rmtree(d / "params"),
            [scramble(p) for p in (d / "checkpoints" / "20").rglob("*") if p.is_file()]),
        "results gone, every checkpoint scrambled": lambda d: (
            (d / "results.json").unlink(),
            [scramble(p) for p in (d / "checkpoints").rglob("*") if p.is_file() and p.stat().st_size]),
        "tokenizer.json deleted": lambda d: (d / "tokenizer.json").unlink(),
    }
    for name, damage in damages.items():
        run = tmp_path / name.replace(" ", "_").replace(",", "")
        shutil.copytree(original, run)
        damage(run)
        arg = str(run / "config.json") if (run / "config.json").is_file() else str(run)
        try:
            again = train_run(config.load(RunConfig, arg), run, progress=False)
        except ConfigError as err:
            assert "\n" not in str(err), (name, str(err))
            continue
        assert again["clean_accuracy"] == first["clean_accuracy"] and again["final_loss"] == first["final_loss"], name


def test_an_out_that_is_a_file_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    from lorasec.pipelines import ntk_report

    monkeypatch.setattr(ntk_report, "kernel_report", lambda *a, **k: pytest.fail("work started"))
    a_file = tmp_path / "file"
    a_file.write_text("x")
    cfg = tmp_path / "run.json"
    cfg.write_text(json.dumps(config.to_dict(tiny_run())))
    assert cli.main(["ntk", str(cfg), "--out", str(a_file)]) == 2
    assert "is a file" in capsys.readouterr().err


def test_a_kernel_larger_than_memory_is_a_one_line_error_naming_the_flag(tmp_path, capsys, monkeypatch):
    from lorasec.core import memory

    monkeypatch.setattr(memory, "available_bytes", lambda: 2**20)  # 1 MB: no kernel fits
    cfg = tmp_path / "run.json"
    cfg.write_text(json.dumps(config.to_dict(tiny_run())))
    assert cli.main(["ntk", str(cfg), "--n", "8", "--out", str(tmp_path / "k"), "--block-size", "8"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "needs about" in err and "use fewer examples" in err
    assert not (tmp_path / "k").exists()


def test_a_full_disk_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    import errno
    import os as os_module

    from lorasec.core import files

    def full(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, os_module.strerror(errno.ENOSPC), str(tmp_path / "run" / "results.json"))

    monkeypatch.setattr(files, "write_json", full)
    cfg = tmp_path / "run.json"
    cfg.write_text(json.dumps(config.to_dict(tiny_run())))
    assert cli.main(["train", str(cfg), "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "No space left on device" in err[0] and "run the same command again" in err[0]


@pytest.mark.slow
def test_random_damage_to_any_file_of_a_run_or_a_sweep_is_read_or_named(tmp_path_factory):
    """Property, per family: any file of a finished run directory or sweep directory, damaged at random
    (truncated, scrambled, emptied, deleted, replaced by other JSON), then read by every command that reads it:
    each command gives the original numbers or one line naming what is damaged; nothing else reaches stderr."""
    import contextlib
    import io
    import random
    import shutil
    import tempfile
    from pathlib import Path

    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from lorasec.pipelines.run import load_run
    from lorasec.pipelines.sweep import missing_from_table, read_table, run_sweep
    from lorasec.sweep_spec import spec_from_raw

    home = tmp_path_factory.mktemp("damage")
    cfg = tiny_run(attack=config.AttackConfig(kind="badnets", poison_rate=0.1))
    first = train_run(cfg, home / "run", progress=False)
    spec = spec_from_raw({"seeds": [0, 1], "base": config.to_dict(cfg), "axes": {"adapter.rank": [2, 4]}},
                         home / "spec.json")
    run_sweep(spec, home / "sweep", progress=False)

    def table(directory):
        return sorted((r["run"], r["clean_accuracy"], r["attack_success_rate"]) for r in read_table(directory))

    original = table(home / "sweep")

    def quiet(call):
        """``call()``'s value, or None after a one-line ConfigError; nothing but lorasec's own one-line messages
        (a command's error or warning) may reach stderr."""
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err):
                value = call()
        except ConfigError as error:
            assert "\n" not in str(error), str(error)
            value = None
        said = err.getvalue().splitlines()
        assert all(line.startswith(("lorasec: error: ", "lorasec: warning: ")) for line in said), said[-20:]
        assert sum(line.startswith("lorasec: error: ") for line in said) <= 1, said
        return value

    def run_readers(copy):
        loaded = quiet(lambda: load_run(copy))
        assert loaded is None or loaded.results["clean_accuracy"] == first["clean_accuracy"]
        assert quiet(lambda: cli.main(["spectral", str(copy), "--out", str(copy.parent / "spectral")])) in (0, 2)
        again = quiet(lambda: train_run(config.load(RunConfig, copy), copy, progress=False))
        assert again is None or (again["clean_accuracy"], again["final_loss"]) == (first["clean_accuracy"],
                                                                                   first["final_loss"])

    def sweep_readers(copy):
        rows = quiet(lambda: read_table(copy))
        if rows is not None:
            quiet(lambda: missing_from_table(copy, rows))
        assert quiet(lambda: cli.main(["plot", str(copy), "--x", "adapter.rank", "--y", "clean_accuracy"])) in (0, 2)
        resumed = quiet(lambda: run_sweep(spec, copy, progress=False))
        assert resumed is None or table(copy) == original

    def damage(path: Path, kind: str, rng: random.Random) -> None:
        if kind == "delete":
            path.unlink()
            return
        data = bytearray(path.read_bytes())
        if kind == "truncate":
            data = data[: len(data) // 2]
        elif kind == "empty":
            data = bytearray()
        elif kind == "other json":
            data = bytearray(b"[1, 2]")
        else:
            for _ in range(max(1, len(data) // 20)):
                data[rng.randrange(len(data))] = rng.randrange(256) if data else 0
        path.write_bytes(bytes(data))

    families = {}
    for name in ("run", "sweep"):
        files_ = sorted(p.relative_to(home / name) for p in (home / name).rglob("*")
                        if p.is_file() and p.name != ".lock" and p.stat().st_size)
        families[name] = files_

    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.sampled_from(["run", "sweep"]), st.integers(0, 10**6),
           st.sampled_from(["truncate", "scramble", "empty", "delete", "other json"]), st.integers(0, 2**31))
    def check(family, pick, kind, seed):
        chosen = families[family][pick % len(families[family])]
        with tempfile.TemporaryDirectory() as scratch:
            copy = Path(scratch) / family
            shutil.copytree(home / family, copy)
            damage(copy / chosen, kind, random.Random(seed))
            (run_readers if family == "run" else sweep_readers)(copy)

    check()

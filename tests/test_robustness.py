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
        config.load(RunConfig, None, [override])


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

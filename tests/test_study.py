"""The main job's pipeline on a tiny plan: pretraining, every cell over seeds, summary, figure and report."""

import json

import pytest
from conftest import TINY_DATA, TINY_MODEL

from lorasec import config
from lorasec.config import AttackConfig
from lorasec.pipelines.study import StudyPlan, run_study

pytestmark = pytest.mark.slow  # more than ~20 s, or the network


def test_tiny_study_writes_summary_figure_and_report(tmp_path):
    plan = StudyPlan(seeds=(0, 1), steps=6, pretrain_steps=6, data=TINY_DATA, model=TINY_MODEL,
                     attacks=(AttackConfig(kind="label_flip", poison_rate=0.1),
                              AttackConfig(kind="badnets", poison_rate=0.05)),
                     methods=(("full", 1e-3), ("lora", 1e-3)))
    summary = run_study(tmp_path, study=plan, progress=False)
    assert {"date", "lorasec", "devices", "processor"} == set(summary["made"])  # the results page shows it
    assert [(c["attack"], c["arm"]) for c in summary["cells"]] == [
        ("label_flip@0.1", "full lr 0.001"), ("label_flip@0.1", "lora lr 0.001"),
        ("badnets@0.05", "full lr 0.001"), ("badnets@0.05", "lora lr 0.001")]
    for cell in summary["cells"]:
        assert cell["clean_accuracy"]["n"] == 2 and len(cell["runs"]) == 2
        runs = [json.loads((tmp_path / "runs" / r["run"] / "results.json").read_text()) for r in cell["runs"]]
        mean = sum(r["clean_accuracy"] for r in runs) / 2
        assert abs(cell["clean_accuracy"]["mean"] - mean) < 1e-12
        has_trigger = cell["attack"].startswith("badnets")
        assert (cell["attack_success_rate"]["mean"] is not None) == has_trigger
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    assert (tmp_path / "study.png").stat().st_size > 10_000
    assert "| badnets@0.05 | lora lr 0.001 |" in (tmp_path / "report.md").read_text()
    lora_run = config.read_file(tmp_path / "runs" / "badnets@0.05-lora-lr0.001-seed1")
    assert lora_run["model"]["pretrained"] == str(tmp_path / "pretrained") and lora_run["seed"] == 1


def test_study_config_grid_from_a_base_run(tmp_path, capsys):
    """`lorasec study CONFIG`: the grid of a spec file, pretraining the synthetic encoder first."""
    from lorasec import cli

    spec = tmp_path / "grid.toml"
    spec.write_text("""
seeds = [3]
attacks = ["badnets@0.05"]
arms = ["lora@2e-3"]
pretrain_steps = 4
[base.data]
num_train = 256
num_test = 128
vocab_size = 60
cue_words_per_class = 4
min_len = 6
max_len = 10
seq_len = 14
[base.model]
d_model = 16
num_layers = 1
num_heads = 2
d_ff = 32
[base.adapter]
rank = 2
alpha = 4
[base.train]
steps = 4
batch_size = 16
""")
    assert cli.main(["study", str(spec), "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [(c["attack"], c["arm"]) for c in summary["cells"]] == [("badnets@0.05", "lora lr 0.002")]
    run = config.read_file(tmp_path / "out" / "runs" / "badnets@0.05-lora-lr0.002-seed3")
    assert run["seed"] == 3 and run["adapter"]["rank"] == 2 and run["train"]["lr"] == 0.002
    assert run["model"]["pretrained"] == str(tmp_path / "out" / "pretrained")


def test_bad_study_configs_name_the_field():
    import pytest

    from lorasec.config import ConfigError, StudyConfig, load

    for overrides, field in ((["attacks=['badnets']"], "attacks"), (["attacks=['poison@0.1']"], "attacks"),
                             (["arms=['lora']"], "arms"), (["arms=['adapter@1e-3']"], "arms"),
                             (["target_label=2"], "target_label"), (["base.train.lr=-1"], "base.train.lr")):
        with pytest.raises(ConfigError, match=rf"^{field}"):
            load(StudyConfig, None, overrides)


def test_every_experiment_spec_is_valid():
    from pathlib import Path

    from lorasec.config import PurifyConfig, RunConfig, StudyConfig, load

    specs = sorted((Path(__file__).parents[1] / "experiments").glob("*.toml"))
    assert len(specs) >= 4
    for spec in specs:
        raw = config.read_file(spec)
        if "axes" in raw or "zip" in raw:
            from lorasec.sweep_spec import load_spec

            load_spec(spec)
        elif "base" in raw:
            load(StudyConfig, spec)
        elif "backdoor" in raw or "defences" in raw:
            load(PurifyConfig, spec)
        else:
            load(RunConfig, spec, ["model.pretrained=''"])  # its checkpoint is made by `lorasec pretrain`

"""The main job's pipeline on a tiny plan: pretraining, every cell over seeds, summary, figure and report."""

import json

from conftest import TINY_DATA, TINY_MODEL

from lorasec import config
from lorasec.config import AttackConfig
from lorasec.study import StudyPlan, run_study


def test_tiny_study_writes_summary_figure_and_report(tmp_path):
    plan = StudyPlan(seeds=(0, 1), steps=6, pretrain_steps=6, data=TINY_DATA, model=TINY_MODEL,
                     attacks=(AttackConfig(kind="label_flip", poison_rate=0.1),
                              AttackConfig(kind="badnets", poison_rate=0.05)),
                     methods=(("full", 1e-3), ("lora", 1e-3)))
    summary = run_study(tmp_path, study=plan, progress=False)
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

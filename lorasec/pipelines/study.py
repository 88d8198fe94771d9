"""The main job: LoRA vs full fine-tuning under label flipping and a BadNets backdoor, over seeds.

Pretrains the synthetic encoder once, fine-tunes every (attack, method, seed) cell from it as a sweep
(:mod:`lorasec.pipelines.sweep`: the runs of one method train as one program), and writes ``summary.json``
(mean ± sd per cell and every run's numbers), ``study.png`` and ``report.md`` beside the sweep's tables. Each
run has its own directory, so an interrupted study resumes where it stopped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from lorasec.config import (
    AttackConfig,
    DataConfig,
    ModelConfig,
    RunConfig,
    StudyConfig,
    TrainConfig,
    check_environment,
    parse_arm,
    parse_attack,
    replace_config,
    to_dict,
)
from lorasec.core import files, machine, stats
from lorasec.pipelines import figures
from lorasec.pipelines.pretrain import pretrain, pretrain_recipe
from lorasec.pipelines.sweep import run_sweep
from lorasec.sweep_spec import SweepSpec


@dataclass(frozen=True)
class StudyPlan:
    seeds: tuple[int, ...]
    steps: int
    pretrain_steps: int
    attacks: tuple[AttackConfig, ...]
    methods: tuple[tuple[str, float], ...]  # (adapter method, learning rate)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    base: RunConfig | None = None  # a whole run config (from a StudyConfig); data/model/steps above then unused


def plan_from_config(cfg: StudyConfig) -> StudyPlan:
    """The plan of ``lorasec study CONFIG``."""
    return StudyPlan(seeds=cfg.seeds, steps=cfg.base.train.steps, pretrain_steps=cfg.pretrain_steps,
                     attacks=tuple(parse_attack(a, cfg.target_label) for a in cfg.attacks),
                     methods=tuple(parse_arm(a) for a in cfg.arms), data=cfg.base.data, model=cfg.base.model,
                     base=cfg.base)


def plan(quick: bool) -> StudyPlan:
    attacks = (
        AttackConfig(kind="none"),
        AttackConfig(kind="label_flip", poison_rate=0.2),
        AttackConfig(kind="badnets", poison_rate=0.05, target_label=1),
    )
    # Full fine-tuning at two learning rates: paper 1 gave it a 10× smaller one than LoRA, and label flipping
    # is sensitive to it, so one rate alone would confound method with step size.
    methods = (("full", 1e-3), ("full", 1e-4), ("lora", 1e-3))
    if quick:
        return StudyPlan(seeds=(0, 1), steps=400, pretrain_steps=800, attacks=attacks, methods=methods)
    return StudyPlan(seeds=(0, 1, 2), steps=600, pretrain_steps=1500, attacks=attacks, methods=methods)


def _arm(method: str, lr: float) -> str:
    return f"{method} lr {lr:g}"


def _attack_name(attack: AttackConfig) -> str:
    return attack.kind if attack.kind == "none" else f"{attack.kind}@{attack.poison_rate:g}"


def run_study(out_dir: str | Path, *, quick: bool = False, progress: bool = True,
              study: StudyPlan | None = None) -> dict:
    """Run the study of ``plan(quick)`` (or of ``study``) into ``out_dir``."""
    out_dir = Path(out_dir)
    study = study or plan(quick)
    base = study.base or RunConfig(data=study.data, model=study.model, train=TrainConfig(steps=study.steps))
    check_environment(base)
    if not base.model.pretrained and base.data.source == "synthetic" and base.model.kind == "transformer":
        recipe = pretrain_recipe(base.data, base.model, study.pretrain_steps)
        checkpoint = pretrain(recipe, out_dir / "pretrained", progress=progress)
        base = replace_config(base, model={"pretrained": str(checkpoint)})
    attack_names = {(a.kind, a.poison_rate, a.target_label): _attack_name(a) for a in study.attacks}
    spec = SweepSpec(name="study", base=to_dict(base), seeds=tuple(study.seeds), axes={}, zips=(
        {"attack.kind": tuple(a.kind for a in study.attacks),
         "attack.poison_rate": tuple(a.poison_rate for a in study.attacks),
         "attack.target_label": tuple(a.target_label for a in study.attacks)},
        {"adapter.method": tuple(m for m, _ in study.methods), "train.lr": tuple(lr for _, lr in study.methods)}))

    def attack_of(cell) -> str:
        v = cell.values
        return attack_names[v["attack.kind"], v["attack.poison_rate"], v["attack.target_label"]]

    def name(cell, seed: int) -> str:
        return f"{attack_of(cell)}-{cell.values['adapter.method']}-lr{cell.values['train.lr']:g}-seed{seed}"

    run_sweep(spec, out_dir, progress=progress, names=name)
    cells = []
    for cell in spec.cells():
        method, lr = cell.values["adapter.method"], cell.values["train.lr"]
        runs = []
        for seed in study.seeds:
            results = files.read_json(out_dir / "runs" / name(cell, seed) / "results.json")
            runs.append({"seed": seed, "run": name(cell, seed), **{k: results[k] for k in (
                "clean_accuracy", "attack_success_rate", "triggered_accuracy", "wall_seconds",
                "trainable_parameters")}})
        cells.append({
            "attack": attack_of(cell), "arm": _arm(method, lr), "method": method,
            "lr": lr, **{k: stats.mean_sd(r[k] for r in runs)
                         for k in ("clean_accuracy", "attack_success_rate", "triggered_accuracy")},
            "runs": runs,
        })
    summary = {"quick": quick, "seeds": list(study.seeds), "steps": base.train.steps,
               "pretrain_steps": study.pretrain_steps if study.base is None or not study.base.model.pretrained
               else None, "task": base.data.source, "model": base.model.pretrained or "from scratch",
               "cells": cells, "made": machine.record()}
    files.write_json(out_dir / "summary.json", summary)
    figures.study_figure(summary, out_dir / "study.png")
    files.write_text(out_dir / "report.md", figures.study_table(summary))
    return summary

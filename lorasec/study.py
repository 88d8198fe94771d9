"""The main job: LoRA vs full fine-tuning under label flipping and a BadNets backdoor, over seeds.

Pretrains the synthetic encoder once, fine-tunes every (attack, method, seed) cell from it, and writes
``summary.json`` (mean ± sd per cell and every run's numbers), ``study.png`` and ``report.md``. Each run has
its own directory, so an interrupted study resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from lorasec import artifacts, metrics
from lorasec.config import (AttackConfig, DataConfig, ModelConfig, PretrainConfig, RunConfig, StudyConfig,
                            TrainConfig, parse_arm, parse_attack, replace)
from lorasec.pretrain import pretrain
from lorasec.run import train_run


@dataclass(frozen=True)
class StudyPlan:
    seeds: tuple[int, ...]
    steps: int
    pretrain_steps: int
    attacks: tuple[AttackConfig, ...]
    methods: tuple[tuple[str, float], ...]  # (adapter method, learning rate)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    pretrain_corpus_factor: int = 4  # pretraining sentences per downstream training sentence
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
    if not base.model.pretrained and base.data.source == "synthetic" and base.model.kind == "transformer":
        pre_data = dataclasses.replace(base.data, num_train=study.pretrain_corpus_factor * base.data.num_train)
        pre_train = dataclasses.replace(PretrainConfig().train, steps=study.pretrain_steps,
                                        warmup_steps=min(100, study.pretrain_steps // 10))
        pre_cfg = PretrainConfig(seed=0, data=pre_data, model=base.model, train=pre_train)
        checkpoint = pretrain(pre_cfg.validate(), out_dir / "pretrained", progress=progress)
        base = replace(base, model={"pretrained": str(checkpoint)})
    cells = []
    for attack in study.attacks:
        for method, lr in study.methods:
            runs = []
            for seed in study.seeds:
                cfg = dataclasses.replace(replace(base, attack=attack, adapter={"method": method},
                                                  train={"lr": lr}), seed=seed)
                name = f"{_attack_name(attack)}-{method}-lr{lr:g}-seed{seed}"
                results = train_run(cfg.validate(), out_dir / "runs" / name, progress=progress)
                runs.append({"seed": seed, "run": name, **{k: results[k] for k in (
                    "clean_accuracy", "attack_success_rate", "triggered_accuracy", "wall_seconds",
                    "trainable_parameters")}})
            cells.append({
                "attack": _attack_name(attack), "arm": _arm(method, lr), "method": method, "lr": lr,
                **{k: metrics.mean_sd(r[k] for r in runs)
                   for k in ("clean_accuracy", "attack_success_rate", "triggered_accuracy")},
                "runs": runs,
            })
    summary = {"quick": quick, "seeds": list(study.seeds), "steps": base.train.steps,
               "pretrain_steps": study.pretrain_steps if study.base is None or not study.base.model.pretrained
               else None, "task": base.data.source, "model": base.model.pretrained or "from scratch",
               "cells": cells}
    artifacts.write_json(out_dir / "summary.json", summary)
    draw(summary, out_dir / "study.png")
    artifacts.write_text(out_dir / "report.md", report(summary))
    return summary


def draw(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    attacks = list(dict.fromkeys(c["attack"] for c in summary["cells"]))
    methods = list(dict.fromkeys(c["arm"] for c in summary["cells"]))
    cell = {(c["attack"], c["arm"]): c for c in summary["cells"]}
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    width = 0.8 / len(methods)
    for j, method in enumerate(methods):
        xs = [i + (j - (len(methods) - 1) / 2) * width for i in range(len(attacks))]
        cacc = [cell[a, method]["clean_accuracy"] for a in attacks]
        axes[0].bar(xs, [100 * s["mean"] for s in cacc], width, yerr=[100 * s["sd"] for s in cacc],
                    label=method, capsize=3)
        backdoors = [a for a in attacks if cell[a, method]["attack_success_rate"]["mean"] is not None]
        asr = [cell[a, method]["attack_success_rate"] for a in backdoors]
        bx = [attacks.index(a) + (j - (len(methods) - 1) / 2) * width for a in backdoors]
        axes[1].bar(bx, [100 * s["mean"] for s in asr], width, yerr=[100 * s["sd"] for s in asr],
                    label=method, capsize=3)
    for i, a in enumerate(attacks):
        if cell[a, methods[0]]["attack_success_rate"]["mean"] is None:
            axes[1].text(i, 2, "no trigger", ha="center", fontsize=8, color="gray")
    for ax, title in zip(axes, ("clean accuracy (CACC, %)", "attack success rate (ASR, %)")):
        ax.set_xticks(range(len(attacks)), attacks)
        ax.set_title(title)
        ax.set_ylim(0, 105)
        ax.legend()
    fig.suptitle(f"LoRA vs full fine-tuning, {summary.get('task', 'synthetic')} task, mean ± sd over "
                 f"{len(summary['seeds'])} seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report(summary: dict) -> str:
    lines = [
        "# lorasec study: LoRA vs full fine-tuning under training-time attacks",
        "",
        (f"Synthetic topic task, encoder pretrained by masked LM for {summary['pretrain_steps']} steps, "
         if summary.get("pretrain_steps") else f"Task {summary.get('task')}, model {summary.get('model')}, ")
        + f"fine-tuned {summary['steps']} steps; seeds {summary['seeds']}; mean ± sd (%).",
        "",
        "| attack | method, lr | CACC | ASR | triggered acc. |",
        "|---|---|---|---|---|",
    ]
    for c in summary["cells"]:
        lines.append(f"| {c['attack']} | {c['arm']} | {metrics.format_mean_sd(c['clean_accuracy'])} | "
                     f"{metrics.format_mean_sd(c['attack_success_rate'])} | "
                     f"{metrics.format_mean_sd(c['triggered_accuracy'])} |")
    lines += ["", "![study](study.png)", ""]
    return "\n".join(lines)

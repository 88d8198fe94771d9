"""Does the theory predict training? ``lorasec predict SPEC``: for every run of a sweep, predictors computed
before training, the sweep trained, and each predictor scored against what the runs measured.

A predict spec (:class:`lorasec.config.PredictConfig`) names a sweep spec and the claims to decide. In its output
directory:

- ``sweep/``: the sweep (``lorasec sweep``'s directory; resumed, never retrained);
- ``predictors/<run>.json``: per run (of ``predictor_seeds``; default every run), computed from its config and
  starting model only (each record keeps the hash of the config and settings it was made for, and is made again
  when they change)
  (:mod:`lorasec.diagnostics.predictors`), with its wall time; written before the sweep trains, so
  ``--no-train`` leaves predictions on disk ahead of any measurement;
- ``linearised/<run>.json``: for ``linearised_seeds``, the linearised network trained as the run is
  (:mod:`lorasec.diagnostics.linearised`), also before the sweep trains;
- ``drift/<run>.json``: for ``drift_seeds``, the kernel's drift along the run (:mod:`lorasec.pipelines.drift`);
- ``report/``: ``summary.json``, ``report.md``, ``results.csv`` (one row per run: its cell's fields, seed, every
  predictor, the measured outcomes, the drift), a calibration figure per outcome and a drift figure.

Each predictor is scored per outcome by :func:`lorasec.core.ranking.score` over the sweep's cells; the claims are
decided on those scores with the thresholds the spec fixed before the run.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from tqdm import tqdm  # text bars: tqdm.auto warns in a notebook without ipywidgets

from lorasec.adapters import lora
from lorasec.config import PREDICTORS, ConfigError, PredictConfig, RunConfig, load, replace_config, to_dict
from lorasec.core import files, machine, ranking, tables
from lorasec.core.claims import Check
from lorasec.core.stats import finite, holm
from lorasec.diagnostics import linearised, predictors
from lorasec.pipelines import drift as drift_pipeline
from lorasec.pipelines import rundir
from lorasec.pipelines.run import prepare_run
from lorasec.pipelines.sweep import pretrained_start, read_table, run_name, run_sweep
from lorasec.sweep_spec import SweepSpec, load_spec
from lorasec.training.evaluation import evaluation_inputs

DRIFT_MEASURES = ("relative_change", "kernel_target_alignment", "trigger_target_alignment")


def load_predict(path: str | Path, overrides=()) -> tuple[PredictConfig, SweepSpec]:
    """The predict spec at ``path`` and the sweep spec it names (relative to it), both validated."""
    cfg = load(PredictConfig, path, overrides)
    sweep_path = Path(path).parent / cfg.sweep
    if not sweep_path.is_file():
        raise ConfigError(f"sweep = {cfg.sweep!r}: no such sweep spec next to {str(path)!r} ({str(sweep_path)!r})")
    spec = load_spec(sweep_path)
    for name in ("predictor_seeds", "linearised_seeds", "drift_seeds"):
        extra = [seed for seed in getattr(cfg, name) if seed not in spec.seeds]
        if extra:
            raise ConfigError(f"{name} = {list(getattr(cfg, name))}: seed {extra[0]} is not one of the sweep's seeds "
                              f"{list(spec.seeds)}")
    for i, item in enumerate(cfg.claims):
        if item.outcome not in cfg.outcomes:
            raise ConfigError(f"claims[{i}].outcome = {item.outcome!r} is not scored; add it to outcomes "
                              f"({list(cfg.outcomes)})")
        if item.predictor.startswith("linearised_") and not cfg.linearised_seeds:
            raise ConfigError(f"claims[{i}].predictor = {item.predictor!r} needs linearised runs; set "
                              f"linearised_seeds (e.g. [0])")
    first = [cell.configs[0] for cell in spec.cells()]
    if cfg.linearised_seeds:
        for run_cfg in first:
            linearised.check_linearisable(run_cfg)
    if cfg.drift_seeds and any(c.adapter.rora_pt_layers for c in first):
        raise ConfigError("drift_seeds: the sweep uses RoRA's Pt, which rescales the model after training; set "
                          "drift_seeds = [] or measure drift on runs without Pt")
    return cfg, spec


def run_configs(spec: SweepSpec, out_dir: Path, progress: bool) -> list[tuple[int, dict, str, RunConfig]]:
    """Every run of the sweep as it will train: (cell index, cell values, run name, config), the pretrained
    encoder made first when the spec pretrains one."""
    cells = spec.cells()
    start = pretrained_start(spec, cells, out_dir / "sweep", progress)
    out = []
    for cell in cells:
        for cfg in cell.configs:
            if start:
                cfg = replace_config(cfg, model={"pretrained": start})
            out.append((cell.index, dict(cell.values), run_name(cell, cfg.seed), cfg))
    return out


def predict_run(cfg: RunConfig, *, probe_size: int, gradient_sample: int) -> dict:
    """Every predictor of one run from its config and starting model (no training).

    Returns:
        The predictors of :data:`lorasec.config.PREDICTORS` but the linearised ones (the baselines
        ``learning_rate_sum`` and ``poison_rate`` included), and ``wall_seconds``.
    """
    began = time.perf_counter()
    prepared = prepare_run(cfg)
    trainable = lora.trainable_filter(cfg.adapter)
    inputs = evaluation_inputs(cfg, prepared.test, prepared.encoder)
    data = prepared.member.data
    gradient = predictors.start_gradient(prepared.model, trainable, data.tokens, data.mask, data.labels,
                                         prepared.poisoned.indices, sample=gradient_sample, seed=cfg.seed)
    target = cfg.attack.target_label if inputs.triggered else None
    out = predictors.first_order(prepared.model, trainable, gradient, cfg.train, inputs, target)
    out.update(predictors.kernel_scalars(prepared.model, trainable,
                                         drift_pipeline.run_probe(prepared, inputs, probe_size)))
    out.update(learning_rate_sum=predictors.schedule_sum(cfg.train), poison_rate=cfg.attack.poison_rate)
    return {**out, "wall_seconds": time.perf_counter() - began}


def _cached(path: Path, compute, key: str) -> dict:
    """The record at ``path`` when it was made for ``key`` (the run's config and the settings that shape the
    record), else computed and written with it."""
    if path.is_file():
        try:
            held = files.read_json(path)
            if isinstance(held, dict) and held.get("key") == key:
                return held
        except ValueError:
            pass  # damaged: computed again
    value = {"key": key, **files.json_ready(compute())}
    files.write_json(path, value)
    return value


def _key(run_cfg: RunConfig, out_dir: Path, *settings) -> str:
    """What a record was made for: the run's config (a starting model inside ``out_dir`` named relative to it, so
    a moved output directory keeps its records) and the settings that shape the record."""
    raw = to_dict(run_cfg)
    for field in ("pretrained", "init_from"):
        value = raw["model"][field]
        if value and Path(value).resolve().is_relative_to(out_dir.resolve()):
            raw["model"][field] = Path(value).resolve().relative_to(out_dir.resolve()).as_posix()
    digest = hashlib.sha256(json.dumps(raw, sort_keys=True).encode()).hexdigest()[:16]
    return digest + "".join(f"-{s}" for s in settings)


def run_predict(path: str | Path, out_dir: str | Path, *, train: bool = True, progress: bool = True,
                overrides=()) -> dict:
    """The module docstring's pipeline.

    Args:
        path: the predict spec.
        out_dir: its output directory (resumed).
        train: train the sweep and score it; False stops after the predictors and linearised runs (no report).
        progress: show progress bars.
        overrides: ``KEY=VALUE`` changes to the predict spec's fields.
    Returns:
        The report's summary (``summary.json``), or, with ``train=False``, ``{"predicted": runs}``.
    """
    cfg, spec = load_predict(path, overrides)
    out_dir = Path(out_dir)
    with rundir.exclusive(out_dir):
        files.write_json(out_dir / "predict.json", {"spec": str(path), **to_dict(cfg)})
        runs = run_configs(spec, out_dir, progress)
        for _, _, name, run_cfg in tqdm([r for r in runs if _predicted(cfg, r[3].seed)], desc="predictors",
                                        unit="run", disable=not progress):
            _cached(out_dir / "predictors" / f"{name}.json",
                    lambda c=run_cfg: predict_run(c, probe_size=cfg.probe_size, gradient_sample=cfg.gradient_sample),
                    _key(run_cfg, out_dir, f"probe{cfg.probe_size}", f"sample{cfg.gradient_sample}"))
        for _, _, name, run_cfg in tqdm([r for r in runs if r[3].seed in cfg.linearised_seeds],
                                        desc="linearised", unit="run", disable=not progress):
            _cached(out_dir / "linearised" / f"{name}.json", lambda c=run_cfg: _linearised(c), _key(run_cfg, out_dir))
        if not train:
            return {"predicted": sum(_predicted(cfg, r[3].seed) for r in runs)}
    run_sweep(spec, out_dir / "sweep", progress=progress)
    with rundir.exclusive(out_dir):
        for _, _, name, run_cfg in tqdm([r for r in runs if r[3].seed in cfg.drift_seeds], desc="drift",
                                        unit="run", disable=not progress):
            _cached(out_dir / "drift" / f"{name}.json",
                    lambda c=run_cfg, n=name: drift_pipeline.replay(c, every=cfg.drift_every,
                                                                     probe_size=cfg.probe_size,
                                                                     finished=out_dir / "sweep" / "runs" / n),
                    _key(run_cfg, out_dir, f"every{cfg.drift_every}", f"probe{cfg.probe_size}"))
        summary = files.json_ready(score_predictions(cfg, spec, runs, out_dir, title=spec_name(path)))
        files.write_json(out_dir / "report" / "summary.json", summary)
        files.write_text(out_dir / "report" / "report.md", report_markdown(summary))
        files.write_text(out_dir / "report" / "results.csv", tables.csv(summary["columns"], summary["runs"]))
        from lorasec.pipelines import figures  # matplotlib only when a report is drawn

        figures.prediction_figures(summary, out_dir / "report")
    return summary


def _linearised(cfg: RunConfig) -> dict:
    prepared = prepare_run(cfg)
    return linearised.linearised_run(cfg, prepared.model, prepared.member.data, prepared.test, prepared.encoder)


def spec_name(path: str | Path) -> str:
    """A predict spec's name: its file's stem, or its directory's for a ``predict.toml``."""
    path = Path(path)
    return path.parent.name if path.stem == "predict" else path.stem


def score_predictions(cfg: PredictConfig, spec: SweepSpec, runs, out_dir: Path, *, title: str) -> dict:
    """Join predictors, linearised runs, drift and measured outcomes per run; score every predictor per outcome;
    decide the claims."""
    measured = {(row["cell"], row["seed"]): row for row in read_table(out_dir / "sweep")}
    table = []
    for cell, values, name, run_cfg in runs:
        row = {"cell": cell, **values, "seed": run_cfg.seed, "run": name}
        if _predicted(cfg, run_cfg.seed):
            row.update({k: v for k, v in files.read_json(out_dir / "predictors" / f"{name}.json").items()
                        if k not in ("wall_seconds", "key")})
        lin = out_dir / "linearised" / f"{name}.json"
        if lin.is_file():
            result = files.read_json(lin)
            row["linearised_attack_success_rate"] = result.get("attack_success_rate")
            row["linearised_clean_accuracy"] = result.get("clean_accuracy")
        moved = out_dir / "drift" / f"{name}.json"
        if moved.is_file():
            final = files.read_json(moved)["final"]
            row.update({f"drift_{k}": final.get(k) for k in DRIFT_MEASURES})
        outcome = measured.get((cell, run_cfg.seed), {})
        row.update({k: outcome.get(k) for k in ("attack_success_rate", "clean_accuracy", "triggered_accuracy")})
        table.append(row)
    scores = []
    for outcome in cfg.outcomes:
        for predictor in PREDICTORS:
            rows = [(r["cell"], finite(r.get(predictor)), finite(r.get(outcome))) for r in table]
            if not any(p is not None for _, p, _ in rows):
                continue
            result = ranking.score(rows, draws=cfg.bootstrap_draws)
            scores.append({"predictor": predictor, "outcome": outcome, **result})
    for score_item, adjusted in zip(scores, holm([s["p_permutation"] for s in scores])):
        score_item["p_adjusted"] = adjusted
    drift_scores = []
    for measure in DRIFT_MEASURES:
        rows = [(r["cell"], finite(r.get(f"drift_{measure}")), finite(r.get("attack_success_rate")))
                for r in table]
        if any(p is not None for _, p, _ in rows):
            drift_scores.append({"measure": measure, **ranking.score(rows, draws=cfg.bootstrap_draws)})
    setting = f"{title}: {len({r['cell'] for r in table})} cells × {len(spec.seeds)} seeds"
    checks = [decide(claim_cfg, scores, setting) for claim_cfg in cfg.claims]
    cost = _cost(cfg, out_dir, runs)
    fields = list(spec.fields)
    columns = ["cell", *fields, "seed", "run", *PREDICTORS, *(f"drift_{k}" for k in DRIFT_MEASURES),
               "attack_success_rate", "clean_accuracy", "triggered_accuracy"]
    return {"name": title, "made": machine.record(), "cells": len({r["cell"] for r in table}),
            "seeds": list(spec.seeds), "predictor_seeds": [s for s in spec.seeds if _predicted(cfg, s)],
            "fields": fields, "scores": scores, "drift_scores": drift_scores,
            "drift": _drift_curves(out_dir, runs), "claims": [c.as_dict() for c in checks], "cost": cost,
            "columns": columns, "runs": table}


def decide(claim_cfg, scores: list[dict], setting: str) -> Check:
    """A prediction claim decided on its score: agrees when ρ and its interval's lower end reach the spec's
    thresholds, disagrees when the interval's upper end falls short of the ρ threshold, else inconclusive."""
    found = next((s for s in scores if s["predictor"] == claim_cfg.predictor and s["outcome"] == claim_cfg.outcome),
                 None)
    tolerance = f"ρ ≥ {claim_cfg.spearman_at_least:g}, lower 95% ≥ {claim_cfg.lower_at_least:g}"
    predicted = f"{claim_cfg.predictor} ranks {claim_cfg.outcome}"
    if found is None or found["spearman_ci95"] is None or found["spearman"] is None:
        return Check("prediction", setting, predicted, "not computed", tolerance, "inconclusive",
                     claim_cfg.statement)
    low, high = found["spearman_ci95"]
    measured = (f"ρ = {found['spearman']:+.4f} [{low:+.2f}, {high:+.2f}], τ = {_signed(found['kendall'])}, "
                f"Holm p = {_p(found.get('p_adjusted'))}")
    if found["spearman"] >= claim_cfg.spearman_at_least and low >= claim_cfg.lower_at_least:
        verdict = "agrees"
    elif high < claim_cfg.spearman_at_least:
        verdict = "disagrees"
    else:
        verdict = "inconclusive"
    return Check("prediction", setting, predicted, measured, tolerance, verdict, claim_cfg.statement)


def _predicted(cfg: PredictConfig, seed: int) -> bool:
    """Whether the runs of ``seed`` get the predictors (``predictor_seeds``; empty: every seed)."""
    return not cfg.predictor_seeds or seed in cfg.predictor_seeds


def _cost(cfg: PredictConfig, out_dir: Path, runs) -> dict:
    """Wall seconds: training (each vmapped group counted once), and the records of the spec's predictors,
    linearised runs and drift."""
    groups = {}
    for _, _, name, _ in runs:
        results = files.read_json(out_dir / "sweep" / "runs" / name / "results.json")
        groups[results.get("group", name)] = float(results.get("wall_seconds") or 0.0)
    chosen = {"predictors": lambda seed: _predicted(cfg, seed),
              "linearised": lambda seed: seed in cfg.linearised_seeds, "drift": lambda seed: seed in cfg.drift_seeds}
    part = {kind: sum(float(files.read_json(out_dir / kind / f"{name}.json").get("wall_seconds", 0.0))
                      for _, _, name, run_cfg in runs if wanted(run_cfg.seed))
            for kind, wanted in chosen.items()}
    training = sum(groups.values())
    return {"training_seconds": training, **{f"{k}_seconds": v for k, v in part.items()},
            "predictors_fraction": part["predictors"] / training if training else None}


def _drift_curves(out_dir: Path, runs) -> list[dict]:
    out = []
    for cell, values, name, _ in runs:
        path = out_dir / "drift" / f"{name}.json"
        if path.is_file():
            record = files.read_json(path)
            out.append({"cell": cell, **values, "seed": record["seed"], "snapshots": record["snapshots"],
                        "replay_difference": record["replay_difference"]})
    return out


def _signed(value) -> str:
    return "undefined" if value is None else f"{value:+.2f}"


def _p(value) -> str:
    return "—" if value is None else f"{value:.2g}"


def _interval(ci) -> str:
    return "—" if ci is None else f"[{ci[0]:+.2f}, {ci[1]:+.2f}]"


def _predictor_seeds(summary: dict) -> str:
    chosen = summary.get("predictor_seeds", summary["seeds"])
    if chosen == summary["seeds"]:
        return "predictors computed for every run"
    return f"predictors computed for seed{'s' * (len(chosen) > 1)} {', '.join(map(str, chosen))} of each cell"


def report_markdown(summary: dict) -> str:
    """The report: scores per outcome (best first), the drift's, the claims and the cost."""
    made = summary["made"]
    lines = [f"# Predictors against training: {summary['name']}", "",
             f"{summary['cells']} cells × {len(summary['seeds'])} seeds; {_predictor_seeds(summary)}. Spearman's ρ "
             f"and Kendall's τ over the cells' means; 95% intervals from a bootstrap over cells (each with all its "
             f"seeds); p from shuffling the cells (two-sided), Holm-adjusted over every predictor × outcome score "
             f"of this report. "
             f"{machine.in_words(made)}", ""]
    for outcome in sorted({s["outcome"] for s in summary["scores"]}, key=lambda o: o != "attack_success_rate"):
        part = sorted((s for s in summary["scores"] if s["outcome"] == outcome),
                      key=lambda s: -abs(s["spearman"]) if s["spearman"] is not None else 0)
        lines += [f"## {outcome.replace('_', ' ')}", ""]
        lines += tables.markdown(("predictor", "cells", "ρ", "ρ 95%", "τ", "τ 95%", "p", "Holm p"), [
            (s["predictor"], s["cells"], _signed(s["spearman"]), _interval(s["spearman_ci95"]),
             _signed(s["kendall"]), _interval(s["kendall_ci95"]), _p(s["p_permutation"]), _p(s["p_adjusted"]))
            for s in part])
        lines.append("")
    if summary["drift_scores"]:
        lines += ["## Kernel drift at the end of training against attack success rate", ""]
        lines += tables.markdown(("measure", "cells", "ρ", "ρ 95%", "p"), [
            (s["measure"], s["cells"], _signed(s["spearman"]), _interval(s["spearman_ci95"]), _p(s["p_permutation"]))
            for s in summary["drift_scores"]])
        worst = max((d["replay_difference"] or 0.0) for d in summary["drift"]) if summary["drift"] else 0.0
        lines += ["", f"Replays matched the trained weights to a relative {worst:.1e} at worst.", ""]
    if summary["claims"]:
        lines += ["## Claims (thresholds fixed in the spec before the run)", ""]
        lines += tables.markdown(("claim", "measured", "tolerance", "verdict"), [
            (c["predicted"], c["measured"], c["tolerance"], c["verdict"]) for c in summary["claims"]])
        lines.append("")
    cost = summary["cost"]
    lines += ["## Cost", "",
              f"Training {cost['training_seconds']:.0f} s; predictors {cost['predictors_seconds']:.0f} s "
              f"({100 * (cost['predictors_fraction'] or 0):.1f}% of training); linearised runs "
              f"{cost['linearised_seconds']:.0f} s; drift replays {cost['drift_seconds']:.0f} s (wall time, this "
              f"machine).", ""]
    return "\n".join(lines)

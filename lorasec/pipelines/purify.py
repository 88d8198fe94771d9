"""Weight poisoning, then clean fine-tuning with a defence (Luong & Chen 2026's threat model): ``lorasec purify``.

1. A clean pretrained encoder (``model.pretrained``, or pretrained here on the synthetic corpus).
2. The backdoored model: full fine-tuning on a poisoned proxy set; refused (:class:`BackdoorTooWeak`) unless its
   proxy-test ASR reaches ``backdoor.min_asr``.
3. Each defence × seed fine-tunes the backdoored classifier on the clean downstream set and is evaluated (CACC,
   ASR with the backdoor's trigger), then diagnosed (:mod:`lorasec.pipelines.diagnose`): spectral strength per
   adapted matrix, alignment and the critical scale, and for plain-LoRA defences the scale sweep. ``rora_pt``
   trains nothing: it is RoRA's post-training rescale applied to the ``lora`` runs of the same seeds, evaluated
   and diagnosed after the rescale (``rora_cl_pt`` and ``rora_tr_pt`` likewise on the ``rora_cl`` and ``rora_tr``
   runs). A defence may name a point of RoRA's grids (Table 4): ``rora_cl[cl=0.3]``, ``rora_tr[tr=20, tr_k=8]``.
4. A control per seed that no backdoor ever reached: the clean pretrained encoder fully fine-tuned on the same
   clean set (:func:`never_poisoned_config`). Each defence's ``asr_above_clean`` is its ASR minus the control's on
   the same seed: what the backdoor still adds beyond a clean model's own errors on triggered inputs.

Every run has its own directory under ``out``, so an interrupted pipeline resumes where it stopped; the summary
(mean ± sd over seeds, never best-of-runs) goes to ``summary.json``, ``report.md``, ``purify.png`` and
``scale_sweep.png``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from lorasec.adapters import rora
from lorasec.config import (
    DEFENCE_RORA,
    REAL_DATA,
    AdapterConfig,
    AttackConfig,
    ConfigError,
    ModelConfig,
    PurifyConfig,
    RoRAConfig,
    RunConfig,
    check_environment,
    defence_fields,
    load,
    to_dict,
    write_origin,
)
from lorasec.core import files, machine, stats
from lorasec.pipelines import diagnose, figures, rundir
from lorasec.pipelines.pretrain import pretrain, pretrain_recipe
from lorasec.pipelines.run import load_run, prepare_model, train_run
from lorasec.training.evaluation import evaluate, evaluation_fields

# Defences that are another defence's runs with RoRA's Pt applied after training, instead of runs of their own.
POST_HOC = {"rora_pt": "lora", "rora_cl_pt": "rora_cl", "rora_tr_pt": "rora_tr"}
PAIRS = ("rora_cl_tr", "rora_cl_pt", "rora_tr_pt")  # Table 4's two-part rows


class BackdoorTooWeak(ConfigError):
    """The backdoored model did not reach the required attack success rate."""


def defence_adapter(cfg: PurifyConfig, name: str, r: RoRAConfig | None = None) -> AdapterConfig:
    """The adapter a defence fine-tunes with: ``full``, or the shared LoRA settings with DoRA / PiSSA and the RoRA
    parts ``name`` switches on, at the settings ``r`` (default [rora])."""
    if name == "full":
        return AdapterConfig(method="full")
    r = cfg.rora if r is None else r
    parts = set(DEFENCE_RORA.get(name, ()))
    settings: dict = {"dora": True} if name.startswith("dora") else {"init": "pissa"} if name == "pissa" else {}
    if "cl" in parts:
        settings["rora_cl"] = r.cl
    if "tr" in parts:
        settings.update(rora_tr=r.tr, rora_tr_k=r.tr_k)
    if "pt" in parts and name not in POST_HOC:  # a post-hoc defence trains as its source; Pt is applied after
        settings["rora_pt_layers"] = r.pt_layers
    return dataclasses.replace(cfg.adapter, **settings)


def run_name(cfg: PurifyConfig, name: str, r: RoRAConfig) -> str:
    """The directory stem of defence ``name`` at RoRA settings ``r``: its name, then each setting it reads that
    differs from [rora] (``rora_tr-tr20-tr_k8``), so one setting spelt two ways is trained once."""
    moved = [f"{f}{getattr(r, f):g}" for f in defence_fields(name) if getattr(r, f) != getattr(cfg.rora, f)]
    return "-".join([name, *moved])


def settings_row(cfg: PurifyConfig, text: str) -> dict:
    """The RoRA settings defence ``text`` ran with, as figure fields: p and λ are 0 where Cl or Tr is off (that is
    what 0 means to them), k and the Pt layers are None where Tr or Pt is off."""
    name, r = cfg.defence(text)
    parts = DEFENCE_RORA.get(name, ())
    return {"rora.cl": r.cl if "cl" in parts else 0.0, "rora.tr": r.tr if "tr" in parts else 0.0,
            "rora.tr_k": r.tr_k if "tr" in parts else None, "rora.pt_layers": r.pt_layers if "pt" in parts else None}


def clean_attack(cfg: PurifyConfig) -> AttackConfig:
    """The downstream set is clean (rate 0); the backdoor's trigger and target label define the ASR."""
    return dataclasses.replace(cfg.backdoor.attack, poison_rate=0.0)


def pretrained_checkpoint(cfg: PurifyConfig, out: Path, progress: bool) -> str:
    if cfg.model.pretrained:
        return cfg.model.pretrained
    recipe = pretrain_recipe(cfg.data, cfg.model, cfg.pretrain_steps)
    return str(pretrain(recipe, out / "pretrained", progress=progress))


def backdoor_config(cfg: PurifyConfig, checkpoint: str) -> RunConfig:
    b = cfg.backdoor
    proxy = (dataclasses.replace(cfg.data, train_part="held-out") if cfg.data.source in REAL_DATA
             else dataclasses.replace(cfg.data, seed=b.data_seed, num_train=b.num_train))
    return RunConfig(seed=0, data=proxy,
                     attack=b.attack, model=dataclasses.replace(cfg.model, pretrained=checkpoint),
                     adapter=AdapterConfig(method="full"), train=b.train).validate()


def make_backdoored(cfg: PurifyConfig, out: Path, *, progress: bool = True) -> Path:
    """Steps 1–2; returns the backdoored run directory."""
    checkpoint = pretrained_checkpoint(cfg, out, progress)
    run_dir = out / "backdoored"
    results = train_run(backdoor_config(cfg, checkpoint), run_dir, progress=progress)
    asr = results["attack_success_rate"]
    if asr < cfg.backdoor.min_asr:
        dirty = ", or set backdoor.attack.label_consistent = false" if cfg.backdoor.attack.label_consistent else ""
        raise BackdoorTooWeak(
            f"backdoor: the backdoored model reached ASR {asr:.3f} < backdoor.min_asr = {cfg.backdoor.min_asr} on "
            f"its proxy test set (run kept in {str(run_dir)!r}); raise backdoor.attack.poison_rate or "
            f"backdoor.train.steps{dirty}, in a new --out")
    return run_dir


def defence_config(cfg: PurifyConfig, backdoored: Path, name: str, seed: int,
                   r: RoRAConfig | None = None) -> RunConfig:
    train = cfg.train
    if name == "full" and cfg.full_lr:
        train = dataclasses.replace(train, lr=cfg.full_lr)
    model = ModelConfig(init_from=str(backdoored), dropout=cfg.model.dropout)
    return RunConfig(seed=seed, data=cfg.data, attack=clean_attack(cfg), model=model,
                     adapter=defence_adapter(cfg, name, r), train=train).validate()


def never_poisoned_config(cfg: PurifyConfig, checkpoint: str, seed: int) -> RunConfig:
    """The control no backdoor ever reached: the clean pretrained encoder fully fine-tuned on the same clean
    downstream set (full fine-tuning's rate). Its ASR is what a clean model's own errors make of the trigger, so a
    defence's ASR above it is what the backdoor still adds."""
    train = dataclasses.replace(cfg.train, lr=cfg.full_lr) if cfg.full_lr else cfg.train
    return RunConfig(seed=seed, data=cfg.data, attack=clean_attack(cfg),
                     model=dataclasses.replace(cfg.model, pretrained=checkpoint), adapter=AdapterConfig(method="full"),
                     train=train).validate()


def never_poisoned_runs(cfg: PurifyConfig, out: Path, progress: bool) -> list[dict]:
    """The control's run per seed (trained once, read back after): seed, run, CACC and ASR."""
    checkpoint = pretrained_checkpoint(cfg, out, progress)
    runs = []
    for seed in cfg.seeds:
        run = f"never_poisoned-seed{seed}"
        results = train_run(never_poisoned_config(cfg, checkpoint, seed), out / "runs" / run, progress=progress)
        runs.append({"seed": seed, "run": run, "clean_accuracy": results["clean_accuracy"],
                     "attack_success_rate": results["attack_success_rate"]})
    return runs


def defence_run(cfg: PurifyConfig, backdoored: Path, out: Path, text: str, seed: int,
                progress: bool) -> tuple[str, dict, dict]:
    """(run directory name, results, diagnosis) of one defence (as ``defences`` spells it) and seed, trained (or,
    for a post-hoc defence, derived) once and read back after. The adapter-scale sweep is taken for the defences at
    [rora]'s own settings; grid points and the pairs of Table 4 skip it (it would double their cost)."""
    name, r = cfg.defence(text)
    source = POST_HOC.get(name, name)
    run = f"{run_name(cfg, source, r)}-seed{seed}"
    run_dir = out / "runs" / run
    results = train_run(defence_config(cfg, backdoored, source, seed, r), run_dir, progress=progress)
    record = run_dir / ("diagnosis.json" if source == name else f"{run_name(cfg, name, r)}.json")
    saved = files.read_json(record) if record.is_file() else None
    current = saved is not None and (saved["diagnosis"] if source != name else saved).get("format") == diagnose.FORMAT
    if current:
        return (run, saved["results"], saved["diagnosis"]) if source != name else (run, results, saved)
    finished = load_run(run_dir)
    sweep = r == cfg.rora and name not in PAIRS
    if source == name:
        diagnosis = diagnose.diagnose(finished, with_sweep=sweep)
        files.write_json(record, diagnosis)
        return run, results, diagnosis
    scales = rora.post_training_rescale(finished.tuned, r.pt_layers)  # the source's run, rescaled
    evaluation = evaluate(finished.tuned, finished.cfg, finished.test, finished.encoder)
    results = {**results, **evaluation_fields(evaluation), "rora_pt_scales": scales}
    diagnosis = diagnose.diagnose(finished, with_sweep=False)
    files.write_json(record, {"results": results, "diagnosis": diagnosis})
    return run, results, diagnosis


def _before(backdoored: Path, cfg: PurifyConfig) -> dict:
    """The backdoored model on the downstream test set, before any clean fine-tuning."""
    run_cfg = defence_config(cfg, backdoored, "full", cfg.seeds[0])
    model, test, encoder = prepare_model(run_cfg)
    result = evaluate(model, run_cfg, test, encoder)
    return {"clean_accuracy": result.clean_accuracy, "attack_success_rate": result.attack_success_rate}


def summarise_defence(name: str, runs: list[dict]) -> dict:
    cell = {"defence": name, "runs": runs}
    for key in ("clean_accuracy", "attack_success_rate", "asr_above_clean", "spectral_strength",
                "pt_condition_share", "s_star_median", "crossing_median"):
        cell[key] = stats.mean_sd(r[key] for r in runs)
    return cell


def run_purify(cfg: PurifyConfig, out: str | Path, *, progress: bool = True) -> dict:
    """The whole pipeline into ``out`` (module docstring), resuming what an earlier call left.

    Args:
        cfg: a validated purify config.
        out: the output directory (``backdoored/``, ``runs/``, ``summary.json``, ``report.md`` and figures).
        progress: show progress bars.
    Returns:
        The summary: seeds, the backdoored model's CACC and ASR (proxy and downstream), per defence its runs and
        mean ± sd of CACC, ASR and the spectral diagnoses, and the mean scale-sweep curves.
    """
    check_environment(cfg)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    saved = out / "purify_config.json"
    if saved.is_file():
        previous = dataclasses.replace(load(PurifyConfig, saved), defences=cfg.defences, seeds=cfg.seeds)
        if rundir.deciding(to_dict(previous)) != rundir.deciding(to_dict(cfg)):
            raise ConfigError(f"--out {str(out)!r} holds a purify pipeline with other settings (only defences and "
                              f"seeds may change between calls); choose another --out")
    files.write_json(saved, to_dict(cfg))
    write_origin(out)  # the directory can move: load() re-anchors its paths (lorasec.config.relocate)
    backdoored = make_backdoored(cfg, out, progress=progress)
    control = never_poisoned_runs(cfg, out, progress)
    clean_asr = {run["seed"]: run["attack_success_rate"] for run in control}
    cells, sweeps = [], {}
    for name in cfg.defences:
        runs = []
        for seed in cfg.seeds:
            run, results, diagnosis = defence_run(cfg, backdoored, out, name, seed, progress)
            layers = diagnosis["alignment"].values()
            runs.append({
                "seed": seed, "run": run, **settings_row(cfg, name),
                "clean_accuracy": results["clean_accuracy"], "attack_success_rate": results["attack_success_rate"],
                "asr_above_clean": results["attack_success_rate"] - clean_asr[seed],
                "spectral_strength": stats.finite_median(r["spectral_strength"]
                                                         for r in diagnosis["spectral"].values()),
                "pt_condition_share": float(np.mean([r["pt_condition"] for r in layers])),
                "s_star_median": stats.finite_median(r["s_star"] for r in layers),
                "crossing_median": stats.finite_median(r["crossing"] for r in layers),
                "crossing_within_s_star": all(r["crossing"] <= max(r["s_star"], 0.0) * (1 + 1e-6) + 1e-9
                                              for r in layers if r["rho_eff"] > 0),
                "layers_with_threshold": sum(r["rho_eff"] > 0 for r in layers), "layers": len(layers),
                "rora_pt_scales": results["rora_pt_scales"],
            })
            if "sweep" in diagnosis:
                sweeps.setdefault(name, []).append(diagnosis["sweep"])
        cells.append(summarise_defence(name, runs))
    summary = {"seeds": list(cfg.seeds), "backdoored": {
        "proxy": {k: files.read_json(backdoored / "results.json")[k]
                  for k in ("clean_accuracy", "attack_success_rate")},
        "downstream": _before(backdoored, cfg)},
        "never_poisoned": {"runs": control, **{key: stats.mean_sd(r[key] for r in control)
                                               for key in ("clean_accuracy", "attack_success_rate")}},
        "defences": cells,
        "sweeps": {name: mean_curve(curves) for name, curves in sweeps.items()}, "made": machine.record()}
    files.write_json(out / "summary.json", summary)
    figures.purify_figure(summary, out / "purify.png")
    if summary["sweeps"]:
        first = next(iter(summary["sweeps"].values()))
        marks = {"trained s": first["s_train"], "ASR 50%": first["asr_crossing"]["mean"]}
        lora_cell = next((c for c in cells if c["defence"] == "lora"), None)
        if lora_cell is not None:
            marks["median layer s*"] = lora_cell["s_star_median"]["mean"]
            marks["median layer crossing"] = lora_cell["crossing_median"]["mean"]
        curves = {n: {"scales": c["scales"], "clean_accuracy": c["clean_accuracy"]["mean"],
                      "attack_success_rate": c["attack_success_rate"]["mean"]} for n, c in summary["sweeps"].items()}
        title = f"adapter scale sweep after clean fine-tuning, mean over {len(cfg.seeds)} seeds"
        figures.scale_sweep_figure(curves, out / "scale_sweep.png", marks=marks, title=title)
    files.write_text(out / "report.md", figures.purify_table(summary))
    return summary


def mean_curve(curves: list[dict]) -> dict:
    """Mean ± sd over seeds of sweeps taken on the same scale grid."""
    scales = curves[0]["scales"]
    if any(c["scales"] != scales for c in curves):
        raise ValueError("scale sweeps of one defence must share their grid")
    out = {"scales": scales, "s_train": curves[0]["s_train"], "runs": len(curves),
           "asr_crossing": stats.mean_sd(c["asr_crossing"] for c in curves if c["asr_crossing"] is not None)}
    for key in ("clean_accuracy", "attack_success_rate"):
        values = np.asarray([c[key] for c in curves], float)
        out[key] = {"mean": values.mean(0).tolist(), "sd": values.std(0, ddof=1 if len(curves) > 1 else 0).tolist()}
    return out

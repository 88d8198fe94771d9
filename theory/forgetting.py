"""Paper 2 (Luong & Chen 2026) on trained models: LoRA fails to forget a planted backdoor because its update is
spectrally weak, and the critical scale of Proposition 4.2 measured against the true crossing.

All of them read one weight-poisoning pipeline (:mod:`lorasec.pipelines.purify`): the ``lorasec purify`` output in
``purify_dir`` (any config with the ``full`` and ``lora`` defences), or, where there is none yet, the default
synthetic setting (full fine-tuning, LoRA and RoRA, three seeds) run there and reused on the next call.
Comparisons are paired by seed and decided by the 95% t-interval of the mean paired difference (the exact
sign-flip p and each seed's sign shown beside it), never by the sign of a mean or best-of-runs.
"""

from __future__ import annotations

import json

from pathlib import Path

import numpy as np

from lorasec.config import ConfigError, PurifyConfig, load
from lorasec.core import hypotheses
from lorasec.core import stats as seed_stats
from lorasec.core.claims import Check, claim, consistent, verdict
from lorasec.pipelines.figures import crossing_text
from lorasec.pipelines.purify import run_purify

PAPER = "Luong & Chen 2026"


def default_config() -> PurifyConfig:
    return PurifyConfig(defences=("full", "lora", "rora")).validate()


def prepare(purify_dir: Path, progress: bool = True, settings: tuple[str, ...] | list[str] = ()) -> None:
    """Make (or resume) the purify pipeline the trained-model claims read, with progress bars when asked.

    Args:
        purify_dir: where it is (or is made).
        progress: show progress bars.
        settings: ``KEY=VALUE`` overrides of its config (``lorasec verify --set``), on the saved config where
            ``purify_dir`` holds one, else on :func:`default_config`.
    """
    cfg = None
    if settings:
        saved = Path(purify_dir) / "purify_config.json"
        first = [] if saved.is_file() else ["defences=" + json.dumps(list(default_config().defences))]
        cfg = load(PurifyConfig, saved if saved.is_file() else None, [*first, *settings])
    _summary(purify_dir, cfg, progress)


def _summary(purify_dir: Path, cfg: PurifyConfig | None, progress: bool = False) -> tuple[dict, str]:
    purify_dir = Path(purify_dir)
    if cfg is None:
        saved = purify_dir / "purify_config.json"
        cfg = load(PurifyConfig, saved) if saved.is_file() else default_config()
    missing = [d for d in ("full", "lora") if d not in cfg.defences]
    if missing:
        raise ConfigError(f"verify --purify {str(purify_dir)!r}: its defences {list(cfg.defences)} lack "
                          f"{missing[0]!r}; paper 2's comparisons need 'full' and 'lora'")
    summary = run_purify(cfg, purify_dir, progress=progress)
    setting = f"{cfg.data.source}, seeds {list(cfg.seeds)}, {cfg.train.steps} clean steps"
    return {c["defence"]: c for c in summary["defences"]} | {"_summary": summary, "_config": cfg}, setting


def purify_work(purify_dir: Path) -> str:
    """What paper 2's trained-model claims will train first ("" when ``purify_dir`` holds a finished pipeline)."""
    if (Path(purify_dir) / "summary.json").is_file():
        return ""
    c = default_config()
    return (f"trains the default purify pipeline into {str(purify_dir)!r} (a backdoored encoder, then "
            f"{len(c.seeds) * (len(c.defences) + 1)} clean fine-tuning runs; about 6 minutes on 2 CPU cores), "
            f"once: later calls reuse it")


def _paired(cells: dict, key: str, first: str, second: str) -> tuple[list[float], list[float]]:
    a = {r["seed"]: r[key] for r in cells[first]["runs"]}
    b = {r["seed"]: r[key] for r in cells[second]["runs"]}
    seeds = [s for s in a if s in b and a[s] is not None and b[s] is not None]
    return [a[s] for s in seeds], [b[s] for s in seeds]


def _interval(differences) -> tuple[str, str]:
    """(verdict of the 95% t-interval of the mean paired difference against 0, a text with it, the per-seed signs
    and the exact sign-flip p)."""
    test = hypotheses.test(hypotheses.Hypothesis("direction", "a > b"), dict(enumerate(differences)))
    if test["mean"] is None or test["ci95"] is None:
        return "inconclusive", "fewer than two seeds"
    low, high = test["mean"] - test["ci95"], test["mean"] + test["ci95"]
    verdict_ = "agrees" if low > 0 else "disagrees" if high < 0 else "inconclusive"
    return verdict_, (f"{test['mean']:.3g} ± {test['ci95']:.2g} (95% t-interval), signs {test['signs']}, exact "
                      f"sign-flip p = {test['p']:.3g}")


@claim("lora_spectrally_weak", PAPER, "LoRA's update is spectrally weak: σ_max(W_pre)/σ_max(ΔW) > 1 at the median "
       "adapted matrix, after clean fine-tuning of a backdoored model (an independent reproduction measured 5–20 on "
       "RoBERTa-large's top layers)", trains=True,
       work=purify_work)
def spectrally_weak(purify_dir: Path, cfg: PurifyConfig | None = None) -> list[Check]:
    cells, setting = _summary(purify_dir, cfg)
    strength = [r["spectral_strength"] for r in cells["lora"]["runs"] if r["spectral_strength"] is not None]
    outcome, text = _interval([np.log(s) for s in strength])
    return [Check("lora_spectrally_weak", setting, "median strength > 1 (log strength > 0)",
                  f"LoRA {_stat(strength)}; log strength {text}", "95% t-interval of log strength over seeds",
                  outcome, "the paper's absolute statement, judged alone (no comparison across learning rates)")]


@claim("lora_spectrally_weaker", PAPER, "LoRA's update is spectrally weaker than full FT's at the same learning "
       "rate: larger σ_max(W_pre)/σ_max(ΔW) (median over adapted matrices)", trains=True,
       work=purify_work)
def spectrally_weaker(purify_dir: Path, cfg: PurifyConfig | None = None) -> list[Check]:
    cells, setting = _summary(purify_dir, cfg)
    config = cells["_config"]
    lora, full = _paired(cells, "spectral_strength", "lora", "full")
    full_lr = config.full_lr or config.train.lr
    if full_lr != config.train.lr:
        return [Check("lora_spectrally_weaker", setting, "strength LoRA > full FT at one learning rate",
                      f"full FT trained at {full_lr:g}, LoRA at {config.train.lr:g}", "matched rates only",
                      "no claim", "a larger rate makes a larger update: compared only at matched rates")]
    outcome, text = _interval(np.subtract(np.log(lora), np.log(full)))
    return [Check("lora_spectrally_weaker", setting, "strength LoRA > full FT (log ratio > 0)",
                  f"LoRA {_stat(lora)}, full FT {_stat(full)}; log(LoRA/full) {text}",
                  "95% t-interval of the paired log ratio", outcome)]


@claim("full_ft_forgets_better", PAPER, "clean full fine-tuning removes a planted backdoor better than LoRA "
       "(lower ASR)", trains=True,
       work=purify_work)
def forgets_better(purify_dir: Path, cfg: PurifyConfig | None = None) -> list[Check]:
    cells, setting = _summary(purify_dir, cfg)
    full, lora = _paired(cells, "attack_success_rate", "full", "lora")
    before = cells["_summary"]["backdoored"]["downstream"]["attack_success_rate"]
    outcome, text = _interval(100 * np.subtract(lora, full))
    return [Check("full_ft_forgets_better", setting, "ASR LoRA − ASR full FT > 0 (paired by seed)",
                  f"ASR before {100 * before:.1f}%; full FT {_stat(full, 100)}%, LoRA {_stat(lora, 100)}%; "
                  f"LoRA − full {text} points", "95% t-interval of the paired difference", outcome)]


@claim("critical_scale_trained", PAPER, "per adapted layer of a trained LoRA, the margin on triggered inputs is "
       "positive past s* (corrected Prop. 4.2); Pt's premise ρ_eff > ρ_bd; s* against the measured crossings",
       trains=True, work=purify_work)
def critical_scale(purify_dir: Path, cfg: PurifyConfig | None = None) -> list[Check]:
    cells, setting = _summary(purify_dir, cfg)
    summary = cells["_summary"]
    checks = []
    for name in ("lora", "rora"):
        if name not in cells:
            continue
        runs = cells[name]["runs"]
        bounded = all(r["crossing_within_s_star"] for r in runs)
        with_threshold = sum(r["layers_with_threshold"] for r in runs)
        layers = sum(r["layers"] for r in runs)
        sweep = summary["sweeps"].get(name, {})
        network_text = crossing_text(sweep) if sweep else "not swept"
        checks.append(Check(
            "critical_scale_trained", f"{setting}, {name}",
            "every layer crossing ≤ s* where ρ_eff > 0",
            f"{with_threshold}/{layers} layer-runs have ρ_eff > 0; "
            f"median s* {_stat_cell(cells[name]['s_star_median'])}, "
            f"median crossing {_stat_cell(cells[name]['crossing_median'])}; whole network (all adapters scaled) "
            f"ASR {network_text}", "exact", consistent(bounded),
            "an identity of lorasec's definitions (ρ_bd = max and ρ_eff = min over the same examples make s* an "
            "upper bound of every crossing), so it checks the alignment code, not the paper; per-layer s* and "
            "crossings are first-order, one layer scaled at a time, while the network's crossing scales every "
            "adapter together", kind="identity"))
        share = cells[name]["pt_condition_share"]
        checks.append(Check(
            "critical_scale_trained", f"{setting}, {name}", "ρ_eff > ρ_bd at the adapted layers (Pt's premise)",
            f"share of layers where it holds: {_stat_cell(share)}", "all layers",
            verdict(share["mean"] == 1.0),
            "where it fails, Pt's scale σ_max(W_pre)/σ_max(ΔW) stays below s*"))
    return checks


def _stat(values, scale: float = 1.0) -> str:
    stats = seed_stats.mean_sd(values)
    if stats["mean"] is None:
        return "n/a"
    return f"{scale * stats['mean']:.3g} ± {scale * stats['sd']:.2g}"


def _stat_cell(stats: dict) -> str:
    return "n/a" if stats["mean"] is None else f"{stats['mean']:.3g} ± {stats['sd']:.2g}"

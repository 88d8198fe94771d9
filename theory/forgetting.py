"""Paper 2 (Luong & Chen 2026) on trained models: LoRA fails to forget a planted backdoor because its update is
spectrally weak, and the critical scale of Proposition 4.2 measured against the true crossing.

All three claims read one weight-poisoning pipeline (:mod:`lorasec.pipelines.purify`): the ``lorasec purify`` output in
``purify_dir`` (any config with the ``full`` and ``lora`` defences), or, where there is none yet, the default
synthetic setting (full fine-tuning, LoRA and RoRA, three seeds) run there and reused on the next call.
Comparisons are paired by seed and reported as mean ± sd, never best-of-runs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lorasec.config import ConfigError, PurifyConfig, load
from lorasec.core import stats as seed_stats
from lorasec.core.claims import Check, claim, consistent, verdict
from lorasec.pipelines.figures import crossing_text
from lorasec.pipelines.purify import run_purify

PAPER = "Luong & Chen 2026"


def default_config() -> PurifyConfig:
    return PurifyConfig(defences=("full", "lora", "rora")).validate()


def _summary(purify_dir: Path, cfg: PurifyConfig | None) -> tuple[dict, str]:
    purify_dir = Path(purify_dir)
    if cfg is None:
        saved = purify_dir / "purify_config.json"
        cfg = load(PurifyConfig, saved) if saved.is_file() else default_config()
    missing = [d for d in ("full", "lora") if d not in cfg.defences]
    if missing:
        raise ConfigError(f"verify --purify {str(purify_dir)!r}: its defences {list(cfg.defences)} lack "
                          f"{missing[0]!r}; paper 2's comparisons need 'full' and 'lora'")
    summary = run_purify(cfg, purify_dir, progress=False)
    setting = f"{cfg.data.source}, seeds {list(cfg.seeds)}, {cfg.train.steps} clean steps"
    return {c["defence"]: c for c in summary["defences"]} | {"_summary": summary}, setting


def _paired(cells: dict, key: str, first: str, second: str) -> tuple[list[float], list[float]]:
    a = {r["seed"]: r[key] for r in cells[first]["runs"]}
    b = {r["seed"]: r[key] for r in cells[second]["runs"]}
    seeds = [s for s in a if s in b and a[s] is not None and b[s] is not None]
    return [a[s] for s in seeds], [b[s] for s in seeds]


@claim("lora_spectrally_weaker", PAPER, "LoRA's update is spectrally weaker than full FT's: larger "
       "σ_max(W_pre)/σ_max(ΔW) (median over adapted matrices), after clean fine-tuning of a backdoored model",
       trains=True)
def spectrally_weaker(purify_dir: Path, cfg: PurifyConfig | None = None) -> list[Check]:
    cells, setting = _summary(purify_dir, cfg)
    lora, full = _paired(cells, "spectral_strength", "lora", "full")
    wins = sum(x > y for x, y in zip(lora, full))
    return [Check("lora_spectrally_weaker", setting, "strength LoRA > full FT, every seed",
                  f"LoRA {_stat(lora)}, full FT {_stat(full)}; LoRA larger in {wins}/{len(lora)} seeds",
                  "paired by seed", verdict(bool(lora) and wins == len(lora)))]


@claim("full_ft_forgets_better", PAPER, "clean full fine-tuning removes a planted backdoor better than LoRA "
       "(lower ASR)", trains=True)
def forgets_better(purify_dir: Path, cfg: PurifyConfig | None = None) -> list[Check]:
    cells, setting = _summary(purify_dir, cfg)
    full, lora = _paired(cells, "attack_success_rate", "full", "lora")
    before = cells["_summary"]["backdoored"]["downstream"]["attack_success_rate"]
    wins = sum(x < y for x, y in zip(full, lora))
    gap = float(np.mean(lora) - np.mean(full)) if full else float("nan")
    spread = float(np.std(np.subtract(lora, full), ddof=1)) if len(full) > 1 else 0.0
    return [Check("full_ft_forgets_better", setting, "ASR full FT < ASR LoRA (mean; paired by seed)",
                  f"ASR before {100 * before:.1f}%; full FT {_stat(full, 100)}%, LoRA {_stat(lora, 100)}%; "
                  f"full lower in {wins}/{len(full)} seeds", "mean of the paired differences > 0",
                  verdict(bool(full) and gap > 0),
                  f"paired gap {100 * gap:.1f} ± {100 * spread:.1f} points" + (
                      " (within one sd of zero)" if abs(gap) <= spread else ""))]


@claim("critical_scale_trained", PAPER, "per adapted layer of a trained LoRA, the margin on triggered inputs is "
       "positive past s* (corrected Prop. 4.2); Pt's premise ρ_eff > ρ_bd; s* against the measured crossings",
       trains=True)
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

"""Paper 1's Fig. 3 measured: the entropy proxies ``H'_1 = log Σλ`` and ``H'_2 = log Σλ²`` of one layer's LoRA
kernel ``K_LoRA^(l)`` at initialisation (Lemma 3.1; B = 0, so it is ``s²⟨δ,δ'⟩ xᵀAᵀAx'``), on a pretrained encoder
and the task's own test sentences, against the rank r and the variance σ² = c/n of A, beside the paper's closed
forms (:func:`lorasec.diagnostics.information.closed_form_proxies`). The scale is s = 1 (α = r), as the closed
forms have none. Each draw (seed) draws A and the classifier head; a draw's rows share them across settings.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lorasec.adapters import lora
from lorasec.config import AdapterConfig, AttackConfig, ConfigError, RunConfig, check_environment, replace_config
from lorasec.diagnostics import information, kernel
from lorasec.data.tasks import load_task
from lorasec.pipelines import start as starts
from lorasec.pipelines.run import build_model

METRICS = ("H1", "H2")
FIELDS = ("layer", "examples", "draws", "ranks", "rank_c", "variances", "variance_rank", "init")


@dataclass(frozen=True)
class ProxySetting:
    """Which layer, how many test sentences, the draws, and the two sweeps: ``ranks`` at c = ``rank_c`` and
    ``variances`` (c) at r = ``variance_rank``."""

    layer: str
    examples: int
    draws: tuple[int, ...]
    ranks: tuple[int, ...]
    rank_c: float
    variances: tuple[float, ...]
    variance_rank: int
    init: str = "gaussian"

    def validate(self, where: str) -> ProxySetting:
        if self.init not in ("gaussian", "kaiming_uniform"):
            raise ConfigError(f"{where}.init = {self.init!r}: must be 'gaussian' or 'kaiming_uniform' (uniform A)")
        if self.examples < 2 or len(self.draws) < 2:
            raise ConfigError(f"{where}: needs examples >= 2 and at least 2 draws (an interval needs two)")
        if not self.ranks or any(r < 1 for r in self.ranks) or self.variance_rank < 1:
            raise ConfigError(f"{where}.ranks = {list(self.ranks)}: must be integers >= 1")
        if not self.variances or any(c <= 0 for c in self.variances) or self.rank_c <= 0:
            raise ConfigError(f"{where}.variances = {list(self.variances)}: must be numbers > 0")
        return self

    @property
    def values(self) -> dict[str, tuple]:
        return {"source": ("measured", "closed form"), "sweep": ("rank", "variance"), "r_or_c": (),
                "adapter.rank": tuple(sorted({*self.ranks, self.variance_rank})),
                "adapter.init_scale": tuple(sorted({*self.variances, self.rank_c}))}


def measure(cfg: RunConfig, setting: ProxySetting) -> list[dict]:
    """One row per (sweep, setting, draw): the measured proxies and the closed forms (unshifted)."""
    check_environment(cfg)
    train, test = load_task(cfg.data)
    start = starts.resolve(replace_config(cfg, attack=AttackConfig()), train)
    encoder = start.text_encoder()
    if setting.examples > len(test):
        raise ConfigError(f"examples = {setting.examples}: the test set holds {len(test)} sentences")
    tokens, mask = encoder.encode(test.texts[:setting.examples])
    plan = [("rank", r, setting.rank_c) for r in setting.ranks]
    plan += [("variance", setting.variance_rank, c) for c in setting.variances]
    rows = []
    for sweep, rank, c in plan:
        for draw in setting.draws:
            adapter = AdapterConfig(rank=rank, alpha=float(rank), init=setting.init, init_scale=c,
                                    targets=(setting.layer,))
            model = build_model(replace_config(cfg, seed=draw, adapter=adapter), start)
            layer = _the_adapted_layer(model, setting.layer)
            width = int(lora.lora_layers(model)[layer].lora_a[...].shape[0])  # n, the layer's input width
            _, factors = kernel.layer_kernels(model, layer, tokens, mask)
            eigenvalues = np.linalg.eigvalsh(np.asarray(factors, np.float64))
            closed_1, closed_2 = information.closed_form_proxies(rank, width, c / width, setting.init)
            rows.append({"source": "measured", "sweep": sweep, "r_or_c": rank if sweep == "rank" else c,
                         "adapter.rank": rank, "adapter.init_scale": c, "seed": draw,
                         "H1": information.log_power_sum(eigenvalues, 1.0),
                         "H2": information.log_power_sum(eigenvalues, 2.0),
                         "H1_closed": closed_1, "H2_closed": closed_2})
    return rows


def _the_adapted_layer(model, pattern: str) -> str:
    names = list(lora.lora_layers(model))
    if len(names) != 1:
        raise ConfigError(f"layer = {pattern!r}: must name exactly one linear layer; it adapts {names or 'none'}")
    return names[0]


def shifted_closed_forms(rows: list[dict], setting: ProxySetting) -> list[dict]:
    """The closed forms as rows (``source = "closed form"``) beside the measured ones, each shifted by a constant
    so that it equals the measured mean at peft's default point of its sweep (r = ``variance_rank``, c =
    ``rank_c``, or the sweep's first point when it lacks it): the closed forms hold up to additive constants."""
    out = []
    for sweep, field, reference in (("rank", "adapter.rank", setting.variance_rank),
                                    ("variance", "adapter.init_scale", setting.rank_c)):
        chosen = [r for r in rows if r["sweep"] == sweep]
        if not chosen:
            continue
        if not any(np.isclose(r[field], reference) for r in chosen):
            reference = chosen[0][field]
        at = [r for r in chosen if np.isclose(r[field], reference)]
        shifts = {m: np.mean([r[m] for r in at]) - at[0][f"{m}_closed"] for m in METRICS}
        out += [{**row, "source": "closed form", **{m: float(row[f"{m}_closed"] + shifts[m]) for m in METRICS}}
                for row in chosen]
    return out


__all__ = ["ProxySetting", "measure", "shifted_closed_forms", "METRICS", "FIELDS"]

"""The diagnoses of one finished run, shared by ``lorasec spectral`` and ``lorasec purify``.

Spectral measures per adapted matrix (:mod:`lorasec.diagnostics.spectral`); on runs with a trigger, the alignment
coefficients and critical scales (:mod:`lorasec.diagnostics.alignment`) and, for plain LoRA, the adapter-scale
sweep (:mod:`lorasec.diagnostics.scale_sweep`). A run whose RoRA Pt rescaled its adapters is diagnosed as it was
evaluated, after the rescale.
"""

from __future__ import annotations

import numpy as np

from lorasec import config
from lorasec.adapters import lora
from lorasec.attacks import poison
from lorasec.diagnostics import alignment, scale_sweep, spectral
from lorasec.pipelines.run import build_model
from lorasec.pipelines.rundir import FinishedRun


def apply_pt(run: FinishedRun, scales: dict[str, float] | None = None) -> dict[str, float]:
    """Set the adapters to the scales RoRA's Pt chose (``scales``, or those in the run's results); returns them."""
    scales = run.results.get("rora_pt_scales", {}) if scales is None else scales
    if scales:
        lora.set_scales(run.tuned, scales)
    return scales


def update_pairs(run: FinishedRun, base: str | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(starting, tuned) kernels per adapted matrix; ``base`` compares a full fine-tuning run with another
    pretrained checkpoint instead of its own starting point."""
    pairs = spectral.update_pairs(run)
    if not base:
        return pairs
    if run.cfg.adapter.method != "full":
        raise config.ConfigError("spectral --base: only for full fine-tuning runs (a LoRA run's W_pre is its "
                                 "frozen weight)")
    reference = build_model(config.replace(run.cfg, model={"pretrained": base, "init_from": ""},
                                           adapter={"method": "full"}), run.encoder.vocab_size)
    before = lora.linear_layers(reference)
    return {name: (np.asarray(before[name].kernel[...]), tuned) for name, (_, tuned) in pairs.items()}


FORMAT = 2  # diagnosis records of format 1 were measured before Pt's rescale; they are recomputed


def diagnose(run: FinishedRun, *, base: str | None = None, k: int = 10, epsilon: float = 0.5,
             with_alignment: bool = True, with_sweep: bool = True) -> dict:
    """``{"spectral": per matrix, "alignment": per matrix, "sweep": curve}`` (the last two where they apply)."""
    pt_scales = apply_pt(run)
    pairs = update_pairs(run, base)
    report = {"format": FORMAT, "spectral": {name: spectral.pair_report(pre, tuned, k=k, epsilon=epsilon)
                                             for name, (pre, tuned) in pairs.items()}}
    if poison.triggers_for(run.cfg.attack):
        if with_alignment:
            report["alignment"] = alignment.run_alignment(run)
        if with_sweep and run.cfg.adapter.plain_lora:
            report["sweep"] = scale_sweep.sweep(run)
            if pt_scales:
                report["sweep"]["note"] = ("one uniform s on every adapter; the run was evaluated with Pt's "
                                           "per-layer scales, so s_train = α/r is the scale it trained at")
    return report

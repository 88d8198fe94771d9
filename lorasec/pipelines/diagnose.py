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
    """The weight pairs paper 2's spectral measures compare.

    Args:
        run: a finished run (:func:`lorasec.pipelines.run.load_run`).
        base: a pretrained checkpoint to compare a full fine-tuning run with, instead of its own starting point.
    Returns:
        ``{matrix name: (starting kernel, tuned effective kernel)}``, float arrays (in, out) in lorasec's layout.
    """
    pairs = spectral.update_pairs(run)
    if not base:
        return pairs
    if run.cfg.adapter.method != "full":
        raise config.ConfigError("spectral --base: only for full fine-tuning runs (a LoRA run's W_pre is its "
                                 "frozen weight)")
    reference = build_model(config.replace_config(run.cfg, model={"pretrained": base, "init_from": ""},
                                           adapter={"method": "full"}))
    before = lora.linear_layers(reference)
    return {name: (np.asarray(before[name].kernel[...]), tuned) for name, (_, tuned) in pairs.items()}


FORMAT = 2  # diagnosis records of format 1 were measured before Pt's rescale; they are recomputed


def diagnose(run: FinishedRun, *, base: str | None = None, k: int = 10, epsilon: float = 0.5,
             with_alignment: bool = True, with_sweep: bool = True) -> dict:
    """The diagnoses of one finished run, as it was evaluated (after RoRA's Pt, when it ran).

    Args:
        run: a finished run.
        base: see :func:`update_pairs`.
        k: intruder dimensions: how many top tuned singular directions are compared.
        epsilon: intruder dimensions: the |cos| below which a tuned direction is an intruder.
        with_alignment: take the alignment table (runs with a trigger only).
        with_sweep: take the scale sweep (runs with a trigger only).
    Returns:
        ``{"format", "spectral": per matrix, "alignment": per matrix, "sweep": curve}``, the last two where they
        apply (:func:`lorasec.diagnostics.spectral.spectral_pair_report`, :mod:`lorasec.diagnostics.alignment`,
        :func:`lorasec.diagnostics.scale_sweep.scale_sweep`).
    """
    pt_scales = apply_pt(run)
    pairs = update_pairs(run, base)
    report = {"format": FORMAT, "spectral": {name: spectral.spectral_pair_report(pre, tuned, k=k, epsilon=epsilon)
                                             for name, (pre, tuned) in pairs.items()}}
    if poison.triggers_for(run.cfg.attack):
        if with_alignment:
            report["alignment"] = alignment.run_alignment(run)
        if with_sweep and run.cfg.adapter.plain_lora:
            report["sweep"] = scale_sweep.scale_sweep(run)
            if pt_scales:
                report["sweep"]["note"] = ("one uniform s on every adapter; the run was evaluated with Pt's "
                                           "per-layer scales, so s_train = α/r is the scale it trained at")
    return report

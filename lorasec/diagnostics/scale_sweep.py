"""CACC and ASR of a trained LoRA adapter as functions of its scale s: the curve Proposition 4.2 speaks about.

Every adapter's scale is set to the same s (the trained factors B, A kept), the model evaluated on the clean and
triggered test sets; the measured crossing is where ASR first falls below one half. Plain LoRA only (with any
RoRA part): DoRA's weight is not linear in s and PiSSA's factors carry W_pre's principal part.
"""

from __future__ import annotations

import numpy as np

from lorasec.adapters import lora
from lorasec.config import ConfigError
from lorasec.training.evaluation import evaluation_inputs, score

DEFAULT_FACTORS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0)


def scale_sweep(run, scales=None) -> dict:
    """``{"scales", "clean_accuracy", "attack_success_rate", "s_train", "asr_crossing"}`` of a finished run (with
    ``cfg``, ``tuned``, ``test``, ``encoder``); default scales are multiples of the trained one. Each point is a
    state update of the adapters' scale variables: the evaluation compiles once for the whole sweep.

    Args:
        run: a finished plain-LoRA run (e.g. :func:`lorasec.load_run`'s); its adapters' scales are restored after.
        scales: the scales s to evaluate, or None for :data:`DEFAULT_FACTORS` times ``cfg.adapter.scaling``.
    Returns:
        ``{"scales": [s], "clean_accuracy": [CACC], "attack_success_rate": [ASR], "s_train": s_train,
        "asr_crossing": s or None}``: one CACC and ASR per scale (ASR None without a trigger attack) and the first s
        where ASR falls below 0.5 (:func:`asr_crossing`), the measured counterpart of paper 2's Proposition 4.2.
    """
    cfg = run.cfg
    if not cfg.adapter.plain_lora:
        raise ConfigError("scale sweep: needs a plain LoRA run (adapter.method = 'lora', no dora, no pissa)")
    s_train = cfg.adapter.scaling
    scales = np.asarray(scales if scales is not None else [f * s_train for f in DEFAULT_FACTORS], float)
    trained = lora.scales(run.tuned)
    inputs = evaluation_inputs(cfg, run.test, run.encoder)  # tokenised once for every point
    cacc, asr = [], []
    try:
        for s in scales:
            lora.set_scales(run.tuned, float(s))
            result = score(run.tuned, cfg, inputs)
            cacc.append(result.clean_accuracy)
            asr.append(result.attack_success_rate)
    finally:
        lora.set_scales(run.tuned, trained)
    return {"scales": scales.tolist(), "clean_accuracy": cacc, "attack_success_rate": asr, "s_train": s_train,
            "asr_crossing": asr_crossing(scales, asr)}


def asr_crossing(scales, asr, level: float = 0.5) -> float | None:
    """First s where ASR falls below ``level`` (linear interpolation between grid points); None if never."""
    if asr[0] is None:
        return None
    for i in range(len(scales)):
        if asr[i] < level:
            if i == 0:
                return float(scales[0])
            s0, s1, a0, a1 = scales[i - 1], scales[i], asr[i - 1], asr[i]
            return float(s0 + (a0 - level) / (a0 - a1) * (s1 - s0))
    return None

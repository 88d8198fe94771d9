"""CACC and ASR of a trained LoRA adapter as functions of its scale s: the curve Proposition 4.2 speaks about.

Every adapter's scale is set to the same s (the trained factors B, A kept), the model evaluated on the clean and
triggered test sets; the measured crossing is where ASR first falls below one half. Plain LoRA only (with any
RoRA part): DoRA's weight is not linear in s and PiSSA's factors carry W_pre's principal part.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lorasec import lora
from lorasec.config import ConfigError
from lorasec.run import FinishedRun, evaluate

DEFAULT_FACTORS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0)


def sweep(run: FinishedRun, scales=None) -> dict:
    """``{"scales", "clean_accuracy", "attack_success_rate", "s_train", "asr_crossing"}``; default scales are
    multiples of the trained one."""
    cfg = run.cfg
    if cfg.adapter.method != "lora" or cfg.adapter.dora or cfg.adapter.init == "pissa":
        raise ConfigError("scale sweep: needs a plain LoRA run (adapter.method = 'lora', no dora, no pissa)")
    s_train = cfg.adapter.scaling
    scales = np.asarray(scales if scales is not None else [f * s_train for f in DEFAULT_FACTORS], float)
    layers = lora.lora_layers(run.tuned)
    trained_b = {name: layer.lora_b[...] for name, layer in layers.items()}
    cacc, asr = [], []
    try:
        for s in scales:
            # s·A·B = s_train·A·(s/s_train·B): rescaling B's values keeps the (static) graph, so the evaluation
            # compiles once for the whole sweep instead of once per scale.
            for name, layer in layers.items():
                layer.lora_b[...] = trained_b[name] * (float(s) / s_train)
            result = evaluate(run.tuned, cfg, run.test, run.encoder)
            cacc.append(result.clean_accuracy)
            asr.append(result.attack_success_rate)
    finally:
        for name, layer in layers.items():
            layer.lora_b[...] = trained_b[name]
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


def draw(curves: dict[str, dict], path: Path, *, marks: dict[str, float] | None = None, title: str = "") -> None:
    """One panel per metric; ``curves`` maps a label to :func:`sweep` output, ``marks`` names vertical lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for label, curve in curves.items():
        for ax, key in zip(axes, ("clean_accuracy", "attack_success_rate")):
            ax.plot(curve["scales"], [100 * v for v in curve[key]], marker="o", ms=3, label=label)
    for name, value in (marks or {}).items():
        if value is not None and np.isfinite(value):
            for ax in axes:
                ax.axvline(value, ls="--", lw=1, color="gray")
            axes[1].text(value, 102, name, rotation=90, fontsize=7, va="top", ha="right", color="gray")
    for ax, name in zip(axes, ("CACC (%)", "ASR (%)")):
        ax.set_xlabel("adapter scale s")
        ax.set_ylabel(name)
        ax.set_ylim(0, 105)
    axes[0].legend(fontsize=7)
    fig.suptitle(title or "scale sweep")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

"""Statistics over seeds and the number formats every report shares."""

from __future__ import annotations

import math

import numpy as np


def finite(value: float) -> float | None:
    """JSON has no infinity: an infinite (or NaN) value is written as None."""
    return float(value) if value is not None and np.isfinite(value) else None


def finite_median(values) -> float | None:
    """Median of the values that are not None (None stands for infinity in the diagnoses); None if none are."""
    values = [v for v in values if v is not None]
    return float(np.median(values)) if values else None


def mean_sd(values) -> dict:
    """Mean, sample standard deviation (ddof = 1; 0 for one value) and count; ``None`` values are skipped."""
    data = [float(v) for v in values if v is not None]
    if not data:
        return {"mean": None, "sd": None, "n": 0}
    sd = float(np.std(data, ddof=1)) if len(data) > 1 else 0.0
    return {"mean": float(np.mean(data)), "sd": sd, "n": len(data)}


def ci95_half_width(values) -> float | None:
    """Half-width of the 95% Student-t interval of the mean (None for fewer than two values)."""
    from scipy import stats as scipy_stats

    data = [float(v) for v in values]
    if len(data) < 2:
        return None
    return float(scipy_stats.t.ppf(0.975, len(data) - 1) * np.std(data, ddof=1) / math.sqrt(len(data)))


def paired_difference(a: dict, b: dict) -> dict:
    """``a − b`` over the seeds both hold (seed -> value, None skipped): mean, sd, 95% half-width and n. Pairing by
    seed removes what two runs of one seed share (data draw, initialisation) from the interval."""
    seeds = sorted(s for s in a if s in b and a[s] is not None and b[s] is not None)
    differences = [float(a[s]) - float(b[s]) for s in seeds]
    return {**mean_sd(differences), "ci95": ci95_half_width(differences)}


def format_mean_sd(stats: dict, scale: float = 100.0, digits: int = 1) -> str:
    """``'12.3 ± 4.5'`` (percent by default); ``'n/a'`` when there is no value."""
    if stats["mean"] is None or (isinstance(stats["mean"], float) and math.isnan(stats["mean"])):
        return "n/a"
    return f"{stats['mean'] * scale:.{digits}f} ± {stats['sd'] * scale:.{digits}f}"


def format_general(stats: dict) -> str:
    """``'2.76 ± 0.14'`` in three significant digits, for quantities that are not percentages."""
    if stats["mean"] is None:
        return "n/a"
    return f"{stats['mean']:.3g} ± {stats['sd']:.2g}"

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


# --- paired tests over seeds ------------------------------------------------------------------------------------

EXACT_LIMIT = 20  # up to 2**20 sign patterns are enumerated; beyond, a fixed Monte-Carlo sample of them
MONTE_CARLO_DRAWS = 200_000


def _sign_flip_means(d: np.ndarray) -> np.ndarray:
    """The mean of ``±d`` for every sign pattern (all ``2**n`` of them up to :data:`EXACT_LIMIT`, else
    :data:`MONTE_CARLO_DRAWS` drawn from a fixed seed), the observed pattern among them."""
    n = d.size
    if n <= EXACT_LIMIT:
        patterns = (np.arange(2**n)[:, None] >> np.arange(n)[None, :]) & 1
        return ((1 - 2 * patterns) * d).mean(axis=1)
    signs = np.random.default_rng(0).choice((-1.0, 1.0), size=(MONTE_CARLO_DRAWS, n))
    return np.concatenate([[d.mean()], (signs * d).mean(axis=1)])


def sign_flip_p(differences, *, null: float = 0.0, alternative: str = "two-sided") -> float | None:
    """The paired sign-flip permutation test of ``mean(d) = null`` (Fisher 1935): under the null each paired
    difference ``d − null`` is as likely positive as negative, so its mean is compared with the means over every
    sign pattern. Exact up to :data:`EXACT_LIMIT` seeds, distribution-free, and never below ``2 / 2**n``
    (two-sided): with 5 seeds no difference reaches p < 0.05.

    Args:
        differences: the per-seed paired differences a − b (None values are skipped).
        null: the mean difference under the null hypothesis.
        alternative: ``"two-sided"``, ``"greater"`` (mean > null) or ``"less"``.
    Returns:
        The p-value, or None without any difference.
    """
    d = np.asarray([float(v) for v in differences if v is not None], np.float64) - null
    if d.size == 0:
        return None
    means = _sign_flip_means(d)
    observed = d.mean()
    tolerance = 1e-12 * max(float(np.abs(d).max()), 1e-300)
    if alternative == "two-sided":
        hits = np.abs(means) >= abs(observed) - tolerance
    elif alternative == "greater":
        hits = means >= observed - tolerance
    elif alternative == "less":
        hits = means <= observed + tolerance
    else:
        raise ValueError(f"alternative = {alternative!r}: must be two-sided, greater or less")
    return float(hits.mean())


def tost_p(differences, margin: float) -> float | None:
    """Two one-sided tests of equivalence (Schuirmann 1987): the larger of the sign-flip p-values of
    ``mean > −margin`` and ``mean < +margin``; small when the mean difference lies within ±margin.

    Args:
        differences: per-seed paired differences a − b.
        margin: the equivalence margin (> 0), in the differences' units.
    Returns:
        The TOST p-value, or None without any difference.
    """
    if not margin > 0:
        raise ValueError(f"margin = {margin!r}: must be > 0")
    lower = sign_flip_p(differences, null=-margin, alternative="greater")
    upper = sign_flip_p(differences, null=margin, alternative="less")
    return None if lower is None else max(lower, upper)


def holm(pvalues) -> list[float | None]:
    """Holm's step-down adjustment (Holm 1979) of a family of p-values, in their order (None stays None):
    the k-th smallest of m is multiplied by m − k + 1, then made non-decreasing and capped at 1. It controls the
    family-wise error rate at any dependence between the tests."""
    indexed = sorted((p, i) for i, p in enumerate(pvalues) if p is not None)
    m = len(indexed)
    adjusted: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(indexed):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted


def detectable_effect(sd: float | None, n: int, *, alpha: float = 0.05, power: float = 0.8) -> float | None:
    """The smallest mean paired difference a two-sided test at ``alpha`` detects with probability ``power`` over
    ``n`` seeds whose differences spread by ``sd`` (the t approximation, ``(t_{1−α/2} + t_{power})·sd/√n``);
    infinite (None) when the exact sign-flip test cannot reach ``alpha`` at all (``2 / 2**n > alpha``) or n < 2."""
    from scipy import stats as scipy_stats

    if sd is None or n < 2 or 2.0 / 2**n > alpha:
        return None
    df = n - 1
    return float((scipy_stats.t.ppf(1 - alpha / 2, df) + scipy_stats.t.ppf(power, df)) * sd / math.sqrt(n))


def signs(differences) -> str:
    """``'++−+0'``: the sign of each per-seed difference (0 for a tie, ? where one side is missing)."""
    out = []
    for d in differences:
        out.append("?" if d is None else "+" if d > 0 else "−" if d < 0 else "0")
    return "".join(out)

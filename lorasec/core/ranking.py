"""Does a predictor rank the outcomes of a sweep? Rank correlations over its cells, with intervals that know
the cells were measured with a few seeds each.

A sweep is a set of cells (configurations), each trained with several seeds. A predictor gives one value per
(cell, seed) (or per cell); the outcome is measured per (cell, seed). The score is the correlation over cells of
the predictor's cell mean with the outcome's cell mean: Spearman's ρ and Kendall's τ-b (``scipy.stats``). The 95%
interval is a percentile bootstrap over cells (the cluster bootstrap: draw the cells with replacement, each with
all its seeds, and recompute; Davison & Hinkley 1997, Sec. 3.8, who note that resampling seeds within cells as
well counts the seeds' variation twice). The permutation p tests "no monotone relationship": the outcome's cell
means shuffled over the cells.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np
from scipy import stats as scipy_stats

from lorasec.core import keys
from lorasec.core.stats import finite


def _spearman_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman's ρ of each row pair of (D, n) arrays (average ranks for ties); NaN for a constant row."""
    rx = scipy_stats.rankdata(x, axis=1)
    ry = scipy_stats.rankdata(y, axis=1)
    rx = rx - rx.mean(axis=1, keepdims=True)
    ry = ry - ry.mean(axis=1, keepdims=True)
    denominator = np.sqrt((rx**2).sum(axis=1) * (ry**2).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, (rx * ry).sum(axis=1) / denominator, np.nan)


def _kendall(x: np.ndarray, y: np.ndarray) -> float:
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(scipy_stats.kendalltau(x, y).statistic)


def rank_correlations(x: Sequence[float], y: Sequence[float]) -> dict:
    """Spearman's ρ and Kendall's τ-b of paired values (NaN when either side is constant)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    return {"spearman": float(_spearman_rows(x[None], y[None])[0]), "kendall": _kendall(x, y)}


def score(rows: Sequence[tuple[Hashable, float | None, float]], *, draws: int = 2000, permutations: int = 10000,
          seed: int = 0) -> dict:
    """The module docstring's score of one predictor against one outcome.

    Args:
        rows: ``(cell, predicted, measured)`` per (cell, seed); ``predicted`` None where the predictor was computed
            for other seeds of the cell only (the cell's prediction is the mean over those). Rows with a
            non-finite measurement are dropped.
        draws: bootstrap resamples.
        permutations: shuffles for the permutation p.
        seed: the resampling's seed (a branch of :mod:`lorasec.core.keys`).
    Returns:
        ``cells``, ``runs``, ``spearman`` and ``kendall`` (cell means; None where undefined: a constant side),
        ``spearman_ci95`` and ``kendall_ci95`` ([low, high]; None when fewer than half the draws were defined),
        ``draws_defined`` (draws whose ρ was defined: a draw of one repeated cell is not),
        ``p_permutation`` (two-sided, Spearman; None with fewer than 3 cells or an undefined ρ),
        ``predicted`` and ``measured`` (the cell means, in the order of ``cells_order``) and ``cells_order``.
    """
    cells: dict = {}
    for cell, predicted, measured in rows:
        if measured is None or not np.isfinite(measured):
            continue
        cells.setdefault(cell, ([], []))
        cells[cell][0].append(np.nan if predicted is None else float(predicted))
        cells[cell][1].append(float(measured))
    order = [c for c, (p, _) in cells.items() if np.isfinite(p).any()]
    pm = np.array([np.nanmean(cells[c][0]) for c in order])
    mm = np.array([np.mean(cells[c][1]) for c in order])
    correlations = {k: finite(v) for k, v in rank_correlations(pm, mm).items()}
    out = {"cells": len(order), "runs": int(sum(len(cells[c][1]) for c in order)), "cells_order": order,
           "predicted": pm.tolist(), "measured": mm.tolist(), **correlations}
    if len(order) < 3 or out["spearman"] is None:
        return {**out, "spearman_ci95": None, "kendall_ci95": None, "p_permutation": None}
    rng = keys.numpy_rng(seed, "bootstrap")
    picks = rng.integers(len(order), size=(draws, len(order)))
    boot_p, boot_m = pm[picks], mm[picks]
    rho = _spearman_rows(boot_p, boot_m)
    tau = np.array([_kendall(boot_p[d], boot_m[d]) for d in range(draws)])
    out["draws_defined"] = int(np.isfinite(rho).sum())
    out["spearman_ci95"] = _interval(rho)
    out["kendall_ci95"] = _interval(tau)
    shuffled = np.stack([rng.permutation(mm) for _ in range(permutations)])
    null = np.abs(_spearman_rows(np.broadcast_to(pm, shuffled.shape), shuffled))
    observed = abs(out["spearman"])
    out["p_permutation"] = float((1 + np.sum(null >= observed - 1e-12)) / (1 + permutations))
    return out


def _interval(values: np.ndarray) -> list[float] | None:
    finite = values[np.isfinite(values)]
    if len(finite) < len(values) / 2:
        return None
    return [float(np.percentile(finite, 2.5)), float(np.percentile(finite, 97.5))]

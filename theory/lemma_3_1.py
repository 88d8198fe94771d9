"""Paper 1, Lemma 3.1: at init the LoRA layer kernel differs from full fine-tuning's by ``M_Δ = s²AᵀA − I``,
which the paper says is negative semi-definite when ``r ≤ n`` and ``σ_a² < 1/n``.

Measured: ``λ_max(s²AᵀA)`` over draws of Gaussian ``A ∈ R^{r×n}`` with variance ``c/n`` (M_Δ ⪯ 0 iff ≤ 1).
Derived: by Marchenko–Pastur ``λ_max ≈ s²σ²(√n + √r)²``, so the paper's condition is only
asymptotically right; the edge claim locates the measured boundary in c and compares it with the paper's c = 1.
"""

from __future__ import annotations

import numpy as np

from lorasec.core import keys
from lorasec.core.claims import Check, claim, verdict

DRAWS = 21
SETTINGS = (  # n, r, c (σ_a² = c/n), s
    (64, 8, 0.5, 1.0),
    (1024, 8, 0.5, 1.0),
    (256, 8, 0.9, 1.0),
    (1024, 8, 0.9, 1.0),
    (1024, 64, 0.9, 1.0),
    (64, 64, 0.99, 1.0),
    (768, 8, 1.0 / 3.0, 2.0),  # peft defaults (kaiming-uniform variance, α = 16, r = 8) on a BERT-base width
)


def lambda_max(n: int, r: int, c: float, s: float, *, draws: int = DRAWS, seed: int = 0) -> float:
    """Median over draws of the largest eigenvalue of ``s²AᵀA`` (= that of ``s²AAᵀ``, an r × r matrix)."""
    rng = keys.numpy_rng(seed, "init_draws", n, r)
    values = []
    for _ in range(draws):
        a = rng.normal(0.0, np.sqrt(c / n), size=(r, n))
        values.append(s * s * np.linalg.eigvalsh(a @ a.T)[-1])
    return float(np.median(values))


def marchenko_pastur_edge(n: int, r: int, c: float, s: float) -> float:
    return s * s * (c / n) * (np.sqrt(n) + np.sqrt(r)) ** 2


def _setting(n, r, c, s) -> str:
    return f"n={n} r={r} σ²={c:.3g}/n s={s:g}"


@claim("lemma_3_1", "Liang et al. 2025",
       "M_Δ = s²AᵀA − I ⪯ 0 when r ≤ n and σ_a² < 1/n (paper's s = 1)")
def kernel_order(settings=SETTINGS) -> list[Check]:
    checks = []
    for n, r, c, s in settings:
        paper_condition = r <= n and c < 1.0 and s == 1.0
        measured = lambda_max(n, r, c, s)
        predicted = "λ_max ≤ 1 (M_Δ ⪯ 0)" if paper_condition else "none (condition fails)"
        ok = measured <= 1.0
        note = "" if paper_condition else f"outside the paper's condition; M_Δ ⪯ 0 {'holds' if ok else 'fails'}"
        if paper_condition and not ok:
            note = (f"the paper's condition holds but λ_max(AᵀA) = {measured:.3f} > 1: the bound is only "
                    f"asymptotic (Marchenko–Pastur edge {marchenko_pastur_edge(n, r, c, s):.3f})")
        checks.append(Check("lemma_3_1", _setting(n, r, c, s), predicted, f"λ_max = {measured:.4f}",
                            "exact (≤ 1)", verdict(ok) if paper_condition else "no claim", note))
    return checks


def boundary_draws(n: int, r: int, s: float = 1.0, *, draws: int = 101, seed: int = 1) -> np.ndarray:
    """Per independent draw of A: the largest c with λ_max(s²AᵀA) ≤ 1. For one draw λ_max is linear in c (A is
    √c times a standard-normal draw), so that draw's boundary is 1 / λ_max at c = 1."""
    rng = keys.numpy_rng(seed, "factors", n, r)
    values = [s * s * np.linalg.eigvalsh(a @ a.T)[-1] for a in
              (rng.normal(0.0, np.sqrt(1.0 / n), size=(r, n)) for _ in range(draws))]
    return 1.0 / np.asarray(values)


def median_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """The median and a distribution-free confidence interval for it (binomial order statistics)."""
    from scipy.stats import binom

    ordered = np.sort(values)
    n = len(ordered)
    low = int(binom.ppf((1 - level) / 2, n, 0.5))
    high = int(binom.isf((1 - level) / 2, n, 0.5))
    return float(np.median(ordered)), float(ordered[max(low - 1, 0)]), float(ordered[min(high, n - 1)])


@claim("lemma_3_1_edge", "Liang et al. 2025",
       "σ_a² < 1/n suffices for M_Δ ⪯ 0 (paper); the measured boundary against Marchenko–Pastur's 1/(√n+√r)²")
def boundary(shapes=((64, 8), (256, 8), (1024, 8), (1024, 64), (4096, 16), (1024, 1))) -> list[Check]:
    """One-sided, for the typical draw: the paper's condition is violated when the boundary c* (median over 101
    independent draws of A) lies below 1 with 95% confidence, holds when it lies at or above 1 with that
    confidence, and is inconclusive when the interval straddles 1. The share of single draws whose boundary lies
    below 1 is reported beside it (near r = 1 about half do: the condition is sharp there)."""
    checks = []
    for n, r in shapes:
        draws = boundary_draws(n, r)
        median, low, high = median_interval(draws)
        c_mp = n / (np.sqrt(n) + np.sqrt(r)) ** 2
        outcome = "disagrees" if high < 1.0 else ("agrees" if low >= 1.0 else "inconclusive")
        note = "" if outcome != "disagrees" else (f"M_Δ ⪯ 0 needs σ_a² < {median:.3f}/n here, not < 1/n: at "
                                                 f"σ_a² = 0.99/n the paper's condition holds and the order fails")
        checks.append(Check("lemma_3_1_edge", f"n={n} r={r} s=1, 101 draws", "boundary c* ≥ 1 (σ_a² < 1/n suffices)",
                            f"c* = {median:.4f} [95% CI {low:.4f}, {high:.4f}] (MP {c_mp:.4f}); "
                            f"{int((draws < 1.0).sum())}/{len(draws)} draws have c* < 1",
                            "median c* (the typical draw), 95% CI against 1", outcome, note))
    return checks

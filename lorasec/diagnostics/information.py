"""Summaries of a kernel or Fisher spectrum: Rényi entropies, information bits, effective rank, condition number,
and kernel-target alignment. Inputs are eigenvalues (any order); tiny negative round-off is clipped to 0.

Definitions lorasec uses (paper 1's exact ones were not recoverable from its text):

- normalised Rényi entropy of order α of ``p = λ/Σλ``: ``H_α = log(Σ p^α)/(1−α)``, Shannon's at α = 1;
- the authors' unnormalised form ``H'_α = log Σ λ^α`` (their code, without the 1/(1−α) prefactor that it
  mishandles at α → 1). Loewner order ``K_LoRA ⪯ K_FF`` implies ``H'_α,LoRA ≤ H'_α,FF`` by Weyl's inequality;
  the normalised entropy has no such guarantee;
- information bits ``IB = ½ Σ log2(1 + λ)``, the capacity of parallel Gaussian channels with gains λ
  (monotone in each eigenvalue, so also ordered by Loewner order);
- effective rank ``exp(H_1)`` (Roy & Vetterli), condition number ``λ_max/λ_min`` over the non-zero part.
"""

from __future__ import annotations

import numpy as np

ZERO_TOLERANCE = 1e-12  # relative to λ_max: below it an eigenvalue counts as zero


def _clean(eigenvalues) -> np.ndarray:
    lam = np.asarray(eigenvalues, np.float64).ravel()
    if lam.size == 0:
        raise ValueError("empty spectrum")
    top = max(float(lam.max()), 0.0)
    if lam.min() < -1e-6 * max(top, 1e-300):
        raise ValueError(f"spectrum has a negative eigenvalue {lam.min():.3g} (λ_max {top:.3g}): not PSD")
    return np.clip(lam, 0.0, None)


def nonzero(eigenvalues) -> np.ndarray:
    lam = _clean(eigenvalues)
    return lam[lam > ZERO_TOLERANCE * lam.max()] if lam.max() > 0 else lam[:0]


def renyi_entropy(eigenvalues, alpha: float) -> float:
    """Normalised Rényi entropy (nats) of the spectrum's distribution ``p = λ/Σλ``.

    Args:
        eigenvalues: float (k,) PSD spectrum, any order; eigenvalues below ``1e-12·λ_max`` count as zero.
        alpha: the order α: 1 gives Shannon's entropy, ``inf`` the min-entropy ``−log max p``.
    Returns:
        ``H_α = log(Σ p^α)/(1−α)`` in nats, a float.
    """
    p = nonzero(eigenvalues)
    p = p / p.sum()
    if np.isclose(alpha, 1.0):
        return float(-(p * np.log(p)).sum())
    if np.isinf(alpha):
        return float(-np.log(p.max()))
    return float(np.log((p**alpha).sum()) / (1.0 - alpha))


def log_power_sum(eigenvalues, alpha: float) -> float:
    """The authors' unnormalised ``H'_α = log Σ λ^α`` over the non-zero eigenvalues.

    Args:
        eigenvalues: float (k,) PSD spectrum, any order; eigenvalues below ``1e-12·λ_max`` count as zero.
        alpha: the power α (α = 1 gives ``log tr``).
    Returns:
        ``log Σ λ^α``, a float.
    """
    return float(np.log((nonzero(eigenvalues) ** alpha).sum()))


def closed_form_proxies(rank: int, width: int, variance: float, init: str = "gaussian") -> tuple[float, float]:
    """Paper 1's closed forms behind its Fig. 3, up to additive constants: ``H'_1 = log(r·n·σ²)`` and
    ``H'_2 = log(n·σ⁴·r(r+2))`` for Gaussian A, ``log(n·σ⁴·(4r + 5r²)/5)`` for uniform A (derived: E tr(AᵀA) and
    Σ_j E‖A_{:,j}‖⁴ for A of shape r × n with entries of variance σ²)."""
    fourth = rank * (rank + 2.0) if init == "gaussian" else (4.0 * rank + 5.0 * rank**2) / 5.0
    return float(np.log(rank * width * variance)), float(np.log(width * variance**2 * fourth))


def information_bits(eigenvalues) -> float:
    """``½ Σ log2(1 + λ)`` (lorasec's definition, module docstring).

    Args:
        eigenvalues: float (k,) PSD spectrum, any order.
    Returns:
        The information bits, a float.
    """
    return float(0.5 * np.log2(1.0 + _clean(eigenvalues)).sum())


def effective_rank(eigenvalues) -> float:
    return float(np.exp(renyi_entropy(eigenvalues, 1.0)))


def condition_number(eigenvalues) -> float:
    lam = nonzero(eigenvalues)
    return float(lam.max() / lam.min())


def kernel_target_alignment(kernel: np.ndarray, targets: np.ndarray, *, centred: bool = False) -> float:
    """``⟨K, Y Yᵀ⟩_F / (‖K‖_F ‖Y Yᵀ‖_F)`` (Cristianini et al.); ``centred=True`` first centres both Gram
    matrices with ``I − 11ᵀ/n`` (Cortes et al.; CKA). ``targets`` are labels (one-hot encoded here) or a matrix.
    NaN when undefined (a zero Gram matrix, e.g. centred targets of a single class)."""
    k = np.asarray(kernel, np.float64)
    y = np.asarray(targets)
    if y.ndim == 1:
        y = np.eye(int(y.max()) + 1)[y]
    target_gram = y @ y.T
    scale = np.linalg.norm(k) * np.linalg.norm(target_gram)
    if centred:
        n = k.shape[0]
        c = np.eye(n) - np.ones((n, n)) / n
        k, target_gram = c @ k @ c, c @ target_gram @ c
    norms = np.linalg.norm(k) * np.linalg.norm(target_gram)
    return float((k * target_gram).sum() / norms) if norms > 1e-12 * scale else float("nan")


def spectrum_summary(eigenvalues, alphas=(0.5, 1.0, 2.0)) -> dict:
    """All scalar summaries of one spectrum, as a JSON-ready dict.

    Args:
        eigenvalues: float (k,) PSD spectrum (a kernel's or the Fisher's), any order.
        alphas: the orders of the Rényi entropies and log power sums.
    Returns:
        ``{"trace", "lambda_max", "rank", "effective_rank", "condition_number", "information_bits"}`` and, per
        α, ``"renyi_{α:g}"`` (:func:`renyi_entropy`) and ``"log_power_sum_{α:g}"`` (:func:`log_power_sum`):
        floats, but ``rank`` an int (eigenvalues above ``1e-12·λ_max``).
    """
    lam = _clean(eigenvalues)
    out = {"trace": float(lam.sum()), "lambda_max": float(lam.max()), "rank": int(nonzero(lam).size),
           "effective_rank": effective_rank(lam), "condition_number": condition_number(lam),
           "information_bits": information_bits(lam)}
    for alpha in alphas:
        out[f"renyi_{alpha:g}"] = renyi_entropy(lam, alpha)
        out[f"log_power_sum_{alpha:g}"] = log_power_sum(lam, alpha)
    return out

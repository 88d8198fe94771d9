"""Spectral diagnostics of a (pretrained, tuned) weight pair, per adapted matrix (paper 2 and related work).

Matrices are taken in PyTorch's ``(out, in)`` layout, ``W = kernelᵀ`` of lorasec's Flax ``(in, out)`` kernels;
:func:`spectral_pair_report` converts. Measures:

- spectral strength ``σ_max(W_pre) / σ_max(ΔW)`` (paper 2; large = the update is spectrally weak);
- stable rank ``‖W‖²_F / ‖W‖²_2`` and effective rank ``exp(H(σ/‖σ‖₁))`` (Roy & Vetterli);
- intruder dimensions (Shuttleworth et al. 2024): among the top-k left singular vectors of the tuned W, those
  whose largest |cos| with every pretrained left singular vector is below ε; with their share of the tuned
  matrix's spectral energy ``Σ σ_i² / ‖W‖²_F`` and counts over an ε sweep.
"""

from __future__ import annotations

import numpy as np

from lorasec.adapters import lora
from lorasec.core.stats import finite as _finite
from lorasec.models import CLASSIFIER_LAYERS

EPSILON_SWEEP = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def singular_values(w: np.ndarray) -> np.ndarray:
    return np.linalg.svd(np.asarray(w, np.float64), compute_uv=False)


def spectral_strength(w_pre: np.ndarray, delta: np.ndarray) -> float:
    """``σ_max(W_pre) / σ_max(ΔW)``; infinite for a zero update.

    Paper 2's spectral strength (module docstring): large means the update is spectrally weak.

    Args:
        w_pre: float (out, in) pretrained weight W_pre.
        delta: float (out, in) update ΔW (the ratio is the same for both transposed).
    Returns:
        The ratio, a float; ``inf`` when ΔW = 0.
    """
    return _strength(singular_values(w_pre), singular_values(delta))


def stable_rank(w: np.ndarray) -> float:
    """Stable rank ``‖W‖²_F / ‖W‖²_2 = Σ σ_i² / σ_max²`` of one matrix.

    Args:
        w: float (out, in) matrix (either layout: the value is the same for its transpose).
    Returns:
        The stable rank, a float between 1 and rank(W); 0.0 for a zero matrix.
    """
    return _stable_rank(singular_values(w))


def effective_rank(w: np.ndarray) -> float:
    return _effective_rank(singular_values(w))


def _strength(s_pre: np.ndarray, s_delta: np.ndarray) -> float:
    return float(s_pre[0] / s_delta[0]) if s_delta[0] > 0 else float("inf")


def _stable_rank(s: np.ndarray) -> float:
    return float((s**2).sum() / s[0] ** 2) if s[0] > 0 else 0.0


def _effective_rank(s: np.ndarray) -> float:
    p = s[s > 0] / s.sum()
    return float(np.exp(-(p * np.log(p)).sum()))


def _svd(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    u, s, _ = np.linalg.svd(np.asarray(w, np.float64), full_matrices=False)
    return u, s


def intruder_dimensions(w_pre: np.ndarray, w_tuned: np.ndarray, *, k: int = 10, epsilon: float = 0.5) -> dict:
    """Intruder dimensions of ``w_tuned`` relative to ``w_pre`` (both (out, in)); see the module docstring.

    Args:
        w_pre: float (out, in) pretrained weight.
        w_tuned: float (out, in) tuned weight.
        k: how many top left singular vectors of ``w_tuned`` are tested (at most min(out, in)).
        epsilon: a tested vector is an intruder when its largest |cos| with the pretrained ones is below this.
    Returns:
        ``{"k", "epsilon", "count", "indices", "energy_share", "max_cosine", "epsilon_sweep"}``: the intruders'
        count and indices among the top k, their share ``Σ σ_i² / ‖W_tuned‖²_F``, each tested vector's largest
        |cos| (a list of k floats), and ``{f"{ε:g}": count}`` over :data:`EPSILON_SWEEP`.
    """
    return _intruders(_svd(w_pre)[0], *_svd(w_tuned), k=k, epsilon=epsilon)


def _intruders(u_pre: np.ndarray, u_tuned: np.ndarray, s_tuned: np.ndarray, *, k: int, epsilon: float) -> dict:
    k = min(k, u_tuned.shape[1])
    similarity = np.abs(u_tuned[:, :k].T @ u_pre).max(axis=1)  # best |cos| of each top-k tuned direction
    intruders = np.flatnonzero(similarity < epsilon)
    energy = float((s_tuned[intruders] ** 2).sum() / (s_tuned**2).sum())
    sweep = {f"{eps:g}": int((similarity < eps).sum()) for eps in EPSILON_SWEEP}
    return {"k": k, "epsilon": epsilon, "count": int(intruders.size), "indices": intruders.tolist(),
            "energy_share": energy, "max_cosine": similarity.tolist(), "epsilon_sweep": sweep}


def spectral_pair_report(kernel_pre: np.ndarray, kernel_tuned: np.ndarray, *, k: int = 10, epsilon: float = 0.5) -> dict:
    """All measures for one matrix given lorasec ``(in, out)`` kernels before and after tuning (strength None
    for a zero update). Three decompositions per matrix (W_pre, W_tuned, ΔW) serve every measure.

    Args:
        kernel_pre: float (in, out) kernel before tuning (lorasec's layout; transposed to W here).
        kernel_tuned: float (in, out) effective kernel after tuning.
        k: top-k tuned directions tested for intruders.
        epsilon: the intruders' threshold (:func:`intruder_dimensions`).
    Returns:
        A JSON-ready dict: ``shape_out_in`` ([out, in]), ``spectral_strength`` (None for ΔW = 0),
        ``sigma_max_pre``, ``sigma_max_delta``, ``stable_rank_pre`` / ``_tuned`` / ``_delta``,
        ``effective_rank_pre`` / ``_delta``, ``intruders`` (:func:`intruder_dimensions`' dict) and
        ``singular_values_delta`` (ΔW's largest 32, descending).
    """
    w_pre, w_tuned = np.asarray(kernel_pre, np.float64).T, np.asarray(kernel_tuned, np.float64).T
    delta = w_tuned - w_pre
    (u_pre, s_pre), (u_tuned, s_tuned), s_delta = _svd(w_pre), _svd(w_tuned), singular_values(delta)
    return {
        "shape_out_in": list(w_pre.shape),
        "spectral_strength": _finite(_strength(s_pre, s_delta)),
        "sigma_max_pre": float(s_pre[0]),
        "sigma_max_delta": float(s_delta[0]),
        "stable_rank_pre": _stable_rank(s_pre), "stable_rank_tuned": _stable_rank(s_tuned),
        "stable_rank_delta": _stable_rank(s_delta),
        "effective_rank_pre": _effective_rank(s_pre), "effective_rank_delta": _effective_rank(s_delta),
        "intruders": _intruders(u_pre, u_tuned, s_tuned, k=k, epsilon=epsilon),
        "singular_values_delta": s_delta[:32].tolist(),
    }


def update_pairs(run) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(starting kernel, tuned effective kernel) per adapted matrix in lorasec's (in, out) layout, for a run with
    ``cfg``, ``start`` and ``tuned`` models: the LoRA layers of a LoRA run; every linear layer of a full
    fine-tuning run but those a classifier adds on an encoder (``head``, ``pooler``), which have no pretrained
    weight to compare with."""
    start = lora.linear_layers(run.start)
    if run.cfg.adapter.method == "lora":
        return {name: (np.asarray(start[name].kernel[...]), np.asarray(layer.effective_kernel()))
                for name, layer in lora.lora_layers(run.tuned).items()}
    tuned = lora.linear_layers(run.tuned)
    return {name: (np.asarray(start[name].kernel[...]), np.asarray(tuned[name].kernel[...]))
            for name in tuned if name not in CLASSIFIER_LAYERS}

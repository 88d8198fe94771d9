"""Spectral diagnostics of a (pretrained, tuned) weight pair, per adapted matrix (paper 2 and related work).

Matrices are taken in PyTorch's ``(out, in)`` layout, ``W = kernelᵀ`` of lorasec's Flax ``(in, out)`` kernels;
:func:`pair_report` converts. Measures:

- spectral strength ``σ_max(W_pre) / σ_max(ΔW)`` (paper 2; large = the update is spectrally weak);
- stable rank ``‖W‖²_F / ‖W‖²_2`` and effective rank ``exp(H(σ/‖σ‖₁))`` (Roy & Vetterli);
- intruder dimensions (Shuttleworth et al. 2024): among the top-k left singular vectors of the tuned W, those
  whose largest |cos| with every pretrained left singular vector is below ε; with their share of the tuned
  matrix's spectral energy ``Σ σ_i² / ‖W‖²_F`` and counts over an ε sweep.
"""

from __future__ import annotations

import numpy as np

EPSILON_SWEEP = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def singular_values(w: np.ndarray) -> np.ndarray:
    return np.linalg.svd(np.asarray(w, np.float64), compute_uv=False)


def spectral_strength(w_pre: np.ndarray, delta: np.ndarray) -> float:
    """``σ_max(W_pre) / σ_max(ΔW)``; infinite for a zero update."""
    top = singular_values(delta)[0]
    return float(singular_values(w_pre)[0] / top) if top > 0 else float("inf")


def stable_rank(w: np.ndarray) -> float:
    s = singular_values(w)
    return float((s**2).sum() / s[0] ** 2) if s[0] > 0 else 0.0


def effective_rank(w: np.ndarray) -> float:
    s = singular_values(w)
    p = s[s > 0] / s.sum()
    return float(np.exp(-(p * np.log(p)).sum()))


def intruder_dimensions(w_pre: np.ndarray, w_tuned: np.ndarray, *, k: int = 10, epsilon: float = 0.5) -> dict:
    """Intruder dimensions of ``w_tuned`` relative to ``w_pre`` (both (out, in)); see the module docstring."""
    u_pre, _, _ = np.linalg.svd(np.asarray(w_pre, np.float64), full_matrices=False)
    u_tuned, s_tuned, _ = np.linalg.svd(np.asarray(w_tuned, np.float64), full_matrices=False)
    k = min(k, u_tuned.shape[1])
    similarity = np.abs(u_tuned[:, :k].T @ u_pre).max(axis=1)  # best |cos| of each top-k tuned direction
    intruders = np.flatnonzero(similarity < epsilon)
    energy = float((s_tuned[intruders] ** 2).sum() / (s_tuned**2).sum())
    sweep = {f"{eps:g}": int((similarity < eps).sum()) for eps in EPSILON_SWEEP}
    return {"k": k, "epsilon": epsilon, "count": int(intruders.size), "indices": intruders.tolist(),
            "energy_share": energy, "max_cosine": similarity.tolist(), "epsilon_sweep": sweep}


def _finite(value: float) -> float | None:
    return value if np.isfinite(value) else None  # JSON has no infinity: a zero update's strength is None


def pair_report(kernel_pre: np.ndarray, kernel_tuned: np.ndarray, *, k: int = 10, epsilon: float = 0.5) -> dict:
    """All measures for one matrix given lorasec ``(in, out)`` kernels before and after tuning (strength None
    for a zero update)."""
    w_pre, w_tuned = np.asarray(kernel_pre, np.float64).T, np.asarray(kernel_tuned, np.float64).T
    delta = w_tuned - w_pre
    return {
        "shape_out_in": list(w_pre.shape),
        "spectral_strength": _finite(spectral_strength(w_pre, delta)),
        "sigma_max_pre": float(singular_values(w_pre)[0]),
        "sigma_max_delta": float(singular_values(delta)[0]),
        "stable_rank_pre": stable_rank(w_pre), "stable_rank_tuned": stable_rank(w_tuned),
        "stable_rank_delta": stable_rank(delta),
        "effective_rank_pre": effective_rank(w_pre), "effective_rank_delta": effective_rank(delta),
        "intruders": intruder_dimensions(w_pre, w_tuned, k=k, epsilon=epsilon),
        "singular_values_delta": singular_values(delta)[:32].tolist(),
    }


def run_pairs(run_dir, base: str | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(starting kernel, tuned kernel) per adapted matrix of a finished run, in lorasec's (in, out) layout
    (:func:`lorasec.run.adapted_kernels`). ``base`` compares a full fine-tuning run with another pretrained
    checkpoint instead of its own starting point."""
    from lorasec import config, lora
    from lorasec.pretrain import load_encoder_weights
    from lorasec.run import adapted_kernels, build_model, load_run

    run = load_run(run_dir)
    pairs = adapted_kernels(run)
    if base:
        if run.cfg.adapter.method != "full":
            raise config.ConfigError("spectral --base: only for full fine-tuning runs (a LoRA run's W_pre is its "
                                     "frozen weight)")
        reference = build_model(config.replace(run.cfg, model={"pretrained": base, "init_from": ""},
                                               adapter={"method": "full"}), run.encoder.vocab_size)
        load_encoder_weights(reference.encoder, base)
        before = lora.linear_layers(reference)
        pairs = {name: (np.asarray(before[name].kernel[...]), tuned) for name, (_, tuned) in pairs.items()}
    return pairs


def run_report(run_dir, out_dir, *, base: str | None = None, k: int = 10, epsilon: float = 0.5) -> dict:
    """``lorasec spectral``: per-matrix measures to ``spectral.json`` and ΔW singular spectra to ``spectra.png``."""
    from pathlib import Path

    from lorasec import artifacts

    pairs = run_pairs(run_dir, base)
    report = {name: pair_report(pre, tuned, k=k, epsilon=epsilon) for name, (pre, tuned) in pairs.items()}
    out_dir = Path(out_dir)
    artifacts.write_json(out_dir / "spectral.json", report)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, row in report.items():
        values = np.asarray(row["singular_values_delta"])
        ax.semilogy(np.arange(1, values.size + 1), np.maximum(values, 1e-12), alpha=0.7, label=name)
    ax.set_xlabel("index")
    ax.set_ylabel("singular value of ΔW")
    ax.set_title("update spectra per adapted matrix")
    if len(report) <= 12:
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out_dir / "spectra.png", dpi=120)
    plt.close(fig)
    return report

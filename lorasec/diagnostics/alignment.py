"""Spectral alignment and the critical scale of Proposition 4.2, measured on a trained model (Luong & Chen 2026).

The paper's exact normalisations are not recoverable from its text; lorasec defines them as follows, per adapted
matrix ``W_pre`` (out, in) with update direction ``ΔW`` (the trained update is ``s_train·ΔW``: LoRA's ``B A`` at
its layer's scale (α/r, or the one Pt set), otherwise the whole change with ``s_train = 1``) and per triggered
non-target test example:

- ``x_t``: the layer's input at token t; ``c_t = ∂(z_y − z_bd)/∂h_t``: the gradient of the logit margin
  (true label y over backdoor label bd) w.r.t. the layer's output, both in the model as training started. For a
  one-layer model this is the proposition's ``c = e_y − e_bd`` and ``x_trig``; deeper, it is the first-order
  margin with only this layer's update scaled (multi-layer models are beyond the proposition).
- ``M(s) = A0 + s·A1`` with ``A0 = Σ_t c_tᵀ W_pre x_t`` and ``A1 = Σ_t c_tᵀ ΔW x_t``; ``N = Σ_t ‖c_t‖‖x_t‖``
  (so ``|Σ_t c_tᵀ W x_t| ≤ σ_max(W)·N``; one token gives the paper's ``‖c‖‖x‖``).
- ``ρ_bd = −A0 / (σ_max(W_pre) N)``: the pretrained push of triggered inputs toward the backdoor label;
  ``ρ_cl = Σ_{t ∉ trigger} c_tᵀ ΔW x_t / (σ_max(ΔW) N)``: the update's push on the clean tokens toward y;
  ``ρ_tr = −Σ_{t ∈ trigger} c_tᵀ ΔW x_t / (σ_max(ΔW) N)``: its push on the trigger tokens toward bd;
  ``ρ_eff = ρ_cl − ρ_tr = A1 / (σ_max(ΔW) N)``.

Over a set of examples the corrected proposition's assumptions hold with ``ρ_bd = max_i ρ_bd,i`` and
``ρ_eff = min_i ρ_eff,i``, giving ``s* = (ρ_bd/ρ_eff)·σ_max(W_pre)/σ_max(ΔW)``. The true crossing of the layer is
the smallest s ≥ 0 past which every ``M_i`` stays positive (``max_i −A0_i/A1_i``); the median crossing is where
half of them are (None in the output: no finite value). Pt's scale is ``σ_max(W_pre)/σ_max(ΔW)``; it
clears s* exactly when ρ_eff > ρ_bd.
"""

from __future__ import annotations

import numpy as np
from flax import nnx

from lorasec.adapters import lora
from lorasec.attacks import poison
from lorasec.config import ConfigError
from lorasec.core.stats import finite as _finite
from lorasec.diagnostics.signals import layer_signals
from lorasec.diagnostics.spectral import update_pairs

MAX_EXAMPLES = 256


def _sigma_max(w: np.ndarray) -> float:
    return float(np.linalg.norm(w, 2))


def crossing(a0: np.ndarray, a1: np.ndarray) -> np.ndarray:
    """Per example, the smallest s ≥ 0 past which ``A0 + s·A1 > 0`` for good (``inf`` if the margin ends negative)."""
    out = np.where(a1 > 0, np.maximum(0.0, -a0 / np.where(a1 > 0, a1, 1.0)), np.inf)
    return np.where((a1 == 0) & (a0 > 0), 0.0, out)


def layer_alignment(w_pre: np.ndarray, delta: np.ndarray, x: np.ndarray, c: np.ndarray, trigger: np.ndarray,
                    s_train: float) -> dict:
    """The module docstring's quantities for one matrix; ``w_pre``, ``delta`` (out, in); ``x`` (n, T, in),
    ``c`` (n, T, out), ``trigger`` (n, T) marks trigger-token positions."""
    sigma_pre, sigma_delta = _sigma_max(w_pre), _sigma_max(delta)
    norm = (np.linalg.norm(c, axis=-1) * np.linalg.norm(x, axis=-1)).sum(axis=1)
    keep = norm > 0
    push_pre = (c * (x @ w_pre.T)).sum(-1)  # c_tᵀ W x_t per example and token, through one matrix product
    push_delta = (c * (x @ delta.T)).sum(-1)
    a0, a1 = push_pre.sum(1)[keep], push_delta.sum(1)[keep]
    norm, trig = norm[keep], trigger[keep]
    rho_bd = -a0 / (sigma_pre * norm)
    scale = sigma_delta * norm if sigma_delta > 0 else np.full_like(norm, np.inf)
    rho_cl = np.where(trig, 0.0, push_delta[keep]).sum(1) / scale
    rho_tr = -np.where(trig, push_delta[keep], 0.0).sum(1) / scale
    rho_eff = rho_cl - rho_tr
    bd, eff = float(rho_bd.max()), float(rho_eff.min())
    s_pt = sigma_pre / sigma_delta if sigma_delta > 0 else float("inf")
    s_star = bd / eff * s_pt if eff > 0 else float("inf")
    crossings = crossing(a0, a1)
    return {
        "examples": int(keep.sum()), "s_train": s_train, "sigma_max_pre": sigma_pre, "sigma_max_delta": sigma_delta,
        "rho_bd": bd, "rho_eff": eff,
        "mean": {"rho_bd": float(rho_bd.mean()), "rho_cl": float(rho_cl.mean()), "rho_tr": float(rho_tr.mean()),
                 "rho_eff": float(rho_eff.mean())},
        "s_star": _finite(s_star), "crossing": _finite(crossings.max()),
        "median_crossing": _finite(np.median(crossings)),
        "positive_at_train": float((a0 + s_train * a1 > 0).mean()), "positive_at_zero": float((a0 > 0).mean()),
        "s_pt": _finite(s_pt), "pt_condition": bool(eff > bd),
    }


def margin_signals(model: nnx.Module, tokens: np.ndarray, mask: np.ndarray, labels: np.ndarray,
                   backdoor_label: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per linear layer: inputs ``x`` (n, T, in) and margin gradients ``c`` (n, T, out) of ``model``."""
    signals = layer_signals(model, tokens, mask)
    rows = np.arange(len(labels))
    out = {}
    for name, (x, delta) in signals.items():
        delta = np.asarray(delta)  # (n, C, T, out)
        out[name] = (np.asarray(x), delta[rows, labels] - delta[rows, backdoor_label])
    return out


def run_alignment(run, *, max_examples: int = MAX_EXAMPLES) -> dict:
    """Per adapted matrix of a finished run (anything with ``cfg``, ``start``, ``tuned``, ``encoder``, ``test``:
    :class:`lorasec.pipelines.rundir.FinishedRun`), on the first ``max_examples`` non-target test sentences with
    the run's trigger inserted."""
    cfg = run.cfg
    triggers = poison.triggers_for(cfg.attack)
    if not triggers:
        raise ConfigError(f"alignment needs a trigger attack; the run has attack.kind = {cfg.attack.kind!r}")
    trigger = triggers[0]
    bd = cfg.attack.target_label
    chosen = np.flatnonzero(run.test.labels != bd)[:max_examples]
    room = poison.Room(run.encoder)
    texts = poison.apply_trigger([run.test.texts[i] for i in chosen], trigger, seed=cfg.seed, room=room)
    tokens, mask = run.encoder.encode(texts)
    trigger_ids = {i for phrase in trigger.phrases for i in room.ids(phrase)}
    at_trigger = np.isin(tokens, list(trigger_ids)) & mask.astype(bool)
    signals = margin_signals(run.start, tokens, mask, run.test.labels[chosen], bd)
    pairs = update_pairs(run)
    scales = lora.scales(run.tuned) if cfg.adapter.plain_lora else {}
    report = {}
    for name, (kernel_pre, kernel_tuned) in pairs.items():
        x, c = signals[name]
        s_train = scales.get(name, 1.0)
        w_pre = kernel_pre.T.astype(np.float64)
        delta = (kernel_tuned.T.astype(np.float64) - w_pre) / s_train
        report[name] = layer_alignment(w_pre, delta, x.astype(np.float64), c.astype(np.float64),
                                       at_trigger, s_train)
    return report

"""Paper 2's critical scaling threshold (Luong & Chen 2026, Proposition 4.2) and a counter-example search.

One adapted layer, PyTorch layout ``W (C × d)``, a triggered input x, its true label y and the backdoor label
y_bd, margin direction ``c = e_y − e_{y_bd}``. The triggered margin at adapter scale s is

    M(s) = ⟨c, (W_pre + s·ΔW) x⟩ = A0 + s·A1,   true zero crossing  s₀ = −A0 / A1.

lorasec's normalisations (the paper's were not recoverable), with ``σ_pre = σ_max(W_pre)``, ``σ_Δ = σ_max(ΔW)``:
``ρ_bd = −A0 / (σ_pre‖c‖‖x‖)`` (the pretrained weights' push toward the backdoor label) and
``ρ_eff = A1 / (σ_Δ‖c‖‖x‖)`` (the update's push toward the true label; the paper's ρ_cl − ρ_tr). The claim:
``s > s* = (ρ_bd/ρ_eff)·(σ_pre/σ_Δ)`` implies ``M(s) > 0``, under assumptions

- A1 as the paper's main text states it, an UPPER bound ``A0 ≤ −ρ_bd σ_pre‖c‖‖x‖``, or as its proof needs it,
  a LOWER bound ``A0 ≥ −ρ_bd σ_pre‖c‖‖x‖`` (the corrected form);
- A2: ``A1 ≥ ρ_eff σ_Δ‖c‖‖x‖`` with ``ρ_eff > 0``.

:func:`search_counterexamples` looks for instances satisfying the assumptions with s > s* and M(s) ≤ 0, by random sampling and
by gradient descent on the margin over the assumption set. The stated form has such counter-examples; the
corrected form cannot (it is then a two-line proof), and the search must come back empty for it.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from lorasec.core import keys

FORMS = ("stated", "corrected")


@dataclass(frozen=True)
class ThresholdInstance:
    """One instance of paper 2's Proposition 4.2 for one adapted layer, in PyTorch layout (module docstring).

    Attributes:
        w_pre: float (C, d) pretrained weight W_pre.
        delta: float (C, d) update ΔW.
        x: float (d,) triggered input.
        y: the true label (a row of W).
        y_bd: the backdoor label, another row.
        rho_bd: ρ_bd, the pretrained weights' normalised push toward ``y_bd`` (assumption A1).
        rho_eff: ρ_eff = ρ_cl − ρ_tr, the update's normalised push toward ``y`` (assumption A2).
        s: the adapter scale at which :meth:`margin` is taken by default.
    """

    w_pre: np.ndarray   # (C, d)
    delta: np.ndarray   # (C, d)
    x: np.ndarray       # (d,)
    y: int
    y_bd: int
    rho_bd: float
    rho_eff: float
    s: float

    def margin_terms(self) -> tuple[float, float]:
        c = np.zeros(self.w_pre.shape[0])
        c[self.y], c[self.y_bd] = 1.0, -1.0
        return float(c @ self.w_pre @ self.x), float(c @ self.delta @ self.x)

    def threshold(self) -> float:
        """s* = (ρ_bd/ρ_eff)·(σ_max(W_pre)/σ_max(ΔW))."""
        return self.rho_bd / self.rho_eff * _sigma_max(self.w_pre) / _sigma_max(self.delta)

    def margin(self, s: float | None = None) -> float:
        a0, a1 = self.margin_terms()
        return a0 + (self.s if s is None else s) * a1

    def crossing(self) -> float:
        """The true zero crossing −A0/A1 of M(s)."""
        a0, a1 = self.margin_terms()
        return -a0 / a1

    def satisfies(self, form: str, tol: float = 1e-9) -> bool:
        a0, a1 = self.margin_terms()
        norm = np.sqrt(2.0) * np.linalg.norm(self.x)
        bound = -self.rho_bd * _sigma_max(self.w_pre) * norm
        a1_ok = a0 <= bound + tol if form == "stated" else a0 >= bound - tol
        a2_ok = a1 >= self.rho_eff * _sigma_max(self.delta) * norm - tol
        return bool(a1_ok and a2_ok and self.rho_eff > 0 and self.rho_bd > 0 and self.s > self.threshold())

    def is_counterexample(self, form: str) -> bool:
        return self.satisfies(form) and self.margin() <= 0.0


def _sigma_max(w) -> float:
    return float(np.linalg.norm(np.asarray(w, np.float64), 2))


def threshold_counterexample() -> ThresholdInstance:
    """The counter-example to Proposition 4.2 as stated: 2 classes, d = 1, x = 1, W_pre = (−1/√2, 1/√2)ᵀ, ΔW = −W_pre,
    ρ_bd = 0.1, ρ_eff = ρ_cl − ρ_tr = 1, so s* = 0.1; at s = 0.2 the margin is −0.8√2.

    Returns:
        A :class:`ThresholdInstance` (C = 2, d = 1, y = 0, y_bd = 1, s = 0.2) that satisfies the stated form of
        the assumptions, with s > s* and ``margin() < 0``.
    """
    w = np.array([[-1.0], [1.0]]) / np.sqrt(2.0)
    return ThresholdInstance(w, -w, np.array([1.0]), 0, 1, 0.1, 1.0, 0.2)


def _random_instance(rng: np.random.Generator, form: str) -> ThresholdInstance | None:
    classes, dim = int(rng.integers(2, 5)), int(rng.integers(1, 6))
    w_pre, delta = rng.normal(size=(classes, dim)), rng.normal(size=(classes, dim))
    x = rng.normal(size=dim)
    y, y_bd = rng.choice(classes, size=2, replace=False)
    probe = ThresholdInstance(w_pre, delta, x, int(y), int(y_bd), 1.0, 1.0, 1.0)
    a0, a1 = probe.margin_terms()
    norm = np.sqrt(2.0) * np.linalg.norm(x)
    rho_bd_limit = -a0 / (_sigma_max(w_pre) * norm)    # A1 binds at this ρ_bd
    rho_eff_max = a1 / (_sigma_max(delta) * norm)
    if rho_eff_max <= 0:
        return None
    if form == "stated":          # A0 ≤ −ρ_bd·(...): ρ_bd ≤ limit, needs a0 < 0
        if rho_bd_limit <= 0:
            return None
        rho_bd = rho_bd_limit * rng.uniform(0.01, 1.0)
    else:                         # A0 ≥ −ρ_bd·(...): ρ_bd ≥ limit
        rho_bd = max(rho_bd_limit, 0.0) + rng.exponential(0.5) + 1e-6
    rho_eff = rho_eff_max * rng.uniform(0.05, 1.0)
    candidate = ThresholdInstance(w_pre, delta, x, int(y), int(y_bd), float(rho_bd), float(rho_eff), 1.0)
    s = candidate.threshold() * (1.0 + rng.exponential(0.5)) + 1e-9
    return ThresholdInstance(w_pre, delta, x, int(y), int(y_bd), float(rho_bd), float(rho_eff), float(s))


def _parts(p, c, frac_bd, frac_eff, form):
    norm = jnp.sqrt(2.0) * jnp.linalg.norm(p["x"])
    s_pre, s_d = jnp.linalg.norm(p["w"], 2), jnp.linalg.norm(p["d"], 2)
    a0, a1 = c @ p["w"] @ p["x"], c @ p["d"] @ p["x"]
    limit = -a0 / (s_pre * norm)
    rho_bd = limit * frac_bd if form == "stated" else limit + frac_bd
    rho_eff = a1 / (s_d * norm) * frac_eff
    s = 1.05 * rho_bd / rho_eff * s_pre / s_d
    return a0, a1, rho_bd, rho_eff, s, norm


def _objective(p, c, frac_bd, frac_eff, form):
    """Normalised margin at s = 1.05·s*, plus a penalty for leaving the region where A1/A2 can hold."""
    a0, a1, _, _, s, norm = _parts(p, c, frac_bd, frac_eff, form)
    feasibility = jax.nn.relu(-a1) + (jax.nn.relu(a0) if form == "stated" else 0.0)
    return (a0 + s * a1) / (norm * jnp.linalg.norm(p["w"]) + 1e-9) + 10.0 * feasibility


_gradient = jax.jit(jax.grad(_objective), static_argnums=4)


def _descend(rng: np.random.Generator, form: str, steps: int = 300) -> ThresholdInstance | None:
    """Gradient descent on the margin over the assumption set: ρ_bd and ρ_eff follow the current weights at a
    fixed fraction of their feasible range, so A1/A2 hold by construction wherever the penalty is zero."""
    classes, dim = 2 + int(rng.integers(0, 3)), 1 + int(rng.integers(0, 4))
    y, y_bd = 0, 1
    c = jnp.zeros(classes).at[y].set(1.0).at[y_bd].set(-1.0)
    params = {k: jnp.asarray(rng.normal(size=shape)) for k, shape in
              (("w", (classes, dim)), ("d", (classes, dim)), ("x", (dim,)))}
    frac_bd, frac_eff = float(rng.uniform(0.1, 0.9)), float(rng.uniform(0.1, 0.9))
    for _ in range(steps):
        g = _gradient(params, c, frac_bd, frac_eff, form)
        params = {k: v - 0.05 * g[k] for k, v in params.items()}
    a0, a1, rho_bd, rho_eff, s, _ = (float(v) for v in _parts(params, c, frac_bd, frac_eff, form))
    if not (np.isfinite(s) and rho_bd > 0 and rho_eff > 0):
        return None
    return ThresholdInstance(np.asarray(params["w"]), np.asarray(params["d"]), np.asarray(params["x"]), y, y_bd,
                    rho_bd, rho_eff, s)


@dataclass(frozen=True)
class SearchResult:
    form: str
    tried: int
    feasible: int
    counterexamples: list[ThresholdInstance]


def search_counterexamples(form: str, *, samples: int = 2000, descents: int = 10, seed: int = 0) -> SearchResult:
    """Random sampling plus gradient descent over the assumption set of ``form`` ('stated' or 'corrected').

    Args:
        form: ``"stated"`` (A1 an upper bound on A0, as paper 2's main text) or ``"corrected"`` (a lower bound).
        samples: random instances drawn (2 to 4 classes, d from 1 to 5).
        descents: gradient-descent runs (300 steps each).
        seed: the search's seed.
    Returns:
        :class:`SearchResult`: ``form``, ``tried`` (samples + descents), ``feasible`` (instances satisfying the
        assumptions with s > s*) and ``counterexamples`` (those with ``M(s) ≤ 0``; none expected for "corrected").
    """
    if form not in FORMS:
        raise ValueError(f"form = {form!r}: must be one of {', '.join(FORMS)}")
    rng = keys.numpy_rng(seed, "instances", FORMS.index(form))
    found, feasible = [], 0
    candidates = [_random_instance(rng, form) for _ in range(samples)]
    candidates += [_descend(rng, form) for _ in range(descents)]
    for inst in candidates:
        if inst is None or not inst.satisfies(form):
            continue
        feasible += 1
        if inst.margin() <= 0.0:
            found.append(inst)
    return SearchResult(form, samples + descents, feasible, found)

"""Paper 2 (Luong & Chen 2026), Proposition 4.2: past the critical scale s* the adapter suppresses the backdoor
at a layer, ``s > s* = (ρ_bd/ρ_eff)·(σ_max(W_pre)/σ_max(ΔW))  ⇒  M(s) > 0``.

The main text states assumption A1 as an upper bound on the pretrained margin; the proof uses a lower bound.
lorasec checks both forms with its counter-example search (:mod:`lorasec.diagnostics.threshold`: random sampling plus
gradient descent over each assumption set), reproduces the counter-example to the stated form, and checks that the Pt
rescaling ``s = σ_max(W_pre)/σ_max(ΔW)`` clears s* exactly when ρ_eff > ρ_bd. On trained models (s* against
the true crossing −A0/A1, and whether ρ_eff > ρ_bd holds) see :mod:`theory.forgetting`.
"""

from __future__ import annotations

from lorasec.core import keys
from lorasec.core.claims import Check, claim, consistent, verdict
from lorasec.diagnostics import threshold

SAMPLES, DESCENTS = 2000, 10


@claim("proposition_4_2", "Luong & Chen 2026",
       "s > s* = (ρ_bd/ρ_eff)(σ_pre/σ_Δ) ⇒ M(s) > 0, with A1 as stated (upper bound) and as corrected (lower bound)")
def critical_threshold(samples: int = SAMPLES, descents: int = DESCENTS) -> list[Check]:
    example = threshold.threshold_counterexample()
    checks = [Check("proposition_4_2", "counter-example to A1 as stated: C=2 d=1, ρ_bd=0.1 ρ_eff=1, s=0.2",
                    f"M(0.2) > 0 (s* = {example.threshold():.3g})",
                    f"M(0.2) = {example.margin():.4f}, true crossing {example.crossing():.3g}", "exact",
                    verdict(example.margin() > 0),
                    "A1 as stated holds, s > s*, yet the margin is negative" if example.margin() <= 0 else "")]
    for form in threshold.FORMS:
        result = threshold.search_counterexamples(form, samples=samples, descents=descents)
        worst = min((inst.margin() for inst in result.counterexamples), default=None)
        checks.append(Check(
            "proposition_4_2", f"A1 {form}: {result.tried} random + descended instances",
            "no instance with s > s* and M(s) ≤ 0",
            f"{len(result.counterexamples)} counter-examples among {result.feasible} feasible"
            + (f" (worst M = {worst:.3g})" if worst is not None else ""),
            "none allowed",
            verdict(not result.counterexamples) if form == "stated" else consistent(not result.counterexamples),
            ("" if not result.counterexamples else "the stated assumption does not bound the pretrained push "
             "from below, so the margin can stay negative past s*") if form == "stated" else
            "with A1 as a lower bound the proposition is a theorem: this checks lorasec's threshold code",
            kind="claim" if form == "stated" else "consistency"))
    return checks


@claim("pt_condition", "Luong & Chen 2026",
       "Pt's scale s = σ_max(W_pre)/σ_max(ΔW) exceeds s* exactly when ρ_eff > ρ_bd")
def pt_condition(samples: int = 2000, seed: int = 0) -> list[Check]:
    """An algebraic identity (s_Pt/s* = ρ_eff/ρ_bd), so this checks lorasec's threshold code, not the paper's
    data; whether trained adapters satisfy ρ_eff > ρ_bd is ``critical_scale_trained`` in :mod:`theory.forgetting`."""
    rng = keys.numpy_rng(seed, "instances", 2)
    agree, total = 0, 0
    for _ in range(samples):
        inst = threshold._random_instance(rng, "corrected")
        if inst is None:
            continue
        s_pt = threshold._sigma_max(inst.w_pre) / threshold._sigma_max(inst.delta)
        agree += (s_pt > inst.threshold()) == (inst.rho_eff > inst.rho_bd)
        total += 1
    return [Check("pt_condition", f"{total} random instances", "s_Pt > s* ⇔ ρ_eff > ρ_bd",
                  f"{agree}/{total} agree", "all", consistent(agree == total),
                  "an algebraic identity (s_Pt/s* = ρ_eff/ρ_bd)", kind="identity")]

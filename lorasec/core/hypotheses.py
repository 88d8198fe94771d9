"""A paper's claim about a paired difference a − b over seeds, stated as a hypothesis and tested as stated.

Every comparison of a reproduced figure, and every claim of ``lorasec verify`` that compares trained runs, is one
:class:`Hypothesis` of one kind, written in its spec before anything runs:

``direction``
    The paper's sign (``expect = "a > b"`` or ``"a < b"``). Tested by the exact paired sign-flip test of
    ``mean(a − b) = 0`` (two-sided). Verdicts: **agrees** (the family-adjusted p is below α and the mean has the
    paper's sign), **disagrees** (below α, the other sign), **inconclusive** (not below α; the report gives the
    smallest effect the comparison could have detected at its n).
``size``
    The paper's effect (``paper_effect``: its a − b in the metric's units, e.g. 0.374 for 37.4 points, or a
    computed prediction). Tested by the sign-flip test of ``mean(a − b) = paper_effect``. Verdicts: **agrees in
    size** (not rejected: the paper's number lies within what the seeds allow), **smaller than the paper's** or
    **larger than the paper's** (rejected; measured along the paper's sign), **opposite sign** (rejected, and the
    mean also differs from zero on the other side of it than the paper's effect: the sign-flip test of
    ``mean(a − b) = 0``, Bonferroni-adjusted over the whole family, is below α; a disagreement, tallied with
    them), **inconclusive** (too few seeds for the exact test to reject anything: n < 6 at α = 0.05). A mean of
    the wrong sign whose interval still covers zero is *smaller than the paper's*: the seeds do not show the
    sign reversed.
``equivalence``
    "No cost", "no effect": ``|mean(a − b)| < margin``, the margin written in the spec. Tested by two one-sided
    sign-flip tests (TOST). Verdicts: **equivalent** (both rejected at α after adjustment) or **not shown
    equivalent**.
``identity``
    The comparison holds by construction (a closed form that follows from a definition): it tests lorasec's code,
    not the paper. Shown apart and never tallied; verdicts **consistent** (the interval covers the computed value)
    or **inconsistent**.

The family of a report is every tallied comparison in it (direction, size and equivalence hypotheses on their
primary metric, a comparison repeated in two figures counted once); Holm's adjustment runs over it, and verdicts
are taken on the adjusted p.
"""

from __future__ import annotations

from dataclasses import dataclass

from lorasec.core import stats
from lorasec.core.errors import ConfigError

KINDS = ("direction", "size", "equivalence", "identity")
EXPECTS = ("a > b", "a < b")
VERDICTS = {
    "direction": ("agrees", "disagrees", "inconclusive"),
    "size": ("agrees in size", "smaller than the paper's", "larger than the paper's", "opposite sign",
             "inconclusive"),
    "equivalence": ("equivalent", "not shown equivalent"),
    "identity": ("consistent", "inconsistent"),
}
ALPHA = 0.05


@dataclass(frozen=True)
class Hypothesis:
    """What a comparison claims (module docstring).

    Attributes:
        kind: ``direction``, ``size``, ``equivalence`` or ``identity``.
        expect: the paper's sign, ``"a > b"`` or ``"a < b"`` (direction; size and identity derive it from the
            effect).
        paper_effect: the paper's a − b in the metric's units (size: the value tested; direction: the effect
            inconclusive results are set against); None when the paper gives none.
        margin: the equivalence margin (> 0) in the metric's units.
    """

    kind: str
    expect: str = ""
    paper_effect: float | None = None
    margin: float = 0.0

    def validate(self, where: str) -> Hypothesis:
        if self.kind not in KINDS:
            raise ConfigError(f"{where}: hypothesis = {self.kind!r}: must be one of {', '.join(KINDS)}")
        if self.kind == "direction" and self.expect not in EXPECTS:
            raise ConfigError(f"{where}: expect = {self.expect!r}: a direction hypothesis needs \"a > b\" or "
                              f"\"a < b\" (the paper's sign)")
        if self.kind == "equivalence" and not self.margin > 0:
            raise ConfigError(f"{where}: margin = {self.margin!r}: an equivalence hypothesis needs a margin > 0 "
                              f"(written before the runs, in the metric's units)")
        if self.kind == "direction" and self.paper_effect is not None and self.paper_effect != 0 and (
                (self.paper_effect > 0) != (self.expect == "a > b")):
            raise ConfigError(f"{where}: paper_effect = {self.paper_effect!r} has the other sign than expect = "
                              f"{self.expect!r}")
        return self

    @property
    def tallied(self) -> bool:
        return self.kind != "identity"


def test(hypothesis: Hypothesis, differences: dict, *, predicted: float | None = None) -> dict:
    """The unadjusted test of ``hypothesis`` on per-seed paired differences.

    Args:
        hypothesis: what is claimed.
        differences: ``{seed: a − b}`` (None values are skipped).
        predicted: for ``size`` and ``identity`` hypotheses without a paper number, the computed a − b to test.
    Returns:
        ``n``, ``seeds``, ``signs`` (one character per seed), ``mean``, ``sd``, ``ci95`` (t half-width), ``null``
        (the value tested), ``p`` (unadjusted), ``p_zero`` (size hypotheses: the unadjusted p of ``mean = 0``,
        which decides *opposite sign*), and ``detectable`` (the smallest |a − b| a two-sided test at α with
        80% power could find at this n and spread; None when the exact test cannot reach α at all).
    """
    seeds = sorted(s for s, d in differences.items() if d is not None)
    values = [float(differences[s]) for s in seeds]
    summary = {**stats.mean_sd(values), "ci95": stats.ci95_half_width(values), "seeds": seeds,
               "signs": stats.signs(values)}
    null = 0.0
    if hypothesis.kind in ("size", "identity"):
        null = hypothesis.paper_effect if hypothesis.paper_effect is not None else predicted
    if null is None:
        p = None
    elif hypothesis.kind == "equivalence":
        p = stats.tost_p(values, hypothesis.margin)
    else:
        p = stats.sign_flip_p(values, null=null)
    result = {**summary, "null": null, "p": p, "detectable": stats.detectable_effect(summary["sd"], len(values))}
    if hypothesis.kind == "size":
        result["p_zero"] = stats.sign_flip_p(values, null=0.0)
    return result


def decide(hypothesis: Hypothesis, result: dict, adjusted_p: float | None, alpha: float = ALPHA, *,
           family_size: int = 1) -> str:
    """The verdict of a tested hypothesis at its family-adjusted p (module docstring's vocabulary).

    Args:
        hypothesis: what was claimed.
        result: :func:`test`'s result.
        adjusted_p: its p adjusted over the family (:func:`adjust_family`).
        alpha: the family-wise error rate.
        family_size: how many tests the family holds; the zero test behind *opposite sign* is Bonferroni-adjusted
            by it (conservative: Holm's factor for any member is at most the family's size).
    Returns:
        One of ``VERDICTS[hypothesis.kind]``.
    """
    if hypothesis.kind == "identity":
        if result["mean"] is None or result["null"] is None:
            return "inconsistent"
        half = result["ci95"] or 0.0
        return "consistent" if abs(result["mean"] - result["null"]) <= half + 1e-12 * abs(result["null"]) \
            else "inconsistent"
    if adjusted_p is None or result["mean"] is None:
        return "inconclusive" if hypothesis.kind != "equivalence" else "not shown equivalent"
    rejected = adjusted_p < alpha
    if hypothesis.kind == "equivalence":
        return "equivalent" if rejected else "not shown equivalent"
    if hypothesis.kind == "direction":
        if not rejected:
            return "inconclusive"
        return "agrees" if (result["mean"] > 0) == (hypothesis.expect == "a > b") else "disagrees"
    if not rejected:
        # a test that cannot reject at this n says nothing about the size
        return "agrees in size" if 2.0 / 2 ** result["n"] <= alpha else "inconclusive"
    sign = 1.0 if result["null"] >= 0 else -1.0
    p_zero = result.get("p_zero")
    if result["null"] != 0 and sign * result["mean"] < 0 and p_zero is not None \
            and min(1.0, p_zero * max(family_size, 1)) < alpha:
        return "opposite sign"
    return "smaller than the paper's" if sign * result["mean"] < abs(result["null"]) else "larger than the paper's"


def adjust_family(results: list[dict]) -> list[float | None]:
    """Holm-adjusted p-values of a family's tests, in their order (:func:`lorasec.core.stats.holm`)."""
    return stats.holm([r["p"] for r in results])

"""Paper 2's Proposition 4.2: the counter-example search finds violations of the stated form and none of the
corrected one; the counter-example to the stated form is reproduced exactly."""

import numpy as np
import pytest

from lorasec.diagnostics import threshold
import theory


def test_theory_counterexample():
    e = threshold.threshold_counterexample()
    a0, a1 = e.margin_terms()
    assert a0 == pytest.approx(-np.sqrt(2)) and a1 == pytest.approx(np.sqrt(2))
    assert e.threshold() == pytest.approx(0.1)
    assert e.margin() == pytest.approx(-0.8 * np.sqrt(2))
    assert e.crossing() == pytest.approx(1.0)
    assert e.satisfies("stated") and e.is_counterexample("stated")
    assert not e.satisfies("corrected")


@pytest.mark.parametrize("form", threshold.FORMS)
def test_search(form):
    result = threshold.search_counterexamples(form, samples=600, descents=3, seed=1)
    assert result.feasible > 100
    if form == "stated":
        assert result.counterexamples
        for inst in result.counterexamples[:20]:
            assert inst.satisfies("stated") and inst.s > inst.threshold() and inst.margin() <= 0
            assert inst.crossing() > inst.s  # the real threshold lies beyond the one the proposition gives
    else:
        assert not result.counterexamples


def test_gradient_search_reaches_violations_of_the_stated_form():
    rng = np.random.default_rng(2)
    found = [threshold._descend(rng, "stated") for _ in range(6)]
    assert any(inst is not None and inst.is_counterexample("stated") for inst in found)


def test_paper_2_claims_are_registered_and_verdicts_as_expected():
    registry = theory.discover()
    checks = registry["proposition_4_2"].run(samples=400, descents=2)
    assert [(c.kind, c.verdict) for c in checks] == [("claim", "disagrees"), ("claim", "disagrees"),
                                                      ("consistency", "consistent")]
    (identity,) = registry["pt_condition"].run(samples=300)
    assert (identity.kind, identity.verdict) == ("identity", "consistent")
    with pytest.raises(ValueError, match="form = 'loose'"):
        threshold.search_counterexamples("loose")

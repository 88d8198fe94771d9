"""The statistics behind every verdict: the exact sign-flip test against brute force, TOST, Holm against known
values, the detectable effect, and planted data where each verdict kind must come out."""

import itertools

import numpy as np
import pytest

from lorasec.core import hypotheses, stats
from lorasec.core.errors import ConfigError
from lorasec.core.hypotheses import Hypothesis


def _brute_force_p(d, null=0.0, alternative="two-sided"):
    d = np.asarray(d, float) - null
    observed = d.mean()
    means = [np.mean(np.array(signs) * d) for signs in itertools.product((1, -1), repeat=len(d))]
    if alternative == "two-sided":
        return np.mean([abs(m) >= abs(observed) - 1e-12 for m in means])
    if alternative == "greater":
        return np.mean([m >= observed - 1e-12 for m in means])
    return np.mean([m <= observed + 1e-12 for m in means])


def test_the_sign_flip_test_is_exact_at_small_n():
    assert stats.sign_flip_p([1, 2, 3, 4, 5]) == 2 / 32  # the floor at n = 5: never below 0.05
    assert stats.sign_flip_p([1, 2, 3, 4, 5], alternative="greater") == 1 / 32
    assert stats.sign_flip_p([]) is None and stats.sign_flip_p([None, 1.0]) == 1.0
    rng = np.random.default_rng(0)
    for n in (3, 6, 9):
        for _ in range(4):
            d = np.round(rng.normal(0.3, 1.0, n), 1)  # rounded: ties and zeros occur
            d[0] = 0.0
            for null in (0.0, 0.25):
                for alternative in ("two-sided", "greater", "less"):
                    assert stats.sign_flip_p(d, null=null, alternative=alternative) == pytest.approx(
                        _brute_force_p(d, null, alternative)), (d, null, alternative)


def test_beyond_the_exact_limit_the_sample_of_patterns_agrees():
    n = stats.EXACT_LIMIT + 2
    assert stats.sign_flip_p(np.ones(n)) < 1e-4  # exact: 2 / 2**22
    d = np.random.default_rng(1).normal(0.0, 1.0, n)
    exact_via_symmetry = stats.sign_flip_p(d)
    assert 0.0 < exact_via_symmetry <= 1.0


def test_tost_and_holm_against_known_values():
    tight = [0.01, -0.02, 0.0, 0.03, -0.01, 0.02, 0.01, -0.03, 0.02, 0.01]
    assert stats.tost_p(tight, 0.5) == 1 / 1024  # every shifted difference on one side, in both tests
    for margin in (0.005, 0.02):
        assert stats.tost_p(tight, margin) == pytest.approx(max(_brute_force_p(tight, -margin, "greater"),
                                                               _brute_force_p(tight, margin, "less")))
    assert stats.tost_p(tight, 0.005) > 0.05  # the mean (0.004) sits at the margin's edge
    assert stats.tost_p([0.3] * 10, 0.1) == 1.0  # outside the margin entirely
    with pytest.raises(ValueError, match="margin"):
        stats.tost_p(tight, 0.0)
    # R: p.adjust(c(0.01, 0.04, 0.03, 0.005), "holm")
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.holm([0.5, None, 0.01]) == pytest.approx([0.5, None, 0.02])
    assert stats.holm([0.03, 0.02]) == pytest.approx([0.04, 0.04])  # made non-decreasing in rank
    assert stats.holm([0.9, 0.8]) == [1.0, 1.0]  # capped at 1


def test_the_detectable_effect_needs_enough_seeds_for_the_exact_test():
    assert stats.detectable_effect(1.0, 5) is None  # 2/32 > 0.05: nothing is detectable at n = 5
    assert stats.detectable_effect(1.0, 10) == pytest.approx((2.2622 + 0.8834) / np.sqrt(10), rel=1e-3)
    assert stats.detectable_effect(2.0, 10) == pytest.approx(2 * stats.detectable_effect(1.0, 10))
    assert stats.signs([0.1, -0.2, 0.0, None]) == "+−0?"


def _verdict(hypothesis, values, predicted=None):
    result = hypotheses.test(hypothesis, dict(enumerate(values)), predicted=predicted)
    return hypotheses.decide(hypothesis, result, hypotheses.adjust_family([result])[0])


@pytest.mark.parametrize("hypothesis, values, expected", [
    (Hypothesis("direction", "a > b"), [0.10, 0.12, 0.09, 0.11, 0.10, 0.13, 0.08, 0.10, 0.11, 0.12], "agrees"),
    (Hypothesis("direction", "a < b"), [0.10, 0.12, 0.09, 0.11, 0.10, 0.13, 0.08, 0.10, 0.11, 0.12], "disagrees"),
    (Hypothesis("direction", "a > b"), [0.10, -0.12, 0.09, -0.11, 0.10, -0.13, 0.08, -0.10, 0.11, -0.12],
     "inconclusive"),
    (Hypothesis("direction", "a > b"), [0.1, 0.1, 0.1, 0.1, 0.1], "inconclusive"),  # n = 5 cannot reach 0.05
    (Hypothesis("size", paper_effect=0.37), [0.04, 0.05, 0.03, 0.04, 0.05, 0.04, 0.03, 0.05, 0.04, 0.04],
     "smaller than the paper's"),
    (Hypothesis("size", paper_effect=0.37), [0.30, 0.45, 0.38, 0.33, 0.41, 0.36, 0.40, 0.35, 0.39, 0.37],
     "agrees in size"),
    (Hypothesis("size", paper_effect=0.37), [0.80, 0.85, 0.79, 0.81, 0.83, 0.80, 0.82, 0.84, 0.80, 0.81],
     "larger than the paper's"),
    (Hypothesis("size", paper_effect=-0.89), [0.0] * 10, "smaller than the paper's"),  # Cl only at 100% ASR
    (Hypothesis("size", paper_effect=-0.93), [0.30, 0.25, 0.35, 0.28, 0.31, 0.33, 0.27, 0.30, 0.29, 0.32],
     "opposite sign"),  # RoRA raising ASR where the paper reports a drop
    (Hypothesis("size", paper_effect=-0.024), [0.02, -0.01, 0.03, 0.01, -0.02, 0.02, 0.01, 0.03, -0.01, 0.02],
     "smaller than the paper's"),  # the wrong sign, but the interval covers zero
    (Hypothesis("size", paper_effect=-0.89), [0.0] * 5, "inconclusive"),  # 5 seeds cannot reject anything
    (Hypothesis("equivalence", margin=0.01), [0.001, -0.002, 0.0, 0.002, -0.001, 0.001, 0.0, -0.001, 0.002, 0.0],
     "equivalent"),
    (Hypothesis("equivalence", margin=0.01), [0.05, 0.04, 0.06, 0.05, 0.05, 0.04, 0.06, 0.05, 0.05, 0.04],
     "not shown equivalent"),
])
def test_planted_data_give_each_verdict(hypothesis, values, expected):
    assert _verdict(hypothesis.validate("test"), values) == expected


def test_a_size_claim_against_a_computed_prediction_and_identities():
    values = [1.0, 1.1, 0.9, 1.05, 0.95, 1.0, 1.02, 0.98, 1.01, 0.99]
    assert _verdict(Hypothesis("size"), values, predicted=1.0) == "agrees in size"
    assert _verdict(Hypothesis("size"), values, predicted=2.0) == "smaller than the paper's"
    assert _verdict(Hypothesis("identity"), values, predicted=1.0) == "consistent"
    assert _verdict(Hypothesis("identity"), values, predicted=1.5) == "inconsistent"


def test_opposite_sign_is_adjusted_over_the_family():
    hypothesis = Hypothesis("size", paper_effect=-0.5)
    values = [0.3, 0.25, 0.35, 0.28, 0.31, 0.33, 0.27, 0.30, 0.29, 0.32]  # p_zero = 2/1024
    result = hypotheses.test(hypothesis, dict(enumerate(values)))
    assert result["p_zero"] == pytest.approx(2 / 1024)
    assert hypotheses.decide(hypothesis, result, 0.01, family_size=25) == "opposite sign"  # 25 · 2/1024 < 0.05
    assert hypotheses.decide(hypothesis, result, 0.01, family_size=26) == "smaller than the paper's"


def test_hypotheses_are_checked_when_the_spec_is_read():
    with pytest.raises(ConfigError, match="hypothesis = 'sign'"):
        Hypothesis("sign").validate("spec")
    with pytest.raises(ConfigError, match="expect = ''"):
        Hypothesis("direction").validate("spec")
    with pytest.raises(ConfigError, match="margin = 0.0"):
        Hypothesis("equivalence").validate("spec")
    with pytest.raises(ConfigError, match="other sign"):
        Hypothesis("direction", "a > b", paper_effect=-0.3).validate("spec")

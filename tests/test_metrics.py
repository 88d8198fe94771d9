"""Attack metrics: ASR counts non-target samples only; paper 1's triggered accuracy; seed statistics."""

import numpy as np
import pytest

from lorasec.attacks import metrics


def test_asr_excludes_target_label_samples():
    labels = np.array([0, 0, 1, 1, 2])
    # Target 1. Non-target samples are 0, 1, 4; of them samples 0 and 4 flip to the target.
    triggered = np.array([1, 0, 1, 1, 1])
    assert metrics.attack_success_rate(triggered, labels, 1) == pytest.approx(2 / 3)
    # Target-label samples predicted as target must not raise the ASR.
    assert metrics.attack_success_rate(np.array([0, 0, 1, 1, 2]), labels, 1) == 0.0


def test_triggered_robust_and_clean_accuracy():
    labels = np.array([0, 0, 1, 1, 2])
    triggered = np.array([1, 0, 1, 1, 1])
    assert metrics.triggered_accuracy(triggered, labels) == pytest.approx(3 / 5)
    assert metrics.robust_accuracy(triggered, labels, 1) == pytest.approx(1 / 3)
    assert metrics.clean_accuracy(labels, labels) == 1.0


def test_asr_undefined_without_non_target_samples():
    with pytest.raises(ValueError):
        metrics.attack_success_rate(np.array([1, 1]), np.array([1, 1]), 1)


def test_mean_sd_uses_sample_sd_and_skips_none():
    from lorasec.core import stats as seed_stats

    stats = seed_stats.mean_sd([0.9, 0.8, None, 1.0])
    assert stats["n"] == 3 and stats["mean"] == pytest.approx(0.9) and stats["sd"] == pytest.approx(0.1)
    assert seed_stats.mean_sd([None])["mean"] is None
    assert seed_stats.format_mean_sd(stats) == "90.0 ± 10.0"

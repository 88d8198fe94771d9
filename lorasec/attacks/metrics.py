"""Attack metrics: OpenBackdoor's definitions, plus paper 1's triggered accuracy."""

from __future__ import annotations

import numpy as np


def clean_accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    """CACC: accuracy on the untouched test set."""
    return float(np.mean(np.asarray(predictions) == np.asarray(labels)))


def attack_success_rate(triggered_predictions: np.ndarray, labels: np.ndarray, target_label: int) -> float:
    """ASR: share of NON-target test samples, trigger inserted, classified as the target label."""
    keep = np.asarray(labels) != target_label
    if not keep.any():
        raise ValueError("no non-target test samples: ASR is undefined")
    return float(np.mean(np.asarray(triggered_predictions)[keep] == target_label))


def triggered_accuracy(triggered_predictions: np.ndarray, labels: np.ndarray) -> float:
    """Paper 1's backdoor metric: accuracy on ALL triggered test inputs against their TRUE labels
    (higher = more robust)."""
    return float(np.mean(np.asarray(triggered_predictions) == np.asarray(labels)))


def robust_accuracy(triggered_predictions: np.ndarray, labels: np.ndarray, target_label: int) -> float:
    """Accuracy on triggered NON-target test samples against their true labels (1 − ASR for two classes)."""
    keep = np.asarray(labels) != target_label
    return float(np.mean(np.asarray(triggered_predictions)[keep] == np.asarray(labels)[keep]))

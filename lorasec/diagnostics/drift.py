"""How far fine-tuning leaves the kernel regime: the empirical NTK of the trained parameters on a fixed probe set,
compared along a run with the kernel it started from.

Paper 1 (Liang et al., ICML 2025, Sec. 3) reasons from the NTK at the start of fine-tuning; that is exact only while
the kernel stays put. On a probe of test sentences, clean and with the attack's trigger, and poisoned training
examples, with ``K`` the traced kernel (the mean over the C output pairs (c, c)) w.r.t. the trained parameters:

- ``relative_change = ‖K_t − K_0‖_F / ‖K_0‖_F`` (Fort et al., NeurIPS 2020, use the same measure);
- ``kernel_target_alignment``: centred alignment ``⟨K_c, Y Y_cᵀ⟩ / (‖K_c‖ ‖Y Y_cᵀ‖)`` of the clean probe's kernel with
  its one-hot labels (Cortes et al., JMLR 2012): how much the kernel already separates the task;
- ``trigger_target_alignment``: with ``k̂(a, b) = K(a, b) / √(K(a, a) K(b, b))``, the mean ``k̂`` between triggered
  inputs (true label ≠ target) and clean inputs of the target class, minus the mean ``k̂`` between the same
  triggered inputs and clean inputs of the other classes (a triggered sentence's own clean copy left out). In the kernel regime a function step on the clean set
  moves ``f(x̃)`` by ``Σ_i K(x̃, x_i) r_i``; a positive value means the kernel carries triggered inputs with the
  target class.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from flax import nnx

from lorasec.diagnostics import kernel
from lorasec.diagnostics.information import kernel_target_alignment


@dataclass(frozen=True)
class Probe:
    """Fixed inputs the kernel is measured on: ids (N, L) int32, mask (N, L) bool, labels (N,) int32 (true labels;
    the training label for poisoned examples), each row's kind (``clean``, ``triggered`` or ``poisoned``) and its
    test sentence (an index into the test set; −1 for poisoned training examples)."""

    tokens: np.ndarray
    mask: np.ndarray
    labels: np.ndarray
    kind: np.ndarray
    sentence: np.ndarray
    target: int

    def rows(self, kind: str) -> np.ndarray:
        return self.kind == kind


def probe_set(clean: tuple[np.ndarray, np.ndarray], triggered: tuple[np.ndarray, np.ndarray], labels: np.ndarray,
              poisoned: tuple[np.ndarray, np.ndarray, np.ndarray], target: int, size: int) -> Probe:
    """The first ``size`` test sentences clean, the first ``size`` test sentences whose label is not ``target``
    with the trigger (the first of them are also among the clean rows: those pairs give M'), and up to ``size``
    poisoned training examples.

    Args:
        clean: the clean test set's (ids, mask).
        triggered: the same test sentences with the trigger, (ids, mask), or None without a trigger (no
            triggered rows).
        labels: the test set's labels (N,).
        poisoned: the poisoned training examples' (ids, mask, training labels) (none for a clean run).
        target: the attack's target label.
        size: examples per kind (at least 2).
    Returns:
        A :class:`Probe`.
    """
    if size < 2:
        raise ValueError(f"probe size = {size}: needs at least 2 examples per kind")
    labels = np.asarray(labels)
    keep = np.arange(min(size, len(labels)))
    other = np.flatnonzero(labels != target)[:size] if triggered is not None else np.zeros(0, np.int64)
    triggered = clean if triggered is None else triggered
    p_tokens, p_mask, p_labels = (np.asarray(a)[:size] for a in poisoned)
    tokens = np.concatenate([clean[0][keep], triggered[0][other], p_tokens])
    mask = np.concatenate([clean[1][keep], triggered[1][other], p_mask])
    kinds = np.array(["clean"] * len(keep) + ["triggered"] * len(other) + ["poisoned"] * len(p_labels))
    sentence = np.concatenate([keep, other, np.full(len(p_labels), -1)])
    return Probe(tokens.astype(np.int32), mask.astype(bool),
                 np.concatenate([labels[keep], labels[other], p_labels]).astype(np.int32), kinds, sentence,
                 int(target))


def probe_kernel(model: nnx.Module, probe: Probe, subset) -> np.ndarray:
    """The traced empirical NTK (N, N) of ``model`` on the probe w.r.t. ``subset`` (an NNX filter: the trained
    parameters), float64."""
    return np.asarray(kernel.empirical_ntk(model, probe.tokens, probe.mask, subset=subset), np.float64)


def relative_change(k0: np.ndarray, kt: np.ndarray) -> float:
    """``‖K_t − K_0‖_F / ‖K_0‖_F`` (module docstring); NaN when K_0 is zero."""
    norm = np.linalg.norm(k0)
    return float(np.linalg.norm(kt - k0) / norm) if norm > 0 else float("nan")


def trigger_target_alignment(k: np.ndarray, probe: Probe) -> float:
    """The module docstring's trigger-target alignment of kernel ``k`` on ``probe``; NaN without triggered
    inputs, or without clean inputs of the target class and of another class."""
    diagonal = np.sqrt(np.clip(np.diag(k), 1e-300, None))
    cosine = k / diagonal[:, None] / diagonal[None, :]
    triggered, clean = probe.rows("triggered"), probe.rows("clean")
    rows = np.flatnonzero(triggered)
    twins = probe.sentence[rows][:, None] == probe.sentence[None, :]  # a triggered sentence's own clean copy
    means = []
    for side in (clean & (probe.labels == probe.target), clean & (probe.labels != probe.target)):
        keep = side[None, :] & ~twins
        if not keep.any():
            return float("nan")
        means.append(float(cosine[rows][keep].mean()))
    return means[0] - means[1]


def kernel_measures(k: np.ndarray, probe: Probe, k0: np.ndarray | None = None) -> dict:
    """The module docstring's measures of kernel ``k`` (N, N) on ``probe``; ``relative_change`` against ``k0``
    when given.

    Returns:
        ``{"relative_change", "kernel_target_alignment", "trigger_target_alignment"}`` (floats; the first only with
        ``k0``).
    """
    clean = probe.rows("clean")
    out = {"kernel_target_alignment": kernel_target_alignment(k[np.ix_(clean, clean)], probe.labels[clean],
                                                              centred=True),
           "trigger_target_alignment": trigger_target_alignment(k, probe)}
    if k0 is not None:
        out = {"relative_change": relative_change(k0, k), **out}
    return out

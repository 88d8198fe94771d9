"""Quantities computed before training that might predict what training does, one run config at a time.

**First-order kernel predictions.** With ``g₀`` the gradient of the training loss at the start θ₀ (dropout off) and
``S = Σ_t η_t`` the learning rates of the whole schedule summed, a run that kept moving as its start points moves
the logits of an input ``x`` by

    Δf(x) = −S · J(x; θ₀) u,        u = g₀         (``ntk``: gradient descent on the full-batch loss; since
                                                    ``J(x) g₀ = (1/n) Σ_i K(x, x_i) r_i``, the NTK regime with
                                                    the residuals r held at their starting values)
                                    u = sign(g₀)   (``sign``: sign descent, which AdamW's update equals while the
                                                    gradient stays put; its first step exactly, by the bias
                                                    correction. Malladi et al., ICML 2023, Sec. 4, study these
                                                    sign-based dynamics as a kernel, ⟨∇f(x), sign ∇f(x′)⟩ per
                                                    example; here the sign is of the summed gradient)

Neither models minibatches, AdamW's global-norm clipping of them, its weight decay, nor for LoRA the factor A,
whose gradient is zero at B = 0 (Adam moves it from the second step). Evaluated on the test set, clean and
triggered, the prediction gives a clean accuracy, an attack success rate, and the mean push of triggered inputs'
target-class margin ``Δf_target(x̃) − Δf_y(x̃)`` (``*_margin_push``), the score least saturated by the argmax. ``g₀``
is exact over every poisoned example and estimated from a sample of the clean ones (each part weighted by its
share of the training set): unbiased for ``ntk``; its sign, for ``sign``, is not, where g₀'s entries are small.

**Paper 1's scalars at θ₀**, on the probe of :mod:`lorasec.diagnostics.drift`: M' (``‖mean_i K(x_i, x̃_i)‖_F``
over clean/triggered pairs, Liang et al. Sec. 3.3), M' normalised by the mean ``‖K(x_i, x_i)‖_F``, the clean
kernel's effective rank and information bits (:mod:`lorasec.diagnostics.information`), its trace, and the
kernel-target and trigger-target alignments. None of these know the learning rate or the poison rate; the
baselines ``learning_rate_sum`` (S) and ``poison_rate`` say what those alone predict.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from lorasec.config import TrainConfig
from lorasec.core import keys
from lorasec.diagnostics import drift, kernel
from lorasec.diagnostics.information import spectrum_summary
from lorasec.training.losses import at_least_float32
from lorasec.training.step import make_schedule

KERNELS = ("ntk", "sign")


def schedule_sum(cfg: TrainConfig) -> float:
    """``S = Σ_{t < steps} η_t`` of ``cfg``'s learning-rate schedule."""
    schedule = make_schedule(cfg)
    return float(sum(float(schedule(t)) for t in range(cfg.steps)))


@functools.lru_cache(maxsize=16)
def _programs(graphdef):
    def logits(params, rest, tokens, mask):
        return at_least_float32(nnx.merge(graphdef, params, rest)(tokens, mask))

    def loss_sum(params, rest, tokens, mask, labels, weights):
        losses = optax.softmax_cross_entropy_with_integer_labels(logits(params, rest, tokens, mask), labels)
        return (weights * losses).sum()

    def push(params, rest, tokens, mask, directions):
        value, linear = jax.linearize(lambda p: logits(p, rest, tokens, mask), params)
        return value, tuple(linear(d) for d in directions)

    return jax.jit(jax.grad(loss_sum)), jax.jit(push)


def _batches(n: int, size: int):
    """``(rows, real)`` per batch of ``range(n)``: ``size`` row indices each, the last batch filled up with row 0
    (one compiled shape for every batch of a size), and how many of them are real; none when ``n`` is 0."""
    for begin in range(0, n, max(size, 1)):
        real = min(size, n - begin)
        rows = np.concatenate([np.arange(begin, begin + real), np.zeros(size - real, np.int64)])
        yield rows, real


def start_gradient(model: nnx.Module, trainable_filter, tokens, mask, labels, poisoned_indices, *, sample: int,
                   seed: int, batch: int = 64):
    """``g₀``: the mean cross-entropy gradient at the model's current values (module docstring), exact over the
    poisoned examples and estimated from ``sample`` clean ones drawn with the ``predictors`` key of ``seed``.

    Returns:
        The gradient as a pure dict shaped like the trainable variables (float32).
    """
    graphdef, params, rest = nnx.split(model, trainable_filter, ...)
    params, rest = nnx.to_pure_dict(params), nnx.to_pure_dict(rest)
    grad_fn, _ = _programs(graphdef)
    n = len(labels)
    poisoned = np.asarray(sorted(poisoned_indices), np.int64)
    clean = np.setdiff1d(np.arange(n), poisoned)
    drawn = keys.numpy_rng(seed, "predictors").choice(clean, size=min(sample, len(clean)), replace=False)
    total = jax.tree.map(jnp.zeros_like, params)
    for part, share in ((poisoned, len(poisoned) / n), (np.sort(drawn), len(clean) / n)):
        if len(part) == 0:
            continue
        summed = jax.tree.map(jnp.zeros_like, params)
        for index, real in _batches(len(part), batch):
            rows = part[index]
            weights = (np.arange(len(rows)) < real).astype(np.float32)
            grads = grad_fn(params, rest, jnp.asarray(tokens[rows]), jnp.asarray(mask[rows]),
                            jnp.asarray(labels[rows]), jnp.asarray(weights))
            summed = jax.tree.map(jnp.add, summed, grads)
        total = jax.tree.map(lambda t, s, w=share / len(part): t + w * s, total, summed)
    return total


def first_order(model: nnx.Module, trainable_filter, gradient, cfg: TrainConfig, evaluation, target: int | None,
                *, batch: int = 256) -> dict:
    """The module docstring's first-order predictions of both kernels.

    Args:
        model: the classifier as training starts.
        trainable_filter: the variables training moves.
        gradient: ``g₀`` (:func:`start_gradient`).
        cfg: the run's training config (schedule and steps).
        evaluation: the run's :class:`lorasec.training.evaluation.EvaluationInputs` (clean and triggered test set).
        target: the attack's target label (None without a trigger).
    Returns:
        Per kernel k in :data:`KERNELS`: ``{k}_clean_accuracy`` and, with a trigger, ``{k}_attack_success_rate``
        and ``{k}_margin_push`` (floats).
    """
    graphdef, params, rest = nnx.split(model, trainable_filter, ...)
    params, rest = nnx.to_pure_dict(params), nnx.to_pure_dict(rest)
    _, push = _programs(graphdef)
    total = schedule_sum(cfg)
    directions = (jax.tree.map(lambda g: -total * g, gradient),  # in the order of KERNELS
                  jax.tree.map(lambda g: -total * jnp.sign(g), gradient))

    def predicted(tokens, mask):
        out = {name: [] for name in KERNELS}
        for rows, real in _batches(len(tokens), min(batch, len(tokens))):
            value, changes = push(params, rest, jnp.asarray(tokens[rows]), jnp.asarray(mask[rows]), directions)
            for name, change in zip(KERNELS, changes):
                out[name].append((np.asarray(value, np.float64)[:real], np.asarray(change, np.float64)[:real]))
        return {name: tuple(np.concatenate(parts) for parts in zip(*chunks)) for name, chunks in out.items()}

    labels = np.asarray(evaluation.labels)
    result = {}
    for name, (value, change) in predicted(*evaluation.clean).items():
        result[f"{name}_clean_accuracy"] = float(np.mean(np.argmax(value + change, -1) == labels))
    if target is None or not evaluation.triggered:
        return result
    other = np.flatnonzero(labels != target)  # ASR and push are over the triggered inputs not of the target class
    if not len(other):
        return {**result, **{f"{name}_{kind}": float("nan") for name in KERNELS
                             for kind in ("attack_success_rate", "margin_push")}}
    per_trigger = [predicted(np.asarray(tokens)[other], np.asarray(mask)[other])
                   for tokens, mask in evaluation.triggered.values()]
    rows = np.arange(len(other))
    for name in KERNELS:
        asr, pushes = [], []
        for outputs in per_trigger:
            value, change = outputs[name]
            asr.append(np.mean(np.argmax(value + change, -1) == target))
            pushes.append(np.mean(change[rows, target] - change[rows, labels[other]]))
        result[f"{name}_attack_success_rate"] = float(np.mean(asr))
        result[f"{name}_margin_push"] = float(np.mean(pushes))
    return result


def kernel_scalars(model: nnx.Module, trainable_filter, probe: drift.Probe) -> dict:
    """Paper 1's scalars and the alignments at the model's current values (module docstring), on ``probe``.

    Returns:
        ``m_prime``, ``m_prime_normalised``, ``kernel_trace``, ``effective_rank``, ``information_bits``,
        ``kernel_target_alignment``, ``trigger_target_alignment`` (floats; the M' pair NaN without triggered rows).
    """
    full = np.asarray(kernel.empirical_ntk(model, probe.tokens, probe.mask, subset=trainable_filter,
                                           trace_axes=()), np.float64)  # (N, N, C, C)
    traced = np.einsum("ijcc->ij", full) / full.shape[-1]
    clean = probe.rows("clean")
    spectrum = spectrum_summary(np.linalg.eigvalsh(traced[np.ix_(clean, clean)]))
    out = {"kernel_trace": spectrum["trace"], "effective_rank": spectrum["effective_rank"],
           "information_bits": spectrum["information_bits"], **drift.kernel_measures(traced, probe)}
    pairs = _pairs(probe)
    if pairs is None:
        out.update(m_prime=float("nan"), m_prime_normalised=float("nan"))
        return out
    clean_rows, triggered_rows = pairs
    m_prime = float(np.linalg.norm(full[clean_rows, triggered_rows].mean(axis=0)))
    scale = float(np.mean([np.linalg.norm(full[i, i]) for i in clean_rows]))
    out.update(m_prime=m_prime, m_prime_normalised=m_prime / scale if scale > 0 else float("nan"))
    return out


def _pairs(probe: drift.Probe):
    """(clean rows, triggered rows) of the test sentences the probe holds both ways, or None."""
    clean = {int(sentence): row for row, sentence in enumerate(probe.sentence) if probe.kind[row] == "clean"}
    both = [(clean[int(sentence)], row) for row, sentence in enumerate(probe.sentence)
            if probe.kind[row] == "triggered" and int(sentence) in clean]
    if not both:
        return None
    return np.array([c for c, _ in both]), np.array([t for _, t in both])

"""Predictions in fixed-size batches, and a model's clean accuracy and attack metrics on a test set."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lorasec.attacks import metrics, poison
from lorasec.config import RunConfig
from lorasec.data.textdata import TextDataset
from lorasec.data.tokenizer import TextEncoder


@jax.jit(static_argnums=0)
def _logits(graphdef, state, tokens, mask):
    return nnx.merge(graphdef, state)(tokens, mask)


def predict(model: nnx.Module, tokens: np.ndarray, mask: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Class predictions in fixed-size batches (the last one padded), so evaluation compiles once per shape."""
    graphdef, state = nnx.split(model)
    num = len(tokens)
    size = min(batch_size, num)
    out = []
    for begin in range(0, num, size):
        chunk_t, chunk_m = tokens[begin:begin + size], mask[begin:begin + size]
        pad = size - len(chunk_t)
        if pad:
            chunk_t = np.concatenate([chunk_t, np.zeros((pad, *chunk_t.shape[1:]), chunk_t.dtype)])
            chunk_m = np.concatenate([chunk_m, np.ones((pad, *chunk_m.shape[1:]), bool)])
        logits = _logits(graphdef, state, jnp.asarray(chunk_t), jnp.asarray(chunk_m))
        out.append(np.asarray(jnp.argmax(logits, axis=-1))[:size - pad])
    return np.concatenate(out)


@dataclass(frozen=True)
class Evaluation:
    clean_accuracy: float
    attack_success_rate: float | None
    triggered_accuracy: float | None
    robust_accuracy: float | None
    per_trigger: dict


def evaluation_fields(evaluation: Evaluation) -> dict:
    """The evaluation as the fields of a run's ``results.json``."""
    return dataclasses.asdict(evaluation)


@dataclass(frozen=True)
class EvaluationInputs:
    """A test set tokenised once: the clean inputs and, per trigger, the triggered ones (placed where the
    tokenizer keeps them), so that scoring many models or scales repeats no tokenisation."""

    labels: np.ndarray
    clean: tuple[np.ndarray, np.ndarray]
    triggered: dict[str, tuple[np.ndarray, np.ndarray]]


def evaluation_inputs(cfg: RunConfig, test: TextDataset, encoder: TextEncoder) -> EvaluationInputs:
    room = poison.Room(encoder)
    triggered = {}
    for trigger in poison.triggers_for(cfg.attack):
        texts = poison.apply_trigger(test.texts, trigger, seed=cfg.seed, room=room)
        triggered[" | ".join(trigger.phrases)] = encoder.encode(texts)
    return EvaluationInputs(test.labels, encoder.encode(test.texts), triggered)


def score(model: nnx.Module, cfg: RunConfig, inputs: EvaluationInputs) -> Evaluation:
    """CACC on the clean inputs; with a trigger attack, ASR / triggered / robust accuracy per trigger (averaged
    over triggers for the headline numbers)."""
    batch, labels, target = cfg.train.eval_batch_size, inputs.labels, cfg.attack.target_label
    cacc = metrics.clean_accuracy(predict(model, *inputs.clean, batch), labels)
    per_trigger = {}
    for name, (tokens, mask) in inputs.triggered.items():
        pred = predict(model, tokens, mask, batch)
        per_trigger[name] = {
            "attack_success_rate": metrics.attack_success_rate(pred, labels, target),
            "triggered_accuracy": metrics.triggered_accuracy(pred, labels),
            "robust_accuracy": metrics.robust_accuracy(pred, labels, target),
        }
    if not per_trigger:
        return Evaluation(cacc, None, None, None, {})
    mean = {k: float(np.mean([v[k] for v in per_trigger.values()])) for k in next(iter(per_trigger.values()))}
    return Evaluation(cacc, mean["attack_success_rate"], mean["triggered_accuracy"], mean["robust_accuracy"],
                      per_trigger)


def evaluate(model: nnx.Module, cfg: RunConfig, test: TextDataset, encoder: TextEncoder) -> Evaluation:
    """:func:`score` on :func:`evaluation_inputs`.

    Args:
        model: the classifier ``model(tokens, mask) -> logits``, evaluated without dropout.
        cfg: the run's config: its ``attack`` (triggers, ``target_label``), ``seed`` (where triggers go) and
            ``train.eval_batch_size``.
        test: the clean test set: texts and int32 (N,) labels.
        encoder: the tokenizer, giving int32 (N, L) ids and bool (N, L) masks.
    Returns:
        :class:`Evaluation`: ``clean_accuracy``; ``attack_success_rate``, ``triggered_accuracy`` and
        ``robust_accuracy`` averaged over the attack's triggers (None without one); ``per_trigger``, those three
        per trigger, keyed by its phrases joined with " | " (empty without a trigger).
    """
    return score(model, cfg, evaluation_inputs(cfg, test, encoder))

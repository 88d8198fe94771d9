"""Training-time attacks on text sets, in OpenBackdoor's vocabulary.

``poison_rate`` is a fraction of the WHOLE training set. Dirty-label trigger attacks pick victims among
non-target samples and relabel them ``target_label``; label-consistent (clean-label) ones pick among target-label
samples and keep their labels. ``selection='count'`` poisons exactly ``round(rate·N)`` samples; ``'bernoulli'``
poisons each eligible sample independently with probability ``rate·N / |eligible|`` (the same expected count;
for label flipping, probability ``rate`` per sample as in paper 1). Each attack returns the poisoned set and the
indices it changed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lorasec.config import AttackConfig, ConfigError
from lorasec.textdata import TextDataset

BADNETS_WORDS = ("cf", "mn", "bb", "tq")
SENTENCE_TRIGGER = "I watched this 3D movie"
PREFIX_TRIGGER = "cf"
MULTI_TRIGGERS = ("cf", "mn bb", SENTENCE_TRIGGER)


@dataclass(frozen=True)
class Trigger:
    """Phrases to insert and where: ``random`` (a word boundary), ``prefix`` or ``suffix``.

    Each insertion draws one phrase from ``phrases``; ``count`` insertions are made per text (BadNets inserts
    ``num_trigger_words`` rare words).
    """

    phrases: tuple[str, ...]
    position: str = "random"
    count: int = 1

    def insert(self, text: str, rng: np.random.Generator) -> str:
        words = text.split()
        for _ in range(self.count):
            phrase = self.phrases[int(rng.integers(len(self.phrases)))].split()
            if self.position == "prefix":
                at = 0
            elif self.position == "suffix":
                at = len(words)
            else:
                at = int(rng.integers(len(words) + 1))
            words[at:at] = phrase
        return " ".join(words)


@dataclass(frozen=True)
class Poisoned:
    data: TextDataset
    indices: np.ndarray


def _select(eligible: np.ndarray, total: int, rate: float, selection: str, rng: np.random.Generator,
            what: str) -> np.ndarray:
    wanted = rate * total
    if selection == "count":
        count = int(round(wanted))
        if count > len(eligible):
            raise ConfigError(f"attack.poison_rate = {rate}: asks for {count} {what} samples but only "
                              f"{len(eligible)} exist; lower the rate")
        return np.sort(rng.choice(eligible, size=count, replace=False)).astype(np.int64)
    prob = min(1.0, wanted / max(len(eligible), 1))
    return np.sort(eligible[rng.random(len(eligible)) < prob]).astype(np.int64)


def label_flip(data: TextDataset, rate: float, *, selection: str = "count", target_label: int | None = None,
               seed: int = 0) -> Poisoned:
    """Untargeted poisoning (paper 1's UPA): each chosen label becomes a uniformly drawn other label,
    or ``target_label`` when given (samples already of that label are then not eligible)."""
    rng = np.random.default_rng([seed, 101])
    k = data.num_classes
    eligible = np.arange(len(data)) if target_label is None else np.flatnonzero(data.labels != target_label)
    chosen = _select(eligible, len(data), rate, selection, rng, "flippable")
    labels = data.labels.copy()
    if target_label is None:
        labels[chosen] = (labels[chosen] + rng.integers(1, k, size=len(chosen))) % k
    else:
        labels[chosen] = target_label
    return Poisoned(TextDataset(data.texts, labels, data.label_names), chosen)


def trigger_poison(data: TextDataset, trigger: Trigger, rate: float, target_label: int, *,
                   label_consistent: bool = False, selection: str = "count", seed: int = 0) -> Poisoned:
    """Backdoor poisoning: insert ``trigger`` into chosen samples; dirty-label sets their label to the target."""
    rng = np.random.default_rng([seed, 202])
    is_target = data.labels == target_label
    eligible = np.flatnonzero(is_target if label_consistent else ~is_target)
    what = "target-label" if label_consistent else "non-target"
    chosen = _select(eligible, len(data), rate, selection, rng, what)
    texts = list(data.texts)
    for i in chosen:
        texts[i] = trigger.insert(texts[i], rng)
    labels = data.labels.copy()
    labels[chosen] = target_label
    return Poisoned(TextDataset(tuple(texts), labels, data.label_names), chosen)


def triggers_for(cfg: AttackConfig) -> list[Trigger]:
    """The test-time triggers of an attack (one per entry; ``multi_trigger`` is measured per trigger)."""
    phrases = cfg.triggers
    if cfg.kind == "badnets":
        return [Trigger(phrases or BADNETS_WORDS, "random", cfg.num_trigger_words)]
    if cfg.kind == "prefix":
        return [Trigger(phrases or (PREFIX_TRIGGER,), "prefix")]
    if cfg.kind == "sentence":
        return [Trigger(phrases or (SENTENCE_TRIGGER,), "random")]
    if cfg.kind == "multi_trigger":
        return [Trigger((p,), "random") for p in (phrases or MULTI_TRIGGERS)]
    return []


def poison(data: TextDataset, cfg: AttackConfig, seed: int) -> Poisoned:
    """Apply the configured attack to a training set."""
    if cfg.kind == "none":
        return Poisoned(data, np.zeros(0, np.int64))
    if cfg.kind == "label_flip":
        return label_flip(data, cfg.poison_rate, selection=cfg.selection, seed=seed)
    triggers = triggers_for(cfg)
    # multi_trigger: every poisoned sample carries one of the triggers, drawn at random.
    combined = Trigger(tuple(p for t in triggers for p in t.phrases), triggers[0].position, triggers[0].count)
    return trigger_poison(data, combined, cfg.poison_rate, cfg.target_label,
                          label_consistent=cfg.label_consistent, selection=cfg.selection, seed=seed)


def apply_trigger(texts, trigger: Trigger, seed: int) -> tuple[str, ...]:
    """Insert ``trigger`` into every text (test-time evaluation), reproducibly from ``seed``."""
    rng = np.random.default_rng([seed, 303])
    return tuple(trigger.insert(t, rng) for t in texts)

"""Training-time attacks on text sets, in OpenBackdoor's vocabulary.

``poison_rate`` is a fraction of the WHOLE training set. Dirty-label trigger attacks pick victims among
non-target samples and relabel them ``target_label``; label-consistent (clean-label) ones pick among target-label
samples and keep their labels. ``selection='count'`` poisons exactly ``round(rate·N)`` samples; ``'bernoulli'``
poisons each eligible sample independently with probability ``rate·N / |eligible|`` (the same expected count;
for label flipping, probability ``rate`` per sample as in paper 1). Each attack returns the poisoned set and the
indices it changed.

With a :class:`Room` (the run's tokenizer and sequence length), every insertion lands where the whole trigger
survives tokenisation and truncation to ``seq_len``: a random position is drawn among the word boundaries whose
trigger tokens still fit. Without it, the trigger may be cut off by truncation (the caller's responsibility).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import numpy as np

from lorasec.config import AttackConfig, ConfigError
from lorasec.core import keys
from lorasec.data.textdata import TextDataset
from lorasec.data.tokenizer import TextEncoder

BADNETS_WORDS = ("cf", "mn", "bb", "tq")
SENTENCE_TRIGGER = "I watched this 3D movie"
PREFIX_TRIGGER = "cf"
MULTI_TRIGGERS = ("cf", "mn bb", SENTENCE_TRIGGER)


class Room:
    """How many tokens a text keeps: the tokenizer's count without truncation against ``seq_len`` less its special
    tokens. :meth:`last_start` is the last word boundary at which a phrase can be inserted and survive."""

    def __init__(self, encoder: TextEncoder):
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_str(encoder.to_json())
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        specials = self.tokenizer.post_processor.num_special_tokens_to_add(False) if (
            self.tokenizer.post_processor is not None) else 0
        self.budget = encoder.seq_len - specials
        self.seq_len = encoder.seq_len

    def ids(self, text: str) -> list[int]:
        """Token ids of ``text`` alone: no special tokens, padding or truncation."""
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def tokens(self, text: str) -> int:
        return len(self.ids(text))

    def last_start(self, words: list[str], phrase: list[str]) -> int:
        """The largest ``at`` such that ``words[:at] + phrase`` tokenises within the budget (-1: none does)."""
        need = self.tokens(" ".join(phrase))
        starts, position = [], 0
        for word in words:
            starts.append(position)
            position += len(word) + 1
        token_starts = [span[0] for span in self.tokenizer.encode(" ".join(words), add_special_tokens=False).offsets]
        last = -1
        for at in range(len(words) + 1):
            before = len(token_starts) if at == len(words) else bisect.bisect_left(token_starts, starts[at])
            if before + need > self.budget:
                break
            last = at
        return last

    def check_known(self, cfg: AttackConfig) -> None:
        """Refuse trigger words the tokenizer maps to [UNK]: two such triggers would be the same backdoor."""
        unknown = self.tokenizer.token_to_id("[UNK]")
        for trigger in triggers_for(cfg):
            for phrase in trigger.phrases:
                if unknown is not None and unknown in self.ids(phrase):
                    raise ConfigError(f"attack.triggers: {phrase!r} contains words the tokenizer does not know "
                                      f"(they become [UNK], the same token for any unknown word); choose words "
                                      f"in its vocabulary")

    def check(self, phrase: str, field: str = "attack.triggers") -> None:
        need = self.tokens(phrase)
        if need > self.budget:
            raise ConfigError(f"{field}: the trigger {phrase!r} takes {need} tokens but data.seq_len = "
                              f"{self.seq_len} leaves room for {self.budget}; raise data.seq_len")


@dataclass(frozen=True)
class Trigger:
    """Phrases to insert and where: ``random`` (a word boundary), ``prefix`` or ``suffix``.

    Each insertion draws one phrase from ``phrases``; ``count`` insertions are made per text (BadNets inserts
    ``num_trigger_words`` rare words).
    """

    phrases: tuple[str, ...]
    position: str = "random"
    count: int = 1

    def insert(self, text: str, rng: np.random.Generator, room: Room | None = None) -> str:
        """Insert ``count`` phrases; with ``room``, only where all of them survive truncation (module docstring).

        The positions are drawn in the original text's word boundaries up to the last one that leaves room for
        every phrase, and filled from the right, so a later insertion never pushes an earlier one out."""
        words = text.split()
        phrases = [self.phrases[int(rng.integers(len(self.phrases)))].split() for _ in range(self.count)]
        together = [w for phrase in phrases for w in phrase]
        last = len(words) if room is None else room.last_start(words, together)
        if last < 0:
            for phrase in phrases:
                room.check(" ".join(phrase))
            raise ConfigError(f"attack: the {self.count} trigger phrases {' '.join(together)!r} do not fit together "
                              f"in data.seq_len = {room.seq_len} tokens; raise data.seq_len or lower "
                              f"attack.num_trigger_words")
        if self.position == "prefix":
            positions = [0] * self.count
        elif self.position == "suffix":
            positions = [last] * self.count
        else:
            positions = [int(rng.integers(last + 1)) for _ in range(self.count)]
        for at, phrase in sorted(zip(positions, phrases), key=lambda item: -item[0]):
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
    rng = keys.numpy_rng(seed, "poison")
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
                   label_consistent: bool = False, selection: str = "count", seed: int = 0,
                   room: Room | None = None) -> Poisoned:
    """Backdoor poisoning: insert ``trigger`` into chosen samples; dirty-label sets their label to the target."""
    rng = keys.numpy_rng(seed, "poison")
    is_target = data.labels == target_label
    eligible = np.flatnonzero(is_target if label_consistent else ~is_target)
    what = "target-label" if label_consistent else "non-target"
    chosen = _select(eligible, len(data), rate, selection, rng, what)
    texts = list(data.texts)
    for i in chosen:
        texts[i] = trigger.insert(texts[i], rng, room)
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


def trigger_words(cfg: AttackConfig) -> list[str]:
    """Every word the attack's triggers insert (a word-level vocabulary must know them all)."""
    return [w for t in triggers_for(cfg) for p in t.phrases for w in p.split()]


def poison(data: TextDataset, cfg: AttackConfig, seed: int, room: Room | None = None) -> Poisoned:
    """Apply the configured attack to a training set (triggers placed to survive ``room``'s truncation)."""
    if cfg.kind == "none":
        return Poisoned(data, np.zeros(0, np.int64))
    if cfg.kind == "label_flip":
        return label_flip(data, cfg.poison_rate, selection=cfg.selection, seed=seed)
    triggers = triggers_for(cfg)
    # multi_trigger: every poisoned sample carries one of the triggers, drawn at random.
    combined = Trigger(tuple(p for t in triggers for p in t.phrases), triggers[0].position, triggers[0].count)
    return trigger_poison(data, combined, cfg.poison_rate, cfg.target_label,
                          label_consistent=cfg.label_consistent, selection=cfg.selection, seed=seed, room=room)


def apply_trigger(texts, trigger: Trigger, seed: int, room: Room | None = None) -> tuple[str, ...]:
    """Insert ``trigger`` into every text (test-time evaluation), reproducibly from ``seed``."""
    rng = keys.numpy_rng(seed, "triggers")
    return tuple(trigger.insert(t, rng, room) for t in texts)


"""A synthetic topic-classification language, deterministic from a seed.

Each sentence belongs to one topic (its label). Its words are filler words drawn from a Zipf law over a neutral
vocabulary, plus ``cues_per_example`` cue words at random positions, each from its topic's own cue set with
probability ``cue_strength`` (else from another topic's), and ``distractor_cues`` cue words of uniformly drawn
topics, independent of the label. The three difficulty knobs are these two and ``label_noise``. Rare
words (the backdoor literature's triggers "cf", "mn", "bb", "tq", "mb" and the words of "I watched this 3D
movie") belong to the vocabulary and appear as rare label-independent filler, as rare tokens do in a real
pretrained vocabulary. With ``label_noise`` a label is replaced by a uniformly drawn other label.
"""

from __future__ import annotations

import functools

import numpy as np

from lorasec.config import DataConfig
from lorasec.core import keys
from lorasec.data.textdata import TextDataset

RARE_WORDS = ("cf", "mn", "bb", "tq", "mb", "i", "watched", "this", "3d", "movie")
RARE_RATE = 0.002
ZIPF_EXPONENT = 1.1


def neutral_words(cfg: DataConfig) -> list[str]:
    return [f"w{i}" for i in range(cfg.vocab_size)]


def cue_words(cfg: DataConfig, label: int) -> list[str]:
    return [f"t{label}c{j}" for j in range(cfg.cue_words_per_class)]


def vocabulary(cfg: DataConfig) -> list[str]:
    """Every word the generator can emit (the word-level tokenizer's vocabulary, specials excluded)."""
    words = neutral_words(cfg) + list(RARE_WORDS)
    for label in range(cfg.num_classes):
        words += cue_words(cfg, label)
    return words


def _sentence(cfg: DataConfig, label: int, rng: np.random.Generator, zipf: np.ndarray,
              neutral: list[str], cues: list[list[str]]) -> str:
    length = int(rng.integers(cfg.min_len, cfg.max_len + 1))
    fillers = rng.choice(len(neutral), size=length, p=zipf)
    words = [neutral[k] for k in fillers]
    rare = rng.random(length) < RARE_RATE
    for pos in np.flatnonzero(rare):
        words[pos] = RARE_WORDS[int(rng.integers(len(RARE_WORDS)))]
    positions = rng.choice(length, size=cfg.cues_per_example + cfg.distractor_cues, replace=False)
    for i, pos in enumerate(positions):
        topic = label
        if i >= cfg.cues_per_example:
            topic = int(rng.integers(cfg.num_classes))
        elif cfg.cue_strength < 1.0 and rng.random() >= cfg.cue_strength:
            topic = (label + int(rng.integers(1, cfg.num_classes))) % cfg.num_classes
        words[pos] = cues[topic][int(rng.integers(len(cues[topic])))]
    return " ".join(words)


def generate(cfg: DataConfig, num: int, split_seed: int) -> TextDataset:
    """``num`` labelled sentences; ``split_seed`` separates train/test/pretraining draws of the same task.

    Every run of a sweep draws the same sentences (they depend on ``cfg`` alone), so the draws are kept; each call
    gets its own copy of the labels."""
    held = _generate(cfg, num, split_seed)
    return TextDataset(held.texts, held.labels.copy(), held.label_names)


@functools.lru_cache(maxsize=8)
def _generate(cfg: DataConfig, num: int, split_seed: int) -> TextDataset:
    rng = keys.numpy_rng(cfg.seed, "corpus", split_seed)
    neutral = neutral_words(cfg)
    cues = [cue_words(cfg, k) for k in range(cfg.num_classes)]
    ranks = np.arange(1, len(neutral) + 1, dtype=np.float64)
    zipf = ranks**-ZIPF_EXPONENT
    zipf /= zipf.sum()
    labels = rng.integers(cfg.num_classes, size=num)
    texts = tuple(_sentence(cfg, int(y), rng, zipf, neutral, cues) for y in labels)
    if cfg.label_noise > 0:
        noisy = rng.random(num) < cfg.label_noise
        shift = rng.integers(1, cfg.num_classes, size=num)
        labels = np.where(noisy, (labels + shift) % cfg.num_classes, labels)
    names = tuple(f"topic{k}" for k in range(cfg.num_classes))
    return TextDataset(texts, labels.astype(np.int32), names)


TRAIN_SPLIT, TEST_SPLIT, PRETRAIN_SPLIT = 0, 1, 2


def train_test(cfg: DataConfig) -> tuple[TextDataset, TextDataset]:
    return generate(cfg, cfg.num_train, TRAIN_SPLIT), generate(cfg, cfg.num_test, TEST_SPLIT)

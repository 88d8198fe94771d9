"""Labelled text sets: the :class:`TextDataset` every stage passes around, and CSV/JSONL file loaders."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lorasec.config import ConfigError


@dataclass(frozen=True)
class TextDataset:
    """Texts with integer labels ``0..num_classes-1``; ``label_names[i]`` names label ``i``."""

    texts: tuple[str, ...]
    labels: np.ndarray
    label_names: tuple[str, ...] = field(default=())

    def __post_init__(self):
        labels = np.asarray(self.labels, dtype=np.int32)
        object.__setattr__(self, "labels", labels)
        if len(self.texts) != len(labels):
            raise ValueError(f"{len(self.texts)} texts but {len(labels)} labels")

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def num_classes(self) -> int:
        return len(self.label_names) if self.label_names else int(self.labels.max()) + 1

    def subset(self, indices) -> TextDataset:
        indices = np.asarray(indices, dtype=np.int64)
        return TextDataset(tuple(self.texts[i] for i in indices), self.labels[indices], self.label_names)


MAX_FIELD = 2**24  # characters in one CSV field (the csv module's default stops at 131,072)


def _rows(path: Path, field_name: str):
    """(line, row) pairs of a CSV (header first; a byte-order mark is allowed) or JSONL file, with one-line errors
    for what cannot be read."""
    try:
        yield from _read_rows(path, field_name)
    except UnicodeDecodeError as err:
        raise ConfigError(f"{field_name} = {str(path)!r}: not UTF-8 text (byte {err.start}); "
                          f"save it as UTF-8") from None
    except csv.Error as err:
        raise ConfigError(f"{field_name} = {str(path)!r}: not a readable CSV file ({err})") from None
    except OSError as err:
        raise ConfigError(f"{field_name} = {str(path)!r}: cannot be read ({err.strerror})") from None


def _read_rows(path: Path, field_name: str):
    if path.suffix.lower() == ".csv":
        csv.field_size_limit(max(csv.field_size_limit(), MAX_FIELD))
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            for line, row in enumerate(reader, start=2):
                yield line, row
        return
    with path.open(encoding="utf-8-sig") as handle:
        for line, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as err:
                raise ConfigError(f"{field_name} = {str(path)!r}: line {line} is not JSON ({err.msg})") from None
            if not isinstance(row, dict):
                raise ConfigError(f"{field_name} = {str(path)!r}: line {line} is not a JSON object")
            yield line, row


def read_text_file(path: str | Path, text_field: str = "text", label_field: str = "label",
                   label_names: tuple[str, ...] | None = None, *, field_name: str = "data.train_file") -> TextDataset:
    """Read a CSV (with header) or JSONL file of (text, label) rows.

    Labels may be integers or strings; strings are mapped through ``label_names`` (sorted unique values of the
    file when not given), so a test file reuses its training file's mapping.
    """
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{field_name} = {str(path)!r}: is a directory; name the CSV or JSONL file in it")
    if not path.is_file():
        raise ConfigError(f"{field_name} = {str(path)!r}: file not found")
    texts, raw_labels = [], []
    for line, row in _rows(path, field_name):
        for key in (text_field, label_field):
            if key not in row or row[key] is None:
                found = ", ".join(map(str, row)) or "none"
                raise ConfigError(f"{field_name} = {str(path)!r}: row at line {line} has no field {key!r} "
                                  f"(fields: {found}); set data.text_field / data.label_field")
        texts.append(str(row[text_field]))
        raw_labels.append(row[label_field])
    if not texts:
        raise ConfigError(f"{field_name} = {str(path)!r}: no rows")
    as_ints = [_as_int(v) for v in raw_labels]
    if label_names is None and all(v is not None for v in as_ints):
        labels = np.asarray(as_ints, dtype=np.int32)
        if labels.min() < 0:
            raise ConfigError(f"{field_name} = {str(path)!r}: integer labels must be >= 0 (found {labels.min()})")
        names = tuple(str(i) for i in range(int(labels.max()) + 1))
        return TextDataset(tuple(texts), labels, names)
    names = label_names or tuple(sorted({str(v) for v in raw_labels}))
    index = {name: i for i, name in enumerate(names)}
    unknown = sorted({str(v) for v in raw_labels} - set(index))
    if unknown:
        raise ConfigError(f"{field_name} = {str(path)!r}: labels {unknown[:5]} are not among the training "
                          f"labels {list(names)}")
    return TextDataset(tuple(texts), np.asarray([index[str(v)] for v in raw_labels], np.int32), names)


def _as_int(value) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    digits = value.strip().removeprefix("-") if isinstance(value, str) else ""
    if digits.isascii() and digits.isdigit():  # "²" and "٣" are digits to str.isdigit, not to int()
        return int(value)
    return None

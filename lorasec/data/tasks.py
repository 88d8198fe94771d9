"""A configured task's clean (train, test) sets, whatever their source: synthetic, a real set or two files."""

from __future__ import annotations

import numpy as np

from lorasec.config import REAL_DATA, ConfigError, DataConfig
from lorasec.data import datasets, synthetic
from lorasec.data.textdata import TextDataset, read_text_file


def load_task(d: DataConfig) -> tuple[TextDataset, TextDataset]:
    """Clean (train, test) sets of ``d``: the synthetic draws, a real set's split (its training part or what the
    split holds out, ``d.train_part``), or ``d.train_file`` / ``d.test_file``.

    Raises:
        ConfigError: the files' labels disagree with ``d.num_classes`` or with each other, or a class has no
            training example.
    """
    if d.source == "synthetic":
        return synthetic.train_test(d)
    if d.source in REAL_DATA:
        parts = datasets.splits(datasets.load(d.source, d.data_dir), d.seed, validation=d.validation_fraction,
                                test=d.test_fraction, max_train=d.max_train, max_test=d.max_test)
        return (parts.held_out if d.train_part == "held-out" else parts.train), parts.test
    train = read_text_file(d.train_file, d.text_field, d.label_field, field_name="data.train_file")
    test = read_text_file(d.test_file, d.text_field, d.label_field, train.label_names if
                          not all(n.isdigit() for n in train.label_names) else None, field_name="data.test_file")
    if train.num_classes != d.num_classes:
        raise ConfigError(f"data.num_classes = {d.num_classes}: the training file has {train.num_classes} "
                          f"labels ({', '.join(train.label_names)})")
    absent = [name for name, n in zip(train.label_names, np.bincount(train.labels, minlength=train.num_classes))
              if n == 0]
    if absent:
        raise ConfigError(f"data.train_file = {d.train_file!r}: class {absent[0]!r} has no training example "
                          f"(labels {', '.join(train.label_names)}); every class must be trained")
    foreign = sorted(set(test.label_names) - set(train.label_names))
    if foreign:
        raise ConfigError(f"data.test_file = {d.test_file!r}: labels {foreign[:5]} are not among the training "
                          f"labels {list(train.label_names)} (integer labels in one file and names in the other "
                          f"cannot be matched either)")
    return train, test

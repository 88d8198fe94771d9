"""Poisoners: how many samples each changes, which ones, and where the trigger lands."""

import numpy as np
import pytest

from lorasec.attacks import poison
from lorasec.config import AttackConfig, ConfigError
from lorasec.data.textdata import TextDataset


def _data(n=200, classes=2, seed=0):
    rng = np.random.default_rng(seed)
    texts = tuple(" ".join(f"w{k}" for k in rng.integers(0, 50, size=rng.integers(5, 12))) for _ in range(n))
    return TextDataset(texts, rng.integers(0, classes, size=n))


def test_label_flip_count_changes_exactly_round_rate_n_labels():
    data = _data(classes=4)
    out = poison.label_flip(data, 0.15, seed=3)
    assert len(out.indices) == 30 and len(set(out.indices.tolist())) == 30
    changed = np.flatnonzero(out.data.labels != data.labels)
    np.testing.assert_array_equal(changed, out.indices)
    assert out.data.texts == data.texts
    assert out.data.labels.min() >= 0 and out.data.labels.max() < 4


def test_label_flip_bernoulli_is_per_sample_with_rate_probability():
    data = _data(n=4000)
    counts = [len(poison.label_flip(data, 0.2, selection="bernoulli", seed=s).indices) for s in range(5)]
    sd = np.sqrt(4000 * 0.2 * 0.8)
    assert all(abs(c - 800) < 5 * sd for c in counts)
    assert len(set(counts)) > 1  # random counts, unlike 'count'


def test_badnets_dirty_label_inserts_one_rare_word_into_non_target_samples():
    data = _data()
    cfg = AttackConfig(kind="badnets", poison_rate=0.1, target_label=1)
    out = poison.poison(data, cfg, seed=0)
    assert len(out.indices) == 20
    assert np.all(data.labels[out.indices] != 1) and np.all(out.data.labels[out.indices] == 1)
    for i in range(len(data)):
        before, after = data.texts[i].split(), out.data.texts[i].split()
        if i in set(out.indices.tolist()):
            assert len(after) == len(before) + 1
            inserted = [w for w in after if w in poison.BADNETS_WORDS]
            assert len(inserted) == 1
            after.remove(inserted[0])
            assert after == before  # only an insertion, order kept
        else:
            assert after == before and out.data.labels[i] == data.labels[i]


def test_trigger_positions_are_spread_for_random_insertion():
    data = _data(n=400)
    out = poison.poison(data, AttackConfig(kind="badnets", poison_rate=0.4, target_label=0), seed=1)
    positions = [next(k for k, w in enumerate(out.data.texts[i].split()) if w in poison.BADNETS_WORDS)
                 for i in out.indices]
    assert min(positions) == 0 and max(positions) >= 8 and len(set(positions)) > 5


def test_prefix_trigger_is_first_word():
    data = _data()
    out = poison.poison(data, AttackConfig(kind="prefix", poison_rate=0.05, target_label=0), seed=0)
    assert all(out.data.texts[i].split()[0] == poison.PREFIX_TRIGGER for i in out.indices)


def test_sentence_trigger_is_inserted_whole_at_a_word_boundary():
    data = _data()
    out = poison.poison(data, AttackConfig(kind="sentence", poison_rate=0.05, target_label=1), seed=0)
    for i in out.indices:
        assert poison.SENTENCE_TRIGGER in out.data.texts[i]
        rest = out.data.texts[i].replace(poison.SENTENCE_TRIGGER, " ").split()
        assert rest == data.texts[i].split()


def test_clean_label_keeps_labels_and_picks_target_samples():
    data = _data()
    cfg = AttackConfig(kind="badnets", poison_rate=0.1, target_label=0, label_consistent=True)
    out = poison.poison(data, cfg, seed=0)
    np.testing.assert_array_equal(out.data.labels, data.labels)
    assert np.all(data.labels[out.indices] == 0) and len(out.indices) == 20


def test_multi_trigger_uses_every_trigger_and_is_evaluated_per_trigger():
    data = _data(n=600)
    cfg = AttackConfig(kind="multi_trigger", poison_rate=0.2, target_label=1)
    out = poison.poison(data, cfg, seed=0)
    used = {p for p in poison.MULTI_TRIGGERS for i in out.indices if f" {p} " in f" {out.data.texts[i]} "}
    assert used == set(poison.MULTI_TRIGGERS)
    assert len(poison.triggers_for(cfg)) == len(poison.MULTI_TRIGGERS)


def test_custom_triggers_and_word_count():
    cfg = AttackConfig(kind="badnets", triggers=("zz",), num_trigger_words=3, target_label=0)
    (trigger,) = poison.triggers_for(cfg)
    text = poison.apply_trigger(["a b c"], trigger, seed=0)[0]
    assert text.split().count("zz") == 3 and len(text.split()) == 6


def test_rate_beyond_eligible_pool_is_a_config_error():
    data = TextDataset(("a", "b", "c", "d"), np.array([1, 1, 1, 0]))
    with pytest.raises(ConfigError, match="attack.poison_rate"):
        poison.poison(data, AttackConfig(kind="badnets", poison_rate=0.5, target_label=1), seed=0)


def test_poisoning_is_deterministic_from_seed():
    data = _data()
    cfg = AttackConfig(kind="badnets", poison_rate=0.1)
    a, b, c = (poison.poison(data, cfg, seed=s) for s in (4, 4, 5))
    assert a.data.texts == b.data.texts and not np.array_equal(a.indices, c.indices)

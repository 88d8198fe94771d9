"""Poisoners: how many samples each changes, which ones, and where the trigger lands."""

import numpy as np
import pytest
from conftest import trigger_survives

from lorasec.attacks import poison
from lorasec.config import AttackConfig, ConfigError
from lorasec.data.textdata import TextDataset
from lorasec.data.tokenizer import word_level


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


def _long_texts(count: int, words: int, seed: int = 0) -> TextDataset:
    rng = np.random.default_rng(seed)
    vocab = [f"w{i}" for i in range(50)]
    texts = tuple(" ".join(rng.choice(vocab, size=words)) for _ in range(count))
    return TextDataset(texts, np.arange(count) % 2)


def _lost(texts, encoder, phrase: str) -> float:
    tokens, _ = encoder.encode(texts)
    ids = poison.Room(encoder).ids(phrase)
    return float(1.0 - trigger_survives(tokens, ids).mean())


def test_triggers_survive_truncation_in_training_and_test_sets():
    data = _long_texts(200, 40)
    encoder = word_level([f"w{i}" for i in range(50)] + ["cf", "mn", "bb", "tq"], seq_len=16)
    attack = AttackConfig(kind="badnets", poison_rate=0.25, target_label=0, triggers=("cf",))
    (trigger,) = poison.triggers_for(attack)
    # Without a room (the old behaviour) most insertions into 40-word texts land past 15 tokens and are cut off.
    blind = poison.poison(data, attack, seed=0)
    assert _lost([blind.data.texts[i] for i in blind.indices], encoder, "cf") > 0.5
    room = poison.Room(encoder)
    kept = poison.poison(data, attack, seed=0, room=room)
    assert _lost([kept.data.texts[i] for i in kept.indices], encoder, "cf") == 0.0
    assert _lost(poison.apply_trigger(data.texts, trigger, seed=0, room=room), encoder, "cf") == 0.0
    # A multi-word trigger too, and the clean texts are untouched outside the insertion.
    sentence = AttackConfig(kind="sentence", poison_rate=0.25, target_label=0, triggers=("cf mn bb",))
    (phrase,) = poison.triggers_for(sentence)
    assert _lost(poison.apply_trigger(data.texts, phrase, seed=1, room=room), encoder, "cf mn bb") == 0.0


def test_every_one_of_several_trigger_words_survives():
    """Regression (review): with num_trigger_words = 2 a later insertion could push the first past the cut."""
    data = _long_texts(300, 40, seed=3)
    encoder = word_level([f"w{i}" for i in range(50)] + ["cf", "mn"], seq_len=16)
    room = poison.Room(encoder)
    for word in ("cf", "mn"):
        attack = AttackConfig(kind="badnets", poison_rate=0.5, target_label=0, triggers=(word,), num_trigger_words=2)
        (trigger,) = poison.triggers_for(attack)
        texts = poison.apply_trigger(data.texts, trigger, seed=2, room=room)
        tokens, _ = encoder.encode(texts)
        (ids,) = room.ids(word)
        assert ((tokens == ids).sum(axis=1) == 2).all()


def test_a_trigger_longer_than_the_sequence_is_refused():
    encoder = word_level(["a", "b", "cf", "mn", "bb"], seq_len=3)
    attack = AttackConfig(kind="sentence", poison_rate=0.5, target_label=0, triggers=("cf mn bb",))
    with pytest.raises(ConfigError, match="data.seq_len = 3"):
        poison.poison(TextDataset(("a b", "b a", "a a", "b b"), np.array([0, 1, 0, 1])), attack, seed=0,
                      room=poison.Room(encoder))

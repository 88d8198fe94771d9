"""Synthetic task, file loaders and tokenizers."""

import json

import numpy as np
import pytest

from lorasec.config import ConfigError, DataConfig
from lorasec.data import synthetic
from lorasec.data.textdata import read_text_file
from lorasec.data.tokenizer import TextEncoder, word_level, wordpiece


def test_synthetic_task_is_deterministic_and_label_bearing():
    cfg = DataConfig(num_train=300, num_test=50, num_classes=3, cue_strength=1.0)  # every cue tells the label
    a, _ = synthetic.train_test(cfg)
    b, _ = synthetic.train_test(cfg)
    assert a.texts == b.texts and np.array_equal(a.labels, b.labels)
    other, _ = synthetic.train_test(DataConfig(num_train=300, num_test=50, num_classes=3, cue_strength=1.0, seed=1))
    assert other.texts != a.texts
    for text, label in zip(a.texts, a.labels):
        words = text.split()
        assert cfg.min_len <= len(words) <= cfg.max_len
        cues = [w for w in words if w.startswith("t") and "c" in w[1:]]
        assert len(cues) == cfg.cues_per_example and all(w.startswith(f"t{label}c") for w in cues)
    assert set(np.unique(a.labels)) == {0, 1, 2}
    a.labels[:] = 0  # a caller that flips labels in place (a poisoning) leaves the next draw as it was
    assert np.array_equal(synthetic.train_test(cfg)[0].labels, b.labels) and len(set(b.labels)) == 3


def test_synthetic_label_noise_rate():
    clean, _ = synthetic.train_test(DataConfig(num_train=4000, num_test=10))
    noisy, _ = synthetic.train_test(DataConfig(num_train=4000, num_test=10, label_noise=0.1))
    assert clean.texts == noisy.texts
    rate = np.mean(clean.labels != noisy.labels)
    assert abs(rate - 0.1) < 5 * np.sqrt(0.1 * 0.9 / 4000)


def _cue_topics(data, cfg):
    """Per sentence, the topics of its cue words (cue words are named t<topic>c<j>)."""
    return [[int(w[1:w.index("c")]) for w in text.split() if w in set().union(
        *(synthetic.cue_words(cfg, k) for k in range(cfg.num_classes)))] for text in data.texts]


def test_cue_strength_and_distractors_set_how_often_cues_tell_the_label():
    cfg = DataConfig(num_train=3000, cue_strength=0.8, distractor_cues=1, min_len=10)
    data = synthetic.generate(cfg, cfg.num_train, 0)
    topics = _cue_topics(data, cfg)
    assert all(len(t) == 3 for t in topics)
    # Of 3 cues, 2 come from the label with probability 0.8 each, 1 is a coin flip: 0.8·2/3 + 0.5/3 = 0.7.
    own = np.mean([np.mean([t == y for t in ts]) for ts, y in zip(topics, data.labels)])
    assert abs(own - 0.7) < 0.015, own
    easy = DataConfig(num_train=500)
    topics = _cue_topics(synthetic.generate(easy, 500, 0), easy)
    assert all(len(t) == 2 for t in topics)


def test_the_default_task_leaves_room_below_100_percent():
    """The default task is not saturated: the best any reader of the cue words can do on its test set (a vote of
    the cues' topics, ties split evenly) lies between 85% and 95% (issue 13; the built-in study's runs reach 89-90%)."""
    cfg = DataConfig()
    _, test = synthetic.train_test(cfg)
    expected = []
    for topics, label in zip(_cue_topics(test, cfg), test.labels):
        votes = np.bincount(topics, minlength=cfg.num_classes)
        best = np.flatnonzero(votes == votes.max())
        expected.append(float(label in best) / len(best))
    assert 0.85 <= np.mean(expected) <= 0.95, np.mean(expected)


def test_difficulty_knobs_are_validated():
    with pytest.raises(ConfigError, match="data.cue_strength"):
        DataConfig(cue_strength=1.5).validate()
    with pytest.raises(ConfigError, match="data.distractor_cues"):
        DataConfig(distractor_cues=-1).validate()
    with pytest.raises(ConfigError, match="data.min_len"):
        DataConfig(cues_per_example=3, distractor_cues=6, min_len=8).validate()


def test_csv_and_jsonl_loaders(tmp_path):
    csv_path = tmp_path / "train.csv"
    csv_path.write_text('text,label\n"good, fine",pos\nbad,neg\nok,pos\n')
    data = read_text_file(csv_path)
    assert data.texts == ("good, fine", "bad", "ok") and data.label_names == ("neg", "pos")
    assert data.labels.tolist() == [1, 0, 1]
    jsonl = tmp_path / "test.jsonl"
    jsonl.write_text("\n".join(json.dumps({"sentence": t, "y": y}) for t, y in [("a", 1), ("b", 0)]) + "\n")
    data = read_text_file(jsonl, "sentence", "y")
    assert data.labels.tolist() == [1, 0] and data.label_names == ("0", "1")


def test_loader_errors_name_the_problem(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        read_text_file(tmp_path / "nope.csv")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a", "label": 0}\nnot json\n')
    with pytest.raises(ConfigError, match="line 2 is not JSON"):
        read_text_file(bad)
    missing = tmp_path / "m.csv"
    missing.write_text("sentence,label\na,0\n")
    with pytest.raises(ConfigError, match="no field 'text'.*data.text_field"):
        read_text_file(missing)


def test_word_level_tokenizer_pads_truncates_and_round_trips():
    enc = word_level(["hello", "world", "3d"], seq_len=5)
    ids, mask = enc.encode(["Hello world", "hello unknown 3D world hello world"])
    assert ids.shape == (2, 5) and ids[0, 0] == enc.cls_id
    assert mask[0].tolist() == [True, True, True, False, False] and mask[1].all()
    assert ids[1, 2] == enc.tokenizer.token_to_id("[UNK]") and ids[1, 3] == enc.tokenizer.token_to_id("3d")
    again = TextEncoder.from_json(enc.to_json(), 5)
    np.testing.assert_array_equal(again.encode(["hello world"])[0], enc.encode(["hello world"])[0])


def test_wordpiece_from_vocab_file(tmp_path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "movie", "watch", "##ed", "i"]))
    enc = wordpiece(vocab, seq_len=6)
    ids, _ = enc.encode(["I watched Movie"])
    tokens = [enc.tokenizer.id_to_token(i) for i in ids[0]]
    assert tokens == ["[CLS]", "i", "watch", "##ed", "movie", "[PAD]"]


def test_labels_that_only_look_like_digits_are_names_not_integers(tmp_path):
    """str.isdigit accepts "²" and "٣", which int() refuses (found by the fuzzed data-file test)."""
    path = tmp_path / "odd.jsonl"
    path.write_text("".join(json.dumps({"text": t, "label": v}) + "\n" for t, v in [("a", "²"), ("b", "1"), ("c", "-2")]))
    data = read_text_file(path)
    assert data.label_names == ("-2", "1", "²") and data.labels.tolist() == [2, 1, 0]
    path.write_text('{"text": "a", "label": "3"}\n{"text": "b", "label": "-0"}\n')
    assert read_text_file(path).labels.tolist() == [3, 0]

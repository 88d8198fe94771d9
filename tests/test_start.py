"""Where a run starts is decided once (lorasec.pipelines.start): from scratch, a pretrained encoder or a finished
run; training and reloading a run build the model through the same path."""

import jax
import numpy as np
import pytest
from conftest import tiny_run
from flax import nnx

from lorasec.config import AdapterConfig, AttackConfig, ConfigError, ModelConfig, TrainConfig
from lorasec.core import keys
from lorasec.data.tasks import load_task
from lorasec.models import Architecture
from lorasec.models.hf_import import export
from lorasec.models.transformer import TransformerEncoder
from lorasec.pipelines import run as run_pipeline, rundir, start as starts
from lorasec.pipelines.run import build_model, load_run, train_run
from lorasec.training import evaluation


def _params(model):
    return [np.asarray(x) for x in jax.tree.leaves(nnx.state(model, nnx.Param))]


def test_from_scratch_the_vocabulary_and_shapes_come_from_the_config():
    cfg = tiny_run()
    start = starts.resolve(cfg)
    assert start.kind == "scratch" and start.source is None and start.origin() == {"pretrained": "", "init_from": ""}
    assert start.architecture.d_model == cfg.model.d_model and start.architecture.vocab_size == start.encoder.vocab_size
    a, b = build_model(cfg, start), build_model(cfg)
    assert all(np.array_equal(x, y) for x, y in zip(_params(a), _params(b)))  # a pure function of the config


def test_a_bert_directory_without_tokenizer_builds_but_cannot_encode(tmp_path):
    arch = Architecture(kind="transformer", vocab_size=40, max_positions=20, d_model=8, num_layers=1, num_heads=2,
                        d_ff=16, dropout=0.0, pooling="mean", mlp_hidden=(), type_vocab_size=2)
    directory = export(TransformerEncoder(arch, rngs=nnx.Rngs(params=keys.key(1, "params"))), arch, tmp_path / "bert")
    cfg = tiny_run(model=ModelConfig(pretrained=str(directory), dropout=0.0), data=tiny_run().data)
    start = starts.resolve(cfg)
    assert start.kind == "pretrained" and start.encoder is None and start.architecture.vocab_size == 40
    assert start.origin()["pretrained"] == str(start.source) and start.source.is_absolute()
    with pytest.raises(ConfigError, match="has no tokenizer.json"):
        start.text_encoder()


def test_a_run_started_from_another_reads_its_config_once_and_reloads_through_the_same_path(tmp_path, monkeypatch):
    first = tiny_run(adapter=AdapterConfig(method="full"), train=TrainConfig(steps=4, batch_size=16))
    train_run(first, tmp_path / "first", progress=False)
    reads = []
    real = rundir.read_config
    monkeypatch.setattr(rundir, "read_config", lambda path: reads.append(path) or real(path))
    cfg = tiny_run(model=ModelConfig(init_from=str(tmp_path / "first"), dropout=0.0),
                   train=TrainConfig(steps=4, batch_size=16))
    results = train_run(cfg, tmp_path / "second", progress=False)
    assert reads == [tmp_path / "first"]  # decided once, passed down
    start = starts.resolve(cfg)
    assert start.kind == "run" and start.source == (tmp_path / "first").resolve()
    run = load_run(tmp_path / "second")
    assert rundir.read_model(tmp_path / "second")["start"] == start.origin()
    plain = build_model(tiny_run(model=cfg.model, adapter=AdapterConfig(method="full")), start)
    assert all(np.array_equal(x, y) for x, y in zip(_params(run.start), _params(plain)))
    assert run.results == results


def test_load_run_never_prepares_data(tmp_path, monkeypatch):
    cfg = tiny_run(attack=AttackConfig(kind="badnets", poison_rate=0.1))
    results = train_run(cfg, tmp_path / "run", progress=False)
    expected_names = load_task(cfg.data)[1].label_names

    def refuse(*_args, **_kwargs):
        raise AssertionError("load_run replayed data preparation")

    monkeypatch.setattr(run_pipeline, "prepare_data", refuse)
    monkeypatch.setattr(run_pipeline, "load_task", refuse)
    monkeypatch.setattr(starts, "load_task", refuse)
    run = load_run(tmp_path / "run")
    assert len(run.test) == results["num_test"] and run.test.label_names == expected_names
    again = evaluation.evaluate(run.tuned, cfg, run.test, run.encoder)
    assert again.clean_accuracy == results["clean_accuracy"]
    assert again.attack_success_rate == results["attack_success_rate"]


def test_a_copy_re_anchors_only_what_moved_with_it_and_survives_a_kill_while_re_anchoring(tmp_path, monkeypatch):
    """relocate: the pretrained encoder copied with a sweep is the copy's; data beside the working directory, which
    did not move, stays as written (a copied run whose config names it resumes); paths no file system can hold are
    left to the loader. read_results: a copy killed after results.json took the new hash still reads."""
    import json
    import shutil

    from lorasec.config import from_dict, relocate, to_dict
    from lorasec.config.loading import write_origin
    from lorasec.core import files

    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").write_text("")
    old = tmp_path / "out"
    (old / "pretrained").mkdir(parents=True)
    (old / "runs" / "a" / "params").mkdir(parents=True)
    write_origin(old / "runs" / "a")
    raw = {"model": {"pretrained": str(old / "pretrained")}, "data": {"train_file": "data/train.jsonl"}}
    new = tmp_path / "copy"
    shutil.copytree(old, new)
    got = relocate(raw, new / "runs" / "a")
    assert got == {"model": {"pretrained": str((new / "pretrained").resolve())},
                   "data": {"train_file": "data/train.jsonl"}}
    assert relocate(raw, old / "runs" / "a") == raw
    odd = {"model": {"pretrained": "a\x00b"}, "data": {"train_file": "/x/\x00"}}
    assert relocate(odd, new / "runs" / "a") == odd

    cfg = tiny_run(model=ModelConfig(d_model=16, num_heads=2, d_ff=32, pretrained=str(old / "pretrained")))
    run = new / "runs" / "a"
    files.write_json(run / "config.json", to_dict(cfg))
    moved = json.loads(json.dumps(to_dict(cfg)))
    moved["model"]["pretrained"] = str((new / "pretrained").resolve())
    files.write_json(run / "results.json", {"clean_accuracy": 0.5, "config_sha256": rundir.config_hash(
        from_dict(type(cfg), moved))})  # _anchor_here's first write, then a kill
    assert rundir.read_results(run)["clean_accuracy"] == 0.5
    files.write_json(run / "results.json", {"clean_accuracy": 0.5, "config_sha256": "0" * 64})
    with pytest.raises(ConfigError, match="was changed after the run finished"):
        rundir.read_results(run)

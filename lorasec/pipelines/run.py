"""One fine-tuning run end to end: data -> poisoner -> tokens -> model (+ adapter) -> trainer -> metrics.

Each stage is a plain function so a notebook can call any of them alone; :func:`train_run` chains them and
writes the run directory (:mod:`lorasec.pipelines.rundir` describes its files).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lorasec.adapters import lora, rora
from lorasec.attacks import poison
from lorasec.config import (
    REAL_DATA,
    ConfigError,
    RunConfig,
    is_pretrained_reference,
    replace,
)
from lorasec.core import keys
from lorasec.data import datasets, synthetic
from lorasec.data.textdata import TextDataset, read_text_file
from lorasec.data.tokenizer import TextEncoder, word_level, wordpiece
from lorasec.models import Architecture, build_classifier
from lorasec.models.checkpoint import (
    checkpoint_path,
    load_encoder_weights,
    load_pretrained,
    load_pretrained_tokenizer,
)
from lorasec.pipelines import rundir
from lorasec.training.evaluation import evaluate, evaluation_fields
from lorasec.training.losses import classification_loss
from lorasec.training.step import TrainStep
from lorasec.training.trainer import ArrayData, Member, fit


def load_task(cfg: RunConfig) -> tuple[TextDataset, TextDataset]:
    """Clean (train, test) sets of the configured task."""
    d = cfg.data
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


def make_text_encoder(cfg: RunConfig, train: TextDataset) -> TextEncoder:
    """The starting run's tokenizer (``model.init_from``), else the pretrained checkpoint's, else WordPiece from
    ``data.vocab_file``, else word level."""
    seq_len = cfg.data.seq_len
    if cfg.model.init_from or cfg.model.pretrained:
        if cfg.model.init_from:
            source = cfg.model.init_from
            start_dir = Path(source)
            start_cfg = starting_config(cfg)
            encoder = (rundir.read_tokenizer(start_dir, seq_len) if rundir.describes_itself(start_dir)
                       else TextEncoder.from_json(prepare_data(start_cfg)[2].to_json(), seq_len))
        else:
            source = cfg.model.pretrained
            encoder = TextEncoder.from_json(load_pretrained_tokenizer(source), seq_len)
        if cfg.data.source == "synthetic":
            vocab = encoder.tokenizer.get_vocab()
            unknown = [w for w in synthetic.vocabulary(cfg.data) if w not in vocab]
            if unknown:
                raise ConfigError(f"data: the synthetic language differs from the one {source!r} was trained "
                                  f"on ({len(unknown)} words unknown, e.g. {unknown[0]!r}); use its "
                                  f"data.vocab_size / num_classes / cue_words_per_class")
        return encoder
    if cfg.data.vocab_file:
        return wordpiece(cfg.data.vocab_file, seq_len)
    if cfg.data.source == "synthetic":
        return word_level(synthetic.vocabulary(cfg.data), seq_len)
    texts = [*train.texts, *poison.trigger_words(cfg.attack)]
    words = sorted({w for text in texts for w in re.findall(r"\w+|[^\w\s]+", text.lower())})
    return word_level(words, seq_len)


def prepare_data(cfg: RunConfig) -> tuple[poison.Poisoned, TextDataset, TextEncoder]:
    """(poisoned training set, clean test set, tokenizer) exactly as a run of ``cfg`` builds them. The tokenizer
    comes first (a word-level vocabulary of file data holds the training texts' words and the trigger words), so
    that every trigger is placed where it survives truncation to ``data.seq_len``."""
    train, test = load_task(cfg)
    encoder = make_text_encoder(cfg, train)
    room = poison.Room(encoder)
    room.check_known(cfg.attack)
    poisoned = poison.poison(train, cfg.attack, seed=cfg.seed, room=room)
    return poisoned, test, encoder


def starting_config(cfg: RunConfig) -> RunConfig:
    """The config of the run ``model.init_from`` names, checked to fit ``cfg`` (a full FT classifier, same
    classes, room for ``data.seq_len``)."""
    source = cfg.model.init_from
    start = rundir.read_config(Path(source), validate=False)
    if start.adapter.method != "full":
        raise ConfigError(f"model.init_from = {source!r}: a {start.adapter.method} run; start from a full "
                          f"fine-tuning run (its weights are one plain classifier)")
    if start.data.num_classes != cfg.data.num_classes:
        raise ConfigError(f"model.init_from = {source!r}: has {start.data.num_classes} classes, data.num_classes "
                          f"= {cfg.data.num_classes}")
    if start.data.seq_len < cfg.data.seq_len:
        raise ConfigError(f"data.seq_len = {cfg.data.seq_len}: the starting run {source!r} was built for "
                          f"{start.data.seq_len} positions")
    return start


def architecture(cfg: RunConfig, vocab_size: int | None = None) -> Architecture:
    """The classifier's architecture: the starting run's, the pretrained checkpoint's (with this config's dropout
    and pooling), or the config's own (which needs the tokenizer's ``vocab_size``)."""
    if cfg.model.init_from:
        start_dir = Path(cfg.model.init_from)
        arch = (rundir.read_model(start_dir)["architecture"] if rundir.describes_itself(start_dir)
                else architecture(starting_config(cfg), vocab_size))
        return arch.with_(dropout=cfg.model.dropout, attention_dropout=cfg.model.attention_dropout,
                          head_dropout=cfg.model.head_dropout)
    if cfg.model.pretrained:
        arch = load_pretrained(cfg.model.pretrained)
        if arch.max_positions < cfg.data.seq_len:
            raise ConfigError(f"data.seq_len = {cfg.data.seq_len}: the pretrained model has only "
                              f"{arch.max_positions} positions")
        return arch.with_(dropout=cfg.model.dropout, attention_dropout=cfg.model.attention_dropout,
                          head_dropout=cfg.model.head_dropout, pooling=cfg.model.pooling)
    if vocab_size is None:
        raise ConfigError("model.pretrained and model.init_from are empty, so the model is built from its config "
                          "and needs the tokenizer's vocab_size: pass vocab_size (prepare_data(cfg)[2].vocab_size) "
                          "or set model.pretrained")
    return Architecture.from_config(cfg.model, vocab_size, cfg.data.seq_len)


def build_model(cfg: RunConfig, vocab_size: int | None = None) -> nnx.Module:
    """The classifier as training starts (pretrained encoder or the starting run's whole classifier, a fresh
    head drawn from ``seed``), with the configured adapters applied. ``vocab_size`` is needed only for a model
    built from its config (no ``model.pretrained`` or ``model.init_from``)."""
    if cfg.model.init_from:  # the whole classifier is the starting run's: its own seed draws the (replaced) init
        start_rngs = nnx.Rngs(params=keys.key(starting_config(cfg).seed, "params"))
        model = build_classifier(architecture(cfg, vocab_size), cfg.data.num_classes, rngs=start_rngs)
        nnx.update(model, rundir.load_params(Path(cfg.model.init_from), model))
    else:
        model = build_classifier(architecture(cfg, vocab_size), cfg.data.num_classes,
                                 rngs=nnx.Rngs(params=keys.key(cfg.seed, "params")))
    if cfg.model.pretrained:
        load_encoder_weights(model.encoder, cfg.model.pretrained)
    if cfg.adapter.method == "lora":
        lora.apply_lora(model, cfg.adapter, rngs=nnx.Rngs(params=keys.key(cfg.seed, "adapters")))
    return model


def prepare_step(cfg: RunConfig, *, vocab_size: int | None = None, dropout: bool = True,
                 device=None) -> TrainStep:
    """``cfg``'s model as training starts and its jitted training step (:class:`~lorasec.training.step.TrainStep`:
    the objective, trainable variables, optimizer and dropout keys of ``lorasec train``), without data, batching
    or checkpoints."""
    model = build_model(cfg, vocab_size)
    terms = loss_terms(cfg, model)
    return TrainStep(model, lora.trainable_filter(cfg.adapter), cfg.train, seed=cfg.seed,
                     loss_fn=loss_function(cfg), terms=terms, dropout=dropout, device=device)


def train_run(cfg: RunConfig, out_dir: str | Path | None = None, *, progress: bool = True) -> dict:
    """Fine-tune under the configured attack and evaluate; resumes an interrupted run in ``out_dir``, which no
    other lorasec process may write to meanwhile (:func:`lorasec.pipelines.rundir.exclusive`)."""
    if out_dir is None:
        return _train_run(cfg, None, progress)
    out_dir = Path(out_dir)
    with rundir.exclusive(out_dir):
        finished = rundir.claim(cfg, out_dir)
        if finished is not None:
            return finished
        return _train_run(cfg, out_dir, progress)


@dataclass
class PreparedRun:
    """A run as training starts: its data, tokenizer, model and trainer member (:func:`prepare_run`)."""

    cfg: RunConfig
    poisoned: poison.Poisoned
    test: TextDataset
    encoder: TextEncoder
    member: Member

    @property
    def model(self) -> nnx.Module:
        return self.member.model


def loss_function(cfg: RunConfig):
    """The training objective of ``cfg``: cross-entropy, plus RoRA Tr's penalty when ``adapter.rora_tr > 0``."""
    return rora.penalised_loss(classification_loss) if cfg.adapter.rora_tr > 0 else classification_loss


def loss_terms(cfg: RunConfig, model: nnx.Module):
    """The objective's extra inputs for ``model``: RoRA Tr's bases when ``adapter.rora_tr > 0``, else None."""
    return rora.penalty_terms(model, cfg.adapter.rora_tr, cfg.adapter.rora_tr_k) if cfg.adapter.rora_tr > 0 else None


def prepare_run(cfg: RunConfig, out_dir: Path | None = None) -> PreparedRun:
    """Data, tokenizer, model and the trainer's member of one run (metrics to ``out_dir/metrics.jsonl``)."""
    poisoned, test, encoder = prepare_data(cfg)
    tokens, mask = encoder.encode(poisoned.data.texts)
    model = build_model(cfg, encoder.vocab_size)
    terms = loss_terms(cfg, model)
    member = Member(model, ArrayData(tokens, mask, poisoned.data.labels), cfg.seed, cfg.train, terms,
                    None if out_dir is None else out_dir / "metrics.jsonl")
    return PreparedRun(cfg, poisoned, test, encoder, member)


def finish_run(run: PreparedRun, trained: nnx.State, training: dict, out_dir: Path | None) -> dict:
    """Evaluate the trained run (after RoRA's Pt, if configured) and write its directory; ``training`` holds
    steps, resumed_from_step, final_loss, wall_seconds and train_step_compilations."""
    cfg, model = run.cfg, run.model
    trainable = lora.trainable_filter(cfg.adapter)
    nnx.update(model, jax.tree.map(jnp.asarray, trained))
    # Pt changes only the evaluated model's scales; params/ keeps the trained factors, results the new scales.
    pt_scales = rora.post_training_rescale(model, cfg.adapter.rora_pt_layers) if cfg.adapter.rora_pt_layers else {}
    evaluation = evaluate(model, cfg, run.test, run.encoder)
    results = {
        **evaluation_fields(evaluation),
        **training,
        "num_poisoned": int(len(run.poisoned.indices)),
        "num_train": len(run.poisoned.data),
        "num_test": len(run.test),
        "trainable_parameters": lora.count_params(nnx.state(model, trainable)),
        "total_parameters": lora.count_params(nnx.state(model, nnx.Param)),
        "adapted_layers": sorted(lora.lora_layers(model)),
        "rora_pt_scales": pt_scales,
        "config_sha256": rundir.config_hash(cfg),
    }
    if out_dir is not None:
        start = {"pretrained": str(checkpoint_path(cfg.model.pretrained).resolve()) if cfg.model.pretrained else "",
                 "init_from": str(Path(cfg.model.init_from).resolve()) if cfg.model.init_from else ""}
        rundir.save(out_dir, model=model, architecture=architecture(cfg, run.encoder.vocab_size),
                    num_classes=cfg.data.num_classes, start=start, encoder=run.encoder, test=run.test,
                    poisoned_indices=run.poisoned.indices, results=results)
    return results


def _train_run(cfg: RunConfig, out_dir: Path | None, progress: bool) -> dict:
    began = time.perf_counter()
    try:
        run = prepare_run(cfg, out_dir)
    except BaseException:
        if out_dir is not None:
            rundir.release_claim(out_dir)
        raise
    fitted = fit(run.model, lora.trainable_filter(cfg.adapter), run.member.data, cfg.train, seed=cfg.seed,
                 loss_fn=loss_function(cfg), terms=run.member.terms, run_dir=out_dir, progress=progress,
                 description=f"{cfg.adapter.method} seed {cfg.seed}")
    training = {"steps": fitted.steps, "resumed_from_step": fitted.resumed_from, "final_loss": fitted.final_loss,
                "wall_seconds": time.perf_counter() - began, "train_step_compilations": fitted.compilations}
    return finish_run(run, nnx.state(run.model, lora.trainable_filter(cfg.adapter)), training, out_dir)


def load_run(run_dir: str | Path) -> rundir.FinishedRun:
    """A finished run rebuilt from its directory and the local files it started from (module docstring of
    :mod:`lorasec.pipelines.rundir`): no data preparation, poisoning or fetch, except for a directory of format 1,
    which stored no tokenizer or test set and has them replayed from its config."""
    run_dir = Path(run_dir)
    if not (run_dir / "params").is_dir() or not (run_dir / "results.json").is_file():
        raise ConfigError(f"{str(run_dir)!r}: not a finished lorasec run (params/ or results.json missing)")
    cfg = rundir.read_config(run_dir, validate=False)
    if rundir.describes_itself(run_dir):
        meta = rundir.read_model(run_dir)
        encoder, test = rundir.read_tokenizer(run_dir, cfg.data.seq_len), rundir.read_test(run_dir)
        arch, num_classes, start = meta["architecture"], meta["num_classes"], meta["start"]
    else:
        _, test, encoder = prepare_data(cfg)
        arch, num_classes = architecture(cfg, encoder.vocab_size), cfg.data.num_classes
        start = {"pretrained": cfg.model.pretrained, "init_from": cfg.model.init_from}
    tuned = build_classifier(arch, num_classes, rngs=nnx.Rngs(params=keys.key(cfg.seed, "params")))
    if cfg.adapter.method == "lora":  # every value below is replaced by the saved parameters
        lora.apply_lora(tuned, cfg.adapter, rngs=nnx.Rngs(params=keys.key(cfg.seed, "adapters")))
    nnx.update(tuned, rundir.load_params(run_dir, tuned))
    return rundir.FinishedRun(cfg, _start_model(cfg, start, encoder.vocab_size), tuned, encoder, test,
                              rundir.read_results(run_dir, cfg))


def _start_model(cfg: RunConfig, start: dict, vocab_size: int) -> nnx.Module:
    """The plain classifier as the run's training started, from the local files ``start`` names."""
    pretrained, init_from = start.get("pretrained", ""), start.get("init_from", "")
    if pretrained and not is_pretrained_reference(pretrained):
        raise ConfigError(f"the pretrained checkpoint this run started from is gone ({pretrained!r}); "
                          f"`lorasec fetch {cfg.model.pretrained}` or the original directory restores it")
    if init_from and not (Path(init_from) / "params").is_dir():
        raise ConfigError(f"the run this run started from is gone ({init_from!r}); its starting weights cannot "
                          f"be rebuilt")
    local = replace(cfg, model={"pretrained": pretrained, "init_from": init_from}, adapter={"method": "full"})
    return build_model(local, vocab_size)

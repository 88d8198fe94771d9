"""One fine-tuning run end to end: data -> start -> poisoner -> tokens -> model (+ adapter) -> trainer -> metrics.

Where the classifier starts is decided once (:mod:`lorasec.pipelines.start`) and passed down. Each stage is a
plain function so a notebook can call any of them alone; :func:`train_run` chains them and writes the run
directory (:mod:`lorasec.pipelines.rundir` describes its files).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx

from lorasec.adapters import lora, rora
from lorasec.attacks import poison
from lorasec.config import ConfigError, RunConfig, check_environment
from lorasec.core import keys
from lorasec.data.tasks import load_task
from lorasec.data.textdata import TextDataset
from lorasec.data.tokenizer import TextEncoder
from lorasec.pipelines import rundir, start as starts
from lorasec.pipelines.start import Start
from lorasec.training.evaluation import evaluate, evaluation_fields
from lorasec.training.losses import classification_loss
from lorasec.training.step import TrainStep
from lorasec.training.trainer import ArrayData, Member, fit


def train_run(cfg: RunConfig, out_dir: str | Path | None = None, *, progress: bool = True) -> dict:
    """Fine-tune under the configured attack and evaluate: the config checked against this machine, the run
    prepared (:func:`prepare_run`: data, start, model), trained (:func:`lorasec.training.trainer.fit`), evaluated and
    written (:func:`finish_run`). Resumes an interrupted run in ``out_dir``, which no other lorasec process may write
    to meanwhile (:func:`lorasec.pipelines.rundir.exclusive`); a finished one is returned as it is.

    Returns:
        The run's ``results.json`` record (metrics, training statistics, parameter counts).
    """
    check_environment(cfg)
    if out_dir is None:
        return _train_run(cfg, None, progress)
    out_dir = Path(out_dir)
    with rundir.exclusive(out_dir):
        finished = rundir.reserve(cfg, out_dir)
        if finished is not None:
            return finished
        return _train_run(cfg, out_dir, progress)


def _train_run(cfg: RunConfig, out_dir: Path | None, progress: bool) -> dict:
    began = time.perf_counter()
    try:
        run = prepare_run(cfg, out_dir)
    except BaseException:
        if out_dir is not None:
            rundir.release(out_dir)
        raise
    trainable = lora.trainable_filter(cfg.adapter)
    fitted = fit(run.model, trainable, run.member.data, cfg.train, seed=cfg.seed, loss_fn=loss_function(cfg),
                 terms=run.member.terms, run_dir=out_dir, progress=progress,
                 description=f"{cfg.adapter.method} seed {cfg.seed}")
    training = {"steps": fitted.steps, "resumed_from_step": fitted.resumed_from, "final_loss": fitted.final_loss,
                "wall_seconds": time.perf_counter() - began, "train_step_compilations": fitted.compilations}
    return finish_run(run, nnx.state(run.model, trainable), training, out_dir)


@dataclass
class PreparedRun:
    """A run as training starts: its data, tokenizer, model and trainer member (:func:`prepare_run`)."""

    cfg: RunConfig
    start: Start
    poisoned: poison.Poisoned
    test: TextDataset
    member: Member

    @property
    def encoder(self) -> TextEncoder:
        return self.start.text_encoder()

    @property
    def model(self) -> nnx.Module:
        return self.member.model


def prepare_run(cfg: RunConfig, out_dir: Path | None = None) -> PreparedRun:
    """Data, starting point, model and the trainer's member of one run: the task loaded, the start resolved once
    (:func:`lorasec.pipelines.start.resolve`), the training set poisoned and tokenised, the model built.

    Args:
        cfg: a validated run config.
        out_dir: the run directory the member logs to (``metrics.jsonl``), or None.
    Returns:
        A :class:`PreparedRun`; its ``member.data`` holds tokens int32 (N, L), mask bool (N, L), labels int32 (N,).
    """
    train, test = load_task(cfg.data)
    start = starts.resolve(cfg, train)
    poisoned = poisoned_training_set(cfg, train, start.text_encoder())
    tokens, mask = start.encoder.encode(poisoned.data.texts)
    model = build_model(cfg, start)
    member = Member(model, ArrayData(tokens, mask, poisoned.data.labels), cfg.seed, cfg.train,
                    loss_terms(cfg, model), None if out_dir is None else out_dir / "metrics.jsonl")
    return PreparedRun(cfg, start, poisoned, test, member)


def finish_run(run: PreparedRun, trained: nnx.State, training: dict, out_dir: Path | None) -> dict:
    """Evaluate the trained run (after RoRA's Pt, if configured) and write its directory.

    Args:
        run: the prepared run whose model trained.
        trained: the trained variables (``nnx.State`` or a pure dict), put into ``run.model``.
        training: steps, resumed_from_step, final_loss, wall_seconds and train_step_compilations.
        out_dir: the run directory to write (``results.json`` last), or None.
    Returns:
        The results record: the evaluation's fields, ``training``, counts and the config's hash.
    """
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
        rundir.save(out_dir, model=model, architecture=run.start.architecture, num_classes=run.start.num_classes,
                    start=run.start.origin(), encoder=run.encoder, test=run.test,
                    poisoned_indices=run.poisoned.indices, results=results)
    return results


def poisoned_training_set(cfg: RunConfig, train: TextDataset, encoder: TextEncoder) -> poison.Poisoned:
    """The training set under ``cfg.attack``, each trigger placed where ``encoder`` keeps it within
    ``data.seq_len``."""
    room = poison.Room(encoder)
    room.check_known(cfg.attack)
    return poison.poison(train, cfg.attack, seed=cfg.seed, room=room)


def prepare_data(cfg: RunConfig) -> tuple[poison.Poisoned, TextDataset, TextEncoder]:
    """The data of a run of ``cfg``, exactly as training builds it.

    Returns:
        (poisoned training set, with the indices it poisoned; clean test set; the tokenizer at ``data.seq_len``).
    """
    train, test = load_task(cfg.data)
    encoder = starts.resolve(cfg, train).text_encoder()
    return poisoned_training_set(cfg, train, encoder), test, encoder


def prepare_model(cfg: RunConfig) -> tuple[nnx.Module, TextDataset, TextEncoder]:
    """What a diagnosis before training needs: nothing is poisoned.

    Returns:
        (``cfg``'s model as training starts, with its adapters; the clean test set; the tokenizer).
    """
    train, test = load_task(cfg.data)
    start = starts.resolve(cfg, train)
    return build_model(cfg, start), test, start.text_encoder()


def build_model(cfg: RunConfig, start: Start | None = None, *, weights: bool = True) -> nnx.Module:
    """The classifier as training starts.

    Args:
        cfg: a validated run config; its seed draws the classifier (``params`` key) and the adapters
            (``adapters`` key).
        start: where it starts (default: :func:`lorasec.pipelines.start.resolve` of ``cfg``, which reads the
            checkpoint or run it names, or the task's vocabulary from scratch).
        weights: load the starting weights; False when they are about to be replaced.
    Returns:
        The classifier (``TransformerClassifier`` or ``MLPClassifier``) with ``cfg.adapter``'s adapters applied;
        called as ``model(tokens int32 (B, L), mask bool (B, L)) -> logits (B, num_classes)``.
    """
    start = start or starts.resolve(cfg)
    model = start.classifier(cfg.seed, weights=weights)
    if cfg.adapter.method == "lora":
        lora.apply_lora(model, cfg.adapter, rngs=nnx.Rngs(params=keys.key(cfg.seed, "adapters")))
        rora.check_settings(model, cfg.adapter.rora_tr_k if cfg.adapter.rora_tr else 0, cfg.adapter.rora_pt_layers)
    return model


def loss_function(cfg: RunConfig):
    """The training objective of ``cfg``: cross-entropy, plus RoRA Tr's penalty when ``adapter.rora_tr > 0``."""
    return rora.penalised_loss(classification_loss) if cfg.adapter.rora_tr > 0 else classification_loss


def loss_terms(cfg: RunConfig, model: nnx.Module):
    """The objective's extra inputs for ``model``: RoRA Tr's bases when ``adapter.rora_tr > 0``, else None."""
    return rora.penalty_terms(model, cfg.adapter.rora_tr, cfg.adapter.rora_tr_k) if cfg.adapter.rora_tr > 0 else None


def prepare_step(cfg: RunConfig, *, dropout: bool = True, device=None) -> TrainStep:
    """``cfg``'s model as training starts and its jitted training step, without data, batching or checkpoints.

    Args:
        cfg: a validated run config.
        dropout: train with dropout (the keys ``lorasec train`` uses); False runs in evaluation mode.
        device: the device the step's state lives on (default: the first).
    Returns:
        A :class:`~lorasec.training.step.TrainStep` (the objective, trainable variables, optimizer and dropout keys
        of ``lorasec train``).
    """
    model = build_model(cfg)
    return TrainStep(model, lora.trainable_filter(cfg.adapter), cfg.train, seed=cfg.seed,
                     loss_fn=loss_function(cfg), terms=loss_terms(cfg, model), dropout=dropout, device=device)


def load_run(run_dir: str | Path) -> rundir.FinishedRun:
    """A finished run rebuilt from its directory and the local files it started from (module docstring of
    :mod:`lorasec.pipelines.rundir`): no data preparation, poisoning or fetch.

    Args:
        run_dir: a finished run directory (``results.json`` present).
    Returns:
        A :class:`~lorasec.pipelines.rundir.FinishedRun`: config, the classifier as training started (``start``),
        the trained one (``tuned``, adapter scales as configured), tokenizer, clean test set and results; both
        models built as training built them (:func:`build_model` on the run's recorded start).
    """
    run_dir = Path(run_dir)
    if not (run_dir / "params").is_dir() or not (run_dir / "results.json").is_file():
        raise ConfigError(f"{str(run_dir)!r}: not a finished lorasec run (params/ or results.json missing)")
    cfg = rundir.read_config(run_dir)
    results = rundir.read_results(run_dir)  # first: an edited config.json is named as such
    start = starts.of_finished_run(run_dir, cfg)
    tuned = build_model(cfg, start, weights=False)  # every value is replaced by the saved parameters
    nnx.update(tuned, rundir.load_params(run_dir, tuned))
    return rundir.FinishedRun(cfg, start.classifier(cfg.seed), tuned, start.text_encoder(), rundir.read_test(run_dir),
                              results)

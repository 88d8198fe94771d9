"""The trainer: one jitted optax step over the trainable subset, deterministic batches, checkpoints and resume.

The model is split once into (graph, trainable state, frozen state); the jitted step takes the two states as
arguments, so one compiled step serves every iteration. Batches and dropout keys are pure functions of
(seed, step), branches of the run's key tree (:mod:`lorasec.core.keys`), and checkpoints hold the trainable state,
the optimizer state and the step: a run resumed from its latest checkpoint repeats exactly the computation of an
uninterrupted one (bit for bit on CPU).
"""

from __future__ import annotations

import functools
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx
from tqdm.auto import tqdm

from lorasec.config import TrainConfig
from lorasec.core import files, keys
from lorasec.core.errors import ConfigError, TrainingDiverged
from lorasec.training.losses import classification_loss


@dataclass(frozen=True)
class ArrayData:
    """Tokenised examples: ids (N, L) int32, mask (N, L) bool, labels (N,) int32."""

    tokens: np.ndarray
    mask: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, indices) -> dict[str, np.ndarray]:
        return {"tokens": self.tokens[indices], "mask": self.mask[indices], "labels": self.labels[indices]}


@functools.lru_cache(maxsize=4)
def _epoch_order(seed: int, epoch: int, num: int) -> np.ndarray:
    return keys.numpy_rng(seed, "batches", epoch).permutation(num)


def batch_indices(step: int, num: int, batch_size: int, seed: int) -> np.ndarray:
    """Examples of batch ``step``: epoch ``e`` walks the permutation of the ``batches`` key's e-th branch; the tail
    is dropped."""
    per_epoch = num // batch_size
    epoch, position = divmod(step, per_epoch)
    return _epoch_order(seed, epoch, num)[position * batch_size:(position + 1) * batch_size]


def make_schedule(cfg: TrainConfig) -> optax.Schedule:
    if cfg.schedule == "constant":
        return optax.constant_schedule(cfg.lr)
    if cfg.schedule == "warmup_linear":
        return optax.join_schedules([optax.linear_schedule(0.0, cfg.lr, cfg.warmup_steps),
                                     optax.linear_schedule(cfg.lr, 0.0, cfg.steps - cfg.warmup_steps)],
                                    [cfg.warmup_steps])
    return optax.warmup_cosine_decay_schedule(0.0, cfg.lr, cfg.warmup_steps, cfg.steps)


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
    """AdamW with the configured schedule, after global-norm gradient clipping (``grad_clip = 0`` disables it)."""
    adamw = optax.adamw(make_schedule(cfg), weight_decay=cfg.weight_decay)
    return optax.chain(optax.clip_by_global_norm(cfg.grad_clip), adamw) if cfg.grad_clip > 0 else adamw


LossFn = Callable[[nnx.Module, dict, jax.Array], jax.Array]


def make_train_step(graphdef: nnx.GraphDef, loss_fn: LossFn, tx: optax.GradientTransformation):
    """``step(trainable, frozen, opt_state, batch, key) -> (trainable, opt_state, loss)``, jitted once."""

    def step(trainable, frozen, opt_state, batch, key):
        def objective(params):
            return loss_fn(nnx.merge(graphdef, params, frozen), batch, key)

        loss, grads = jax.value_and_grad(objective)(trainable)
        updates, opt_state = tx.update(grads, opt_state, trainable)
        return optax.apply_updates(trainable, updates), opt_state, loss

    return jax.jit(step, donate_argnums=(0, 2))


@dataclass
class FitResult:
    steps: int
    resumed_from: int
    final_loss: float
    wall_seconds: float
    compilations: int


def _checkpoint_manager(run_dir: Path, cfg: TrainConfig) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=cfg.keep_checkpoints, create=True)
    return ocp.CheckpointManager((run_dir / "checkpoints").resolve(), options=options)


def _restore_newest_readable(manager: ocp.CheckpointManager, run_dir: Path,
                             target: dict) -> tuple[dict | None, int]:
    """(state, step) of the newest checkpoint that restores; a damaged one is named on stderr and skipped for the
    one kept before it (resume from it is exact as well). No checkpoint: (None, 0); none readable: an error."""
    steps = sorted(manager.all_steps(), reverse=True)
    damaged = []
    for step in steps:
        try:
            restored = manager.restore(step, args=ocp.args.StandardRestore(files.jax_abstract(target)))
        except Exception as err:  # orbax / tensorstore raise many kinds for damaged files
            damaged.append(step)
            print(f"lorasec: checkpoint {str(run_dir / 'checkpoints' / str(step))!r} is damaged "
                  f"({type(err).__name__}); trying the one kept before it", file=sys.stderr)
            continue
        for bad in damaged:  # so that training past them writes fresh ones
            manager.delete(bad)
        return restored, step
    if damaged:
        raise ConfigError(f"--out {str(run_dir)!r}: every kept checkpoint is damaged (steps {damaged}); remove "
                          f"{str(run_dir / 'checkpoints')!r} to train from the start")
    return None, 0


def fit(model: nnx.Module, trainable_filter, data: ArrayData, cfg: TrainConfig, *, seed: int,
        loss_fn: LossFn = classification_loss, run_dir: Path | None = None, progress: bool = True,
        description: str = "train") -> FitResult:
    """Train ``model`` in place on the variables selected by ``trainable_filter``.

    With ``run_dir``, metrics go to ``metrics.jsonl`` and checkpoints to ``checkpoints/`` every
    ``checkpoint_every`` steps and at the end; if checkpoints exist there, training resumes from the latest.
    Ctrl-C saves a checkpoint of the current step before stopping.
    """
    if len(data) < cfg.batch_size:
        raise ConfigError(f"train.batch_size = {cfg.batch_size}: must be <= the {len(data)} training examples")
    graphdef, trainable, frozen = nnx.split(model, trainable_filter, ...)
    tx = make_optimizer(cfg)
    opt_state = tx.init(trainable)
    schedule = make_schedule(cfg)
    start = 0
    last_finite = math.nan
    manager = None
    metrics_path = None
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        manager = _checkpoint_manager(run_dir, cfg)
        metrics_path = run_dir / "metrics.jsonl"
        target = {"trainable": trainable, "opt_state": opt_state, "loss": 0.0}
        restored, start = _restore_newest_readable(manager, run_dir, target)
        if restored is not None:
            trainable, opt_state, last_finite = restored["trainable"], restored["opt_state"], restored["loss"]
        files.truncate_jsonl(metrics_path, start)

    def save(step: int) -> None:
        if manager is not None and step not in manager.all_steps():
            manager.save(step, args=ocp.args.StandardSave(
                {"trainable": trainable, "opt_state": opt_state, "loss": float(last_finite)}))
            manager.wait_until_finished()

    # Commit every input to one device, as the step's outputs are, so the second call hits the first's cache
    # entry (restored checkpoints arrive committed, fresh initialisations do not).
    device = jax.devices()[0]
    trainable, frozen, opt_state = jax.device_put((trainable, frozen, opt_state), device)
    step_fn = make_train_step(graphdef, loss_fn, tx)
    base_key = keys.key(seed, "dropout")
    began = time.perf_counter()
    window: list[float] = []
    bar = tqdm(total=cfg.steps, initial=start, desc=description, disable=not progress, unit="step",
               dynamic_ncols=True, leave=False)
    completed = start
    try:
        for step in range(start, cfg.steps):
            batch = data.take(batch_indices(step, len(data), cfg.batch_size, seed))
            key = jax.random.fold_in(base_key, step)
            trainable, opt_state, loss = step_fn(trainable, frozen, opt_state, batch, key)
            completed = step + 1
            value = float(loss)
            if not math.isfinite(value):
                raise TrainingDiverged(
                    f"loss became {value} at step {step + 1}; last finite loss {last_finite:.6g}"
                    f"{'' if step else ' (none)'}: lower train.lr or set train.grad_clip")
            last_finite = value
            window.append(value)
            bar.update(1)
            bar.set_postfix(loss=f"{value:.4f}", refresh=False)
            done = completed
            if metrics_path is not None and (done % cfg.log_every == 0 or done == cfg.steps):
                files.append_jsonl(metrics_path, {"step": done, "loss": float(np.mean(window)),
                                                      "lr": float(schedule(step)),
                                                      "seconds": round(time.perf_counter() - began, 3)})
                window = []
            if done % cfg.checkpoint_every == 0 or done == cfg.steps:
                save(done)
    except KeyboardInterrupt:
        try:
            save(completed)
        except RuntimeError:
            pass  # interrupted inside the step: its inputs were donated; the last periodic checkpoint stands
        raise
    finally:
        bar.close()
        if manager is not None:
            manager.close()
    nnx.update(model, trainable)
    return FitResult(cfg.steps, start, last_finite, time.perf_counter() - began, step_fn._cache_size())

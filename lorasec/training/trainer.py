"""The trainer: an ensemble of runs as one jitted, vmapped program; a single run is an ensemble of one.

Members share a model structure and the shape-setting fields of :class:`TrainConfig`; each has its own
initial state, (poisoned) data, seed, learning rate, weight decay, clipping norm and extra loss terms. The member
axis is sharded over every device (:mod:`lorasec.training.placement`). One dispatch runs up to
``train.steps_per_dispatch`` steps under ``lax.scan``, with the data on the device; the host reads the losses once
per dispatch, while the next one runs. Batches and dropout keys are pure functions of (seed, step), branches of
the run's key tree (:mod:`lorasec.core.keys`), and checkpoints hold the trainable states, optimizer states and
step: a resumed ensemble repeats exactly the computation of an uninterrupted one.
"""

from __future__ import annotations

import functools
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx
from jax.experimental import multihost_utils
from tqdm import tqdm  # text bars: tqdm.auto warns in a notebook without ipywidgets

from lorasec.config import TrainConfig
from lorasec.core import files, keys
from lorasec.core.errors import ConfigError, TrainingDiverged
from lorasec.models.layers import set_compute_dtype
from lorasec.training import placement
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


@functools.lru_cache(maxsize=256)
def _epoch_order(seed: int, epoch: int, num: int) -> np.ndarray:
    return keys.numpy_rng(seed, "batches", epoch).permutation(num)


def batch_indices(step: int, num: int, batch_size: int, seed: int) -> np.ndarray:
    """Examples of batch ``step``: epoch ``e`` walks the permutation of the ``batches`` key's e-th branch; the tail
    is dropped."""
    per_epoch = num // batch_size
    epoch, position = divmod(step, per_epoch)
    return _epoch_order(seed, epoch, num)[position * batch_size:(position + 1) * batch_size]



def make_schedule(cfg: TrainConfig, lr=None) -> optax.Schedule:
    """The learning-rate schedule of ``cfg`` peaking at ``lr`` (default ``cfg.lr``; may be a traced value)."""
    lr = cfg.lr if lr is None else lr
    if cfg.schedule == "constant":
        return optax.constant_schedule(lr)
    if cfg.schedule == "warmup_linear":
        return optax.join_schedules([optax.linear_schedule(0.0, lr, cfg.warmup_steps),
                                     optax.linear_schedule(lr, 0.0, cfg.steps - cfg.warmup_steps)],
                                    [cfg.warmup_steps])
    # optax.warmup_cosine_decay_schedule(0, lr, warmup, steps) spelled out: it branches on lr in Python, and an
    # ensemble's lr is traced.
    return optax.join_schedules([optax.linear_schedule(0.0, lr, cfg.warmup_steps),
                                 optax.cosine_decay_schedule(lr, cfg.steps - cfg.warmup_steps, alpha=0.0)],
                                [cfg.warmup_steps])


def hyperparameters(cfg: TrainConfig) -> dict[str, np.ndarray]:
    """The values of ``cfg`` that may differ between the members of one ensemble (float32 scalars)."""
    return {"lr": np.float32(cfg.lr), "weight_decay": np.float32(cfg.weight_decay),
            "grad_clip": np.float32(cfg.grad_clip)}


def make_optimizer(cfg: TrainConfig, hparams: dict | None = None) -> optax.GradientTransformation:
    """AdamW with the configured schedule, after global-norm gradient clipping (``grad_clip = 0`` disables it).
    ``hparams`` (:func:`hyperparameters`, possibly traced) override learning rate, weight decay and clip norm."""
    hp = hyperparameters(cfg) if hparams is None else hparams
    adamw = optax.adamw(make_schedule(cfg, hp["lr"]), weight_decay=hp["weight_decay"])
    return optax.chain(optax.clip_by_global_norm(hp["grad_clip"]), adamw) if cfg.grad_clip > 0 else adamw


LossFn = Callable[[nnx.Module, dict, jax.Array, Any], jax.Array]


def train_step(graphdef: nnx.GraphDef, loss_fn: LossFn, cfg: TrainConfig):
    """``step(trainable, frozen, opt_state, hparams, terms, batch, key) -> (trainable, opt_state, loss)``: one
    AdamW step of one run, pure and unjitted (the ensemble vmaps it; :class:`lorasec.training.step.TrainStep`
    jits it). ``terms`` are the loss's extra inputs. With ``compute_dtype = 'bfloat16'`` the linear layers
    compute in bfloat16 (:func:`lorasec.models.layers.set_compute_dtype`) while the weights, their gradients and
    AdamW stay float32."""
    compute = None if cfg.compute_dtype == "float32" else jnp.dtype(cfg.compute_dtype)

    def step(trainable, frozen, opt_state, hparams, terms, batch, key):
        def objective(params):
            model = nnx.merge(graphdef, params, frozen)
            if compute is not None:
                set_compute_dtype(model, compute)
            loss = loss_fn(model, batch, key, terms)
            return loss.astype(jnp.promote_types(loss.dtype, jnp.float32))

        loss, grads = jax.value_and_grad(objective)(trainable)
        updates, opt_state = make_optimizer(cfg, hparams).update(grads, opt_state, trainable)
        return optax.apply_updates(trainable, updates), opt_state, loss

    return step


STRUCTURAL_FIELDS = ("steps", "batch_size", "schedule", "warmup_steps", "log_every", "checkpoint_every",
                     "keep_checkpoints", "steps_per_dispatch", "compute_dtype")


@dataclass(frozen=True)
class Member:
    """One run of an ensemble as training starts: model (with its initial values), its training data, seed,
    training config and extra loss terms (a pytree, e.g. :func:`lorasec.adapters.rora.penalty_terms`)."""

    model: nnx.Module
    data: ArrayData
    seed: int
    train: TrainConfig
    terms: Any = None
    metrics_path: Path | None = None


@dataclass
class EnsembleResult:
    """Per member: trained state (host arrays), last finite loss and the step window a non-finite loss appeared in
    (None when none did); for the ensemble: steps, the step it resumed from, wall time, compilations."""

    trainable: list
    final_loss: list[float]
    diverged: list[tuple[int, int] | None]
    steps: int
    resumed_from: int
    wall_seconds: float
    compilations: int


@dataclass
class FitResult:
    steps: int
    resumed_from: int
    final_loss: float
    wall_seconds: float
    compilations: int


def _checkpoint_manager(run_dir: Path, cfg: TrainConfig) -> ocp.CheckpointManager:
    """Process 0's manager: checkpoints hold host copies of the whole ensemble, written by it alone."""
    directory = (run_dir / "checkpoints").resolve()
    directory.mkdir(parents=True, exist_ok=True)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=cfg.keep_checkpoints, create=False,
        multiprocessing_options=ocp.options.MultiprocessingOptions(primary_host=0, active_processes={0}),
        async_options=files.UNSHARED_SAVES)
    return ocp.CheckpointManager(directory, options=options)


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
        raise ConfigError(f"--out {str(run_dir)!r}: every kept checkpoint is damaged or from another lorasec "
                          f"version (steps {damaged}); remove {str(run_dir / 'checkpoints')!r} to train from the "
                          f"start")
    return None, 0


def _stack(trees: Sequence) -> Any:
    return jax.tree.map(lambda *leaves: np.stack([np.asarray(x) for x in leaves]), *trees)


def _split_shared(trees: Sequence) -> tuple[list, list, list[bool], Any]:
    """Leaves equal in every member (kept once) and the others (stacked): (shared, stacked, is_stacked, treedef)."""
    flat = [jax.tree.flatten(t) for t in trees]
    treedef = flat[0][1]
    shared, stacked, is_stacked = [], [], []
    for column in zip(*(leaves for leaves, _ in flat)):
        column = [np.asarray(x) for x in column]
        same = all(x.shape == column[0].shape and np.array_equal(x, column[0]) for x in column[1:])
        is_stacked.append(not same)
        (shared if same else stacked).append(column[0] if same else np.stack(column))
    return shared, stacked, is_stacked, treedef


def _join(shared: list, stacked: list, is_stacked: list[bool], treedef) -> Any:
    shared_it, stacked_it = iter(shared), iter(stacked)
    return jax.tree.unflatten(treedef, [next(stacked_it) if s else next(shared_it) for s in is_stacked])


def _padded_data(members: Sequence[Member]) -> list[dict]:
    """Each member's data as arrays of the largest member's length (the padding is never drawn)."""
    longest = max(len(m.data) for m in members)
    out = []
    for m in members:
        pad = longest - len(m.data)
        out.append({name: np.concatenate([array, np.zeros((pad, *array.shape[1:]), array.dtype)])
                    for name, array in (("tokens", m.data.tokens), ("mask", m.data.mask),
                                        ("labels", m.data.labels))})
    return out


def _check_compatible(members: Sequence[Member]) -> None:
    first = members[0].train
    for m in members[1:]:
        for name in STRUCTURAL_FIELDS:
            if getattr(m.train, name) != getattr(first, name):
                raise ValueError(f"ensemble members differ in train.{name}; they cannot share one program")
        if (m.train.grad_clip > 0) != (first.grad_clip > 0):
            raise ValueError("ensemble members differ in whether train.grad_clip is on")
    for m in members:
        if len(m.data) < m.train.batch_size:
            raise ConfigError(f"train.batch_size = {m.train.batch_size}: must be <= the {len(m.data)} training "
                              f"examples")


def _dispatch_fn(graphdef, loss_fn, cfg: TrainConfig, frozen_layout, data_layout, mesh):
    step = train_step(graphdef, loss_fn, cfg)

    def member(trainable, opt_state, frozen_shared, frozen_stacked, hparams, terms, data_shared, data_stacked,
               raw_key, indices, step_number):
        frozen = _join(frozen_shared, frozen_stacked, *frozen_layout)
        data = _join(data_shared, data_stacked, *data_layout)
        batch = {name: array[indices] for name, array in data.items()}
        key = jax.random.fold_in(jax.random.wrap_key_data(raw_key), step_number)
        return step(trainable, frozen, opt_state, hparams, terms, batch, key)

    members = jax.vmap(member, in_axes=(0, 0, None, 0, 0, 0, None, 0, 0, 0, None))

    def dispatch(carry, frozen_shared, frozen_stacked, hparams, terms, data_shared, data_stacked, raw_keys,
                 indices, step_numbers, valid):
        def body(carry, xs):
            batch_indices_, step_number, ok = xs

            def run(carry):
                trainable, opt_state, loss = members(carry[0], carry[1], frozen_shared, frozen_stacked, hparams,
                                                     terms, data_shared, data_stacked, raw_keys, batch_indices_,
                                                     step_number)
                return (trainable, opt_state), loss.astype(jnp.float32)  # only logged: float32 under x64 too

            def skip(carry):
                return carry, jnp.full(raw_keys.shape[0], jnp.nan, jnp.float32)

            return jax.lax.cond(ok, run, skip, carry)

        return jax.lax.scan(body, carry, (indices, step_numbers, valid))

    # Outputs keep the inputs' placement, so that the next dispatch hits the first one's compilation.
    losses = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, placement.MEMBERS))
    return jax.jit(dispatch, donate_argnums=0, out_shardings=(placement.sharding(mesh, stacked=True), losses))


def _window_end(step: int, cfg: TrainConfig) -> int:
    """The step at which the dispatch starting at ``step`` stops: the next log, checkpoint or final step, at most
    ``steps_per_dispatch`` later."""
    ends = [cfg.steps, step + cfg.steps_per_dispatch]
    for every in (cfg.log_every, cfg.checkpoint_every):
        ends.append((step // every + 1) * every)
    return min(ends)


def fit_ensemble(members: Sequence[Member], trainable_filter, *, loss_fn: LossFn = classification_loss,
                 run_dir: Path | None = None, progress: bool = True, description: str = "train",
                 mesh=None) -> EnsembleResult:
    """Train every member's model as one vmapped program over ``mesh`` (default: every device). The models are
    left unchanged; the trained states come back as host arrays.

    With ``run_dir``, checkpoints go to ``run_dir/checkpoints`` every ``checkpoint_every`` steps and at the end,
    and training resumes from the newest readable one; each member's losses go to its ``metrics_path``. Ctrl-C
    saves a checkpoint of the last finished dispatch before stopping.
    """
    _check_compatible(members)
    cfg = members[0].train
    mesh = mesh or placement.member_mesh()
    count = len(members)
    padded = placement.padded_count(count, mesh)
    slots = list(range(count)) + [0] * (padded - count)  # padding repeats member 0; its results are dropped
    splits = [nnx.split(m.model, trainable_filter, ...) for m in members]
    graphdef = splits[0][0]
    for g, _, _ in splits[1:]:
        if g != graphdef:
            raise ValueError("ensemble members have different model structures; they cannot share one program")
    optimizers = [make_optimizer(m.train) for m in members]
    trainable = _stack([splits[i][1] for i in slots])
    opt_state = _stack([optimizers[i].init(splits[i][1]) for i in slots])
    frozen_shared, frozen_stacked, *frozen_layout = _split_shared([splits[i][2] for i in slots])
    data = _padded_data(members)
    data_shared, data_stacked, *data_layout = _split_shared([data[i] for i in slots])
    hparams = _stack([hyperparameters(members[i].train) for i in slots])
    terms = _stack([members[i].terms for i in slots]) if members[0].terms is not None else None
    raw_keys = np.stack([np.asarray(jax.random.key_data(keys.key(members[i].seed, "dropout"))) for i in slots])
    last_finite = np.full(padded, np.nan, np.float32)
    start = 0
    manager = None
    primary = jax.process_index() == 0
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        target = {"trainable": trainable, "opt_state": opt_state, "loss": last_finite}
        restored = None
        if primary:
            manager = _checkpoint_manager(run_dir, cfg)
            restored, start = _restore_newest_readable(manager, run_dir, target)
        if placement.spans_processes(mesh):
            start = int(multihost_utils.broadcast_one_to_all(np.int64(start)))
            restored = multihost_utils.broadcast_one_to_all(target if restored is None else restored) \
                if start else None
        if restored is not None:
            trainable, opt_state = restored["trainable"], restored["opt_state"]
            last_finite = np.asarray(restored["loss"], np.float32)
        if primary:
            for m in members:
                if m.metrics_path is not None:
                    files.truncate_jsonl(m.metrics_path, start)

    def save(step: int, carry) -> None:
        host = placement.fetch(carry)
        if manager is not None and primary and step not in manager.all_steps():
            manager.save(step, args=ocp.args.StandardSave(
                {"trainable": host[0], "opt_state": host[1], "loss": last_finite.copy()}))
            manager.wait_until_finished()
        placement.barrier(f"lorasec checkpoint {step}", mesh)

    carry = (placement.put(trainable, mesh, stacked=True), placement.put(opt_state, mesh, stacked=True))
    constants = (placement.put(frozen_shared, mesh, stacked=False), placement.put(frozen_stacked, mesh, stacked=True),
                 placement.put(hparams, mesh, stacked=True), placement.put(terms, mesh, stacked=True),
                 placement.put(data_shared, mesh, stacked=False), placement.put(data_stacked, mesh, stacked=True),
                 placement.put(raw_keys, mesh, stacked=True))
    dispatch = _dispatch_fn(graphdef, loss_fn, cfg, frozen_layout, data_layout, mesh)
    index_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, placement.MEMBERS))
    replicated = placement.sharding(mesh, stacked=False)
    width = cfg.steps_per_dispatch
    schedules = [make_schedule(m.train) for m in members]
    diverged: list[tuple[int, int] | None] = [None] * count
    window_losses = [[] for _ in range(count)]
    began = time.perf_counter()
    bar = tqdm(total=cfg.steps, initial=start, desc=description, disable=not (progress and primary), unit="step",
               dynamic_ncols=True, leave=False)

    def inputs(step: int):
        end = _window_end(step, cfg)
        indices = np.zeros((width, padded, cfg.batch_size), np.int32)
        for k in range(end - step):
            for slot, i in enumerate(slots):
                indices[k, slot] = batch_indices(step + k, len(members[i].data), cfg.batch_size, members[i].seed)
        step_numbers = np.arange(step, step + width, dtype=np.int32)
        valid = np.arange(width) < end - step
        return end, (jax.make_array_from_callback(indices.shape, index_sharding, lambda ix: indices[ix]),
                     jax.device_put(step_numbers, replicated), jax.device_put(valid, replicated))

    def record(step: int, end: int, losses) -> None:
        losses = placement.fetch(losses)
        bar.update(end - step)
        for i in range(count):
            values = losses[:end - step, i]
            bad = ~np.isfinite(values)
            if bad.any() and diverged[i] is None:
                diverged[i] = (step + 1, end)
            if diverged[i] is None:
                last_finite[i] = values[-1]
                window_losses[i].extend(values.tolist())
            path = members[i].metrics_path
            if primary and path is not None and (end % cfg.log_every == 0 or end == cfg.steps):
                files.append_jsonl(path, {"step": end, "loss": float(np.mean(window_losses[i]))
                                          if window_losses[i] else None,
                                          "lr": float(schedules[i](end - 1)),
                                          "seconds": round(time.perf_counter() - began, 3)})
                window_losses[i] = []

    completed = start
    try:
        step, pending = start, None  # pending: (first step, end, losses) of a dispatch whose losses are unread
        while step < cfg.steps:
            end, batch_inputs = inputs(step)
            carry, losses = dispatch(carry, *constants, *batch_inputs)
            if pending is not None:  # read the previous dispatch's losses while this one runs
                record(*pending)
            pending, step, completed = (step, end, losses), end, end
            if count == 1 and diverged[0] is not None:
                break
            if end % cfg.checkpoint_every == 0 or end == cfg.steps:
                record(*pending)
                pending = None
                save(end, carry)
        if pending is not None:
            record(*pending)
    except KeyboardInterrupt:
        try:
            save(completed, carry)
        except RuntimeError:
            pass  # interrupted inside a dispatch: its inputs were donated; the last periodic checkpoint stands
        raise
    finally:
        bar.close()
        if manager is not None:
            manager.close()
    host_trainable = placement.fetch(carry[0])
    per_member = [jax.tree.map(lambda leaf, i=i: leaf[i], host_trainable) for i in range(count)]
    wall = time.perf_counter() - began
    return EnsembleResult(per_member, [float(v) for v in last_finite[:count]], diverged, cfg.steps, start, wall,
                          dispatch._cache_size())


def fit(model: nnx.Module, trainable_filter, data: ArrayData, cfg: TrainConfig, *, seed: int,
        loss_fn: LossFn = classification_loss, terms: Any = None, run_dir: Path | None = None,
        progress: bool = True, description: str = "train") -> FitResult:
    """Train ``model`` in place on the variables selected by ``trainable_filter``: :func:`fit_ensemble` of one
    member, with metrics in ``run_dir/metrics.jsonl``. A non-finite loss stops it with the step window it
    appeared in."""
    member = Member(model, data, seed, cfg, terms, None if run_dir is None else run_dir / "metrics.jsonl")
    result = fit_ensemble([member], trainable_filter, loss_fn=loss_fn, run_dir=run_dir, progress=progress,
                          description=description, mesh=placement.member_mesh(jax.devices()[:1]))
    if result.diverged[0] is not None:
        first, last = result.diverged[0]
        value = result.final_loss[0]
        raise TrainingDiverged(
            f"loss became nan or inf in steps {first}–{last}; last finite loss "
            f"{'(none)' if math.isnan(value) else f'{value:.6g}'}: lower train.lr or set train.grad_clip")
    nnx.update(model, jax.tree.map(jnp.asarray, result.trainable[0]))
    return FitResult(result.steps, result.resumed_from, result.final_loss[0], result.wall_seconds,
                     result.compilations)

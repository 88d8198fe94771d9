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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from jax.experimental import multihost_utils
from tqdm import tqdm  # text bars: tqdm.auto warns in a notebook without ipywidgets

from lorasec.config import TrainConfig
from lorasec.core import files, keys
from lorasec.core.errors import ConfigError, TrainingDiverged
from lorasec.training import placement
from lorasec.training.losses import classification_loss
from lorasec.training.step import LossFn, Programs, TrainState, make_optimizer, make_schedule, train_step


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


class Shared(NamedTuple):
    """Leaves equal in every member, kept once, and the others, stacked on a leading member axis."""

    shared: list
    stacked: list


@dataclass(frozen=True)
class Layout:
    """Where each leaf of a tree went in its :class:`Shared` form (static: it shapes the program)."""

    is_stacked: tuple[bool, ...]
    treedef: Any

    @staticmethod
    def split(trees: Sequence) -> tuple[Shared, Layout]:
        flat = [jax.tree.flatten(t) for t in trees]
        shared, stacked, is_stacked = [], [], []
        for column in zip(*(leaves for leaves, _ in flat)):
            column = [np.asarray(x) for x in column]
            same = all(x.shape == column[0].shape and np.array_equal(x, column[0]) for x in column[1:])
            is_stacked.append(not same)
            (shared if same else stacked).append(column[0] if same else np.stack(column))
        return Shared(shared, stacked), Layout(tuple(is_stacked), flat[0][1])

    def join(self, parts: Shared) -> Any:
        shared, stacked = iter(parts.shared), iter(parts.stacked)
        return jax.tree.unflatten(self.treedef, [next(stacked) if s else next(shared) for s in self.is_stacked])


class Constants(NamedTuple):
    """What every step of an ensemble reads and none changes: frozen variables and training data (each kept once
    where the members agree), the loss's extra terms and the raw dropout keys (one per member)."""

    frozen: Shared
    data: Shared
    terms: Any
    keys: Any


MEMBER_AXES = Constants(frozen=Shared(None, 0), data=Shared(None, 0), terms=0, keys=0)  # vmap's in_axes


def _stack(trees: Sequence) -> Any:
    return jax.tree.map(lambda *leaves: np.stack([np.asarray(x) for x in leaves]), *trees)


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


@dataclass
class Ensemble:
    """The members as one program's inputs, on the host: the stacked initial :class:`TrainState`, the
    :class:`Constants` and their layouts. ``slots`` maps each of the ``padded`` program members to a member (the
    padding repeats member 0; its results are dropped)."""

    members: Sequence[Member]
    graphdef: nnx.GraphDef
    slots: list[int]
    state: TrainState
    constants: Constants
    frozen_layout: Layout
    data_layout: Layout

    @staticmethod
    def build(members: Sequence[Member], trainable_filter, mesh) -> Ensemble:
        padded = placement.padded_count(len(members), mesh)
        slots = list(range(len(members))) + [0] * (padded - len(members))
        splits = [nnx.split(m.model, trainable_filter, ...) for m in members]
        graphdef = splits[0][0]
        if any(g != graphdef for g, _, _ in splits[1:]):
            raise ValueError("ensemble members have different model structures; they cannot share one program")
        params = [nnx.to_pure_dict(splits[i][1]) for i in slots]
        opt_states = [make_optimizer(members[i].train).init(p) for i, p in zip(slots, params)]
        frozen, frozen_layout = Layout.split([nnx.to_pure_dict(splits[i][2]) for i in slots])
        data = _padded_data(members)
        shared_data, data_layout = Layout.split([data[i] for i in slots])
        terms = _stack([members[i].terms for i in slots]) if members[0].terms is not None else None
        raw_keys = np.stack([np.asarray(jax.random.key_data(keys.key(members[i].seed, "dropout"))) for i in slots])
        return Ensemble(members, graphdef, slots, TrainState(_stack(params), _stack(opt_states)),
                        Constants(frozen, shared_data, terms, raw_keys), frozen_layout, data_layout)

    @property
    def padded(self) -> int:
        return len(self.slots)

    def batch_indices(self, step: int, end: int, width: int) -> np.ndarray:
        """(width, padded, batch) example indices of the steps ``step``..``end`` (zeros after ``end``)."""
        cfg = self.members[0].train
        indices = np.zeros((width, self.padded, cfg.batch_size), np.int32)
        for k in range(end - step):
            for slot, i in enumerate(self.slots):
                m = self.members[i]
                indices[k, slot] = batch_indices(step + k, len(m.data), cfg.batch_size, m.seed)
        return indices

    def program(self, loss_fn: LossFn, mesh) -> Programs:
        """``dispatch(state, constants, indices, step_numbers, valid) -> (state, losses)``: up to
        ``steps_per_dispatch`` steps of every member under ``lax.scan`` (steps whose ``valid`` is false are
        skipped), compiled once."""
        step = train_step(self.graphdef, loss_fn, self.members[0].train)
        frozen_layout, data_layout = self.frozen_layout, self.data_layout

        def member(state, constants, indices, step_number):
            data = data_layout.join(constants.data)
            batch = {name: array[indices] for name, array in data.items()}
            key = jax.random.fold_in(jax.random.wrap_key_data(constants.keys), step_number)
            return step(state, frozen_layout.join(constants.frozen), constants.terms, batch, key)

        members = jax.vmap(member, in_axes=(0, MEMBER_AXES, 0, None))

        def dispatch(state, constants, indices, step_numbers, valid):
            def body(state, xs):
                step_indices, step_number, ok = xs

                def run(state):
                    state, loss = members(state, constants, step_indices, step_number)
                    return state, loss.astype(jnp.float32)  # only logged: float32 under x64 too

                def skip(state):
                    return state, jnp.full(constants.keys.shape[0], jnp.nan, jnp.float32)

                return jax.lax.cond(ok, run, skip, state)

            return jax.lax.scan(body, state, (indices, step_numbers, valid))

        # Outputs keep the inputs' placement, so every dispatch runs the one compiled program.
        losses = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, placement.MEMBERS))
        jitted = jax.jit(dispatch, donate_argnums=0, out_shardings=(placement.sharding(mesh, stacked=True), losses))
        return Programs(jitted, varying=())

    def placed(self, state: TrainState, mesh) -> tuple[TrainState, Constants]:
        """``state`` and the constants as global arrays: member axes split over ``mesh``, shared parts replicated."""
        c = self.constants

        def split(parts: Shared) -> Shared:
            return Shared(placement.put(parts.shared, mesh, stacked=False), placement.put(parts.stacked, mesh,
                                                                                          stacked=True))

        return (placement.put(state, mesh, stacked=True),
                Constants(split(c.frozen), split(c.data), placement.put(c.terms, mesh, stacked=True),
                          placement.put(c.keys, mesh, stacked=True)))


class Checkpoints:
    """An ensemble's checkpoints in ``run_dir/checkpoints``: written by process 0 alone from host copies (every
    process joins a barrier after each), read back by it and broadcast to the others."""

    def __init__(self, run_dir: Path, cfg: TrainConfig, mesh):
        self.run_dir, self.mesh = run_dir, mesh
        self.primary = jax.process_index() == 0
        self.manager = None
        run_dir.mkdir(parents=True, exist_ok=True)
        if self.primary:
            directory = (run_dir / "checkpoints").resolve()
            directory.mkdir(parents=True, exist_ok=True)
            options = ocp.CheckpointManagerOptions(
                max_to_keep=cfg.keep_checkpoints, create=False,
                multiprocessing_options=ocp.options.MultiprocessingOptions(primary_host=0, active_processes={0}),
                async_options=files.UNSHARED_SAVES)
            self.manager = ocp.CheckpointManager(directory, options=options)

    def restore(self, state: TrainState, losses: np.ndarray) -> tuple[int, TrainState, np.ndarray]:
        """(step, state, last finite losses) of the newest readable checkpoint, or (0, the given ones)."""
        target = {"trainable": state.params, "opt_state": state.opt_state, "loss": losses}
        restored, start = self._newest_readable(target) if self.primary else (None, 0)
        if placement.spans_processes(self.mesh):
            start = int(multihost_utils.broadcast_one_to_all(np.int64(start)))
            restored = multihost_utils.broadcast_one_to_all(target if restored is None else restored) \
                if start else None
        if restored is None:
            return 0, state, losses
        return start, TrainState(restored["trainable"], restored["opt_state"]), np.asarray(restored["loss"],
                                                                                             np.float32)

    def _newest_readable(self, target: dict) -> tuple[dict | None, int]:
        """A damaged checkpoint is named on stderr and skipped for the one kept before it (resume from it is exact
        as well). No checkpoint: (None, 0); none readable: an error."""
        damaged = []
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                with files.quiet_failed_reads():
                    restored = self.manager.restore(step, args=ocp.args.StandardRestore(files.jax_abstract(target)))
            except Exception as err:  # orbax / tensorstore raise many kinds for damaged files
                damaged.append(step)
                print(f"lorasec: checkpoint {str(self.run_dir / 'checkpoints' / str(step))!r} is damaged "
                      f"({type(err).__name__}); trying the one kept before it", file=sys.stderr)
                continue
            for bad in damaged:  # so that training past them writes fresh ones
                self.manager.delete(bad)
            return restored, step
        if damaged:
            raise ConfigError(f"--out {str(self.run_dir)!r}: every kept checkpoint is damaged or from another "
                              f"lorasec version (steps {damaged}); remove {str(self.run_dir / 'checkpoints')!r} to "
                              f"train from the start")
        return None, 0

    def save(self, step: int, state: TrainState, losses: np.ndarray) -> None:
        host = placement.fetch(state)
        if self.manager is not None and step not in self.manager.all_steps():
            self.manager.save(step, args=ocp.args.StandardSave(
                {"trainable": host.params, "opt_state": host.opt_state, "loss": losses.copy()}))
            self.manager.wait_until_finished()
        placement.barrier(f"lorasec checkpoint {step}", self.mesh)

    def close(self) -> None:
        if self.manager is not None:
            self.manager.close()


class LossLog:
    """Each member's losses as dispatches return them: the last finite one, the step window a non-finite one first
    appeared in, the progress bar, and (process 0) a line per logging window in the member's ``metrics_path``."""

    def __init__(self, members: Sequence[Member], padded: int, start: int, last_finite: np.ndarray, *,
                 progress: bool, description: str):
        self.members, self.cfg = members, members[0].train
        self.primary = jax.process_index() == 0
        self.last_finite = last_finite if len(last_finite) == padded else np.full(padded, np.nan, np.float32)
        self.diverged: list[tuple[int, int] | None] = [None] * len(members)
        self.window: list[list[float]] = [[] for _ in members]
        self.schedules = [make_schedule(m.train) for m in members]
        self.began = time.perf_counter()
        if self.primary:
            for m in members:
                if m.metrics_path is not None:
                    files.truncate_jsonl(m.metrics_path, start)
        self.bar = tqdm(total=self.cfg.steps, initial=start, desc=description, unit="step", dynamic_ncols=True,
                        disable=not (progress and self.primary), leave=False)

    def record(self, step: int, end: int, losses) -> None:
        """The losses of steps ``step + 1``..``end`` (a (window, members) array, still on the device)."""
        losses = placement.fetch(losses)
        self.bar.update(end - step)
        cfg = self.cfg
        for i, m in enumerate(self.members):
            values = losses[:end - step, i]
            if not np.isfinite(values).all() and self.diverged[i] is None:
                self.diverged[i] = (step + 1, end)
            if self.diverged[i] is None:
                self.last_finite[i] = values[-1]
                self.window[i].extend(values.tolist())
            if self.primary and m.metrics_path is not None and (end % cfg.log_every == 0 or end == cfg.steps):
                files.append_jsonl(m.metrics_path, {
                    "step": end, "loss": float(np.mean(self.window[i])) if self.window[i] else None,
                    "lr": float(self.schedules[i](end - 1)), "seconds": round(time.perf_counter() - self.began, 3)})
                self.window[i] = []

    def close(self) -> None:
        self.bar.close()


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

    Args:
        members: the runs; they share a model structure and :data:`STRUCTURAL_FIELDS` of their training configs.
        trainable_filter: the NNX filter of the variables that train.
        loss_fn: ``loss_fn(model, batch, key, terms) -> scalar`` (each member's ``terms`` as its extra input).
        run_dir: where checkpoints go (None: no checkpoints, no resume).
        progress: show a progress bar.
        description: the progress bar's label.
        mesh: a one-axis mesh for the member axis (default: every device of every process).
    Returns:
        An :class:`EnsembleResult`: per member the trained variables (pure dicts of host arrays), last finite loss
        and divergence window; for the ensemble steps, resumed step, wall time and compilations (1).
    """
    _check_compatible(members)
    cfg = members[0].train
    mesh = mesh or placement.member_mesh()
    ensemble = Ensemble.build(members, trainable_filter, mesh)
    checkpoints = Checkpoints(run_dir, cfg, mesh) if run_dir is not None else None
    start, state, last_finite = 0, ensemble.state, np.full(ensemble.padded, np.nan, np.float32)
    if checkpoints is not None:
        start, state, last_finite = checkpoints.restore(state, last_finite)
    log = LossLog(members, ensemble.padded, start, last_finite, progress=progress, description=description)
    state, constants = ensemble.placed(state, mesh)
    program = ensemble.program(loss_fn, mesh)
    try:
        state = _train(ensemble, program, state, constants, start, log, checkpoints, mesh)
    finally:
        log.close()
        if checkpoints is not None:
            checkpoints.close()
    trained = placement.fetch(state.params)
    per_member = [jax.tree.map(lambda leaf, i=i: leaf[i], trained) for i in range(len(members))]
    return EnsembleResult(per_member, [float(v) for v in log.last_finite[:len(members)]], log.diverged, cfg.steps,
                          start, time.perf_counter() - log.began, program.count)


def _train(ensemble: Ensemble, program: Programs, state: TrainState, constants: Constants, start: int,
           log: LossLog, checkpoints: Checkpoints | None, mesh) -> TrainState:
    """Dispatch windows of steps from ``start`` to the end, reading each window's losses while the next runs,
    with checkpoints at their steps; Ctrl-C saves the last finished dispatch's state."""
    cfg = ensemble.members[0].train
    index_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, placement.MEMBERS))
    replicated = placement.sharding(mesh, stacked=False)
    width = cfg.steps_per_dispatch
    step, completed, pending = start, start, None  # pending: (first step, end, losses) of a dispatch not yet read
    try:
        while step < cfg.steps:
            end = _window_end(step, cfg)
            indices = ensemble.batch_indices(step, end, width)
            inputs = (jax.make_array_from_callback(indices.shape, index_sharding, lambda ix: indices[ix]),
                      jax.device_put(np.arange(step, step + width, dtype=np.int32), replicated),
                      jax.device_put(np.arange(width) < end - step, replicated))
            state, losses = program(state, constants, *inputs)
            if pending is not None:  # read the previous dispatch's losses while this one runs
                log.record(*pending)
            pending, step, completed = (step, end, losses), end, end
            if len(ensemble.members) == 1 and log.diverged[0] is not None:
                break
            if end % cfg.checkpoint_every == 0 or end == cfg.steps:
                log.record(*pending)
                pending = None
                if checkpoints is not None:
                    checkpoints.save(end, state, log.last_finite)
        if pending is not None:
            log.record(*pending)
    except KeyboardInterrupt:
        if checkpoints is not None:
            try:
                checkpoints.save(completed, state, log.last_finite)
            except RuntimeError:
                pass  # interrupted inside a dispatch: its inputs were donated; the last periodic checkpoint stands
        raise
    return state


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

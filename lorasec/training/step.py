"""One training step as a pure function of pytrees, and a ready jitted step for callers that batch and loop
themselves (benchmarks, notebooks, custom loops).

The state a step changes is a :class:`TrainState`: the trainable variables (a pure dict of arrays, as
``nnx.to_pure_dict`` gives it) and the optax state of AdamW, whose learning rate, weight decay and clipping
norm are injected hyperparameters (``optax.inject_hyperparams``): they travel inside the optimizer state, so each
member of an ensemble carries its own (:mod:`lorasec.training.trainer` vmaps this same step). What a step only reads
(frozen variables, the loss's extra terms, the batch, a dropout key) is passed beside it.

:class:`TrainStep` is the step :func:`lorasec.training.trainer.fit` runs, with the same dropout keys (the ``dropout``
branch of the seed's key tree, folded with the step number), so a loop over
:func:`lorasec.training.trainer.batch_indices` repeats ``fit`` step for step. Its programs are compiled ahead of time
(:class:`Programs`), one per batch shape, and every input is placed on the step's device by them: host arrays,
arrays committed to that device and uncommitted ones all run the same compiled program.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from lorasec.config import TrainConfig
from lorasec.core import keys
from lorasec.core.errors import ConfigError
from lorasec.models.layers import set_compute_dtype
from lorasec.training.losses import classification_loss

LossFn = Callable[[nnx.Module, dict, jax.Array, Any], jax.Array]
BATCH_FIELDS = {"tokens": np.int32, "mask": np.bool_, "labels": np.int32}


class TrainState(NamedTuple):
    """What one step updates: the trainable variables (pure dict of arrays) and the optimizer state."""

    params: Any
    opt_state: Any


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


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
    """AdamW with ``cfg``'s schedule, after global-norm gradient clipping (``grad_clip = 0`` leaves it out).

    The peak learning rate, weight decay and clipping norm are injected hyperparameters, float32 scalars in the
    state under ``opt_state.hyperparams`` (``learning_rate``, ``weight_decay``, ``grad_clip``); the schedule's shape,
    and whether clipping is on, are fixed by ``cfg``."""

    def adamw(learning_rate, weight_decay, grad_clip):
        inner = optax.adamw(make_schedule(cfg, learning_rate), weight_decay=weight_decay)
        return optax.chain(optax.clip_by_global_norm(grad_clip), inner) if cfg.grad_clip > 0 else inner

    return optax.inject_hyperparams(adamw, hyperparam_dtype=jnp.float32)(
        learning_rate=cfg.lr, weight_decay=cfg.weight_decay, grad_clip=cfg.grad_clip)


def train_step(graphdef: nnx.GraphDef, loss_fn: LossFn, cfg: TrainConfig):
    """``step(state, frozen, terms, batch, key) -> (state, loss)``: one AdamW step of one run, pure and unjitted
    (the ensemble vmaps it, :class:`TrainStep` jits it).

    Args (of ``step``):
        state: a :class:`TrainState`.
        frozen: the model's other variables (pure dict), merged with ``state.params`` under ``graphdef``.
        terms: the loss's extra inputs (a pytree, e.g. :func:`lorasec.adapters.rora.penalty_terms`), or None.
        batch: ``tokens`` (B, L) int32, ``mask`` (B, L) bool, ``labels`` (B,) int32.
        key: the step's dropout key, or None for no dropout.
    Returns (of ``step``):
        The updated state and the batch's loss (a scalar in the loss's dtype, at least float32).

    With ``compute_dtype = 'bfloat16'`` the linear layers compute in bfloat16
    (:func:`lorasec.models.layers.set_compute_dtype`) while the weights, their gradients and AdamW stay float32.
    """
    compute = None if cfg.compute_dtype == "float32" else jnp.dtype(cfg.compute_dtype)
    optimizer = make_optimizer(cfg)

    def step(state: TrainState, frozen, terms, batch, key):
        def objective(params):
            model = nnx.merge(graphdef, params, frozen)
            if compute is not None:
                set_compute_dtype(model, compute)
            loss = loss_fn(model, batch, key, terms)
            return loss.astype(jnp.promote_types(loss.dtype, jnp.float32))

        loss, grads = jax.value_and_grad(objective)(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        return TrainState(optax.apply_updates(state.params, updates), opt_state), loss

    return step


class Programs:
    """A jitted function compiled ahead of time, once per signature of its ``varying`` arguments (the others are
    fixed by construction): the number of XLA compilations is :attr:`count`, read from this object alone."""

    def __init__(self, jitted, varying: tuple[int, ...]):
        self._jitted = jitted
        self._varying = varying
        self._compiled: dict = {}

    def __call__(self, *args):
        signature = tuple((jax.tree.structure(args[i]), tuple((np.shape(x), _dtype(x)) for x in jax.tree.leaves(args[i])))
                          for i in self._varying)
        program = self._compiled.get(signature)
        if program is None:
            program = self._compiled[signature] = self._jitted.lower(*args).compile()
        return program(*args)

    def lower(self, *args):
        """The jitted function lowered for ``args`` (``.compile()`` gives a program; it is not counted)."""
        return self._jitted.lower(*args)

    @property
    def count(self) -> int:
        return len(self._compiled)


class TrainStep:
    """``step(batch) -> loss``: one AdamW step of ``model``'s variables selected by ``trainable_filter``;
    ``step.run(batches)`` runs several (stacked along a leading axis) in one dispatch under ``lax.scan``.

    ``dropout=False`` runs every step without dropout (the model in evaluation mode). The model itself is left
    unchanged until :meth:`write_back`. Losses come back as device arrays: reading one waits for its step.

    Example::

        step = lorasec.prepare_step(cfg)
        batch = {"tokens": tokens[:32], "mask": mask[:32], "labels": labels[:32]}
        losses = [float(step(batch)) for _ in range(10)]
        model = step.write_back()
    """

    def __init__(self, model: nnx.Module, trainable_filter, cfg: TrainConfig, *, seed: int = 0,
                 loss_fn: LossFn = classification_loss, terms: Any = None, dropout: bool = True, device=None):
        self.model = model
        self.cfg = cfg
        self.device = device or jax.devices()[0]
        placed = jax.sharding.SingleDeviceSharding(self.device)
        graphdef, trainable, frozen = nnx.split(model, trainable_filter, ...)
        if not jax.tree.leaves(trainable):
            raise ConfigError("the trainable filter selects no variable of the model: nothing would train")
        self._template = trainable
        params = nnx.to_pure_dict(trainable)
        state = (TrainState(params, make_optimizer(cfg).init(params)), jnp.zeros((), jnp.int32))
        # copies: the state is donated to each step, and the model's own arrays must outlive it
        self.state = jax.device_put(state, placed, may_alias=False)
        dropout_key = jax.random.key_data(keys.key(seed, "dropout"))
        self.constants = jax.device_put((nnx.to_pure_dict(frozen), terms, dropout_key), placed)
        one_step = train_step(graphdef, loss_fn, cfg)

        def advance(state, constants, batch):
            (train_state, number), (frozen, terms, raw_key) = state, constants
            key = jax.random.fold_in(jax.random.wrap_key_data(raw_key), number) if dropout else None
            train_state, loss = one_step(train_state, frozen, terms, batch, key)
            return (train_state, number + 1), loss

        def scanned(state, constants, batches):
            return jax.lax.scan(lambda s, b: advance(s, constants, b), state, batches)

        jit = dict(in_shardings=placed, out_shardings=placed, donate_argnums=0)
        self._one = Programs(jax.jit(advance, **jit), varying=(2,))
        self._many = Programs(jax.jit(scanned, **jit), varying=(2,))

    def __call__(self, batch: dict) -> jax.Array:
        self.state, loss = self._one(self.state, self.constants, _checked(batch, stacked=False))
        return loss

    def run(self, batches: dict) -> jax.Array:
        """Steps over ``batches`` (each field stacked: (steps, batch, ...)) in one dispatch; their losses."""
        self.state, losses = self._many(self.state, self.constants, _checked(batches, stacked=True))
        return losses

    def compiled(self, batch: dict):
        """The compiled single step for ``batch``'s shapes (``.as_text()`` is XLA's optimised HLO)."""
        return self._one.lower(self.state, self.constants, _checked(batch, stacked=False)).compile()

    def flops(self, batch: dict) -> float:
        """XLA's count of the floating-point operations of one step on ``batch``'s shapes."""
        cost = self.compiled(batch).cost_analysis()
        return float((cost[0] if isinstance(cost, list) else cost)["flops"])

    @property
    def steps(self) -> int:
        return int(self.state[1])

    @property
    def trainable(self) -> nnx.State:
        """The trained variables as they stand (device arrays; :meth:`write_back` puts them into the model)."""
        return nnx.State(self.state[0].params)

    @property
    def compilations(self) -> int:
        """XLA compilations its calls caused: one per batch shape and dtype (single steps and scans apart)."""
        return self._one.count + self._many.count

    def write_back(self) -> nnx.Module:
        """Put the trained variables into the model (host copies made on its own device) and return it."""
        nnx.update(self.model, jax.tree.map(jnp.asarray, jax.device_get(self.state[0].params)))
        return self.model


def _dtype(x) -> np.dtype:
    return x.dtype if hasattr(x, "dtype") else np.asarray(x).dtype


def _checked(batch: dict, *, stacked: bool) -> dict:
    missing = [name for name in BATCH_FIELDS if name not in batch]
    if missing:
        raise ConfigError(f"batch: missing {', '.join(missing)}; a batch holds tokens (B, L) int32, mask (B, L) "
                          f"bool and labels (B,) int32")
    lead = 3 if stacked else 2
    tokens = np.shape(batch["tokens"])
    if len(tokens) != lead:
        raise ConfigError(f"batch tokens: shape {tokens}, expected {'(steps, B, L)' if stacked else '(B, L)'}")
    if np.shape(batch["mask"]) != tokens or np.shape(batch["labels"]) != tokens[:-1]:
        raise ConfigError(f"batch: tokens {tokens}, mask {np.shape(batch['mask'])} and labels "
                          f"{np.shape(batch['labels'])} disagree; mask matches tokens, labels drop the last axis")
    return {name: _as(batch[name], dtype) for name, dtype in BATCH_FIELDS.items()}


def _as(x, dtype):
    """``x`` in ``dtype``, converted only when it differs (int64 token ids from numpy would compile anew)."""
    x = x if hasattr(x, "dtype") else np.asarray(x)
    return x if x.dtype == dtype else x.astype(dtype)

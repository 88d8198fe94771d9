"""A ready training step: a model and its :class:`~lorasec.config.TrainConfig` become a jitted AdamW step with its
state on one device, for callers that batch and loop themselves (benchmarks, notebooks, custom loops).

It is the step :func:`lorasec.training.trainer.fit` runs (:func:`~lorasec.training.trainer.train_step`), with the
same dropout keys (the ``dropout`` branch of the seed's key tree, folded with the step number), so a loop over
:func:`~lorasec.training.trainer.batch_indices` repeats ``fit`` step for step. Every input is placed on the step's
device by the jitted function itself, so host arrays, arrays committed to that device and uncommitted ones all hit
the first compilation.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lorasec.config import TrainConfig
from lorasec.core import keys
from lorasec.core.errors import ConfigError
from lorasec.training.losses import classification_loss
from lorasec.training.trainer import LossFn, hyperparameters, make_optimizer, train_step

_COMPILES = [0]  # XLA compilations in this process, counted by jax.monitoring (the jit caches' sizes also count
# fast-path entries for inputs that differ only in placement, which reuse one compiled program)


def _count_compiles(name: str, _secs: float, **_kwargs) -> None:
    if name == "/jax/core/compile/backend_compile_duration":
        _COMPILES[0] += 1


jax.monitoring.register_event_duration_secs_listener(_count_compiles)

BATCH_FIELDS = {"tokens": np.int32, "mask": np.bool_, "labels": np.int32}


class TrainStep:
    """``step(batch) -> loss``: one AdamW step of ``model``'s variables selected by ``trainable_filter``;
    ``step.run(batches)`` runs several (stacked along a leading axis) in one dispatch under ``lax.scan``.

    ``dropout=False`` runs every step without dropout (the model in evaluation mode). The model itself is left
    unchanged until :meth:`write_back`. Losses come back as device arrays: reading one waits for its step."""

    def __init__(self, model: nnx.Module, trainable_filter, cfg: TrainConfig, *, seed: int = 0,
                 loss_fn: LossFn = classification_loss, terms: Any = None, dropout: bool = True, device=None):
        self.model = model
        self.cfg = cfg
        self.device = device or jax.devices()[0]
        placed = jax.sharding.SingleDeviceSharding(self.device)
        graphdef, trainable, frozen = nnx.split(model, trainable_filter, ...)
        if not jax.tree.leaves(trainable):
            raise ConfigError("the trainable filter selects no variable of the model: nothing would train")
        opt_state = make_optimizer(cfg).init(trainable)
        # State and constants travel as flat tuples of arrays, so a call flattens and rebuilds no nnx Variable in
        # Python: the tiny benchmark BERT's call returned after 0.28 ms instead of 0.49 (of a 4 ms step).
        state, self._state_tree = jax.tree.flatten((trainable, opt_state, jnp.zeros((), jnp.int32)))
        constants, constants_tree = jax.tree.flatten((frozen, terms, jax.random.key_data(keys.key(seed, "dropout"))))
        # copies: the state is donated to each step, and the model's own arrays must outlive it
        self.state = jax.device_put(tuple(state), placed, may_alias=False)
        self.constants = jax.device_put(tuple(constants), placed)
        one_step = train_step(graphdef, loss_fn, cfg)
        hparams = hyperparameters(cfg)
        state_tree = self._state_tree

        def advance(state, constants, batch):
            trainable, opt_state, number = jax.tree.unflatten(state_tree, state)
            frozen, terms, raw_key = jax.tree.unflatten(constants_tree, constants)
            key = jax.random.fold_in(jax.random.wrap_key_data(raw_key), number) if dropout else None
            trainable, opt_state, loss = one_step(trainable, frozen, opt_state, hparams, terms, batch, key)
            return tuple(jax.tree.leaves((trainable, opt_state, number + 1))), loss

        def scanned(state, constants, batches):
            return jax.lax.scan(lambda s, b: advance(s, constants, b), state, batches)

        self._compilations = 0
        self._one = jax.jit(advance, in_shardings=placed, out_shardings=placed, donate_argnums=0)
        self._many = jax.jit(scanned, in_shardings=placed, out_shardings=placed, donate_argnums=0)

    def __call__(self, batch: dict) -> jax.Array:
        return self._dispatch(self._one, _checked(batch, stacked=False))

    def run(self, batches: dict) -> jax.Array:
        """Steps over ``batches`` (each field stacked: (steps, batch, ...)) in one dispatch; their losses."""
        return self._dispatch(self._many, _checked(batches, stacked=True))

    def _dispatch(self, program, batch):
        before = _COMPILES[0]
        self.state, losses = program(self.state, self.constants, batch)
        self._compilations += _COMPILES[0] - before
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
        return int(self._unflattened()[2])

    @property
    def trainable(self) -> nnx.State:
        """The trained variables as they stand (device arrays; :meth:`write_back` puts them into the model)."""
        return self._unflattened()[0]

    @property
    def compilations(self) -> int:
        """XLA compilations its calls caused: one per batch shape and dtype (single steps and scans apart)."""
        return self._compilations

    def write_back(self) -> nnx.Module:
        """Put the trained variables into the model (host copies made on its own device) and return it."""
        nnx.update(self.model, jax.tree.map(jnp.asarray, jax.device_get(self.trainable)))
        return self.model

    def _unflattened(self):
        """``(trainable, opt_state, steps taken)`` from the flat state."""
        return jax.tree.unflatten(self._state_tree, self.state)


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

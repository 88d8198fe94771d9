"""The network linearised at its starting point, trained as the real run is: the kernel regime's prediction.

For the trained parameters θ (LoRA's factors, or every weight for full fine-tuning) and the frozen rest,

    f_lin(x; θ) = f(x; θ₀) + J(x; θ₀)(θ − θ₀),      J = ∂f/∂θ at the start θ₀

(Lee et al., NeurIPS 2019, eq. 6): a model linear in its parameters whose tangent kernel stays the empirical NTK at
θ₀ for the whole of training. Paper 1's argument (Liang et al., ICML 2025, Sec. 3) holds exactly for it.
:class:`Linearised` wraps a model so that lorasec's own trainer trains it with the run's loss, AdamW, learning-rate
schedule, batches and dropout keys, and its evaluation scores it: it differs from the real run in nothing but the
model. With AdamW its early dynamics follow the sign-gradient kernel ⟨∇f(x), sign ∇f(x′)⟩ rather than the NTK
(Malladi et al., ICML 2023, Sec. 4); :mod:`lorasec.diagnostics.predictors` has both kernels' first-order
predictions. Where the real run departs from this one, training left the kernel regime
(:mod:`lorasec.diagnostics.drift` measures how far).
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
from flax import nnx

from lorasec.adapters import lora
from lorasec.config import ConfigError, RunConfig
from lorasec.data.textdata import TextDataset
from lorasec.data.tokenizer import TextEncoder
from lorasec.training.evaluation import evaluate, evaluation_fields
from lorasec.training.losses import classification_loss
from lorasec.training.trainer import ArrayData, fit


class Anchor(nnx.Variable):
    """θ₀, the point the model is linearised at: never trained (no trainable filter selects it)."""


class Linearised(nnx.Module):
    """``model`` linearised at its current values of the ``trainable_filter`` variables (module docstring).

    Called as the model is, ``(tokens, mask, rngs=None) -> logits``; with ``rngs``, one key is drawn from its
    dropout stream and the model's dropout masks come from it, the same for the value and its derivative (so the
    masks differ from the real model's given the same ``rngs``, as another draw of dropout would). The wrapped
    model's own variables are the θ that train. For LoRA at its usual start (B = 0) the output's derivative with
    respect to A is zero at θ₀, so the linearised network never moves A: it is LoRA with A frozen, to first order.
    """

    def __init__(self, model: nnx.Module, trainable_filter):
        self.model = model
        self.trainable_filter = trainable_filter
        _, params, _ = nnx.split(model, trainable_filter, ...)
        if not jax.tree.leaves(params):
            raise ConfigError("the trainable filter selects no variable of the model: nothing to linearise")
        self.anchor = nnx.data(jax.tree.map(lambda v: Anchor(jnp.array(v)), nnx.to_pure_dict(params)))

    def __call__(self, tokens, mask, rngs=None):
        graphdef, params, rest = nnx.split(self.model, self.trainable_filter, ...)
        anchor = jax.tree.map(lambda v: v[...], self.anchor, is_leaf=lambda v: isinstance(v, nnx.Variable))
        current = nnx.to_pure_dict(params)
        tangent = jax.tree.map(jnp.subtract, current, anchor)
        # dropout keys are read here: a stream of the caller's Rngs may not advance inside the jvp's trace
        key = None if rngs is None else rngs.dropout()

        def f(p):
            return nnx.merge(graphdef, p, rest)(tokens, mask, rngs=None if key is None else nnx.Rngs(dropout=key))

        value, change = jax.jvp(f, (anchor,), (tangent,))
        return value + change


def check_linearisable(cfg: RunConfig) -> None:
    """Refuse what the linearised run does not model: RoRA's penalty and Pt read the adapted layers by path."""
    if cfg.adapter.rora_tr > 0 or cfg.adapter.rora_pt_layers:
        raise ConfigError("adapter.rora_tr / adapter.rora_pt_layers: the linearised run models plain LoRA and full "
                          "fine-tuning; set adapter.rora_tr = 0 and adapter.rora_pt_layers = [] for it")


def linearised_run(cfg: RunConfig, model: nnx.Module, data: ArrayData, test: TextDataset,
                   encoder: TextEncoder) -> dict:
    """Train ``cfg``'s model linearised at its start, as ``lorasec train`` trains the real one, and evaluate it.

    Args:
        cfg: a validated run config (plain LoRA or full fine-tuning).
        model: the classifier as training starts (left unchanged: a copy is linearised).
        data: the (poisoned) training set, tokenised, as the real run trains on it.
        test: the clean test set.
        encoder: the run's tokenizer.
    Returns:
        The evaluation's fields (``clean_accuracy``, ``attack_success_rate``, ``triggered_accuracy``, ...) of the
        trained linearised model, its ``final_loss`` and ``wall_seconds``.
    """
    check_linearisable(cfg)
    began = time.perf_counter()
    trainable = lora.trainable_filter(cfg.adapter)
    linear = Linearised(nnx.clone(model), trainable)
    fitted = fit(linear, trainable, data, cfg.train, seed=cfg.seed, loss_fn=classification_loss, progress=False)
    evaluation = evaluate(linear, cfg, test, encoder)
    return {**evaluation_fields(evaluation), "final_loss": fitted.final_loss,
            "wall_seconds": time.perf_counter() - began}

"""Training objectives: the classifier's cross-entropy and BERT's masked-language-model loss."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx


def at_least_float32(x: jax.Array) -> jax.Array:
    """Logits of a bfloat16 forward pass go through the softmax in float32 (float64 stays float64)."""
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def classification_loss(model: nnx.Module, batch: dict, key: jax.Array | None, terms=None) -> jax.Array:
    """Mean softmax cross-entropy; dropout is active when a key is given. ``terms`` (a run's extra loss inputs,
    see :func:`lorasec.training.trainer.fit_ensemble`) is unused."""
    rngs = None if key is None else nnx.Rngs(dropout=key)
    logits = at_least_float32(model(batch["tokens"], batch["mask"], rngs=rngs))
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"]).mean()


def mlm_loss_fn(mask_prob: float, mask_id: int, vocab_size: int, special_ids: np.ndarray):
    """BERT's objective: pick ``mask_prob`` of the real tokens; 80% become [MASK], 10% a random token, 10% stay;
    cross-entropy on the picked positions."""
    specials = jnp.asarray(special_ids)

    def loss(model, batch, key, terms=None):
        tokens, mask = batch["tokens"], batch["mask"]
        k_pick, k_mode, k_rand, k_drop = jax.random.split(key, 4)
        maskable = mask & ~jnp.isin(tokens, specials)
        picked = maskable & (jax.random.uniform(k_pick, tokens.shape) < mask_prob)
        mode = jax.random.uniform(k_mode, tokens.shape)
        random_tokens = jax.random.randint(k_rand, tokens.shape, 0, vocab_size)
        inputs = jnp.where(picked & (mode < 0.8), mask_id, tokens)
        inputs = jnp.where(picked & (mode >= 0.8) & (mode < 0.9), random_tokens, inputs)
        logits = at_least_float32(model(inputs, mask, rngs=nnx.Rngs(dropout=k_drop)))
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, tokens)
        weights = picked.astype(losses.dtype)
        return (losses * weights).sum() / jnp.maximum(weights.sum(), 1.0)

    return loss

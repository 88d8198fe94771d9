"""A BERT-style transformer encoder (post-layer-norm, GELU MLP), its classifier and its masked-LM head.

Linear layers carry BERT's names so peft-style targets read naturally: ``query``, ``key``, ``value``,
``attention.output``, ``intermediate``, ``output``; the classifier is ``head`` (and ``pooler`` with CLS pooling).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from lorasec.models.layers import Dense, Embed, LayerNorm, attention, default_float, dropout, gelu

LAYER_NORM_EPS = 1e-12  # BERT's


class SelfAttention(nnx.Module):
    def __init__(self, d_model: int, num_heads: int, *, attention_dropout: float = 0.0, rngs: nnx.Rngs):
        dt = default_float()
        self.num_heads = num_heads
        self.attention_dropout = attention_dropout
        self.query = Dense(d_model, d_model, param_dtype=dt, rngs=rngs)
        self.key = Dense(d_model, d_model, param_dtype=dt, rngs=rngs)
        self.value = Dense(d_model, d_model, param_dtype=dt, rngs=rngs)
        self.output = Dense(d_model, d_model, param_dtype=dt, rngs=rngs)

    def __call__(self, x: jax.Array, mask: jax.Array, rngs: nnx.Rngs | None) -> jax.Array:
        batch, length, d_model = x.shape
        shape = (batch, length, self.num_heads, d_model // self.num_heads)
        q = self.query(x, rngs).reshape(shape)
        k = self.key(x, rngs).reshape(shape)
        v = self.value(x, rngs).reshape(shape)
        attended = attention(q, k, v, mask, self.attention_dropout, rngs)
        return self.output(attended.reshape(batch, length, d_model), rngs)


class EncoderLayer(nnx.Module):
    def __init__(self, d_model: int, num_heads: int, d_ff: int, dropout: float, *, attention_dropout: float = 0.0,
                 rngs: nnx.Rngs):
        dt = default_float()
        self.dropout = dropout
        self.attention = SelfAttention(d_model, num_heads, attention_dropout=attention_dropout, rngs=rngs)
        self.attention_norm = LayerNorm(d_model, epsilon=LAYER_NORM_EPS, param_dtype=dt, rngs=rngs)
        self.intermediate = Dense(d_model, d_ff, param_dtype=dt, rngs=rngs)
        self.output = Dense(d_ff, d_model, param_dtype=dt, rngs=rngs)
        self.output_norm = LayerNorm(d_model, epsilon=LAYER_NORM_EPS, param_dtype=dt, rngs=rngs)

    def __call__(self, x: jax.Array, mask: jax.Array, rngs: nnx.Rngs | None) -> jax.Array:
        x = self.attention_norm(x + dropout(self.attention(x, mask, rngs), self.dropout, rngs))
        hidden = gelu(self.intermediate(x, rngs))
        return self.output_norm(x + dropout(self.output(hidden, rngs), self.dropout, rngs))


class TransformerEncoder(nnx.Module):
    """Token + position (+ BERT's segment-0) embeddings, embedding layer norm, ``num_layers`` encoder layers."""

    def __init__(self, arch, *, rngs: nnx.Rngs):
        dt = default_float()
        self.dropout = arch.dropout
        self.word_embeddings = Embed(arch.vocab_size, arch.d_model, param_dtype=dt, rngs=rngs)
        self.position_embeddings = Embed(arch.max_positions, arch.d_model, param_dtype=dt, rngs=rngs)
        if arch.type_vocab_size:
            self.token_type_embeddings = Embed(arch.type_vocab_size, arch.d_model, param_dtype=dt, rngs=rngs)
        self.embedding_norm = LayerNorm(arch.d_model, epsilon=LAYER_NORM_EPS, param_dtype=dt, rngs=rngs)
        self.layers = nnx.List([EncoderLayer(arch.d_model, arch.num_heads, arch.d_ff, arch.dropout,
                                             attention_dropout=arch.attention_dropout, rngs=rngs)
                                for _ in range(arch.num_layers)])

    def __call__(self, tokens: jax.Array, mask: jax.Array, rngs: nnx.Rngs | None = None) -> jax.Array:
        # Per-example ids for all three tables (not one shared row of positions), so each example's embedding
        # gradients stay its own under capture.
        positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
        x = self.word_embeddings(tokens) + self.position_embeddings(positions)
        if hasattr(self, "token_type_embeddings"):
            x = x + self.token_type_embeddings(jnp.zeros_like(tokens))
        x = dropout(self.embedding_norm(x), self.dropout, rngs)
        for layer in self.layers:
            x = layer(x, mask, rngs)
        return x


def mean_pool(hidden: jax.Array, mask: jax.Array) -> jax.Array:
    weights = mask.astype(hidden.dtype)[..., None]
    return (hidden * weights).sum(axis=1) / jnp.maximum(weights.sum(axis=1), 1.0)


class TransformerClassifier(nnx.Module):
    """Encoder, pooling (masked mean, or BERT's tanh pooler on [CLS]), dropout (``arch.pooled_dropout``) and a
    linear ``head``."""

    def __init__(self, arch, num_classes: int, *, rngs: nnx.Rngs):
        dt = default_float()
        self.pooling = arch.pooling
        self.dropout = arch.pooled_dropout
        self.encoder = TransformerEncoder(arch, rngs=rngs)
        if arch.pooling == "cls":
            self.pooler = Dense(arch.d_model, arch.d_model, param_dtype=dt, rngs=rngs)
        self.head = Dense(arch.d_model, num_classes, param_dtype=dt, rngs=rngs)

    def features(self, tokens, mask, rngs=None) -> jax.Array:
        hidden = self.encoder(tokens, mask, rngs)
        if self.pooling == "cls":
            return jnp.tanh(self.pooler(hidden[:, 0], rngs))
        return mean_pool(hidden, mask)

    def __call__(self, tokens, mask, rngs: nnx.Rngs | None = None) -> jax.Array:
        return self.head(dropout(self.features(tokens, mask, rngs), self.dropout, rngs), rngs)


class MaskedLM(nnx.Module):
    """BERT's pretraining head: dense + GELU + layer norm, decoder tied to the word embeddings."""

    def __init__(self, arch, *, rngs: nnx.Rngs):
        dt = default_float()
        self.encoder = TransformerEncoder(arch, rngs=rngs)
        self.transform = Dense(arch.d_model, arch.d_model, param_dtype=dt, rngs=rngs)
        self.transform_norm = LayerNorm(arch.d_model, epsilon=LAYER_NORM_EPS, param_dtype=dt, rngs=rngs)
        self.decoder_bias = nnx.Param(jnp.zeros((arch.vocab_size,), dt))

    def __call__(self, tokens, mask, rngs: nnx.Rngs | None = None) -> jax.Array:
        hidden = self.encoder(tokens, mask, rngs)
        hidden = self.transform_norm(gelu(self.transform(hidden)))
        return hidden @ self.encoder.word_embeddings.embedding[...].T + self.decoder_bias[...]

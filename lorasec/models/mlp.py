"""MLP classifier: token embeddings averaged over the mask (a bag of words), ReLU hidden layers, a ``head``."""

from __future__ import annotations

import jax
from flax import nnx

from lorasec.models.layers import Dense, Embed, default_float
from lorasec.models.transformer import mean_pool


class MLPClassifier(nnx.Module):
    def __init__(self, arch, num_classes: int, *, rngs: nnx.Rngs):
        dt = default_float()
        self.embeddings = Embed(arch.vocab_size, arch.d_model, param_dtype=dt, rngs=rngs)
        widths = (arch.d_model, *arch.mlp_hidden)
        self.layers = nnx.List([Dense(a, b, param_dtype=dt, rngs=rngs) for a, b in zip(widths[:-1], widths[1:])])
        self.head = Dense(widths[-1], num_classes, param_dtype=dt, rngs=rngs)

    def __call__(self, tokens, mask, rngs: nnx.Rngs | None = None) -> jax.Array:
        x = mean_pool(self.embeddings(tokens), mask)
        for layer in self.layers:
            x = jax.nn.relu(layer(x, rngs))
        return self.head(x, rngs)

"""The building blocks every lorasec model shares: its linear, embedding and normalisation layers, dropout,
attention, the float type.

Every model's linear layers are :class:`Dense`. A model calls each one as ``layer(x, rngs)``, so anything that
wraps a layer (an adapter, in :mod:`lorasec.adapters`) can draw its own dropout from the step's keys while the
model knows nothing about it. Under :func:`flax.nnx.capture` a Dense layer records its input (``nnx.Intermediate``
``"inputs"``) and exposes its output to a perturbation (``nnx.Perturbation`` ``"outputs"``), whose gradient is
the backward signal ∂f/∂h: the structured kernels and the alignment diagnostics read a plain or adapted model
through these, with no change to the model. :class:`Embed` (its token ids) and :class:`LayerNorm` (its input) do
the same, so the full-parameter kernel covers every weight a model has. Outside a capture all are skipped.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def default_float():
    """float32, or float64 when JAX_ENABLE_X64 is on (then the whole model computes in double precision)."""
    return jax.dtypes.canonicalize_dtype(jnp.float64)


def capturing(module: nnx.Module) -> bool:
    """Whether ``module`` runs inside :func:`flax.nnx.capture` (which sets ``__captures__`` for the call)."""
    return hasattr(module, "__captures__")


def recorded(module: nnx.Module, inputs: jax.Array, output: jax.Array) -> jax.Array:
    """``output``, and under capture ``inputs`` sown and ``output`` exposed to a zero perturbation (whose gradient
    is the backward signal at it); outside a capture ``output`` alone."""
    if not capturing(module):
        return output
    module.sow(nnx.Intermediate, "inputs", inputs)
    return module.perturb("outputs", output)


class Dense(nnx.Linear):
    """``y = x @ kernel + bias`` (Flax's ``nnx.Linear``), recording its input and output signal under capture."""

    def __call__(self, x: jax.Array, rngs: nnx.Rngs | None = None) -> jax.Array:
        # Tokens on one axis, so the kernel's gradient contracts a single axis: contracting (batch, length), XLA's
        # CPU backend copied the output gradient transposed and ran a slower product.
        rows = super().__call__(x.reshape(-1, x.shape[-1]))
        return recorded(self, x, rows.reshape(*x.shape[:-1], rows.shape[-1]))


class Embed(nnx.Embed):
    """Flax's ``nnx.Embed``, recording its ids and output signal under capture."""

    def __call__(self, inputs: jax.Array) -> jax.Array:
        return recorded(self, inputs, super().__call__(inputs))


class LayerNorm(nnx.LayerNorm):
    """Flax's ``nnx.LayerNorm`` over the last axis, recording its input and output signal under capture."""

    def __call__(self, x: jax.Array) -> jax.Array:
        return recorded(self, x, super().__call__(x))


def set_compute_dtype(model: nnx.Module, dtype) -> None:
    """Make every linear layer of ``model`` multiply in ``dtype`` (inputs, kernel and bias cast; output in
    ``dtype``), as PyTorch's autocast does: embeddings, layer norms, softmax, residual sums and the loss keep
    their float32, and so do the weights (the cast's gradient flows back to them). For a model merged inside a
    training step; evaluation builds its own."""
    for _, module in nnx.iter_modules(model):
        if isinstance(module, nnx.Linear):
            module.dtype = dtype


def gelu(x: jax.Array) -> jax.Array:
    """Exact GELU, ``x·Φ(x) = x/2·(1 + erf(x/√2))`` (Hendrycks & Gimpel 2016), in BERT's and PyTorch's form.

    ``jax.nn.gelu(approximate=False)`` writes the same function through ``erfc``, which XLA's CPU backend
    evaluates piecewise, more slowly than ``erf``. The two agree to float32 rounding (9.5e-7 absolute on
    [−12, 12], the derivative to 2.4e-7)."""
    return 0.5 * x * (1.0 + jax.lax.erf(x * 0.7071067811865476))


def dropout(x: jax.Array, rate: float, rngs: nnx.Rngs | None) -> jax.Array:
    """Inverted dropout drawing from ``rngs.dropout()``; the identity without keys (evaluation) or at rate 0."""
    if rngs is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(rngs.dropout(), 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, dropout_rate: float = 0.0,
              rngs: nnx.Rngs | None = None) -> jax.Array:
    """Scaled dot-product attention over (batch, length, heads, head_dim) with a key mask (batch, length), and
    BERT's dropout on the attention probabilities when ``rngs`` are given.

    Without dropout, the same computation as ``jax.nn.dot_product_attention``'s XLA path (bit for bit in float32),
    except that the softmax runs in the logits' own precision: float64 under JAX_ENABLE_X64, where JAX's keeps
    float32."""
    dtype = jnp.promote_types(q.dtype, jnp.float32)
    logits = jnp.einsum("BTNH,BSNH->BNTS", q, k, preferred_element_type=dtype)
    logits *= jnp.array(1.0 / np.sqrt(q.shape[-1]), dtype)
    floor = -0.7 * min(float(jnp.finfo(dtype).max), float(jnp.finfo(jnp.float32).max))
    logits = jnp.where(mask[:, None, None, :], logits, jnp.asarray(floor, dtype))
    probs = dropout(jax.nn.softmax(logits, axis=-1).astype(k.dtype), dropout_rate, rngs)
    return jnp.einsum("BNTS,BSNH->BTNH", probs, v)

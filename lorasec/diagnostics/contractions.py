"""Kernel entries from layer inputs and backward signals: the sums over positions that the structured kernels share.

For a parameter used at positions t of an example, with backward signals ``δ_{c,t}`` at the module's output
(``c`` an output of the model), the kernel between examples i and j is the inner product of their gradients. Each
function here returns it without forming a gradient larger than one layer's, as (N1, N2, C, C), or (N1, N2, C)
(the diagonal c = d only) with ``diagonal=True``:

- :func:`pair_term`, a weight matrix applied as ``u_t ⊗ v_{c,t}``: Σ_{t,t'} ⟨u_t, u'_t'⟩⟨v_{c,t}, v'_{d,t'}⟩
  (paper 1, Lemma 3.1, for dense layers and LoRA factors);
- :func:`summed_term`, a vector added at every position (a bias, a LayerNorm shift): ⟨Σ_t v_{c,t}, Σ_t' v'_{d,t'}⟩;
- :func:`embedding_term`, table rows looked up by id: Σ_{t,t'} 1[id_t = id'_t'] ⟨δ_{c,t}, δ'_{d,t'}⟩;
- :func:`layer_norm_terms`, ``γ ⊙ n(x) + β``: ⟨Σ_t n_t ⊙ δ_{c,t}, Σ_t' n'_t' ⊙ δ'_{d,t'}⟩ and the shift's summed term.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# How much slower per operation the gradient-block order's products (a reduction over p·q, with few rows) run than
# the Gram order's on XLA's CPU backend: a calibration made once at MiniLM's shapes (blocks of 32 examples).
BLOCK_ORDER_SLOWDOWN = 4


def gram_order(n1: int, n2: int, t1: int, t2: int, p: int, q: int, c: int, diagonal: bool) -> bool:
    """Whether :func:`pair_term` multiplies Gram matrices (else gradient blocks) for these shapes."""
    pairs = c if diagonal else c * c
    gram_cost = n1 * n2 * t1 * t2 * (p + pairs * q)
    block_cost = (n1 * t1 + n2 * t2) * c * p * q + n1 * n2 * pairs * p * q
    return gram_cost <= BLOCK_ORDER_SLOWDOWN * block_cost


def _outer(diagonal: bool) -> str:
    return "ijc" if diagonal else "ijcd"


def pair_term(u1, u2, v1, v2, diagonal: bool = False):
    """Σ_{t,t'} ⟨u_{i,t}, u_{j,t'}⟩ ⟨v_{i,c,t}, v_{j,d,t'}⟩ for u (N, T, p) and v (N, C, T, q).

    Either the two Gram matrices over positions are multiplied (no gradient is formed), or each example's outer
    products are summed first, Σ_t u_t ⊗ v_{c,t}, the (p × q) gradient block of that layer's weight, and their
    inner products taken. The order is chosen by operation count, the second weighted by
    :data:`BLOCK_ORDER_SLOWDOWN`."""
    n1, t, p = u1.shape
    n2, c, q = u2.shape[0], v1.shape[1], v1.shape[-1]
    if gram_order(n1, n2, t, u2.shape[1], p, q, c, diagonal):
        signal_gram = jnp.einsum(f"ictq,{'jcsq' if diagonal else 'jdsq'}->{'icjts' if diagonal else 'icjdts'}", v1, v2)
        return jnp.einsum(f"itjs,{'icjts' if diagonal else 'icjdts'}->{_outer(diagonal)}",
                          jnp.einsum("itp,jsp->itjs", u1, u2), signal_gram)
    g1 = jnp.einsum("itp,ictq->icpq", u1, v1)
    g2 = jnp.einsum("itp,ictq->icpq", u2, v2)
    return jnp.einsum(f"icpq,{'jcpq' if diagonal else 'jdpq'}->{_outer(diagonal)}", g1, g2)


def summed_term(v1, v2, diagonal: bool = False):
    """⟨Σ_t v_{i,c,t}, Σ_t' v_{j,d,t'}⟩ for v (N, C, T, q): the kernel of a vector added at every position."""
    s1, s2 = v1.sum(axis=2), v2.sum(axis=2)
    return jnp.einsum(f"icq,{'jcq' if diagonal else 'jdq'}->{_outer(diagonal)}", s1, s2)


def embedding_term(ids1, ids2, v1, v2, diagonal: bool = False):
    """Σ_{t,t'} 1[id_{i,t} = id_{j,t'}] ⟨δ_{i,c,t}, δ_{j,d,t'}⟩ for ids (N, T) and δ (N, C, T, d): the kernel of
    an embedding table, whose gradient puts δ_t in row id_t."""
    same = (ids1[:, :, None, None] == ids2[None, None, :, :]).astype(v1.dtype)   # (N1, T, N2, T')
    signal_gram = jnp.einsum(f"ictq,{'jcsq' if diagonal else 'jdsq'}->{'icjts' if diagonal else 'icjdts'}", v1, v2)
    return jnp.einsum(f"itjs,{'icjts' if diagonal else 'icjdts'}->{_outer(diagonal)}", same, signal_gram)


def normalised(x, epsilon: float):
    """``(x − mean) / sqrt(var + ε)`` over the last axis: a LayerNorm's input before its scale and shift."""
    mean = x.mean(axis=-1, keepdims=True)
    var = jnp.square(x - mean).mean(axis=-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + epsilon)


def layer_norm_terms(x1, x2, v1, v2, epsilon: float, diagonal: bool = False):
    """(scale term, shift term) of a LayerNorm ``γ ⊙ n(x) + β`` with inputs x (N, T, d) and δ (N, C, T, d)."""
    g1 = jnp.einsum("ictd,itd->icd", v1, normalised(x1, epsilon))
    g2 = jnp.einsum("ictd,itd->icd", v2, normalised(x2, epsilon))
    scale = jnp.einsum(f"icd,{'jcd' if diagonal else 'jed'}->{'ijc' if diagonal else 'ijce'}", g1, g2)
    return scale, summed_term(v1, v2, diagonal)

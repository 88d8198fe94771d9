"""The model's building blocks against JAX's own: attention and GELU, in float32 and float64."""

import jax
import jax.numpy as jnp
import numpy as np

from lorasec.models.layers import attention, gelu


def test_attention_matches_jax_in_float32_and_computes_float64_in_x64(x64):
    keys = jax.random.split(jax.random.key(0), 3)
    mask = jnp.ones((2, 5), bool).at[1, 3:].set(False)
    q, k, v = (jax.random.normal(key, (2, 5, 2, 4), jnp.float32) for key in keys)
    ours = attention(q, k, v, mask)
    ref = jax.nn.dot_product_attention(q, k, v, mask=mask[:, None, None, :])
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(ref))
    q64, k64, v64 = (x.astype(jnp.float64) for x in (q, k, v))
    exact = attention(q64, k64, v64, mask)
    assert exact.dtype == jnp.float64
    # JAX's softmax stays float32 even for float64 inputs; ours does not.
    jax_error = float(jnp.abs(jax.nn.dot_product_attention(q64, k64, v64, mask=mask[:, None, None, :]) - exact).max())
    logits = jnp.einsum("btnh,bsnh->bnts", q64, k64) / 2.0
    probs = jax.nn.softmax(jnp.where(mask[:, None, None, :], logits, -jnp.inf), axis=-1)
    reference = jnp.einsum("bnts,bsnh->btnh", probs, v64)
    assert float(jnp.abs(exact - reference).max()) < 1e-14 < jax_error


def test_gelu_is_jaxs_exact_gelu_to_rounding_in_float32_and_float64(x64):
    """lorasec's GELU (erf) against ``jax.nn.gelu(approximate=False)`` (erfc): the same function, values and
    derivatives within a few float32 roundings, and within 1e-14 in float64; the tanh approximation is not."""
    for dtype, tolerance in ((jnp.float32, 2e-6), (jnp.float64, 1e-14)):
        x = jnp.linspace(-12.0, 12.0, 100_001, dtype=dtype)
        ours, reference = gelu(x), jax.nn.gelu(x, approximate=False)
        assert ours.dtype == dtype
        np.testing.assert_allclose(ours, reference, rtol=0, atol=tolerance)
        slope = jax.vmap(jax.grad(gelu))(x)
        np.testing.assert_allclose(slope, jax.vmap(jax.grad(lambda t: jax.nn.gelu(t, approximate=False)))(x),
                                   rtol=0, atol=tolerance)
        assert float(jnp.abs(jax.nn.gelu(x, approximate=True) - ours).max()) > 100 * tolerance

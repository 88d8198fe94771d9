"""The machine's matrix-product peak through JAX, measured in the benchmark's own run (imported by the benchmarks,
which run as scripts from this folder)."""

from __future__ import annotations

import time


def matmul_peak(dtype: str = "float32") -> float:
    """FLOP/s of a square product through JAX (2048 on a CPU, 8192 on a GPU), best of 10 after a compile call."""
    import jax
    import jax.numpy as jnp

    n = 8192 if jax.default_backend() == "gpu" else 2048
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.dtype(dtype))
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    times = []
    for _ in range(10):
        began = time.perf_counter()
        f(a).block_until_ready()
        times.append(time.perf_counter() - began)
    return 2 * n**3 / min(times)

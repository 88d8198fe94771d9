"""Speed of lorasec's structured LoRA NTK against neural-tangents' implementations on the same subset.

Run on demand:  uv run python benchmarks/ntk_speed.py [--n 64] [--repeats 5]
Prints the median wall time of each (after a compile call) and the ratio to the structured kernel, all
measured in this one run. Also checks that the kernels agree, so a fast wrong kernel cannot win.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lorasec.adapters import lora
from lorasec.config import AdapterConfig, ModelConfig
from lorasec.diagnostics import kernel
from lorasec.diagnostics.nt_compat import SUPPORTED_IMPLEMENTATIONS
from lorasec.models import Architecture, build_classifier


def _timed(fn, repeats):
    jax.block_until_ready(fn())  # compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return float(np.median(times)), fn()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=64, help="examples (kernel is n x n x C x C)")
    parser.add_argument("--kind", default="transformer", choices=["transformer", "mlp"])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    arch = Architecture.from_config(ModelConfig(kind=args.kind, d_model=64, num_layers=2, num_heads=4, d_ff=128,
                                                dropout=0.0, mlp_hidden=(256, 256)), 500, 32)
    model = build_classifier(arch, 2, rngs=nnx.Rngs(0))
    lora.apply_lora(model, AdapterConfig(rank=8, alpha=16), rngs=nnx.Rngs(1))
    for i, layer in enumerate(lora.lora_layers(model).values()):  # trained-like Bs, so both kernel terms are live
        layer.lora_b[...] = 0.05 * jax.random.normal(jax.random.key(2 + i), layer.lora_b[...].shape)
    tokens = jax.random.randint(jax.random.key(3), (args.n, 32), 5, 500)
    mask = jnp.ones(tokens.shape, bool)
    print(f"{args.kind}, LoRA r=8 on all linear layers, N={args.n}, full (N,N,C,C) kernel, "
          f"backend {jax.default_backend()}")
    base, ours = _timed(lambda: kernel.structured_lora_ntk(model, tokens, mask, trace_axes=()), args.repeats)
    print(f"  structured (lorasec)        {base * 1e3:9.1f} ms   1.0x")
    for implementation in SUPPORTED_IMPLEMENTATIONS:
        seconds, ref = _timed(lambda: kernel.empirical_ntk(model, tokens, mask, trace_axes=(),
                                                            implementation=implementation), args.repeats)
        error = float(jnp.abs(ref - ours).max() / jnp.abs(ref).max())
        print(f"  neural-tangents impl {implementation}      {seconds * 1e3:9.1f} ms   "
              f"{seconds / base:5.1f}x slower than structured   (max rel. difference {error:.1e})")


if __name__ == "__main__":
    main()

"""How much of a lorasec training step its matrix products alone take: the floor XLA's CPU kernels set.

    uv run python benchmarks/matmul_floor.py [--models tiny,minilm] [--methods lora,full]

For each model and method of ``benchmarks/vs_peft.py`` (same weights, batch 32, same LoRA), the step is compiled and
every ``dot`` in its optimised HLO (inside fusions too) is run on its own, with its shapes and dimension numbers, 16
copies per call so that dispatch is amortised. Printed: the step's time (several steps per call, as ``fit`` trains),
the sum of its products timed alone, their FLOPs and rate, and the share of the step they account for. A step cannot
beat the sum of its products by more than what fusion saves them in memory traffic; what is left above it is
elementwise work (layer norms, softmax, GELU, AdamW), layout copies and dispatch. Both numbers come from the same
run: on a shared machine, compare them, not runs made at different times.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import vs_peft  # noqa: E402  (a script beside this one: shared workloads)

from lorasec.core import machine  # noqa: E402

COPIES = 16


def _timed(fn, *args, repeats: int = 100) -> float:
    import jax

    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def products(hlo: str) -> list[tuple[tuple, tuple, tuple]]:
    """``(lhs shape, rhs shape, dimension numbers)`` of every ``dot`` in an optimised HLO text."""
    shapes = {m.group(1): tuple(int(v) for v in m.group(2).split(",") if v)
              for m in re.finditer(r"%(\S+) = \w+\[([\d,]*)\]", hlo)}
    found = []
    for m in re.finditer(r"= \w+\[[\d,]*\]\S* dot\(%(\S+?), %(\S+?)\), (.*)", hlo):
        def dims(key, text=m.group(3)):
            hit = re.search(key + r"=\{([\d,]*)\}", text)
            return tuple(int(v) for v in hit.group(1).split(",") if v) if hit else ()

        found.append((shapes[m.group(1)], shapes[m.group(2)],
                      ((dims("lhs_contracting_dims"), dims("rhs_contracting_dims")),
                       (dims("lhs_batch_dims"), dims("rhs_batch_dims")))))
    return found


def product_seconds(lhs: tuple, rhs: tuple, numbers: tuple) -> float:
    """One product's time, from a call running ``COPIES`` of it on different left operands."""
    import jax
    import jax.numpy as jnp

    lefts = [jnp.full(lhs, 1.0 + k, jnp.float32) for k in range(COPIES)]
    right = jnp.ones(rhs, jnp.float32)
    many = jax.jit(lambda xs, y: [jax.lax.dot_general(x, y, numbers) for x in xs])
    empty = jax.jit(lambda xs, y: y)
    return max(_timed(many, lefts, right) - _timed(empty, lefts, right), 0.0) / COPIES


def flops(lhs: tuple, rhs: tuple, numbers: tuple) -> float:
    (_, rhs_contracting), (_, rhs_batch) = numbers
    free = [size for axis, size in enumerate(rhs) if axis not in rhs_contracting and axis not in rhs_batch]
    return 2.0 * float(np.prod(lhs)) * float(np.prod(free))


def measure(name: str, method: str, work: Path, per_call: int) -> dict:
    import jax

    seq_len = vs_peft.MODELS[name][0]
    model_dir, arch = vs_peft._prepare_model(name, work)
    args = type("Args", (), dict(model_dir=model_dir, seq_len=seq_len, method=method, dropout=0.0,
                                 dtype="float32"))()
    step = vs_peft._lorasec_step(args)
    batches = vs_peft._batches(per_call, seq_len, arch["vocab_size"])
    stacked = jax.device_put({k: np.stack([b[k] for b in batches]) for k in batches[0]})
    step_seconds = _timed(step.run, stacked, repeats=max(3, 200 // per_call)) / per_call
    hlo = step.compiled(batches[0]).as_text()
    found = products(hlo)
    seconds, cache = 0.0, {}
    for product in found:
        if product not in cache:
            cache[product] = product_seconds(*product)
        seconds += cache[product]
    total_flops = sum(flops(*product) for product in found)
    return {"model": name, "method": method, "step_ms": 1e3 * step_seconds, "products": len(found),
            "products_ms": 1e3 * seconds, "gflop": total_flops / 1e9, "products_gflops": total_flops / seconds / 1e9,
            "share": seconds / step_seconds}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tiny,minilm")
    parser.add_argument("--methods", default="lora,full")
    parser.add_argument("--per-call", type=int, default=25, help="steps per call when timing the step")
    parser.add_argument("--work", default="runs/vs_peft", help="where vs_peft.py writes its random BERTs")
    args = parser.parse_args(argv)
    unknown = [m for m in args.models.split(",") if m not in vs_peft.MODELS]
    if unknown:
        parser.error(f"--models: {unknown[0]!r} is not one of {', '.join(vs_peft.MODELS)}")
    if any(m not in ("lora", "full") for m in args.methods.split(",")):
        parser.error("--methods: lora, full or both")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    print(f"{machine.processor()}\n")
    print("| step | step time | its products alone | products | GFLOP | products' GFLOP/s | share of the step |")
    print("|---|---|---|---|---|---|---|")
    for name in args.models.split(","):
        for method in args.methods.split(","):
            r = measure(name, method, work, args.per_call)
            print(f"| {name} {method} | {r['step_ms']:.2f} ms | {r['products_ms']:.2f} ms | {r['products']} | "
                  f"{r['gflop']:.3f} | {r['products_gflops']:.0f} | {100 * r['share']:.0f}% |", flush=True)


if __name__ == "__main__":
    main()

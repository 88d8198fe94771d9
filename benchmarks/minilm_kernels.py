"""MiniLM-L6's NTKs on Rotten Tomatoes: lorasec's structured kernels against neural-tangents, time and peak memory.

Run on demand:
  uv run python benchmarks/minilm_kernels.py                # N = 64: structured vs neural-tangents, both subsets
  uv run python benchmarks/minilm_kernels.py --n 256 --only structured   # issue 12's bound: ≤ 10 min, ≤ 8 GB

The model is MiniLM-L6 as fine-tuning would start (fetched weights, a fresh 2-class head, LoRA probes r 8 on query
and value with peft's A init and B = 0), on the first N test sentences at ``--seq-len`` tokens. Every measurement
runs in a fresh process, so its wall time includes compilation (a kernel is computed once) and its peak resident
memory is its own. neural-tangents runs whole when its Jacobians fit in memory, else in the largest blocks that fit
(lorasec's estimate), else is reported refused with the memory it would need. Ratios are against the structured
kernel measured in the same run, and each neural-tangents kernel is compared with it entry by entry.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _model_and_inputs(n: int, seq_len: int):
    from lorasec.config import load_config
    from lorasec.pipelines.ntk_report import with_probe_adapters
    from lorasec.pipelines.run import prepare_model

    cfg = load_config(None, ["data.source=rotten-tomatoes", "data.num_classes=2", f"data.seq_len={seq_len}",
                             "model.pretrained=minilm-l6", "model.pooling=mean", "adapter.rank=8",
                             "adapter.alpha=16", 'adapter.targets=["query", "value"]'])
    model, test, encoder = prepare_model(cfg)
    model = with_probe_adapters(model, cfg)
    tokens, mask = encoder.encode(test.texts[:n])
    return model, tokens, mask


def measure(path: str, n: int, seq_len: int, out: str) -> None:
    """One kernel in this process: ``structured-full``, ``structured-lora``, ``nt1-full``, ``nt2-lora``, ..."""
    from lorasec.core import memory
    from lorasec.diagnostics import blocks, full_kernel, kernel

    model, tokens, mask = _model_and_inputs(n, seq_len)
    method, subset = path.split("-")
    start = time.perf_counter()
    note = ""
    try:
        if method == "structured" and subset == "full":
            block = blocks.block_size_for(
                lambda b: full_kernel.estimate_bytes(model, n, n, seq_len, b, diagonal=False), n, "kernel")
            estimate = full_kernel.estimate_bytes(model, n, n, seq_len, block, diagonal=False)
            note = f"in blocks of {block}"
            k = full_kernel.structured_full_ntk(model, tokens, mask, trace_axes=(), block_size=block)
        elif method == "structured":
            k = kernel.structured_lora_ntk(model, tokens, mask, trace_axes=())
            estimate = 0
        else:
            implementation = int(method[2:])
            estimate = kernel.jacobian_bytes(model, subset, n, n, seq_len)
            block = 0
            if estimate > memory.usable():
                block = next((b for b in blocks.candidate_blocks(n)[1:]
                              if kernel.jacobian_bytes(model, subset, b, b, seq_len) <= memory.usable()), 0)
                note = f"in blocks of {block}"
            k = kernel.empirical_ntk(model, tokens, mask, subset=subset, trace_axes=(),
                                     implementation=implementation, block_size=block)
    except (memory.MemoryEstimateError, MemoryError) as err:
        Path(out).write_text(json.dumps({"refused": str(err)}))
        return
    k = np.asarray(k, np.float64)
    seconds = time.perf_counter() - start
    np.save(Path(out).with_suffix(".npy"), k)
    Path(out).write_text(json.dumps({"seconds": seconds, "peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                                     / 2**20, "estimate_gb": estimate / 2**30, "note": note}))


def _run(path: str, n: int, seq_len: int, folder: Path) -> dict:
    out = folder / f"{path}.json"
    subprocess.run([sys.executable, __file__, "--measure", path, "--n", str(n), "--seq-len", str(seq_len),
                    "--out", str(out)], check=True)
    result = json.loads(out.read_text())
    if "seconds" in result:
        result["kernel"] = np.load(out.with_suffix(".npy"))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=64, help="examples (the kernel is N x N x 2 x 2)")
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--only", choices=["structured", "all"], default="all")
    parser.add_argument("--subsets", nargs="+", default=["full", "lora"], choices=["full", "lora"])
    parser.add_argument("--implementations", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        measure(args.measure, args.n, args.seq_len, args.out)
        return
    print(f"MiniLM-L6, Rotten Tomatoes, N={args.n}, {args.seq_len} tokens, full (N,N,2,2) kernels, one fresh "
          f"process each (wall time includes compilation; peak = its resident memory)")
    with tempfile.TemporaryDirectory() as folder:
        for subset in args.subsets:
            ours = _run(f"structured-{subset}", args.n, args.seq_len, Path(folder))
            print(f"  {subset:4s} structured (lorasec)   {ours['seconds']:8.1f} s   peak {ours['peak_gb']:5.2f} GB"
                  + (f" (estimate {ours['estimate_gb']:.2f} GB beyond the loaded model)" if ours["estimate_gb"] else "")
                  + f"   1.0x   {ours['note']}")
            if args.only == "structured":
                continue
            for implementation in args.implementations:
                ref = _run(f"nt{implementation}-{subset}", args.n, args.seq_len, Path(folder))
                label = f"  {subset:4s} neural-tangents impl {implementation}"
                if "refused" in ref:
                    print(f"{label}  refused: {ref['refused']}")
                    continue
                error = np.abs(ref["kernel"] - ours["kernel"]).max() / np.abs(ref["kernel"]).max()
                print(f"{label}  {ref['seconds']:8.1f} s   peak {ref['peak_gb']:5.2f} GB   "
                      f"{ref['seconds'] / ours['seconds']:5.2f}x the structured time   {ref['note']}  "
                      f"(max rel. difference {error:.1e})")


if __name__ == "__main__":
    main()

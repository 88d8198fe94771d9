"""Seeds as one ensemble against one seed and against the same seeds trained one after another.

Run on demand:  uv run python benchmarks/sweep_speed.py [--model tiny|minilm] [--seeds 16] [--steps 300]

``tiny`` is lorasec's default synthetic task and encoder (2 layers, d 64, 4 heads, sequence 32, batch 32, LoRA r 8
on every linear layer); ``minilm`` is the fetched MiniLM-L6 on Rotten Tomatoes (sequence 64, batch 32, LoRA r 8,
α 16 on query and value; run `lorasec fetch minilm-l6 rotten-tomatoes` once). Every arm is timed in this one
run from the start of training to its last step (compilation included, as a user waits for it), on the same
prepared members; the serial arm trains each seed as its own `fit`, as separate `lorasec train` runs would. The
target of issue 10: S seeds in one ensemble in at most 4x the wall time of one seed.
"""

from __future__ import annotations

import argparse
import time

import jax

from lorasec import config
from lorasec.adapters import lora
from lorasec.pipelines.run import loss_function, prepare_run
from lorasec.training.trainer import fit_ensemble


def _configs(model: str, seeds: int, steps: int) -> list[config.RunConfig]:
    train = {"steps": steps, "batch_size": 32, "lr": 1e-3, "log_every": 25, "checkpoint_every": 10**6}
    if model == "tiny":
        base = {"data": {"num_train": 2000}, "adapter": {"rank": 8, "alpha": 16}, "train": train,
                "model": {"dropout": 0.1}, "attack": {"kind": "badnets", "poison_rate": 0.05}}
    else:
        base = {"data": {"source": "rotten-tomatoes", "seq_len": 64, "max_train": 2000, "max_test": 200},
                "model": {"pretrained": "minilm-l6", "dropout": 0.0},
                "adapter": {"rank": 8, "alpha": 16, "targets": ["query", "value"]},
                "train": train, "attack": {"kind": "badnets", "poison_rate": 0.05}}
    return [config.from_dict(config.RunConfig, {**base, "seed": s}).validate() for s in range(seeds)]


def _train(runs, cfg) -> float:
    began = time.perf_counter()
    result = fit_ensemble([r.member for r in runs], lora.trainable_filter(cfg.adapter), loss_fn=loss_function(cfg),
                          progress=False)
    assert all(d is None for d in result.diverged)
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=["tiny", "minilm"], default="tiny")
    parser.add_argument("--seeds", type=int, default=16)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--no-serial", action="store_true", help="skip the serial arm (it takes seeds x one seed)")
    args = parser.parse_args()
    cfgs = _configs(args.model, args.seeds, args.steps)
    runs = [prepare_run(c) for c in cfgs]
    print(f"{args.model}: {args.seeds} seeds, {args.steps} steps of batch 32, devices: {jax.device_count()} "
          f"{jax.devices()[0].platform}")
    one = _train(runs[:1], cfgs[0])
    ensemble = _train(runs, cfgs[0])
    rows = [("1 seed", one), (f"{args.seeds} seeds, one ensemble", ensemble)]
    if not args.no_serial:
        rows.append((f"{args.seeds} seeds, one after another", sum(_train([r], cfgs[0]) for r in runs)))
    print(f"{'arm':32s} {'wall s':>8s} {'x one seed':>10s} {'s per seed':>10s}")
    for name, seconds in rows:
        per = seconds / (1 if name == "1 seed" else args.seeds)
        print(f"{name:32s} {seconds:8.2f} {seconds / one:10.2f} {per:10.3f}")
    verdict = "met" if ensemble <= 4 * one else "not met"
    print(f"target {args.seeds} seeds <= 4x one seed: {ensemble / one:.2f}x ({verdict})")
    if not args.no_serial:
        print(f"ensemble vs serial: {rows[2][1] / ensemble:.2f}x faster")


if __name__ == "__main__":
    main()

"""Seeds as one ensemble against one seed and against the same seeds trained one after another.

Run on demand:  uv run python benchmarks/sweep_speed.py [--model tiny|minilm] [--seeds 16] [--steps 300]

``tiny`` is lorasec's default synthetic task and encoder (2 layers, d 64, 4 heads, sequence 32, batch 32, LoRA r 8
on every linear layer), fine-tuned from one masked-LM-pretrained encoder (made once, 100 steps, in --work), so that
the seeds share their frozen weights as LoRA runs do; ``minilm`` is the fetched MiniLM-L6 on Rotten Tomatoes (sequence 64, batch 32, LoRA r 8,
α 16 on query and value; run `lorasec fetch minilm-l6 rotten-tomatoes` once). Every arm is timed in this one
run from the start of training to its last step (compilation included, as a user waits for it), on the same
prepared members; the serial arm trains each seed as its own `fit`, as separate `lorasec train` runs would. The
target of issue 10: S seeds in one ensemble in at most 4x the wall time of one seed.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import jax
import numpy as np
from peak import matmul_peak

from lorasec import config
from lorasec.adapters import lora
from lorasec.pipelines.pretrain import pretrain, pretrain_recipe
from lorasec.pipelines.run import loss_function, prepare_run
from lorasec.training.step import TrainStep
from lorasec.training.trainer import fit_ensemble


def _configs(model: str, seeds: int, steps: int, work: Path) -> list[config.RunConfig]:
    train = {"steps": steps, "batch_size": 32, "lr": 1e-3, "log_every": 25, "checkpoint_every": 10**6}
    if model == "tiny":
        encoder = pretrain(pretrain_recipe(config.DataConfig(), config.ModelConfig(), 100), work / "tiny-encoder",
                           progress=False)
        base = {"data": {"num_train": 2000}, "adapter": {"rank": 8, "alpha": 16}, "train": train,
                "model": {"dropout": 0.1, "pretrained": str(encoder)},
                "attack": {"kind": "badnets", "poison_rate": 0.05}}
    else:
        base = {"data": {"source": "rotten-tomatoes", "seq_len": 64, "max_train": 2000, "max_test": 200},
                "model": {"pretrained": "minilm-l6", "dropout": 0.0},
                "adapter": {"rank": 8, "alpha": 16, "targets": ["query", "value"]},
                "train": train, "attack": {"kind": "badnets", "poison_rate": 0.05}}
    return [config.from_dict(config.RunConfig, {**base, "seed": s}).validate() for s in range(seeds)]


def _train(runs, cfg, steps: int) -> float:
    runs = [dataclasses.replace(r, member=dataclasses.replace(r.member, train=dataclasses.replace(
        r.member.train, steps=steps))) for r in runs]
    began = time.perf_counter()
    result = fit_ensemble([r.member for r in runs], lora.trainable_filter(cfg.adapter), loss_fn=loss_function(cfg),
                          progress=False)
    assert all(d is None for d in result.diverged)
    return time.perf_counter() - began


def _step_flops(run, cfg) -> float:
    """XLA's count of one run's training step (forward, backward, AdamW)."""
    step = TrainStep(run.model, lora.trainable_filter(cfg.adapter), cfg.train, seed=cfg.seed,
                     loss_fn=loss_function(cfg), terms=run.member.terms)
    return step.flops(run.member.data.take(np.arange(cfg.train.batch_size)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=["tiny", "minilm"], default="tiny")
    parser.add_argument("--seeds", type=int, default=16)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--work", default="runs/benchmark-sweep", help="where the tiny pretrained encoder is kept")
    parser.add_argument("--no-serial", action="store_true", help="skip the serial arm (it takes seeds x one seed)")
    args = parser.parse_args()
    short = max(1, min(25, args.steps // 4))
    cfgs = _configs(args.model, args.seeds, args.steps, Path(args.work))
    runs = [prepare_run(c) for c in cfgs]
    peak = matmul_peak()
    flops = _step_flops(runs[0], cfgs[0])
    print(f"{args.model}: {args.seeds} seeds, {args.steps} steps of batch 32, devices: {jax.device_count()} "
          f"{jax.devices()[0].platform}; one step {flops / 1e9:.3g} GFLOP (XLA's count); float32 matmul peak "
          f"{peak / 1e9:.0f} GFLOP/s")
    _train(runs[:1], cfgs[0], short)  # the process's one-time costs (thread pools, first traces) are no arm's
    arms = [("1 seed", runs[:1], 1), (f"{args.seeds} seeds, one ensemble", runs, args.seeds)]
    rows = []
    for name, members, count in arms:
        before = _train(members, cfgs[0], short)
        wall = _train(members, cfgs[0], args.steps)
        steady = (wall - before) / (args.steps - short)
        rows.append((name, wall, steady, count))
    if not args.no_serial:
        wall = sum(_train([r], cfgs[0], args.steps) for r in runs)
        rows.append((f"{args.seeds} seeds, one after another", wall, None, args.seeds))
    one = rows[0][1]
    print(f"{'arm':32s} {'wall s':>8s} {'x one seed':>10s} {'ms/step':>8s} {'GFLOP/s':>8s} {'of peak':>8s}")
    for name, wall, steady, count in rows:
        rate = count * flops / steady if steady else None
        print(f"{name:32s} {wall:8.2f} {wall / one:10.2f} "
              + (f"{steady * 1e3:8.2f} {rate / 1e9:8.1f} {rate / peak:8.0%}" if steady else f"{'':8s} {'':8s}"))
    ensemble = rows[1][1]
    floor = (rows[0][1] - args.steps * rows[0][2] + args.steps * args.seeds * flops / peak) / one
    verdict = "met" if ensemble <= 4 * one else "not met"
    print(f"target {args.seeds} seeds <= 4x one seed: {ensemble / one:.2f}x ({verdict}); at this machine's matmul peak "
          f"the ensemble could not go below {floor:.2f}x (one seed's compile + {args.seeds} seeds' FLOPs at peak)")
    if not args.no_serial:
        print(f"ensemble vs serial: {rows[2][1] / ensemble:.2f}x faster")


if __name__ == "__main__":
    main()

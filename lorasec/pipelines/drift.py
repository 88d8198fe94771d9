"""Kernel drift along a run (``lorasec drift RUN_DIR``): the run replayed step for step from its config, the
empirical NTK of its trained parameters measured on a fixed probe every few steps
(:mod:`lorasec.diagnostics.drift`), and the replay checked against the weights the run saved.

Training is a pure function of the config (batches and dropout keys are branches of the seed's key tree), so the
replay retraces the run without its checkpoints, which a finished run no longer keeps. The replay is a separate
program (one run, not a vmapped group with ranks zero-padded), so its float32 sums round differently; training
amplifies that, little at moderate rates (5e-5 of the largest weight for LoRA on the shipped sweep, 2e-3 for full
fine-tuning at lr 1e-3) and without bound where training is chaotic (a tiny model at lr 0.1 ends elsewhere: the
replay is then another trajectory of the same config). The record says how closely (``replay_difference``).
"""

from __future__ import annotations

import time
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from lorasec.adapters import lora
from lorasec.config import ConfigError, RunConfig
from lorasec.diagnostics import drift
from lorasec.pipelines import rundir
from lorasec.pipelines.run import PreparedRun, load_run, loss_function, prepare_run
from lorasec.training.evaluation import EvaluationInputs, evaluation_inputs
from lorasec.training.step import TrainStep
from lorasec.training.trainer import batch_indices


def run_probe(prepared: PreparedRun, inputs: EvaluationInputs, size: int) -> drift.Probe:
    """The probe of a prepared run: its test set clean and with the attack's first trigger (no triggered rows
    without one), and its poisoned training examples."""
    triggered = next(iter(inputs.triggered.values()), None)
    data, rows = prepared.member.data, np.asarray(sorted(prepared.poisoned.indices), np.int64)
    return drift.probe_set(inputs.clean, triggered, inputs.labels,
                           (data.tokens[rows], data.mask[rows], data.labels[rows]), prepared.cfg.attack.target_label,
                           size)


def replay(cfg: RunConfig, *, every: int, probe_size: int = 64, finished: str | Path | None = None) -> dict:
    """Retrain ``cfg`` with the kernel measured on its probe at step 0, every ``every`` steps and at the end.

    Args:
        cfg: a validated run config (not with RoRA's Pt, which changes the model only after training).
        every: steps between snapshots (>= 1).
        probe_size: examples per kind in the probe.
        finished: the run's directory, when it was trained: the replay's final weights are compared with its own.
    Returns:
        ``method``, ``lr``, ``rank``, ``poison_rate``, ``seed``, ``probe`` (rows per kind), ``snapshots`` (per
        snapshot ``step`` and :func:`lorasec.diagnostics.drift.kernel_measures`), ``final`` (the last snapshot's
        measures), ``replay_difference`` (max |Δw| / max |w| against ``finished``'s weights, or None) and
        ``wall_seconds``.
    """
    if every < 1:
        raise ConfigError(f"--every = {every}: must be >= 1 (steps between kernel snapshots)")
    if cfg.adapter.rora_pt_layers:
        raise ConfigError("adapter.rora_pt_layers: Pt rescales the model after training, so the trained kernel "
                          "is not the evaluated one; measure drift on the run without Pt")
    began = time.perf_counter()
    prepared = prepare_run(cfg)
    trainable = lora.trainable_filter(cfg.adapter)
    probe = run_probe(prepared, evaluation_inputs(cfg, prepared.test, prepared.encoder), probe_size)
    k0 = drift.probe_kernel(prepared.model, probe, trainable)
    snapshots = [{"step": 0, **drift.kernel_measures(k0, probe, k0)}]
    step = TrainStep(prepared.model, trainable, cfg.train, seed=cfg.seed, loss_fn=loss_function(cfg),
                     terms=prepared.member.terms)
    data, size = prepared.member.data, cfg.train.batch_size
    done = 0
    while done < cfg.train.steps:
        end = min(done + every, cfg.train.steps)
        picks = [data.take(batch_indices(s, len(data), size, cfg.seed)) for s in range(done, end)]
        step.run({name: np.stack([batch[name] for batch in picks]) for name in picks[0]})
        model = step.write_back()
        snapshots.append({"step": end, **drift.kernel_measures(drift.probe_kernel(model, probe, trainable), probe,
                                                               k0)})
        done = end
    difference = None
    if finished is not None:
        saved = load_run(finished).tuned
        mine = nnx.to_pure_dict(nnx.state(prepared.model, trainable))
        theirs = nnx.to_pure_dict(nnx.state(saved, trainable))
        scale = max(float(np.abs(np.asarray(leaf)).max()) for leaf in jax.tree.leaves(theirs))
        gap = max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
                  for a, b in zip(jax.tree.leaves(mine), jax.tree.leaves(theirs)))
        difference = gap / scale if scale > 0 else gap
    counts = {kind: int(probe.rows(kind).sum()) for kind in ("clean", "triggered", "poisoned")}
    return {"method": cfg.adapter.method, "lr": cfg.train.lr, "rank": cfg.adapter.rank,
            "poison_rate": cfg.attack.poison_rate, "seed": cfg.seed, "probe": counts, "snapshots": snapshots,
            "final": {k: v for k, v in snapshots[-1].items() if k != "step"}, "replay_difference": difference,
            "wall_seconds": time.perf_counter() - began}


def drift_of_run(run_dir: str | Path, *, every: int = 50, probe_size: int = 64) -> dict:
    """:func:`replay` of the finished run in ``run_dir`` (its own config), compared with its saved weights."""
    run_dir = Path(run_dir)
    if not (run_dir / "results.json").is_file():
        raise ConfigError(f"{str(run_dir)!r}: not a finished lorasec run (results.json missing); train it first")
    cfg = rundir.read_config(run_dir)
    return replay(cfg, every=every, probe_size=probe_size, finished=run_dir)

"""A sweep: every (cell, seed) of a spec (:mod:`lorasec.sweep_spec`), trained as few programs as shapes allow.

Runs whose model structure and shape-setting training fields agree form a group and train together as one
ensemble (:func:`lorasec.training.trainer.fit_ensemble`): seeds, learning rate, weight decay, clip norm, the A-init
variance, LoRA α, RoRA Tr's λ and the attack (each member with its own poisoned data) vary inside a group; so do
LoRA ranks, whose factors are zero-padded to the group's largest rank (exact: the padding stays zero; one program
instead of one per rank, ``benchmarks/sweep_speed.py``; ``pad_ranks = false`` in the spec turns it off, for models
where the largest rank's extra work outweighs a compilation). Dropout rates and sizes set code or
shapes, so they form separate groups. Each run gets an ordinary run directory
(``runs/``; ``lorasec ntk``, ``spectral`` and ``load_run`` read it), and the table is written from those:

    out/results.jsonl, results.csv    one row per (cell, seed): axis values, metrics, steps, wall time
    out/summary.json, summary.csv     per cell: mean, sd, 95% t-interval and n of every metric
    out/groups/<id>/checkpoints       an interrupted group resumes from here (removed once its runs are written)
    out/runs/<cell>-seed<k>/          run directories

A restarted sweep skips finished runs and resumes interrupted groups; a second sweep on the same directory is
refused. Under ``jax.distributed`` every process runs this same function: the groups span every device of every
process, process ``p`` evaluates and writes the runs ``i`` with ``i mod P = p``, and process 0 writes the table.
"""

from __future__ import annotations

import glob
import hashlib
import json
import math
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx
from tqdm import tqdm  # text bars: tqdm.auto warns in a notebook without ipywidgets

from lorasec.adapters import lora
from lorasec.config import (ConfigError, RunConfig, check_environment, from_dict, grid, relocate, replace_config,
                            to_dict)
from lorasec.config.loading import ORIGIN
from lorasec.core import files, stats, tables
from lorasec.pipelines import rundir
from lorasec.pipelines.pretrain import pretrain, pretrain_recipe
from lorasec.pipelines.run import PreparedRun, finish_run, loss_function, prepare_run
from lorasec.sweep_spec import Cell, SweepSpec
from lorasec.training import placement
from lorasec.training.trainer import fit_ensemble

METRICS = ("clean_accuracy", "attack_success_rate", "triggered_accuracy", "robust_accuracy", "final_loss")
MEMBER_FIELDS = {"seed", "train.lr", "train.weight_decay", "train.grad_clip", "adapter.init_scale",
                 "adapter.alpha", "adapter.rora_tr"}  # values that may differ inside one program; the attack too


def run_name(cell: Cell, seed: int) -> str:
    """``007-adapter.rank=8,attack.poison_rate=0.05-seed3``: readable, shortened with a hash when long."""
    label = ",".join(f"{k}={v}" for k, v in cell.values.items()) or "base"
    label = re.sub(r"[^\w.=,+-]", "_", label)
    if len(label) > 80:
        label = label[:60] + "-" + hashlib.sha256(label.encode()).hexdigest()[:12]
    return f"{cell.index:03d}-{label}-seed{seed}"


def _group_key(cfg: RunConfig, pad_ranks: bool) -> str:
    """The config without the fields that may vary inside one program (:data:`MEMBER_FIELDS`, the attack, and
    the LoRA rank when ranks are padded); whether clipping and Tr are on still separates programs."""
    raw = to_dict(cfg)
    raw["train"]["grad_clip_on"] = cfg.train.grad_clip > 0
    raw["adapter"]["rora_tr_on"] = cfg.adapter.rora_tr > 0
    for name in sorted(MEMBER_FIELDS | {"attack"} | ({"adapter.rank"} if pad_ranks else set())):
        *sections, last = name.split(".")
        node = raw
        for section in sections:
            node = node[section]
        node.pop(last)
    return json.dumps(raw, sort_keys=True)


def _structure(run: PreparedRun) -> str:
    """What must agree for runs to share a program once built: the model's state layout and shapes, the data's
    width and the loss terms' layout."""
    state = nnx.state(run.model)
    shapes = [(tuple(x.shape), str(x.dtype)) for x in jax.tree.leaves(state)]
    return repr((str(jax.tree.structure(state)), shapes, run.member.data.tokens.shape[1:],
                 str(jax.tree.structure(run.member.terms))))


def summarise(rows: list[dict], fields: list[str]) -> list[dict]:
    """Per cell: its axis values and, per metric, mean, sd, 95% interval half-width and n (finite runs only)."""
    cells: dict[int, list[dict]] = {}
    for row in rows:
        cells.setdefault(row["cell"], []).append(row)
    out = []
    for index, members in sorted(cells.items()):
        entry = {"cell": index, **{f: members[0][f] for f in fields}, "runs": len(members)}
        for metric in METRICS:
            values = [float(r[metric]) for r in members if r.get(metric) is not None
                      and math.isfinite(float(r[metric]))]
            summary = stats.mean_sd(values)
            entry[metric] = {**summary, "ci95": stats.ci95_half_width(values)}
        out.append(entry)
    return out


def _write_tables(out_dir: Path, spec: SweepSpec, rows: list[dict]) -> list[dict]:
    fields = spec.fields
    files.write_text(out_dir / "results.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    columns = ["cell", *fields, "seed", *METRICS, "steps", "resumed_from_step", "wall_seconds", "group_members",
               "diverged_steps", "run"]
    files.write_text(out_dir / "results.csv", tables.csv(columns, rows))
    summary = summarise(rows, fields)
    files.write_json(out_dir / "summary.json", {"spec": spec.to_dict(), "cells": summary})
    flat = [{"cell": c["cell"], **{f: c[f] for f in fields}, "runs": c["runs"],
             **{f"{m}_{k}": c[m][k] for m in METRICS for k in ("mean", "sd", "ci95", "n")}} for c in summary]
    summary_columns = ["cell", *fields, "runs", *(f"{m}_{k}" for m in METRICS for k in ("mean", "sd", "ci95", "n"))]
    files.write_text(out_dir / "summary.csv", tables.csv(summary_columns, flat))
    return summary


def _row(cell: Cell, seed: int, name: str, results: dict) -> dict:
    return {"cell": cell.index, **cell.values, "seed": seed, **{m: results.get(m) for m in METRICS},
            **{k: results.get(k) for k in ("steps", "resumed_from_step", "wall_seconds", "group_members",
                                           "diverged_steps", "config_sha256")}, "run": name}


def run_sweep(spec: SweepSpec, out_dir: str | Path, *, progress: bool = True,
              names: Callable[[Cell, int], str] = run_name) -> list[dict]:
    """Run every (cell, seed) of ``spec`` into ``out_dir`` (module docstring), resuming what an earlier call left.

    Args:
        spec: a validated sweep spec (:func:`lorasec.sweep_spec.load_spec`).
        out_dir: the sweep directory.
        progress: show progress bars.
        names: ``names(cell, seed)`` names the run directories (default :func:`run_name`).
    Returns:
        One entry per cell: its axis values, ``runs``, and per metric ``{mean, sd, ci95, n}``.
    """
    out_dir = Path(out_dir)
    if jax.process_index() == 0:
        with rundir.exclusive(out_dir):
            return _run_sweep(spec, out_dir, progress, names)
    return _run_sweep(spec, out_dir, progress, names)


def _run_sweep(spec: SweepSpec, out_dir: Path, progress: bool, names: Callable[[Cell, int], str]) -> list[dict]:
    primary = jax.process_index() == 0
    cells = spec.cells()
    for cell in cells:
        for cfg in cell.configs:
            try:
                check_environment(cfg)
            except ConfigError as err:
                raise ConfigError(f"{err} (sweep cell {cell.index}: {cell.label}, seed {cfg.seed})") from None
    if primary:
        files.write_json(out_dir / "spec.json", spec.to_dict())
    start = pretrained_start(spec, cells, out_dir, progress)
    todo: dict[str, list[tuple[Cell, RunConfig, str]]] = {}
    for cell in cells:
        for cfg in cell.configs:
            if start:
                cfg = replace_config(cfg, model={"pretrained": start})
            name = names(cell, cfg.seed)
            if primary:  # refuses a run directory that holds another config
                _adopt_finished(out_dir / "runs", name, cfg)
                rundir.reserve(cfg, out_dir / "runs" / name)
            todo.setdefault(_group_key(cfg, spec.pad_ranks), []).append((cell, cfg, name))
    placement.barrier("lorasec sweep claimed")

    def finished(name: str) -> bool:
        return (out_dir / "runs" / name / "results.json").is_file()

    # A group keeps its finished members while its checkpoint holds them: groups are formed over every run of the
    # spec, so a group killed after some of its runs were written is the same group again, resumes from its own
    # checkpoint and writes the rest. Without such a checkpoint (the spec gained a seed or a value, which changes
    # the group) only the unfinished runs train, and finished ones are left as they are.
    todo = {key: entries for key, entries in todo.items() if not all(finished(e[2]) for e in entries)}
    total = sum(not finished(e[2]) for entries in todo.values() for e in entries)
    bar = tqdm(total=total, desc=f"sweep {spec.name}", unit="run", disable=not (progress and primary),
               dynamic_ncols=True)
    for entries in todo.values():
        prepared = [(cell, name, prepare_run(cfg, out_dir / "runs" / name)) for cell, cfg, name in entries]
        if spec.pad_ranks:
            largest = max(run.cfg.adapter.rank for _, _, run in prepared)
            for _, _, run in prepared:
                lora.set_rank(run.model, largest)
        by_structure: dict[str, list] = {}
        for item in prepared:
            by_structure.setdefault(_structure(item[2]), []).append(item)
        for members in by_structure.values():
            size = spec.max_members or len(members)
            for begin in range(0, len(members), size):
                group = members[begin:begin + size]
                if not _resumable(out_dir, group):
                    group = [member for member in group if not finished(member[1])]
                left = sum(not finished(name) for _, name, _ in group)
                if left:
                    _train_group(group, out_dir, progress)
                    bar.update(left)
    bar.close()
    placement.barrier("lorasec sweep trained")
    rows = []
    for cell in cells:
        for seed in spec.seeds:
            name = names(cell, seed)
            results = files.read_json(out_dir / "runs" / name / "results.json")
            rows.append(_row(cell, seed, name, results))
    summary = summarise(rows, spec.fields)
    if primary:
        summary = _write_tables(out_dir, spec, rows)
    return summary


def _deciding_config(run_dir: Path) -> dict | None:
    """What decides the run in ``run_dir`` (its config, re-anchored where it moved); None when damaged."""
    try:
        return rundir.deciding(to_dict(from_dict(RunConfig, relocate(files.read_json(run_dir / "config.json"),
                                                                      run_dir))))
    except (ConfigError, ValueError, UnicodeDecodeError, TypeError, AttributeError):
        return None


def _adopt_finished(runs: Path, name: str, cfg: RunConfig) -> None:
    """A finished run of this very config under another cell number (the spec gained an axis value, which
    renumbers the cells) is renamed into place instead of trained again."""
    target = runs / name
    claimed_only = target.is_dir() and {p.name for p in target.iterdir()} <= {"config.json", ORIGIN}
    if (target.exists() and not claimed_only) or not re.fullmatch(r"\d{3}-.+", name):
        return
    for old in sorted(runs.glob(f"[0-9][0-9][0-9]-{glob.escape(name[4:])}")):
        if old != target and (old / "results.json").is_file() and (old / "config.json").is_file() and \
                _deciding_config(old) == rundir.deciding(to_dict(cfg)):
            if claimed_only:
                shutil.rmtree(target)
            old.rename(target)
            return


def pretrained_start(spec: SweepSpec, cells: list[Cell], out_dir: Path, progress: bool) -> str:
    """The encoder every run starts from when the spec pretrains one (process 0 trains it), else ''."""
    base = cells[0].configs[0]
    if not spec.pretrain_steps or base.model.pretrained or base.model.init_from:
        return ""
    if base.data.source != "synthetic" or base.model.kind != "transformer":
        return ""
    if jax.process_index() == 0:
        pretrain(pretrain_recipe(base.data, base.model, spec.pretrain_steps), out_dir / "pretrained",
                 progress=progress)
    placement.barrier("lorasec sweep pretrained")
    return str((out_dir / "pretrained").resolve())


def _group_dir(out_dir: Path, members: list[tuple[Cell, str, PreparedRun]]) -> Path:
    """Where a group of runs keeps its checkpoints: named by its members, so the same runs find it again."""
    return out_dir / "groups" / hashlib.sha256("\n".join(name for _, name, _ in members).encode()).hexdigest()[:16]


def _resumable(out_dir: Path, members: list[tuple[Cell, str, PreparedRun]]) -> bool:
    """Whether this very group saved a training step it can resume from."""
    checkpoints = _group_dir(out_dir, members) / "checkpoints"
    return checkpoints.is_dir() and any(p.name.isdigit() for p in checkpoints.iterdir())


def _train_group(members: list[tuple[Cell, str, PreparedRun]], out_dir: Path, progress: bool) -> None:
    began = time.perf_counter()
    names = [name for _, name, _ in members]
    group_dir = _group_dir(out_dir, members)
    group_id = group_dir.name
    if jax.process_index() == 0:
        files.write_json(group_dir / "group.json", {"runs": names})
    first = members[0][2].cfg
    result = fit_ensemble([run.member for _, _, run in members], lora.trainable_filter(first.adapter),
                          loss_fn=loss_function(first), run_dir=group_dir, progress=progress,
                          description=f"{len(members)} run{'s' * (len(members) > 1)} ({first.adapter.method})")
    wall = time.perf_counter() - began
    processes = jax.process_count()
    for i, (_, name, run) in enumerate(members):
        if i % processes != jax.process_index() or (out_dir / "runs" / name / "results.json").is_file():
            continue  # another process's run, or one written before this group was interrupted
        run_dir = out_dir / "runs" / name
        training = {"steps": result.steps, "resumed_from_step": result.resumed_from,
                    "final_loss": stats.finite(result.final_loss[i]), "wall_seconds": wall,
                    "train_step_compilations": result.compilations, "group": group_id,
                    "group_members": len(members), "diverged_steps": result.diverged[i]}
        if result.diverged[i] is not None:
            files.write_json(run_dir / "results.json", {
                **{m: None for m in METRICS}, **training, "config_sha256": rundir.config_hash(run.cfg)})
            continue
        nnx.update(run.model, jax.tree.map(jnp.asarray, result.trainable[i]))
        lora.set_rank(run.model, run.cfg.adapter.rank)
        trained = nnx.state(run.model, lora.trainable_filter(run.cfg.adapter))
        finish_run(run, trained, training, run_dir)
    placement.barrier(f"lorasec group {group_id}")
    if jax.process_index() == 0 and all((out_dir / "runs" / name / "results.json").is_file() for name in names):
        shutil.rmtree(group_dir / "checkpoints", ignore_errors=True)  # the ensemble's optimiser state: GBs on MiniLM


def read_table(sweep_dir: str | Path) -> list[dict]:
    """The per-run table of a finished sweep, checked.

    Args:
        sweep_dir: a sweep directory ``lorasec sweep`` wrote.
    Returns:
        One dict per (cell, seed) from ``results.jsonl``: cell, axis values, seed, metrics, steps, wall time, run
        (``pandas.read_csv(sweep_dir / 'results.csv')`` gives the same table as a data frame).
    Raises:
        ConfigError: the table is missing, not JSON lines, or holds a row without its cell and seed or with a
            metric that is not a number (named by row and metric).
    """
    path = Path(sweep_dir) / "results.jsonl"
    if not path.is_file():
        raise ConfigError(f"{str(sweep_dir)!r}: not a finished sweep (results.jsonl missing); run `lorasec sweep`")
    try:
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{str(path)!r} is damaged ({type(err).__name__}); run the same `lorasec sweep` again to "
                          f"rewrite it from the run directories") from None
    if not rows or not all(isinstance(r, dict) for r in rows):
        raise ConfigError(f"{str(path)!r} holds no rows; run the same `lorasec sweep` again to rewrite it")
    for number, row in enumerate(rows, 1):
        if not isinstance(row.get("cell"), int) or not isinstance(row.get("seed"), int):
            raise ConfigError(f"{str(path)!r}, row {number}: no integer cell and seed; run the same `lorasec sweep` "
                              f"again to rewrite it")
        for metric in METRICS:
            value = row.get(metric)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise ConfigError(f"{str(path)!r}, row {number} ({row.get('run', 'run ?')}): {metric} = {value!r} "
                                  f"is not a number; run the same `lorasec sweep` again to rewrite it")
    return rows


def missing_from_table(sweep_dir: str | Path, rows: list[dict]) -> list[str]:
    """What the sweep's own spec (``spec.json``) promised and the table lacks: each (cell, seed) without a row, as
    ``"cell 3 (…) seed 1"``; empty when the spec is not there to compare with."""
    path = Path(sweep_dir) / "spec.json"
    if not path.is_file():
        return []
    try:
        spec = files.read_json(path)
        expected = grid.size({k: tuple(v) for k, v in spec["axes"].items()},
                             tuple({k: tuple(v) for k, v in g.items()} for g in spec["zip"]))
        seeds = list(spec["seeds"])
    except (ValueError, KeyError, TypeError, AttributeError):
        return []
    held = {(r["cell"], r["seed"]) for r in rows}
    return [f"cell {c} seed {s}" for c in range(expected) for s in seeds if (c, s) not in held]


__all__ = ["run_sweep", "summarise", "read_table", "run_name", "METRICS"]

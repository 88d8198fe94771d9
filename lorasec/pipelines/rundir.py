"""A run directory, which describes itself: everything needed to load the run is in it.

``config.json``   the resolved run config (written first: it reserves the directory for that config)
``metrics.jsonl`` training loss per logging window; ``checkpoints/`` orbax checkpoints for resume
``model.json``    the architecture, number of classes and where training started (a local pretrained checkpoint
                  directory, or the run it started from)
``tokenizer.json``, ``test.jsonl``   the tokenizer and the clean test set the run was evaluated on
``params/``       the trained parameters (every ``nnx.Param``; adapter scales follow from the config, Pt's new
                  scales are in the results)
``poisoned_indices.json``, ``results.json``   written last: ``results.json`` marks the run complete
``origin.json``   where the directory was written (and the working directory then)

:func:`lorasec.pipelines.run.load_run` rebuilds a finished run from these files and the local files its training
started from (the pretrained checkpoint directory or the starting run): it never prepares data, poisons or
fetches. A directory can be moved or copied, alone or with what it started from (a sweep with its pretrained
encoder): the paths it names are re-anchored from ``origin.json`` where what they name moved with it
(:func:`lorasec.config.relocate`), on reading, and in the directory itself when a command resumes it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from flax import nnx

from lorasec.config import SYNTHETIC_ONLY, ConfigError, RunConfig, from_dict, relocate, to_dict, write_origin
from lorasec.config.loading import ORIGIN, PATH_FIELDS
from lorasec.config import load as load_config
from lorasec.core import files
from lorasec.data.textdata import TextDataset
from lorasec.data.tokenizer import TextEncoder
from lorasec.models import Architecture

FORMAT = 2  # 1: before run directories described themselves (no model.json, tokenizer.json, test.jsonl); not read


def _first_difference(a, b, prefix=""):
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            found = _first_difference(a.get(key), b.get(key), f"{prefix}{key}.")
            if found:
                return found
        return None
    return None if a == b else (prefix.rstrip("."), a, b)


def deciding(resolved: dict) -> dict:
    """The part of a resolved run config that decides the run: on a real or file data set the synthetic
    generator's knobs are dropped, so a changed default of one (``cue_strength`` became 0.9) leaves finished
    real-data runs theirs; a path that names an existing file or directory is compared resolved, so
    ``runs/x/backdoored`` and ``/home/me/runs/x/backdoored`` start the same run."""
    resolved = {section: dict(table) if isinstance(table, dict) else table for section, table in resolved.items()}
    for dotted_name in PATH_FIELDS:
        section, _, name = dotted_name.partition(".")
        value = resolved.get(section, {}).get(name)
        if isinstance(value, str) and value:
            try:
                if Path(value).exists():
                    resolved[section][name] = str(Path(value).resolve())
            except (OSError, ValueError):  # a path no file system can hold: the loader names it
                pass
    if resolved["data"]["source"] == "synthetic":
        return resolved
    return {**resolved, "data": {k: v for k, v in resolved["data"].items() if k not in SYNTHETIC_ONLY}}


LOCK = ".lock"


@contextlib.contextmanager
def exclusive(directory: Path):
    """Hold ``directory/.lock`` (an advisory lock of the operating system, released when the process ends,
    however it ends) for the block: a second lorasec process writing to the same directory is refused at once."""
    if directory.exists() and not directory.is_dir():
        raise ConfigError(f"--out {str(directory)!r} is a file, not a directory; choose another --out")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        handle = open(directory / LOCK, "a+")
    except OSError as err:
        raise ConfigError(f"--out {str(directory)!r}: cannot be written ({err.strerror}); "
                          f"choose another --out") from None
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip()
            raise ConfigError(f"--out {str(directory)!r} is in use by another lorasec process"
                              f"{f' (pid {holder})' if holder else ''}; wait for it or choose another --out") from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        yield
    finally:
        handle.close()  # closing releases the lock


def _is_empty(directory: Path) -> bool:
    return not any(p.name != LOCK for p in directory.iterdir())


def config_hash(cfg: RunConfig) -> str:
    """sha256 of the resolved config, stored with the results so an edited ``config.json`` is noticed. Taken
    after a round trip through the file form, so a config built in Python (``alpha=8``) and the same config read
    back (``alpha = 8.0``) hash alike."""
    normal = to_dict(from_dict(RunConfig, to_dict(cfg)))
    return hashlib.sha256(json.dumps(normal, sort_keys=True).encode()).hexdigest()


def read_results(run_dir: Path) -> dict:
    """``results.json`` of a finished run, checked: readable, made for its ``config.json`` as written (an edit is
    named; a move is not an edit), weights present."""
    written = _written_config(run_dir)
    hashes = {config_hash(from_dict(RunConfig, raw)) for raw in (written, relocate(written, run_dir))}
    path = run_dir / "results.json"
    try:
        results = files.read_json(path)
    except (ValueError, UnicodeDecodeError):
        raise ConfigError(f"{str(path)!r} is damaged (not JSON); remove it and run the same command again to "
                          f"redo the evaluation from the last checkpoint") from None
    if not isinstance(results, dict):
        raise ConfigError(f"{str(path)!r} is damaged (not a table of results); remove it and run again")
    stored = results.get("config_sha256")
    if stored is not None and stored not in hashes:  # moved and re-anchored (or interrupted doing so): either
        raise ConfigError(f"{str(run_dir / 'config.json')!r} was changed after the run finished (its hash differs "
                          f"from the one in results.json); restore it, or train the new config in another --out")
    if not (run_dir / "params").is_dir():
        raise ConfigError(f"{str(run_dir)!r}: params/ is missing, so the results cannot be reproduced; remove "
                          f"results.json and run the same command again to rebuild it from the last checkpoint")
    return results


def reserve(cfg: RunConfig, out_dir: Path) -> dict | None:
    """Prepare ``out_dir`` for ``cfg``: returns finished results if the same run already completed there;
    refuses a directory that holds a different run (never overwrite work). Call it under :func:`exclusive`."""
    resolved = to_dict(cfg)
    config_path = out_dir / "config.json"
    if config_path.is_file():
        # read back through the dataclass, so fields added to lorasec since that run count at their defaults
        written = _written_config(out_dir)
        stored = from_dict(RunConfig, relocate(written, out_dir))
        diff = _first_difference(deciding(resolved), deciding(to_dict(stored)))
        if diff:
            raise ConfigError(f"--out {str(out_dir)!r} holds a run with {diff[0]} = {diff[2]!r} (this config: "
                              f"{diff[1]!r}); choose another --out or remove that directory")
        finished = (out_dir / "results.json").is_file()
        results = read_results(out_dir) if finished else None
        if to_dict(stored) != to_dict(from_dict(RunConfig, written)):
            _anchor_here(out_dir, stored, results)
        elif not (out_dir / ORIGIN).is_file():  # written before origins were recorded, and not moved since
            write_origin(out_dir)
        if finished:
            return read_results(out_dir)
    elif out_dir.exists() and not _is_empty(out_dir):
        raise ConfigError(f"--out {str(out_dir)!r} exists and is not a lorasec run directory; choose another")
    files.write_json(config_path, resolved)
    write_origin(out_dir)
    return None


def _anchor_here(out_dir: Path, relocated: RunConfig, results: dict | None) -> None:
    """A run directory moved since it was written: results.json takes the hash of the re-anchored config (it was
    checked against the config as written first, so an edit is still named), then model.json's start, config.json
    and the origin take the new paths; :func:`read_results` accepts either hash, so a kill between writes is
    harmless."""
    if results is not None:
        files.write_json(out_dir / "results.json", {**results, "config_sha256": config_hash(relocated)})
    model = out_dir / "model.json"
    if model.is_file():  # its start is re-anchored from the same origin, before that is rewritten
        meta = files.read_json(model)
        if isinstance(meta, dict) and isinstance(meta.get("start"), dict):
            start = relocate({"model": meta["start"]}, out_dir)["model"]
            files.write_json(model, {**meta, "start": start})
    files.write_json(out_dir / "config.json", to_dict(relocated))
    write_origin(out_dir)


def release(out_dir: Path) -> None:
    """Undo a fresh :func:`reserve` whose run failed before training wrote anything (a bad config or data set must
    not leave the directory claimed for that config)."""
    if not (out_dir / "checkpoints").exists() and not (out_dir / "metrics.jsonl").exists():
        (out_dir / "config.json").unlink(missing_ok=True)
        (out_dir / ORIGIN).unlink(missing_ok=True)


def save(out_dir: Path, *, model: nnx.Module, architecture: Architecture, num_classes: int, start: dict,
         encoder: TextEncoder, test: TextDataset, poisoned_indices: np.ndarray, results: dict) -> None:
    """Write a finished run's files (module docstring), ``results.json`` last."""
    params = nnx.state(model, nnx.Param)
    tokenizer = encoder.to_json()
    test_set = "".join(json.dumps({"text": text, "label": int(label)}) + "\n"
                       for text, label in zip(test.texts, test.labels))
    files.write_text(out_dir / "tokenizer.json", tokenizer)
    files.write_text(out_dir / "test.jsonl", test_set)
    files.write_json(out_dir / "model.json", {"format": FORMAT, "architecture": to_dict(architecture),
                                              "num_classes": num_classes, "start": start,
                                              "label_names": list(test.label_names),
                                              "params_sha256": files.state_digest(params),
                                              "files_sha256": {"tokenizer.json": _sha256(tokenizer),
                                                               "test.jsonl": _sha256(test_set)}})
    files.write_json(out_dir / "poisoned_indices.json", poisoned_indices.tolist())
    files.save_state(out_dir / "params", params)
    files.write_json(out_dir / "results.json", results)


def read_config(run_dir: Path) -> RunConfig:
    """The run's config, its values validated (the schema probes no file, so a run loads wherever it is)."""
    if not (run_dir / "config.json").is_file():
        raise ConfigError(f"{str(run_dir)!r}: not a lorasec run directory (config.json missing)")
    try:
        return load_config(RunConfig, run_dir / "config.json")
    except ConfigError as err:
        if str(err).startswith("config file"):
            raise
        raise ConfigError(f"{str(run_dir / 'config.json')!r}: {err}") from None


def describes_itself(run_dir: Path) -> bool:
    """Format 2 (this one); directories of format 1 stored no model.json, tokenizer.json or test.jsonl."""
    return all((run_dir / name).is_file() for name in ("model.json", "tokenizer.json", "test.jsonl"))


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _checked_text(run_dir: Path, name: str) -> str:
    """A run file's text, checked against the digest ``model.json`` recorded for it (runs that recorded none pass)."""
    path = run_dir / name
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{str(path)!r} is missing: train the run again in a new --out") from None
    except (OSError, UnicodeDecodeError):
        raise ConfigError(f"{str(path)!r} is damaged (not text): train the run again in a new --out") from None
    recorded = read_model(run_dir).get("files_sha256", {}).get(name)
    if recorded is not None and _sha256(text) != recorded:
        raise ConfigError(f"{str(path)!r} is damaged: its content differs from the digest the run recorded when it "
                          f"finished; train the run again in a new --out")
    return text


def _written_config(run_dir: Path) -> dict:
    """``config.json`` as written, checked to be a readable table of fields (its values are checked by the
    loader)."""
    fix = "restore it, or remove the run directory and run the same command again"
    written = _read_json(run_dir / "config.json", fix)
    if not isinstance(written, dict):
        raise ConfigError(f"{str(run_dir / 'config.json')!r} is damaged (not a table of fields): {fix}")
    try:
        from_dict(RunConfig, written)
    except ConfigError as err:
        raise ConfigError(f"{str(run_dir / 'config.json')!r} is damaged ({err}): {fix}") from None
    return written


def _read_json(path: Path, what: str) -> Any:
    try:
        return files.read_json(path)
    except FileNotFoundError:
        raise ConfigError(f"{str(path)!r} is missing: {what}") from None
    except (ValueError, UnicodeDecodeError):
        raise ConfigError(f"{str(path)!r} is damaged (not JSON): {what}") from None


def read_model(run_dir: Path) -> dict:
    """``model.json``: architecture (as an :class:`Architecture`), number of classes, starting point."""
    meta = _read_json(run_dir / "model.json", "train the run again in a new --out")
    try:
        return {**meta, "architecture": Architecture.from_dict(meta["architecture"])}
    except (KeyError, TypeError):
        raise ConfigError(f"{str(run_dir / 'model.json')!r} is damaged (no architecture): train the run again in a "
                          f"new --out") from None


def read_tokenizer(run_dir: Path, seq_len: int) -> TextEncoder:
    path = run_dir / "tokenizer.json"
    text = _checked_text(run_dir, "tokenizer.json")
    try:
        return TextEncoder.from_json(text, seq_len)
    except Exception:  # the tokenizers library raises its own kinds for unreadable JSON
        raise ConfigError(f"{str(path)!r} is damaged (not a tokenizer): train the run again in a new --out") from None


def read_test(run_dir: Path) -> TextDataset:
    path = run_dir / "test.jsonl"
    text = _checked_text(run_dir, "test.jsonl")
    try:
        rows = [json.loads(line) for line in text.splitlines() if line]
        texts, labels = tuple(r["text"] for r in rows), np.asarray([r["label"] for r in rows], np.int32)
    except (ValueError, KeyError, TypeError):
        raise ConfigError(f"{str(path)!r} is damaged (not a test set): train the run again in a new --out") from None
    names = tuple(read_model(run_dir).get("label_names", ()))
    return TextDataset(texts, labels, names)


def load_params(run_dir: Path, model: nnx.Module) -> nnx.State:
    """The run's trained parameters in the structure of ``model`` (a classifier of its architecture), checked
    against the digest the run recorded when it finished (a copy damaged in a way that still reads is named).

    Raises:
        ConfigError: params/ is missing, unreadable, of other shapes, or differs from its recorded digest.
    """
    if not (run_dir / "params").is_dir():
        raise ConfigError(f"{str(run_dir)!r}: params/ missing; not a finished lorasec run")
    state = files.load_state(run_dir / "params", nnx.state(model, nnx.Param))
    recorded = read_model(run_dir).get("params_sha256") if (run_dir / "model.json").is_file() else None
    if recorded is not None and files.state_digest(state) != recorded:
        raise ConfigError(f"{str(run_dir / 'params')!r} is damaged: its values differ from the digest the run "
                          f"recorded when it finished; train the run again in a new --out")
    return state


@dataclass
class FinishedRun:
    """A finished run reloaded: its config, the classifier as training started (plain, no adapters: LoRA's
    B = 0, PiSSA's and DoRA's initial effective weights equal W0), the trained classifier (adapter scales as
    configured, before any Pt rescale), the tokenizer and the clean test set."""

    cfg: RunConfig
    start: nnx.Module
    tuned: nnx.Module
    encoder: TextEncoder
    test: TextDataset
    results: dict

"""Files: JSON and text written atomically, metrics as JSON lines, parameters as orbax checkpoints, content hashes."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import orbax.checkpoint as ocp
from flax import nnx


def write_json(path: str | Path, obj: Any) -> None:
    """Write JSON through a temporary file and a rename, so a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(obj, handle, indent=2, sort_keys=True, allow_nan=False)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def append_jsonl(path: str | Path, record: dict) -> None:
    with Path(path).open("a") as handle:
        handle.write(json.dumps(record, sort_keys=True, allow_nan=False) + "\n")


def truncate_jsonl(path: str | Path, last_step: int) -> None:
    """Drop metric lines logged after ``last_step`` (a resumed run logs those steps again)."""
    path = Path(path)
    if not path.exists():
        return
    kept = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a kill (or damaged): it goes, the valid lines around it stay
        if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= last_step:
            kept.append(line)
    write_text(path, "".join(line + "\n" for line in kept))


def _this_process_only() -> ocp.options.MultiprocessingOptions:
    """Orbax options under which this process reads and writes alone (one run's files belong to one process of
    a multi-process sweep, so no other process joins)."""
    import jax

    index = jax.process_index()
    return ocp.options.MultiprocessingOptions(primary_host=index, active_processes={index})


# Orbax's asynchronous directory creation signals through keys in jax.distributed's key-value store named by an
# operation counter that each process counts on its own; two processes saving alone at once share those keys, and
# one's clean-up deletes the signal the other waits for (a 5-minute hang, then an error). Every lorasec save is by
# one process alone, so directories are created synchronously and no signal is shared.
UNSHARED_SAVES = ocp.options.AsyncOptions(create_directories_asynchronously=False)


def save_state(path: str | Path, state: nnx.State) -> None:
    """Save an NNX state (parameters) as an orbax checkpoint directory (replacing an older one), from host copies,
    by this process alone."""
    import jax
    import numpy as np

    path = Path(path).resolve()
    host = jax.tree.map(np.asarray, state)
    with ocp.StandardCheckpointer(multiprocessing_options=_this_process_only(),
                                  async_options=UNSHARED_SAVES) as checkpointer:
        checkpointer.save(path, host, force=True)


def load_state(path: str | Path, target: nnx.State) -> nnx.State:
    """Restore what :func:`save_state` wrote into the structure, shapes and dtypes of ``target``."""
    path = Path(path).resolve()
    abstract = jax_abstract(target)
    with ocp.StandardCheckpointer(multiprocessing_options=_this_process_only(),
                                  async_options=UNSHARED_SAVES) as checkpointer:
        return checkpointer.restore(path, abstract)


def jax_abstract(tree):
    import jax

    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()

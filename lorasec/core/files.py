"""Files: JSON and text written atomically, metrics as JSON lines, parameters as orbax checkpoints, content hashes."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import orbax.checkpoint as ocp
from flax import nnx

from lorasec.core.errors import ConfigError


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
    """Restore what :func:`save_state` wrote into the structure, shapes and dtypes of ``target``.

    Raises:
        ConfigError: the checkpoint cannot be read into ``target`` (damaged or truncated files, or shapes that
            no longer match), in one line naming the directory.
    """
    path = Path(path).resolve()
    abstract = jax_abstract(target)
    with quiet_failed_reads():
        try:
            with ocp.StandardCheckpointer(multiprocessing_options=_this_process_only(),
                                          async_options=UNSHARED_SAVES) as checkpointer:
                return checkpointer.restore(path, abstract)
        except Exception as err:  # orbax and tensorstore raise many kinds for damaged or mismatched files
            raise ConfigError(f"{str(path)!r} cannot be read ({_first_line(err)}): it is damaged, truncated or "
                              f"from another configuration") from None


@contextlib.contextmanager
def quiet_failed_reads():
    """Around an orbax restore: when one read fails, orbax abandons its sibling reads, whose asyncio callbacks and
    unretrieved exceptions print a traceback each (then, or at the interpreter's exit: "Event loop is closed",
    "sys.meta_path is None") after lorasec's own one-line message. They are the same failure, told once; the
    abandoned reads are closed here, inside the block, while their output is discarded."""
    import gc
    import logging
    import threading
    import warnings

    hooks = sys.excepthook, sys.unraisablehook, threading.excepthook
    logger = logging.getLogger("asyncio")
    level = logger.level
    sys.excepthook = sys.unraisablehook = threading.excepthook = lambda *_: None
    logger.setLevel(logging.CRITICAL)
    failed = True
    try:
        yield
        failed = False
    finally:
        if failed:  # a full collection takes a tenth of a second; only a failed read leaves anything to close
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # "coroutine ... was never awaited"
                gc.collect()
        sys.excepthook, sys.unraisablehook, threading.excepthook = hooks
        logger.setLevel(level)


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    text = text[:160] + "…" if len(text) > 160 else text
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def state_digest(state) -> str:
    """sha256 over a state's leaves (their dotted paths, dtypes, shapes and bytes): what a run records of its
    trained parameters, so that a copy damaged in a way that still reads is noticed."""
    import jax
    import numpy as np

    digest = hashlib.sha256()
    for path, leaf in sorted(jax.tree_util.tree_flatten_with_path(state)[0], key=lambda item: str(item[0])):
        array = np.ascontiguousarray(np.asarray(leaf))
        digest.update(f"{jax.tree_util.keystr(path)}|{array.dtype}|{array.shape}|".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def jax_abstract(tree):
    import jax

    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def json_ready(value):
    """``value`` with every non-finite float written as None (JSON has neither NaN nor infinity), recursively
    through dicts, lists and tuples."""
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return value

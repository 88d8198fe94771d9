"""Which machine made a result: the processor and the accelerators, written beside the numbers they explain."""
from __future__ import annotations

import datetime
import os
import platform
from pathlib import Path


def processor() -> str:
    """The CPU's model name (from ``/proc/cpuinfo`` on Linux, else :mod:`platform`) and its core count."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def devices() -> str:
    """JAX's devices in words, ``"1 × cpu"`` or ``"8 × NVIDIA H100 80GB HBM3"`` (imports JAX)."""
    import jax

    kinds: dict[str, int] = {}
    for device in jax.devices():
        kinds[device.device_kind] = kinds.get(device.device_kind, 0) + 1
    return ", ".join(f"{n} × {kind}" for kind, n in kinds.items())


def record() -> dict:
    """When and where a result is written: the UTC date, lorasec's version, JAX's devices and the processor."""
    from lorasec import __version__

    return {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"), "lorasec": __version__,
            "devices": devices(), "processor": processor()}


def in_words(made: dict | None) -> str:
    """A :func:`record` as a sentence; a result written before records were kept says so."""
    if not made:
        return "Date and machine not recorded (written before lorasec recorded them)."
    return f"Written {made['date']} by lorasec {made['lorasec']} on {made['devices']} ({made['processor']})."

"""How much memory a computation may use, and a refusal that says what to change before it starts.

The kernel entry points estimate their peak from array shapes and call :func:`check` before allocating, so a
kernel too large for the machine stops with a message naming the knob (``block_size``, ``N``) instead of being
killed by the operating system halfway through.
"""

from __future__ import annotations

import os

import jax

from lorasec.core.errors import MemoryEstimateError

# What a computation may take of the memory available when it starts: the rest is the interpreter, the compiled
# programs and the caller's own arrays.
USABLE_FRACTION = 0.8


def available_bytes() -> int:
    """Free memory of the default device: its allocator's limit minus use on an accelerator, else the host's
    ``MemAvailable`` (Linux), else its physical memory."""
    device = jax.devices()[0]
    if device.platform != "cpu":
        stats = device.memory_stats() or {}
        if "bytes_limit" in stats:
            return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def usable(limit: int | None = None) -> int:
    """``limit`` bytes when given, else the part a computation may take of what is available now."""
    return int(USABLE_FRACTION * available_bytes()) if limit is None else int(limit)


def gigabytes(n: float) -> str:
    return f"{n / 2**30:.2f} GB"


def check(estimate: int, what: str, advice: str, limit: int | None = None) -> None:
    """Refuse (:class:`lorasec.core.errors.MemoryEstimateError`) when ``estimate`` bytes exceed ``limit``
    (default: :func:`usable`); ``advice`` says what to change."""
    limit = usable(limit)
    if estimate > limit:
        raise MemoryEstimateError(f"{what} needs about {gigabytes(estimate)}, more than the {gigabytes(limit)} "
                                  f"available; {advice}")

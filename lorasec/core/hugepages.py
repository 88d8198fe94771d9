"""Transparent huge pages for XLA's working memory on Linux.

XLA's CPU runtime takes each call's temporary buffers (hundreds of MB for a MiniLM training step) as one fresh
allocation, which glibc serves by ``mmap``: every call then faults in its pages 4 KiB at a time (134,000 faults,
about a tenth of MiniLM's step time on 2 cores, measured). glibc 2.35 and later back such allocations with huge
pages when started with ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` (and the kernel allows them on request:
``/sys/kernel/mm/transparent_hugepage/enabled`` says ``madvise`` or ``always``); the faults fall to a few hundred.
The tunable is read when a process starts, so the ``lorasec`` command starts itself once more with it set;
``LORASEC_HUGE_PAGES=0`` turns that off. Python sessions that import lorasec set it themselves before starting.
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

TUNABLE = "glibc.malloc.hugetlb=1"
THP_SETTING = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def environment(env: dict[str, str] | None = None) -> dict[str, str] | None:
    """The environment to start again with, or None when there is nothing to gain (not glibc 2.35+, huge pages
    off in the kernel, the tunable already set, or ``LORASEC_HUGE_PAGES=0``)."""
    env = dict(os.environ if env is None else env)
    current = env.get("GLIBC_TUNABLES", "")
    if env.get("LORASEC_HUGE_PAGES") == "0" or "glibc.malloc.hugetlb" in current:
        return None
    if sys.platform != "linux" or not _glibc_at_least(2, 35) or not _kernel_allows():
        return None
    env["GLIBC_TUNABLES"] = f"{current}:{TUNABLE}" if current else TUNABLE
    return env


def restart_with_huge_pages() -> None:
    """Replace this process by the same command with the tunable set (same PID, arguments and streams); a no-op
    when :func:`environment` finds nothing to gain."""
    env = environment()
    if env is not None and sys.executable:
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
        except OSError:
            pass  # cannot start again (an embedded interpreter, say): run as it is


def _glibc_at_least(major: int, minor: int) -> bool:
    name, version = platform.libc_ver()
    if name != "glibc":
        return False
    try:
        return tuple(int(p) for p in version.split(".")[:2]) >= (major, minor)
    except ValueError:
        return False


def _kernel_allows() -> bool:
    try:
        return "[never]" not in THP_SETTING.read_text()
    except OSError:
        return False

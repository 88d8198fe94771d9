"""The registry of paper claims checked as code, shared by both papers and run by ``lorasec verify``.

A claim is a function registered with :func:`claim`; called with no arguments it runs its default settings and
returns :class:`Check` records: the paper's prediction next to lorasec's measurement, the tolerance that decides
between them, and a verdict. A claim that fails on some setting is a finding, reported like any other.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import asdict, dataclass

VERDICTS = ("holds", "violated", "no claim")


@dataclass(frozen=True)
class Check:
    claim: str
    setting: str
    predicted: str
    measured: str
    tolerance: str
    verdict: str
    note: str = ""

    def __post_init__(self):
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict {self.verdict!r} must be one of {VERDICTS}")

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Claim:
    name: str
    paper: str
    statement: str
    run: Callable[..., list[Check]]
    trains: bool = False  # run(purify_dir) reads (or makes) a `lorasec purify` output


REGISTRY: dict[str, Claim] = {}


def claim(name: str, paper: str, statement: str, *, trains: bool = False):
    """Register ``fn() -> list[Check]`` under ``name`` (``fn(purify_dir)`` when it ``trains`` models)."""

    def register(fn):
        if name in REGISTRY:
            raise ValueError(f"claim {name!r} registered twice")
        REGISTRY[name] = Claim(name, paper, statement, fn, trains)
        return fn

    return register


def discover() -> dict[str, Claim]:
    """Import every module of the top-level ``theory`` package (each registers its claims)."""
    import theory

    for module in pkgutil.iter_modules(theory.__path__):
        importlib.import_module(f"theory.{module.name}")
    return REGISTRY


def verdict(ok: bool) -> str:
    return "holds" if ok else "violated"


def table(checks: list[Check]) -> str:
    """A plain-text table: claim, setting, predicted, measured, tolerance, verdict."""
    header = ("claim", "setting", "predicted", "measured", "tolerance", "verdict")
    rows = [header] + [(c.claim, c.setting, c.predicted, c.measured, c.tolerance, c.verdict) for c in checks]
    widths = [max(len(row[k]) for row in rows) for k in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    notes = [f"- {c.claim} [{c.setting}]: {c.note}" for c in checks if c.note]
    return "\n".join(lines + ([""] + notes if notes else []))

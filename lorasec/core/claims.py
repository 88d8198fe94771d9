"""The registry of paper claims checked as code, shared by both papers and run by ``lorasec verify``.

A claim is a function registered with :func:`claim`; called with no arguments it runs its default settings and
returns :class:`Check` records: the paper's prediction next to lorasec's measurement, the tolerance that decides
between them, and a verdict. A claim that fails on some setting is a finding, reported like any other.

Two kinds of record, in the vocabulary of :mod:`lorasec.core.hypotheses`. A ``claim`` check compares a prediction
with a measurement that real data could overturn; its verdict is ``agrees``, ``disagrees``, ``inconclusive`` (the
measurement's uncertainty covers both answers) or ``no claim`` (the setting is outside the paper's conditions). An
``identity`` (it follows from a definition) or a ``consistency`` check (two computations of the same quantity, or
a prediction forced by construction) tests lorasec's code, not the paper: its verdict is ``consistent``,
``inconsistent`` or ``inconclusive``, and reports show it apart from the claims.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

CLAIM_VERDICTS = ("agrees", "disagrees", "inconclusive", "no claim")
CHECK_VERDICTS = ("consistent", "inconsistent", "inconclusive")
KINDS = ("claim", "identity", "consistency")
VERDICTS = CLAIM_VERDICTS + CHECK_VERDICTS


@dataclass(frozen=True)
class Check:
    claim: str
    setting: str
    predicted: str
    measured: str
    tolerance: str
    verdict: str
    note: str = ""
    kind: str = "claim"

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind {self.kind!r} must be one of {KINDS}")
        allowed = CLAIM_VERDICTS if self.kind == "claim" else CHECK_VERDICTS
        if self.verdict not in allowed:
            raise ValueError(f"a {self.kind} check's verdict {self.verdict!r} must be one of {allowed}")

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Claim:
    name: str
    paper: str
    statement: str
    run: Callable[..., list[Check]]
    trains: bool = False  # run(purify_dir) reads (or makes) a `lorasec purify` output
    work: Callable[[Path], str] | None = None  # work(purify_dir): what it will train or fetch first, "" if nothing


REGISTRY: dict[str, Claim] = {}


def claim(name: str, paper: str, statement: str, *, trains: bool = False,
          work: Callable[[Path], str] | None = None):
    """Register ``fn() -> list[Check]`` under ``name`` (``fn(purify_dir)`` when it ``trains`` models); ``work``
    says in words what it will train or fetch before answering (``lorasec verify`` announces it)."""

    def register(fn):
        previous = REGISTRY.get(name)
        if previous is not None and (previous.run.__module__, previous.run.__qualname__) != (fn.__module__,
                                                                                            fn.__qualname__):
            raise ValueError(f"claim {name!r} registered twice")
        REGISTRY[name] = Claim(name, paper, statement, fn, trains, work)
        return fn

    return register


def verdict(ok: bool) -> str:
    """A claim's verdict from a decided comparison."""
    return "agrees" if ok else "disagrees"


def consistent(ok: bool) -> str:
    """An identity's or consistency check's verdict."""
    return "consistent" if ok else "inconsistent"


def _rows(checks: list[Check]) -> list[str]:
    header = ("claim", "setting", "predicted", "measured", "tolerance", "verdict")
    rows = [header] + [(c.claim, c.setting, c.predicted, c.measured, c.tolerance, c.verdict) for c in checks]
    widths = [max(len(row[k]) for row in rows) for k in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def claims_table(checks: list[Check]) -> str:
    """Plain-text tables: the claims, then (apart) the identities and consistency checks; notes after each.

    Args:
        checks: :class:`Check` records, e.g. those of the claims ``lorasec verify`` runs.
    Returns:
        The text: per non-empty part a title, an aligned table (claim, setting, predicted, measured, tolerance,
        verdict) and the notes; "" for no checks.
    """
    out = []
    for title, part in (("Claims: prediction vs measurement", [c for c in checks if c.kind == "claim"]),
                        ("Identities and consistency checks (they test lorasec's code, not the papers)",
                         [c for c in checks if c.kind != "claim"])):
        if not part:
            continue
        notes = [f"- {c.claim} [{c.setting}]: {c.note}" for c in part if c.note]
        out += [title, ""] + _rows(part) + ([""] + notes if notes else []) + [""]
    return "\n".join(out).rstrip()

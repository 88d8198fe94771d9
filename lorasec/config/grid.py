"""The grid language of every command that runs many configurations: points, axes and zip groups.

A **point** names one variant and may set some of the fields that variant reads::

    NAME                          "none", "lora", "rora_cl"
    NAME@VALUE                    the variant's primary field: "badnets@0.05" (poison rate), "lora@1e-3" (rate)
    NAME[field=value, ...]        any of its fields: "rora_tr[tr=20, tr_k=8]", "badnets[poison_rate=0.05]"

A **grid** is the product of axes (a dotted config field and the list of its values) with zip groups (fields
whose lists move together); each combination is a cell, run once per seed::

    [axes]
    "attack.poison_rate" = [0.01, 0.05]
    [[zip]]
    "adapter.method" = ["full", "lora"]
    "train.lr" = [1e-4, 1e-3]

``lorasec sweep`` and the figures of ``lorasec reproduce`` are grids; a study's ``attacks`` and ``arms`` are lists
of points that become two zip groups of one grid; ``lorasec purify``'s ``defences`` are points (a defence switches
several RoRA parts on at once, which no single field says). The two forms stay apart because a point stands for
several fields set together under a name the papers use, while an axis varies one field.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lorasec.core.errors import ConfigError


@dataclass(frozen=True)
class PointSyntax:
    """What the points of one list may say: its ``names``, the fields each name may set with their types
    (``fields(name) -> {field: int | float}``), the field ``NAME@VALUE`` sets, and an example for messages."""

    what: str
    names: tuple[str, ...]
    fields: Callable[[str], dict[str, type]]
    primary: str = ""
    example: str = ""
    fields_of: str = ""  # where the fields live, for messages: " of [rora]"
    settable: str = ""  # which names take settings, for messages


def parse_point(text: str, syntax: PointSyntax, *, name: str = "", required: tuple[str, ...] = ()
                ) -> tuple[str, dict[str, Any]]:
    """``text`` as (variant name, {field: value}) under ``syntax``; ``required`` fields must be set.

    Raises:
        ConfigError: one line naming ``name`` (default ``syntax.what``), the text and the fix.
    """
    name = name or syntax.what
    write = f"write NAME[field=value, ...]{' or NAME@VALUE' if syntax.primary else ''}, e.g. {syntax.example}"
    if not isinstance(text, str):
        raise ConfigError(f"{name} = {text!r}: must be a string; {write}")
    base, at, value = text.partition("@")
    base, bracket, rest = base.partition("[")
    base = base.strip()
    if base not in syntax.names:
        raise ConfigError(f"{name} = {text!r}: {base!r} must be one of {', '.join(syntax.names)}")
    allowed = syntax.fields(base)
    items: list[tuple[str, str]] = []
    if at:
        if bracket or not syntax.primary or syntax.primary not in allowed:
            raise ConfigError(f"{name} = {text!r}: {base} takes no @VALUE; {write}")
        items.append((syntax.primary, value.strip()))
    if bracket:
        if not rest.endswith("]") or not rest[:-1].strip():
            raise ConfigError(f"{name} = {text!r}: {write}")
        if not allowed:
            raise ConfigError(f"{name} = {text!r}: {base} has no settings to vary"
                              + (f"; {syntax.settable}" if syntax.settable else ""))
        for item in rest[:-1].split(","):
            key, _, raw = (part.strip() for part in item.partition("="))
            items.append((key, raw))
    settings: dict[str, Any] = {}
    for key, raw in items:
        if key not in allowed:
            raise ConfigError(f"{name} = {text!r}: {key!r}: {base} reads {', '.join(allowed) or 'nothing'}"
                              f"{syntax.fields_of}")
        if key in settings:
            raise ConfigError(f"{name} = {text!r}: {key!r} is given twice")
        settings[key] = _number(name, text, key, raw, allowed[key])
    missing = [key for key in required if key not in settings]
    if missing:
        raise ConfigError(f"{name} = {text!r}: needs {missing[0]}; {write}")
    return base, settings


def _number(name: str, text: str, key: str, raw: str, kind: type) -> int | float:
    try:
        number = float(raw)
    except ValueError:
        raise ConfigError(f"{name} = {text!r}: {key} = {raw!r} must be a number") from None
    if not math.isfinite(number):
        raise ConfigError(f"{name} = {text!r}: {key} = {raw!r} must be a finite number")
    if kind is int:
        if not number.is_integer():
            raise ConfigError(f"{name} = {text!r}: {key} = {raw!r} must be an integer")
        return int(number)
    return number


def cells(axes: dict[str, tuple], zips: tuple[dict[str, tuple], ...]) -> list[dict[str, Any]]:
    """Every cell of a grid, as {field: value}, in the order the axes are written (the last varies fastest), then
    the zip groups in order."""
    blocks = [[{name: v} for v in values] for name, values in axes.items()]
    blocks += [[dict(zip(group, column)) for column in zip(*group.values())] for group in zips]
    return [{k: v for part in combination for k, v in part.items()} for combination in itertools.product(*blocks)]


def size(axes: dict[str, tuple], zips: tuple[dict[str, tuple], ...]) -> int:
    """How many cells :func:`cells` gives, without listing them."""
    return math.prod([len(v) for v in axes.values()] + [len(next(iter(g.values()))) for g in zips if g])


def set_field(raw: dict, name: str, value: Any) -> None:
    """Set the dotted field ``name`` (``"train.lr"``) in the nested table ``raw``, creating sections on the way.

    Raises:
        ConfigError: a part of ``name`` before the last is a value, not a section.
    """
    node = raw
    parts = name.split(".")
    for depth, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{'.'.join(parts[:depth + 1])} is a value, not a section (setting {name})")
        node = child
    node[parts[-1]] = value

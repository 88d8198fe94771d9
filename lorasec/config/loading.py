"""One schema loader for every file lorasec reads: run, study, purify and pretrain configs, sweep specs, paper
and figure files. A file is a TOML or JSON table; :func:`from_dict` builds the dataclass it describes, field by
field, rejecting unknown keys (with the closest known one) and wrong types by their dotted name.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import tomllib
import types
import typing
from pathlib import Path
from typing import Any

from lorasec.config.grid import set_field
from lorasec.core.errors import ConfigError

INT_LIMIT = 2**63


def _fail(name: str, value: Any, allowed: str) -> None:
    raise ConfigError(f"{name} = {value!r}: {allowed}")


def _kind(annotation: Any) -> str:
    """How an annotation reads in a message: ``'a list of int'``, ``'a table'``."""
    origin = typing.get_origin(annotation)
    if origin is tuple:
        return f"a list of {_kind(typing.get_args(annotation)[0]).removeprefix('a ').removeprefix('an ')}"
    if annotation is dict or origin is dict or dataclasses.is_dataclass(annotation):
        return "a table"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string",
            type(None): "empty"}.get(annotation, str(annotation))


def coerce(name: str, value: Any, annotation: Any) -> Any:
    """``value`` as ``annotation`` says: bool, int, float, str, ``tuple[T, ...]`` (a scalar counts as a list of
    one), ``dict`` (any table, kept as it is), ``Any``, a union ``A | B`` (the first that fits) or a nested
    dataclass."""
    origin = typing.get_origin(annotation)
    if annotation is Any:
        return value
    if annotation is type(None):
        if value is not None:
            _fail(name, value, "must be empty")
        return None
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        for option in options:
            try:
                return coerce(name, value, option)
            except ConfigError:
                continue
        _fail(name, value, "must be " + " or ".join(_kind(o) for o in options))
    if dataclasses.is_dataclass(annotation):
        return from_dict(annotation, value, f"{name}.")
    if annotation is dict or origin is dict:
        if not isinstance(value, dict):
            _fail(name, value, "must be a table")
        return value
    if origin is tuple:
        item = typing.get_args(annotation)[0]
        if isinstance(value, (str, int, float, dict)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            _fail(name, value, f"must be {_kind(annotation)}")
        return tuple(coerce(f"{name}[{i}]", v, item) for i, v in enumerate(value))
    if annotation is bool:
        if not isinstance(value, bool):
            _fail(name, value, "must be true or false")
        return value
    if annotation is int:
        if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
                or int(value) != value):
            _fail(name, value, "must be an integer")
        if not -INT_LIMIT <= value < INT_LIMIT:
            _fail(name, value, "must lie within ±2**63 (a 64-bit integer)")
        return int(value)
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            _fail(name, value, "must be a number")
        if not math.isfinite(value):
            _fail(name, value, "must be a finite number (inf and nan are not allowed)")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            _fail(name, value, "must be a string")
        return value
    raise TypeError(f"unsupported config annotation {annotation!r}")  # a lorasec bug, not user input


def from_dict(cls: type, raw: Any, prefix: str = "") -> Any:
    """Build the dataclass ``cls`` from nested dicts, rejecting unknown keys and wrong types by name.

    Args:
        cls: a dataclass of the schema (fields annotated with the types :func:`coerce` knows).
        raw: the table read from a file.
        prefix: the dotted name of ``raw`` in its file (``"base."``), for messages.
    Returns:
        ``cls(**fields)``, not yet validated (call its ``validate()``).
    """
    if not isinstance(raw, dict):
        _fail(prefix.rstrip(".") or "config", raw, "must be a table of fields")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"did you mean '{close[0]}'?" if close else "allowed: " + ", ".join(names)
            raise ConfigError(f"{prefix}{key}: unknown field; {hint}")
        kwargs[key] = coerce(f"{prefix}{key}", value, hints[key])
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in kwargs and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{prefix}{missing[0]}: missing; it has no default (required: {', '.join(missing)})")
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict (tuples as lists) for JSON artifacts."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def parse_override(text: str) -> tuple[str, Any]:
    """``'train.lr=3e-5'`` -> ('train.lr', 3e-05); the value is read as TOML, else taken as a string."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE with a dotted key, e.g. train.lr=3e-5")
    try:
        parsed = tomllib.loads(f"v = {value.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value.strip()
    return key, parsed


def apply_overrides(raw: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> None:
    """Set each dotted ``KEY=VALUE`` of ``overrides`` in the nested dict ``raw`` (in place)."""
    for text in overrides:
        key, value = parse_override(text)
        try:
            set_field(raw, key, value)
        except ConfigError as err:
            raise ConfigError(f"--set {text!r}: {err}") from None


def read_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML or JSON file into a dict (a run directory's ``config.json`` works too)."""
    path = Path(path)
    if path.is_dir() and (path / "config.json").is_file():
        path = path / "config.json"
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r}: not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"config file {str(path)!r}: not UTF-8 text (byte {err.start}); save it as UTF-8") from None
    except OSError as err:
        raise ConfigError(f"config file {str(path)!r}: cannot be read ({err.strerror})") from None
    try:
        raw = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"config file {str(path)!r}: not valid {path.suffix.lstrip('.').upper()} ({err})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {str(path)!r}: must hold a table of fields, not {type(raw).__name__}")
    return raw


ORIGIN = "origin.json"  # beside a config that lorasec wrote into a directory: where it was written from
PATH_FIELDS = ("model.pretrained", "model.init_from", "data.train_file", "data.test_file", "data.vocab_file",
               "data.data_dir")


def write_origin(directory: Path) -> None:
    """Record where ``directory``'s config was written (the directory and the working directory), so that
    :func:`relocate` can re-anchor its paths after the directory is moved."""
    from lorasec.core import files

    files.write_json(Path(directory) / ORIGIN, {"directory": str(Path(directory).resolve()), "cwd": str(Path.cwd())})


def relocate(raw: dict[str, Any], directory: Path) -> dict[str, Any]:
    """``raw`` (a config lorasec wrote into ``directory``), re-anchored if the directory was moved or copied since.

    Each path of :data:`PATH_FIELDS` that lay near the directory (under the directory three levels up, where
    lorasec puts a sweep's or a paper's pretrained and backdoored models) is taken relative to where the directory
    was written and resolved from where it is now; it is replaced when that exists and is not what the path as
    written names from here (a sweep moved with its pretrained encoder: the copy uses the copied encoder). Paths to
    what did not move with it, registry names, and directories without an origin record (or never moved) are left
    as written.
    """
    if not isinstance(raw, dict):
        return raw  # not a config: the loader names it
    try:
        origin = json.loads((Path(directory) / ORIGIN).read_text())
        old_directory, old_cwd = Path(origin["directory"]), Path(origin["cwd"])
    except (OSError, ValueError, KeyError, TypeError):
        return raw
    if old_directory == Path(directory).resolve():
        return raw
    out = json.loads(json.dumps(raw))
    parents = old_directory.parents
    near = parents[min(2, len(parents) - 1)] if len(parents) else old_directory
    for dotted in PATH_FIELDS:
        section, _, name = dotted.partition(".")
        table = out.get(section)
        value = table.get(name) if isinstance(table, dict) else None
        if not isinstance(value, str) or not value:
            continue
        try:
            was = Path(os.path.normpath(old_cwd / value))
            if not was.is_relative_to(near):
                continue
            moved = (Path(directory) / os.path.relpath(was, old_directory)).resolve()
            if moved.exists() and moved != Path(value).resolve():
                table[name] = str(moved)
        except (OSError, ValueError):  # a path no file system can hold: the loader names it
            continue
    return out


def load(cls: type, path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Any:
    """Read ``path`` (TOML or JSON, optional), apply dotted overrides, build ``cls`` and validate its values (the
    files and memory it needs are checked apart, by :func:`lorasec.config.environment.check`). A config that
    lorasec wrote into a directory since moved has its paths re-anchored (:func:`relocate`)."""
    raw: dict[str, Any] = read_file(path) if path is not None else {}
    if path is not None:
        raw = relocate(raw, Path(path) if Path(path).is_dir() else Path(path).parent)
    apply_overrides(raw, overrides)
    return from_dict(cls, raw).validate()


def replace_config(cfg: Any, **sections: dict[str, Any]) -> Any:
    """Copy ``cfg`` with some fields of some sections changed: ``replace_config(cfg, train={'lr': 1e-4})``.

    Args:
        cfg: a config dataclass.
        sections: a section name and either a dict of its fields to change or a whole new value.
    Returns:
        The changed copy (not validated again).
    """
    changes = {}
    for name, fields in sections.items():
        current = getattr(cfg, name)
        changes[name] = dataclasses.replace(current, **fields) if isinstance(fields, dict) else fields
    return dataclasses.replace(cfg, **changes)

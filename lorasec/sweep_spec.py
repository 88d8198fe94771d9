"""A sweep specification: a base run config, axes of dotted config fields, and seeds (``lorasec sweep SPEC``).

A spec file (TOML or JSON)::

    base = "synthetic_badnets_lora.toml"     # a run config file (relative to the spec), or a [base] table
    seeds = [0, 1, 2, 3, 4]
    pretrain_steps = 0                       # > 0: pretrain the synthetic encoder once, start every run from it
    max_members = 0                          # most runs trained as one program (0: no limit)
    pad_ranks = true                         # LoRA ranks share a program, zero-padded to the largest
    [axes]                                   # the product of these lists
    "attack.poison_rate" = [0.01, 0.05, 0.1]
    [[zip]]                                  # fields that move together (equal-length lists); several allowed
    "adapter.method" = ["full", "full", "lora"]
    "train.lr" = [1e-3, 1e-4, 1e-3]

Cells are the product of the axes and of every zip group; each cell runs once per seed. Every cell's config is
validated before anything trains; an error is one line naming the field and the cell.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorasec.config import ConfigError, RunConfig, apply_overrides, from_dict, read_file
from lorasec.config import grid
from lorasec.config.schema import at_least, seeds as check_seeds


@dataclass(frozen=True)
class SweepFile:
    """A sweep spec file's fields as written (TOML or JSON; `lorasec config show --kind sweep SPEC` prints one
    resolved); spec_from_raw turns them into a SweepSpec."""

    base: str | dict = field(default_factory=dict)
    """The run config every cell starts from: a file (relative to the spec) or a [base] table of RunConfig fields."""
    seeds: tuple[int, ...] = (0,)
    """Each cell runs once per seed; distinct, each in [0, 2**32)."""
    axes: dict = field(default_factory=dict)
    """Dotted RunConfig field -> list of values; the cells are the product of these lists (and of zip)."""
    zip: tuple[dict, ...] = ()
    """Groups of dotted fields that move together (lists of equal length); several groups allowed."""
    pretrain_steps: int = 0
    """> 0: pretrain the synthetic encoder once for this many masked-LM steps and start every run from it."""
    max_members: int = 0
    """Most runs trained as one vmapped program (0: no limit; lower it when one program does not fit memory)."""
    pad_ranks: bool = True
    """LoRA ranks share a program, zero-padded to the largest (exact: padded directions stay zero)."""
    name: str = ""
    """The sweep's name (default: the spec file's stem)."""


@dataclass(frozen=True)
class Cell:
    """One point of the grid: its index, the axis values that define it, and its config per seed."""

    index: int
    values: dict[str, Any]
    configs: tuple[RunConfig, ...]

    @property
    def label(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.values.items()) or "base"


@dataclass(frozen=True)
class SweepSpec:
    name: str
    base: dict
    seeds: tuple[int, ...]
    axes: dict[str, tuple]
    zips: tuple[dict[str, tuple], ...]
    pretrain_steps: int = 0
    max_members: int = 0
    pad_ranks: bool = True

    @property
    def fields(self) -> list[str]:
        return [*self.axes, *(name for group in self.zips for name in group)]

    def cells(self) -> list[Cell]:
        """Every cell (:func:`lorasec.config.grid.cells`), configs validated."""
        return [Cell(index, values, tuple(_cell_config(self.base, values, seed, index) for seed in self.seeds))
                for index, values in enumerate(grid.cells(self.axes, self.zips))]

    def to_dict(self) -> dict:
        return {"name": self.name, "base": self.base, "seeds": list(self.seeds),
                "axes": {k: list(v) for k, v in self.axes.items()},
                "zip": [{k: list(v) for k, v in g.items()} for g in self.zips],
                "pretrain_steps": self.pretrain_steps, "max_members": self.max_members, "pad_ranks": self.pad_ranks}


def _cell_config(base: dict, values: dict, seed: int, index: int) -> RunConfig:
    raw = _deep_copy(base)
    raw["seed"] = seed
    for name, value in values.items():
        grid.set_field(raw, name, value)
    label = ", ".join(f"{k}={v!r}" for k, v in values.items()) or "base"
    try:
        return from_dict(RunConfig, raw).validate()
    except ConfigError as err:
        raise ConfigError(f"{err} (sweep cell {index}: {label}, seed {seed})") from None


def _deep_copy(raw: Any) -> Any:
    if isinstance(raw, dict):
        return {k: _deep_copy(v) for k, v in raw.items()}
    if isinstance(raw, list):
        return [_deep_copy(v) for v in raw]
    return raw


def _flatten(table: dict, prefix: str = "") -> dict[str, Any]:
    """``{"attack": {"poison_rate": [..]}}`` and ``{"attack.poison_rate": [..]}`` alike -> dotted keys."""
    out = {}
    for key, value in table.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _check_field(where: str, name: str) -> None:
    """``name`` must be a dotted path to a value field of :class:`RunConfig` (not a section, not ``seed``)."""
    if name == "seed":
        raise ConfigError(f"{where}.seed: list the seeds in `seeds`, not as an axis")
    cls: Any = RunConfig
    parts = name.split(".")
    for depth, part in enumerate(parts):
        hints = typing.get_type_hints(cls)
        names = [f.name for f in dataclasses.fields(cls)]
        if part not in names:
            close = difflib.get_close_matches(part, names, n=1)
            hint = f"did you mean '{close[0]}'?" if close else "allowed: " + ", ".join(names)
            raise ConfigError(f"{where}.{'.'.join(parts[:depth + 1])}: unknown field; {hint}")
        cls = hints[part]
        if dataclasses.is_dataclass(cls) and depth == len(parts) - 1:
            raise ConfigError(f"{where}.{name}: is a section; name one of its fields, e.g. {name}."
                              f"{dataclasses.fields(cls)[0].name}")
        if not dataclasses.is_dataclass(cls) and depth < len(parts) - 1:
            raise ConfigError(f"{where}.{'.'.join(parts[:depth + 1])}: is a value, not a section")


def _values(where: str, value: Any) -> tuple:
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{where} = {value!r}: must be a non-empty list of values")
    return tuple(value)


def base_table(base: Any, path: Path) -> dict:
    """A spec's ``base``: a [base] table, or a run config file named relative to the spec at ``path``."""
    if isinstance(base, str):
        base_path = Path(base) if Path(base).is_absolute() else path.parent / base
        if not base_path.is_file():
            raise ConfigError(f"base = {base!r}: run config file not found (looked at {str(base_path)!r})")
        base = read_file(base_path)
    if not isinstance(base, dict):
        raise ConfigError(f"base = {base!r}: must be a run config file name or a [base] table")
    return base


MAX_RUNS = 10_000  # a spec of more runs (cells × seeds) is refused unless the caller raises the cap


def load_spec(path: str | Path, overrides: list[str] | tuple[str, ...] = (), *, max_runs: int = MAX_RUNS,
              say=None) -> SweepSpec:
    """Read and validate a spec file (module docstring); every cell's config is validated now.

    Args:
        path: the spec (TOML or JSON).
        overrides: ``KEY=VALUE`` changes to fields of the base run config.
    Returns:
        The :class:`SweepSpec`.
    """
    path = Path(path)
    return spec_from_raw(read_file(path), path, overrides, max_runs=max_runs, say=say)


def spec_from_raw(raw: dict, path: Path, overrides: list[str] | tuple[str, ...] = (), *, max_runs: int = MAX_RUNS,
                  say=None) -> SweepSpec:
    """Validate a spec read from ``path`` (which names it and anchors a relative ``base`` file). Its size (cells ×
    seeds) is counted before any cell is validated, told to ``say`` when given, and refused above ``max_runs``."""
    try:
        written = from_dict(SweepFile, raw)
    except ConfigError as err:
        message = str(err)
        if ": unknown field" in message:
            message = message.replace(": unknown field", ": unknown sweep field", 1)
        raise ConfigError(message) from None
    base = _deep_copy(base_table(written.base, path))
    apply_overrides(base, overrides)
    try:
        from_dict(RunConfig, base)
    except ConfigError as err:
        raise ConfigError(f"base.{err}") from None
    check_seeds("seeds", written.seeds)
    axes = {}
    for name, value in _flatten(written.axes).items():
        _check_field("axes", name)
        axes[name] = _values(f"axes.{name}", value)
    zips = []
    for number, group in enumerate(written.zip):
        flat = _flatten(group)
        if not flat:
            raise ConfigError(f"zip[{number}]: is empty; list at least one FIELD = [values]")
        checked = {}
        for name, value in flat.items():
            _check_field(f"zip[{number}]", name)
            checked[name] = _values(f"zip[{number}].{name}", value)
        lengths = {name: len(v) for name, v in checked.items()}
        first = next(iter(lengths))
        for name, n in lengths.items():
            if n != lengths[first]:
                raise ConfigError(f"zip[{number}].{name}: has {n} values but {first} has {lengths[first]}; "
                                  f"fields that move together need as many values each")
        zips.append(checked)
    seen: set[str] = set()
    for name in [*axes, *(n for g in zips for n in g)]:
        if name in seen:
            raise ConfigError(f"{name}: appears in two axes; list it once (in one zip group to move it with others)")
        seen.add(name)
    at_least("pretrain_steps", written.pretrain_steps, 0)
    at_least("max_members", written.max_members, 0)
    spec = SweepSpec(written.name or path.stem, base, written.seeds, axes, tuple(zips), written.pretrain_steps,
                     written.max_members, written.pad_ranks)
    cells = grid.size(spec.axes, spec.zips)
    runs = cells * len(spec.seeds)
    if say is not None:
        say(f"sweep {spec.name}: {cells} cells × {len(spec.seeds)} seeds = {runs} runs")
    if runs > max_runs:
        raise ConfigError(f"{path}: {cells} cells × {len(spec.seeds)} seeds = {runs} runs, above the cap of "
                          f"{max_runs}; shrink the axes, or raise the cap (lorasec sweep --max-runs {runs})")
    if spec.pretrain_steps:
        varied = [n for n in spec.fields if n.startswith(("model.", "data."))]
        if varied:
            raise ConfigError(f"axes: {varied[0]} cannot vary when the sweep pretrains one encoder "
                              f"(pretrain_steps > 0); pretrain with `lorasec pretrain` and set model.pretrained")
    spec.cells()  # validates every cell's config now, before anything trains
    return spec


__all__ = ["Cell", "SweepFile", "SweepSpec", "base_table", "load_spec", "spec_from_raw"]

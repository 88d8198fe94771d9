"""One command per paper (``lorasec reproduce paper1``): each figure of the paper as a sweep, its plot, and a
side-by-side table of the paper's claims against our measurements, with a verdict per comparison.

A paper directory (``experiments/paper1/``) holds ``paper.toml``::

    title = "..."
    figures = ["fig1_backdoor_rate", ...]     # figure files of this directory, in report order
    pretrain_steps = 800                      # > 0: one synthetic encoder pretrained once, every figure starts from it
    [base]                                    # the run config every figure shares (a figure's [base] goes on top)
    [quick]                                   # --quick: seeds, pretrain_steps, a [base] and optionally a subset of
                                              # figures, for a smoke run of minutes

and one file per figure or table: a sweep spec (:mod:`lorasec.sweep_spec`, without ``pretrain_steps``; paper.toml's
[base] is its [base]'s starting point) or a purify config (:class:`lorasec.config.PurifyConfig`, paper 2's threat
model; paper.toml's [base] is its starting point, its one field is ``defence``) or a ``[kernels]`` table
(:class:`lorasec.pipelines.entropy_proxies.ProxySetting`: Fig. 3's kernel measurements, no training), plus::

    [figure]
    title = "..."
    x = "attack.poison_rate"
    y = ["triggered_accuracy", "attack_success_rate"]
    hue = ["adapter.method", "train.lr"]      # one line per combination
    panel = "attack.kind"                     # optional: one column of panels per value
    marks = [0.001, 0.0045]                   # optional: the paper's own x values, drawn dotted
    [[claims]]                                # one comparison per line of the side-by-side table
    metric = "triggered_accuracy"
    where = {"attack.kind" = "badnets"}       # optional: the runs both sides are drawn from
    a = {"adapter.method" = "lora"}           # the runs of one side (field = value)
    b = {"adapter.method" = "full"}
    expect = "a > b"                          # the paper's direction (or predict = "METRIC": its a − b is a value
                                              # the interval must cover)
    by = ["attack.kind", "attack.poison_rate"]  # one comparison per value of these fields
    paper = "SST-2, rate 0.0015: LoRA 91.7 vs FF 54.3"

Purify figures that differ only in defences and seeds (paper 2's tables on one backdoored model) share the first
one's directory: the backdoored model is made once and a defence × seed trained once; that directory's own
summary then covers every defence of those figures.

A comparison pairs the runs of a and b by seed and tests the claim's stated hypothesis (direction, size or
equivalence: :mod:`lorasec.core.hypotheses`) on the per-seed differences a − b with the exact sign-flip test; the
verdicts are taken on p Holm-adjusted over the report's family (:func:`decide_family`). Sweeps resume and a kernel
figure's measurements are kept in ``OUT/<figure>/kernels.json``, so an interrupted reproduction picks up where it
stopped. ``only`` runs a subset of the figures (its report goes to ``report-NAME[+NAME]/``, its family is its own
comparisons); ``overrides`` (``--set``) change every figure's run config.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from lorasec.config import (ConfigError, PurifyConfig, RunConfig, apply_overrides, check_environment, from_dict,
                            read_file, relocate, to_dict, write_origin)
from lorasec.core import files, hypotheses, machine, stats, tables
from lorasec.core.hypotheses import Hypothesis
from lorasec.core.stats import mean_sd, paired_difference
from lorasec.pipelines import entropy_proxies, figures, rundir
from lorasec.pipelines.pretrain import pretrain, pretrain_recipe
from lorasec.pipelines.purify import run_purify, settings_row
from lorasec.pipelines.sweep import METRICS, read_table, run_sweep
from lorasec.sweep_spec import SweepSpec, base_table, spec_from_raw

EXPECTS = hypotheses.EXPECTS
ABOVE_CLEAN = "asr_above_clean"  # ASR minus the never-poisoned model's on the same seed (the primary backdoor metric)
PURIFY_METRICS = ("clean_accuracy", "attack_success_rate", ABOVE_CLEAN)


# --- the files, as the one schema loader reads them -----------------------------------------------------------


@dataclass(frozen=True)
class QuickFile:
    """paper.toml's [quick]: the smoke setting of ``--quick``."""

    seeds: tuple[int, ...] = ()
    pretrain_steps: int = -1  # -1: the paper's own
    base: dict = field(default_factory=dict)
    figures: tuple[str, ...] = ()


@dataclass(frozen=True)
class PaperFile:
    """paper.toml (module docstring)."""

    title: str = ""
    figures: tuple[str, ...] = ()
    pretrain_steps: int = 0
    base: dict = field(default_factory=dict)
    quick: QuickFile = field(default_factory=QuickFile)


@dataclass(frozen=True)
class FigureTable:
    """A figure file's [figure] table. ``baseline`` names the runs that are never poisoned (e.g.
    ``{"attack.poison_rate" = 0.0}``): each other run's ``asr_above_clean`` is its ASR minus theirs, on the same seed
    and the same values of every other field."""

    x: str
    y: tuple[str, ...]
    title: str = ""
    hue: tuple[str, ...] = ()
    panel: str = ""
    marks: tuple[float, ...] = ()
    caption: str = ""
    baseline: dict = field(default_factory=dict)
    paper_values: dict = field(default_factory=dict)  # x value -> {metric: the paper's value}, drawn as markers


@dataclass(frozen=True)
class ClaimTable:
    """One [[claims]] entry of a figure file, as written: a hypothesis about ``metric``'s a − b
    (:mod:`lorasec.core.hypotheses`), with ``secondary`` metrics shown beside it and never tallied."""

    metric: str
    a: dict
    b: dict
    hypothesis: str = ""  # default: direction given expect, size given predict
    where: dict = field(default_factory=dict)
    expect: str = ""
    paper_effect: float | None = None
    margin: float = 0.0
    predict: str = ""
    secondary: tuple[str, ...] = ()
    by: tuple[str, ...] = ()
    paper: str = ""


@dataclass(frozen=True)
class KernelsFile:
    """A kernel figure's own fields: [kernels] (:class:`entropy_proxies.ProxySetting`) and an optional [base]."""

    kernels: dict
    base: str | dict = field(default_factory=dict)


@dataclass(frozen=True)
class Comparison:
    """A claim of a figure: ``hypothesis`` about ``metric``'s seed-paired a − b, one line per value of ``by``."""

    metric: str
    where: dict[str, Any]
    a: dict[str, Any]
    b: dict[str, Any]
    hypothesis: Hypothesis
    by: tuple[str, ...]
    paper: str
    predict: str = ""
    secondary: tuple[str, ...] = ()

    @property
    def expect(self) -> str:
        return self.hypothesis.expect


# --- figure kinds ------------------------------------------------------------------------------------------------


class FigureKind(Protocol):
    """What a figure measures and how: a sweep of runs, paper 2's purify pipeline, or kernels without training."""

    values: dict[str, tuple]  # each field the figure varies, with the values it takes
    seeds: tuple[int, ...]
    metrics: tuple[str, ...]
    needs_baseline: bool  # asr_above_clean needs the figure's [figure] baseline (else the kind makes its own)

    def start(self) -> tuple:
        """(data, model) configs: what a shared pretrained encoder is made for."""

    def starting_from(self, encoder: Path) -> FigureKind:
        """The same figure with ``model.pretrained`` set to the paper's shared encoder."""

    def home_key(self) -> str:
        """Figures with one non-empty key share a directory (paper 2's tables on one backdoored model)."""

    def run(self, out: Path, report_dir: Path, name: str, progress: bool) -> tuple[list[dict], dict]:
        """Measure into ``out`` (resuming); one row per run (or draw), and what the report adds about it."""

    def draw(self, figure: Figure, rows: list[dict], extra: dict, stem: Path) -> list[Path]:
        """The figure's PNG and PDF at ``stem`` from the rows :meth:`run` gave."""

    def plan(self) -> str:
        """What :meth:`run` trains or computes, in words (announced before it starts)."""


@dataclass(frozen=True)
class SweepFigure:
    """A grid of fine-tuning runs (:mod:`lorasec.sweep_spec`)."""

    spec: SweepSpec
    metrics = (*METRICS, ABOVE_CLEAN)
    needs_baseline = True  # asr_above_clean comes from the figure's own never-poisoned cells

    @property
    def values(self) -> dict[str, tuple]:
        values = dict(self.spec.axes)
        for group in self.spec.zips:
            values.update(group)
        return values

    @property
    def seeds(self) -> tuple[int, ...]:
        return tuple(self.spec.seeds)

    def start(self) -> tuple:
        cfg = from_dict(RunConfig, self.spec.base)
        return cfg.data, cfg.model

    def home_key(self) -> str:
        return ""  # each sweep figure has its own directory

    def starting_from(self, encoder: Path) -> SweepFigure:
        return SweepFigure(dataclasses.replace(self.spec, base=_merge(self.spec.base,
                                                                      {"model": {"pretrained": str(encoder)}})))

    def draw(self, figure: Figure, rows: list[dict], extra: dict, stem: Path) -> list[Path]:
        return _grid(figure, rows, stem)

    def plan(self) -> str:
        steps = from_dict(RunConfig, self.spec.base).train.steps
        return f"{len(self.spec.cells()) * len(self.spec.seeds)} runs of {steps} steps"

    def run(self, out: Path, report_dir: Path, name: str, progress: bool) -> tuple[list[dict], dict]:
        run_sweep(self.spec, out, progress=progress)
        steps = from_dict(RunConfig, self.spec.base).train.steps
        return read_table(out), {"settings": f"{len(self.spec.cells())} cells, seeds {list(self.spec.seeds)}, "
                                             f"{steps} steps each"}


@dataclass(frozen=True)
class PurifyFigure:
    """Paper 2's threat model (:mod:`lorasec.pipelines.purify`): a backdoored model, then each defence × seed."""

    config: PurifyConfig
    metrics = PURIFY_METRICS
    needs_baseline = False  # the pipeline trains its own never-poisoned control

    @property
    def values(self) -> dict[str, tuple]:
        rows = [settings_row(self.config, text) for text in self.config.defences]
        return {"defence": tuple(self.config.defences),
                **{key: tuple(sorted({row[key] for row in rows} - {None})) for key in rows[0]}}

    @property
    def seeds(self) -> tuple[int, ...]:
        return tuple(self.config.seeds)

    def start(self) -> tuple:
        return self.config.data, self.config.model

    def starting_from(self, encoder: Path) -> PurifyFigure:
        return PurifyFigure(dataclasses.replace(self.config, model=dataclasses.replace(self.config.model,
                                                                                      pretrained=str(encoder))))

    def home_key(self) -> str:
        """Its settings but defences and seeds: figures with one key share one backdoored model and directory."""
        return json.dumps(rundir.deciding(to_dict(dataclasses.replace(self.config, defences=(), seeds=()))),
                          sort_keys=True)

    def draw(self, figure: Figure, rows: list[dict], extra: dict, stem: Path) -> list[Path]:
        """Defences as bars in the spec's order (the paper's), its values as markers, the backdoored model before
        fine-tuning and the never-poisoned control as lines; a grid over a RoRA setting as a line plot."""
        if figure.x != "defence":
            return _grid(figure, rows, stem)
        levels = {"backdoored, before fine-tuning": extra["before"],
                  "never poisoned": {k: v["mean"] for k, v in extra["never_poisoned"].items() if k != "runs"}}
        return figures.defence_figure(rows, list(figure.y), stem, title=figure.title,
                                      order=list(self.config.defences), paper=figure.paper_values, lines=levels)

    def plan(self) -> str:
        c = self.config
        return (f"a backdoored model ({c.backdoor.train.steps} steps), then {len(c.seeds)} never-poisoned and "
                f"{len(c.defences) * len(c.seeds)} defence runs of {c.train.steps} steps")

    def run(self, out: Path, report_dir: Path, name: str, progress: bool) -> tuple[list[dict], dict]:
        """One row per run, and what the report adds: the backdoored model before clean fine-tuning, the
        never-poisoned control, the per-defence table and the adapter-scale curve."""
        result = run_purify(self.config, out, progress=progress)
        rows = [{"defence": cell["defence"], **run, "run_id": f"{out.name}/{run['run']}"}
                for cell in result["defences"] for run in cell["runs"]]
        table = []
        for cell in result["defences"]:
            best = min(cell["runs"], key=lambda run: run["attack_success_rate"])  # the paper's best-of-runs view
            table.append({"defence": cell["defence"], "clean_accuracy": cell["clean_accuracy"],
                          "attack_success_rate": cell["attack_success_rate"],
                          "best": {k: best[k] for k in ("seed", "clean_accuracy", "attack_success_rate")}})
        extra = {"before": result["backdoored"]["downstream"], "never_poisoned": result["never_poisoned"],
                 "defences": table,
                 "settings": f"seeds {list(self.config.seeds)}, {self.config.train.steps} steps of clean "
                             f"fine-tuning each, defences {', '.join(self.config.defences)}"}
        if result["sweeps"] and (out / "scale_sweep.png").is_file():  # this call's own sweep, not a sharing figure's
            report_dir.mkdir(parents=True, exist_ok=True)
            (report_dir / f"{name}-scale-sweep.png").write_bytes((out / "scale_sweep.png").read_bytes())
            extra["scale_sweep"] = f"{name}-scale-sweep.png"
        return rows, extra


@dataclass(frozen=True)
class KernelFigure:
    """Paper 1's Fig. 3 kind: entropy proxies of one layer's LoRA kernel (:mod:`entropy_proxies`), no training."""

    base: dict
    setting: entropy_proxies.ProxySetting
    needs_baseline = False

    @property
    def values(self) -> dict[str, tuple]:
        return self.setting.values

    @property
    def seeds(self) -> tuple[int, ...]:
        return self.setting.draws

    @property
    def metrics(self) -> tuple[str, ...]:
        return (*entropy_proxies.METRICS, *(f"{m}_closed" for m in entropy_proxies.METRICS))

    def start(self) -> tuple:
        cfg = from_dict(RunConfig, self.base)
        return cfg.data, cfg.model

    def home_key(self) -> str:
        return ""

    def starting_from(self, encoder: Path) -> KernelFigure:
        return KernelFigure(_merge(self.base, {"model": {"pretrained": str(encoder)}}), self.setting)

    def draw(self, figure: Figure, rows: list[dict], extra: dict, stem: Path) -> list[Path]:
        return _grid(figure, rows, stem)

    def plan(self) -> str:
        return f"kernels of {len(self.setting.draws)} draws per setting, no training"

    def run(self, out: Path, report_dir: Path, name: str, progress: bool) -> tuple[list[dict], dict]:
        measured = self._measured(out)
        s = self.setting
        return measured + entropy_proxies.shifted_closed_forms(measured, s), {
            "settings": f"layer {s.layer}, {s.examples} test sentences, draws {list(s.draws)}, A {s.init}, "
                        f"s = 1 (α = r)"}

    def _measured(self, out: Path) -> list[dict]:
        """The measured rows, read back from ``out/kernels.json`` when that file holds this very setting (a re-run
        or resumed reproduction does not measure them again), else measured and written there."""
        cfg = from_dict(RunConfig, self.base)
        key = json.loads(json.dumps({"base": rundir.deciding(to_dict(cfg)),
                                     "setting": dataclasses.asdict(self.setting)}))
        path = out / "kernels.json"
        if path.is_file():
            saved = files.read_json(path)
            held = saved.get("key") or {}
            if isinstance(held.get("base"), dict) and \
                    {**held, "base": rundir.deciding(relocate(held["base"], out))} == key:  # out may have moved
                return saved["rows"]
        rows = entropy_proxies.measure(check_environment(cfg.validate()), self.setting)
        files.write_json(path, {"key": key, "rows": rows})
        write_origin(out)
        return rows


@dataclass(frozen=True)
class Figure:
    name: str
    path: Path
    title: str
    caption: str
    x: str
    y: tuple[str, ...]
    hue: tuple[str, ...]
    panel: str
    marks: tuple[float, ...]
    claims: tuple[Comparison, ...]
    kind: FigureKind
    baseline: dict = field(default_factory=dict)
    paper_values: dict = field(default_factory=dict)

    @property
    def seeds(self) -> tuple[int, ...]:
        return self.kind.seeds

    @property
    def values(self) -> dict[str, tuple]:
        return self.kind.values


@dataclass(frozen=True)
class Paper:
    name: str
    directory: Path
    title: str
    pretrain_steps: int
    quick: bool
    figures: tuple[Figure, ...]
    only: tuple[str, ...] = ()  # the figures to run and report (empty: all)
    overrides: tuple[str, ...] = ()  # --set KEY=VALUE over every figure's run config

    @property
    def chosen(self) -> tuple[Figure, ...]:
        return tuple(f for f in self.figures if not self.only or f.name in self.only)

    @property
    def report_name(self) -> str:
        return "report-" + "+".join(self.only) if self.only else "report"


# --- loading -----------------------------------------------------------------------------------------------------


def experiment_roots(experiments: str | None = None) -> list[Path]:
    """Where shipped experiments are looked for: ``experiments`` when given; else the checkout lorasec runs from,
    the installed package (which ships them as ``lorasec/experiments``) and the working directory."""
    package = Path(__file__).resolve().parents[1]
    roots = [Path(experiments)] if experiments else [package.parent / "experiments", package / "experiments",
                                                      Path("experiments")]
    return [root for i, root in enumerate(roots) if root.resolve() not in {r.resolve() for r in roots[:i]}]


def paper_directory(paper: str, experiments: str | None = None) -> Path:
    """``paper1`` -> ``experiments/paper1`` (of ``experiments``; else of the checkout lorasec runs from, of the
    installed package, which ships them as ``lorasec/experiments``, or of the working directory); a directory
    holding ``paper.toml`` is taken as it is."""
    given = Path(paper)
    if (given / "paper.toml").is_file():
        return given
    roots = experiment_roots(experiments)
    for root in roots:
        if (root / paper / "paper.toml").is_file():
            return root / paper
    found = sorted({p.parent.name for root in roots if root.is_dir() for p in root.glob("*/paper.toml")})
    hint = f"papers found: {', '.join(found)}" if found else "run from the repository root or pass --experiments DIR"
    raise ConfigError(f"reproduce {paper!r}: no {paper}/paper.toml under {', '.join(map(str, roots))}; {hint}")


def _merge(base: dict, top: dict) -> dict:
    out = {k: _merge(v, {}) if isinstance(v, dict) else v for k, v in base.items()}
    for key, value in top.items():
        out[key] = _merge(out.get(key, {}), value) if isinstance(value, dict) and isinstance(out.get(key), dict) \
            else value
    return out


def _read(cls: type, raw: dict, where: str):
    """``raw`` through the schema loader, its messages prefixed with ``where`` (the file, and the table in it)."""
    try:
        return from_dict(cls, raw)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None


def load_paper(directory: str | Path, *, quick: bool = False, only: tuple[str, ...] | list[str] = (),
               overrides: tuple[str, ...] | list[str] = ()) -> Paper:
    """Read and validate a paper directory (module docstring); every figure's every cell is validated now.

    Args:
        directory: the paper directory (holding ``paper.toml``).
        quick: the paper's [quick] smoke setting.
        only: names of the figures to run (default: all); each must be one the paper lists.
        overrides: ``KEY=VALUE`` changes of every figure's run config, over [base] and [quick].
    Returns:
        The :class:`Paper`.
    """
    directory = Path(directory)
    where = str(directory / "paper.toml")
    written = _read(PaperFile, read_file(directory / "paper.toml"), where)
    if not written.figures:
        raise ConfigError(f"{where}: figures = []: must list the figure files of this directory, in report order")
    names = written.figures
    if quick and written.quick.figures:
        if any(name not in names for name in written.quick.figures):
            raise ConfigError(f"{where}: [quick] figures = {list(written.quick.figures)}: each must be one of figures "
                              f"{list(names)}")
        names = written.quick.figures
    pretrain_steps = written.pretrain_steps
    if quick and written.quick.pretrain_steps >= 0:
        pretrain_steps = written.quick.pretrain_steps
    if pretrain_steps < 0:
        raise ConfigError(f"{where}: pretrain_steps = {pretrain_steps}: must be >= 0")
    for name in only:
        if name not in names:
            raise ConfigError(f"reproduce --figure {name!r}: not a figure of {directory.name}"
                              f"{' --quick' if quick else ''}; its figures: {', '.join(names)}")
    quick_base = written.quick.base if quick else {}
    if overrides:
        changes: dict = {}
        apply_overrides(changes, list(overrides))
        quick_base = _merge(quick_base, changes)
    seeds = written.quick.seeds if quick and written.quick.seeds else None
    loaded = []
    for name in names:
        path = directory / f"{name}.toml"
        if not path.is_file():
            raise ConfigError(f"{where}: figures lists {name!r}, but {str(path)!r} does not exist")
        loaded.append(_load_figure(path, written.base, quick_base, seeds, pretrain_steps))
    if pretrain_steps:
        first = [to_dict(part) for part in loaded[0].kind.start()]
        for figure in loaded[1:]:
            if [to_dict(part) for part in figure.kind.start()] != first:
                raise ConfigError(f"{figure.path}: data or model differs from {loaded[0].name}'s; every figure starts "
                                  f"from one pretrained encoder, so data and model come from paper.toml's [base]")
    return Paper(directory.name, directory, written.title or directory.name, pretrain_steps, quick, tuple(loaded),
                 tuple(dict.fromkeys(only)), tuple(overrides))


def _load_figure(path: Path, paper_base: dict, quick_base: dict, seeds: tuple[int, ...] | None,
                 pretrain_steps: int) -> Figure:
    """A figure file with paper.toml's [base] under it and, for --quick, [quick.base] over it."""
    raw = read_file(path)
    if not isinstance(raw.get("figure"), dict):
        raise ConfigError(f"{path}: needs a [figure] table (title, x, y, hue)")
    table = _read(FigureTable, raw.pop("figure"), f"{path}: [figure]")
    claims = raw.pop("claims", [])
    if not isinstance(claims, list):
        raise ConfigError(f"{path}: claims must be a list of tables ([[claims]])")
    if "kernels" in raw:
        kind = _kernel_figure(path, raw, paper_base, quick_base, seeds)
    elif "defences" in raw or "backdoor" in raw:
        kind = _purify_figure(path, _merge(_merge(paper_base, raw), quick_base), seeds)
    else:
        kind = _sweep_figure(path, raw, paper_base, quick_base, seeds, pretrain_steps)
    fields = kind.values
    if table.x not in fields:
        raise ConfigError(f"{path}: [figure] x = {table.x!r}: must be one of the fields it varies: "
                          f"{', '.join(fields)}")
    for name in (*table.hue, *([table.panel] if table.panel else [])):
        if name not in fields:
            raise ConfigError(f"{path}: [figure] {name!r}: not a field it varies; fields: {', '.join(fields)}")
    for y in table.y:
        if y not in kind.metrics:
            raise ConfigError(f"{path}: [figure] y {y!r}: not a metric; metrics: {', '.join(kind.metrics)}")
    for name, value in table.baseline.items():
        if name not in fields or not any(_same(value, v) for v in fields[name]):
            raise ConfigError(f"{path}: [figure] baseline {name} = {value!r}: must be a value the figure takes of a "
                              f"field it varies; fields: {', '.join(fields)}")
    comparisons = tuple(_load_claim(f"{path}: claims[{i}]", c, fields, kind.metrics) for i, c in enumerate(claims))
    needs_baseline = [c.metric for c in comparisons if ABOVE_CLEAN in (c.metric, *c.secondary)]
    if needs_baseline and kind.needs_baseline and not table.baseline:
        raise ConfigError(f"{path}: a claim uses {ABOVE_CLEAN}, which needs [figure] baseline (the never-poisoned "
                          f"runs, e.g. {{\"attack.poison_rate\" = 0.0}})")
    for name, values in table.paper_values.items():
        if not isinstance(values, dict) or any(m not in kind.metrics for m in values):
            raise ConfigError(f"{path}: [figure] paper_values.{name}: must be a table of METRIC = value with metrics "
                              f"among {', '.join(kind.metrics)}")
    return Figure(path.stem, path, table.title or path.stem, table.caption, table.x, table.y, table.hue, table.panel,
                  table.marks, comparisons, kind, dict(table.baseline), dict(table.paper_values))


def _sweep_figure(path: Path, raw: dict, paper_base: dict, quick_base: dict, seeds: tuple[int, ...] | None,
                  pretrain_steps: int) -> SweepFigure:
    if "pretrain_steps" in raw:
        raise ConfigError(f"{path}: pretrain_steps belongs in paper.toml (one encoder for every figure)")
    try:
        base = base_table(raw.get("base", {}), path)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err} (paper.toml's [base] goes under it)") from None
    raw["base"] = _merge(_merge(paper_base, base), quick_base)
    if seeds is not None:
        raw["seeds"] = list(seeds)
    spec = spec_from_raw(raw, path)
    if pretrain_steps:
        varied = [f for f in spec.fields if f.startswith(("data.", "model."))]
        if varied:
            raise ConfigError(f"{path}: {varied[0]} cannot vary: every figure starts from one pretrained encoder")
    return SweepFigure(spec)


def _kernel_figure(path: Path, raw: dict, paper_base: dict, quick_base: dict,
                   seeds: tuple[int, ...] | None) -> KernelFigure:
    written = _read(KernelsFile, raw, str(path))
    table = {**written.kernels, "draws": list(seeds)} if seeds is not None else written.kernels
    setting = _read(entropy_proxies.ProxySetting, table, f"{path}: [kernels]")
    try:
        own = base_table(written.base, path)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err} (paper.toml's [base] goes under it)") from None
    base = _merge(_merge(paper_base, own), quick_base)
    try:
        from_dict(RunConfig, base).validate()
    except ConfigError as err:
        raise ConfigError(f"{path}: base.{err}") from None
    return KernelFigure(base, setting.validate(f"{path}: [kernels]"))


def _purify_figure(path: Path, raw: dict, seeds: tuple[int, ...] | None) -> PurifyFigure:
    if seeds is not None:
        raw["seeds"] = list(seeds)
    try:
        return PurifyFigure(from_dict(PurifyConfig, raw).validate())
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def _load_claim(where: str, raw: Any, values: dict[str, tuple], metrics: tuple[str, ...]) -> Comparison:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: must be a table")
    written = _read(ClaimTable, raw, where)
    for name, metric in (("metric", written.metric), *(("secondary", m) for m in written.secondary)):
        if metric not in metrics:
            raise ConfigError(f"{where}: {name} = {metric!r}: must be one of {', '.join(metrics)}")
    predict = written.predict
    kind = written.hypothesis or ("size" if predict and not written.expect else "direction")
    if predict:
        if predict not in metrics or predict == written.metric:
            raise ConfigError(f"{where}: predict = {predict!r}: must name another metric ({', '.join(metrics)}) whose "
                              f"a − b is the prediction")
        if written.expect:
            raise ConfigError(f"{where}: give expect (a direction) or predict (a value), not both")
        if kind not in ("size", "identity"):
            raise ConfigError(f"{where}: predict gives a value to test: hypothesis must be size or identity")
    elif kind in ("size", "identity") and written.paper_effect is None:
        raise ConfigError(f"{where}: a {kind} hypothesis needs paper_effect (the paper's a − b) or predict")
    hypothesis = Hypothesis(kind, written.expect, written.paper_effect, written.margin).validate(where)
    for side in ("where", "a", "b"):
        chosen = getattr(written, side)
        if not chosen and side != "where":
            raise ConfigError(f"{where}: {side} must be a table of FIELD = value, e.g. "
                              f"{{\"adapter.method\" = \"lora\"}}")
        for name, value in chosen.items():
            if name not in values:
                raise ConfigError(f"{where}: {side}.{name}: not a field it varies; fields: {', '.join(values)}")
            if not any(_same(value, v) for v in values[name]):
                raise ConfigError(f"{where}: {side}.{name} = {value!r}: the figure never takes it; values: "
                                  f"{list(values[name])}")
    for name in written.by:
        if name not in values:
            raise ConfigError(f"{where}: by {name!r}: not a field it varies; fields: {', '.join(values)}")
    return Comparison(written.metric, dict(written.where), dict(written.a), dict(written.b), hypothesis, written.by,
                      written.paper, predict, written.secondary)


# --- running and reporting ---------------------------------------------------------------------------------------


def reproduce(paper: Paper, out_dir: str | Path, *, progress: bool = True) -> dict:
    """Run the paper's figures (``paper.only``, else all; resuming finished runs), then write ``report/`` (or
    ``report-NAME[+NAME]/`` for a subset): each figure as PNG and PDF, the Markdown report with the side-by-side
    tables, a per-run CSV per figure and ``summary.json``. Returns the summary."""
    out_dir = Path(out_dir)
    kinds = [figure.kind for figure in paper.figures]
    if paper.pretrain_steps:
        data, model = kinds[0].start()
        encoder = pretrain(pretrain_recipe(data, model, paper.pretrain_steps), out_dir / "pretrained",
                           progress=progress).resolve()
        kinds = [kind.starting_from(encoder) for kind in kinds]
    homes = _purify_homes(paper.figures, kinds)  # over every figure, so a subset reuses the full run's directories
    chosen = [(figure, kind) for figure, kind in zip(paper.figures, kinds) if figure in paper.chosen]
    report_dir = out_dir / paper.report_name
    summary = {"paper": paper.name, "title": paper.title, "quick": paper.quick, "only": list(paper.only),
               "overrides": list(paper.overrides), "made": machine.record(), "figures": []}
    for figure, kind in chosen:
        if progress:
            print(f"lorasec reproduce {paper.name}: {figure.name}", file=sys.stderr)
        home = homes.get(figure.name, figure.name)
        rows, extra = kind.run(out_dir / home, report_dir, figure.name, progress)
        if figure.baseline:
            rows = derive_above_clean(rows, figure.baseline, list(figure.values))
        files.write_text(report_dir / f"{figure.name}.csv", per_run_table(rows, list(figure.values), kind.metrics))
        entry = {"name": figure.name, "title": figure.title, "caption": figure.caption, "spec": _shown(figure.path),
                 "seeds": list(kind.seeds), "results": f"{figure.name}.csv", **extra,
                 **({"runs_in": home} if home != figure.name else {}),
                 **({"baseline": figure.baseline} if figure.baseline else {})}
        kind.draw(figure, rows, extra, report_dir / figure.name)
        entry.update(runs=sum(r.get("source") != "closed form" for r in rows),
                     comparisons=[line for claim in figure.claims for line in compare(rows, claim)])
        summary["figures"].append(entry)
    for home, union in _shared_unions(*map(list, zip(*chosen)), homes).items():
        run_purify(union, out_dir / home, progress=False)  # a shared directory's own summary covers all it holds
    summary["family"] = decide_family(summary["figures"])
    files.write_json(report_dir / "summary.json", summary)
    files.write_text(report_dir / "report.md", report(summary))
    names = {figure.name for figure in paper.chosen}
    for path in report_dir.iterdir():  # a figure the paper dropped or renamed leaves no stale file behind
        if path.suffix in (".png", ".pdf", ".csv") and path.stem.removesuffix("-scale-sweep") not in names:
            path.unlink()
    return summary


def per_run_table(rows: list[dict], fields: list[str], metrics: tuple[str, ...]) -> str:
    """A figure's runs as CSV: the fields it varies, the seed, its metrics, then every other scalar each run
    recorded (the run directory's name last), one line per run (or per draw of a kernel figure)."""
    columns = [*fields, "seed", *(m for m in metrics if any(m in r for r in rows))]
    rest = sorted({k for r in rows for k, v in r.items()
                   if k not in columns and k != "run" and (v is None or isinstance(v, (int, float, str, bool)))})
    return tables.csv([*columns, *rest, "run"], rows)


def _grid(figure: Figure, rows: list[dict], stem: Path) -> list[Path]:
    """A line figure of ``rows`` as the figure file describes it; never-poisoned baseline runs are the reference of
    ASR above clean, not points of the curves."""
    shown = [r for r in rows if not (figure.baseline and _matches(r, figure.baseline))]
    return figures.figure_grid(shown, figure.x, list(figure.y), list(figure.hue), figure.panel or None, stem,
                               title=figure.title, marks=list(figure.marks))


def _purify_homes(paper_figures: tuple[Figure, ...], kinds: list) -> dict[str, str]:
    """Purify figures that differ only in defences and seeds (one backdoored model) share the first one's
    directory: the backdoored model is made once, a defence × seed trained once. Figure name -> directory name."""
    first: dict[str, str] = {}
    return {figure.name: first.setdefault(kind.home_key(), figure.name)
            for figure, kind in zip(paper_figures, kinds) if kind.home_key()}


def _shared_unions(paper_figures: tuple[Figure, ...], kinds: list, homes: dict[str, str]) -> dict[str, PurifyConfig]:
    """Each directory several purify figures share -> one config holding all their defences and seeds."""
    unions: dict[str, PurifyConfig] = {}
    for figure, kind in zip(paper_figures, kinds):
        if figure.name not in homes or list(homes.values()).count(homes[figure.name]) < 2:
            continue
        held = unions.get(homes[figure.name], kind.config)
        unions[homes[figure.name]] = dataclasses.replace(
            held, defences=tuple(dict.fromkeys((*held.defences, *kind.config.defences))),
            seeds=tuple(sorted({*held.seeds, *kind.config.seeds})))
    return unions


def _same(x: Any, y: Any) -> bool:
    if isinstance(x, (int, float)) and isinstance(y, (int, float)) and not isinstance(x, bool):
        return math.isclose(float(x), float(y), rel_tol=1e-9, abs_tol=1e-12)
    return x == y


def _matches(row: dict, chosen: dict) -> bool:
    return all(_same(row.get(name), value) for name, value in chosen.items())


def interval_verdict(difference: dict, expect: str, predicted: float | None = None) -> str:
    """The rule lorasec used before hypotheses were tested as stated, kept to report each tally before and after:
    where the unadjusted 95% t-interval of a − b lies against the paper's direction (or covers a predicted value)."""
    if difference["mean"] is None or difference["ci95"] is None:
        return "inconclusive"
    if predicted is not None:
        return "agrees" if abs(difference["mean"] - predicted) <= difference["ci95"] else "disagrees"
    sign = 1.0 if expect == "a > b" else -1.0
    low, high = difference["mean"] - difference["ci95"], difference["mean"] + difference["ci95"]
    if sign * low > 0 and sign * high > 0:
        return "agrees"
    if sign * low < 0 and sign * high < 0:
        return "disagrees"
    return "inconclusive"


def _old_rule(h: Hypothesis, difference: dict, predicted: float | None) -> str | None:
    """:func:`interval_verdict` as the old specs stated the claim (equivalence was not among them: None)."""
    if h.kind == "equivalence":
        return None
    if h.kind == "direction":
        return interval_verdict(difference, h.expect)
    return interval_verdict(difference, "a > b", h.paper_effect if h.paper_effect is not None else predicted)


def _run_id(row: dict) -> str | None:
    """What makes two rows one run: a sweep run's config hash (one config trains the same run in any figure's
    directory), else the row's ``run_id``; None when the row says neither (then no comparison is a repeat)."""
    return row.get("config_sha256") or row.get("run_id")


def _by_seed(group: list[dict], chosen: dict, metric: str, where: str) -> dict:
    by_seed: dict[int, list] = {}
    for row in group:
        if _matches(row, chosen):
            by_seed.setdefault(row["seed"], []).append(row)
    if any(len(v) > 1 for v in by_seed.values()):
        raise ConfigError(f"claim on {metric}: side {chosen} holds several runs per seed at {where}; name the "
                          f"fields that tell them apart in `by`")
    return {seed: rows[0] for seed, rows in by_seed.items()}


def compare(rows: list[dict], claim: Comparison) -> list[dict]:
    """One line per value of ``claim.by``: a's and b's means over seeds, the seed-paired differences and the
    unadjusted test of the claim's hypothesis (:func:`lorasec.core.hypotheses.test`), the secondary metrics'
    differences, and the runs it compares (``key``: one comparison made in two figures is counted once). The
    verdict comes later, on the family's adjusted p (:func:`decide_family`)."""
    rows = [r for r in rows if _matches(r, claim.where)]
    keys = []
    for row in rows:
        key = tuple(row[name] for name in claim.by)
        if not any(all(_same(k, v) for k, v in zip(key, seen)) for seen in keys):
            keys.append(key)
    out = []
    for key in keys:
        at = {**claim.where, **dict(zip(claim.by, key))}
        group = [r for r in rows if all(_same(r[n], v) for n, v in zip(claim.by, key))]
        a, b = (_by_seed(group, chosen, claim.metric, str(at)) for chosen in (claim.a, claim.b))
        seeds = sorted(set(a) & set(b))

        def differences(metric: str) -> dict:
            return {s: (None if a[s].get(metric) is None or b[s].get(metric) is None
                        else float(a[s][metric]) - float(b[s][metric])) for s in seeds}

        primary = differences(claim.metric)
        if all(d is None for d in primary.values()):
            continue  # e.g. the never-poisoned cells themselves, which have no ASR above clean
        predicted = None
        if claim.predict:
            means = [mean_sd(r[claim.predict] for r in side.values())["mean"] for side in (a, b)]
            predicted = None if None in means else means[0] - means[1]
        difference = paired_difference({s: a[s].get(claim.metric) for s in seeds},
                                       {s: b[s].get(claim.metric) for s in seeds})
        secondary = {}
        for metric in claim.secondary:
            d = differences(metric)
            values = [v for v in d.values() if v is not None]
            secondary[metric] = {**stats.mean_sd(values), "ci95": stats.ci95_half_width(values),
                                 "signs": stats.signs(d[s] for s in seeds)}
        identity = [(s, _run_id(a[s]), _run_id(b[s])) for s in seeds]
        h = claim.hypothesis
        out.append({"at": at, "metric": claim.metric, "a": claim.a, "b": claim.b, "paper": claim.paper,
                    "hypothesis": {"kind": h.kind, "expect": h.expect, "paper_effect": h.paper_effect,
                                   "margin": h.margin},
                    "predicted": predicted, "expect": h.expect,
                    "a_stats": mean_sd(a[s].get(claim.metric) for s in seeds),
                    "b_stats": mean_sd(b[s].get(claim.metric) for s in seeds),
                    "differences": {str(s): d for s, d in primary.items()},
                    "difference": difference, "test": hypotheses.test(h, primary, predicted=predicted),
                    "secondary": secondary,
                    "interval_verdict": _old_rule(h, difference, predicted),
                    "key": None if any(None in ids[1:] for ids in identity) else
                    json.dumps([claim.metric, h.kind, identity], sort_keys=True)})
    return out


def decide_family(figures: list[dict]) -> dict:
    """Verdicts for every comparison of a report (``figures``' ``comparisons``, edited in place): Holm's adjustment
    over the family (every tallied hypothesis, a comparison repeated in a later figure counted once there and marked
    as a repeat), identities judged alone. Returns the family's description and tallies, and the old rule's."""
    first: dict[str, tuple[str, dict]] = {}
    family = []
    for figure in figures:
        for line in figure["comparisons"]:
            line["tallied"] = line["hypothesis"]["kind"] != "identity"
            if not line["tallied"]:
                continue
            if line["key"] is not None and line["key"] in first:
                line["repeats"] = first[line["key"]][0]
                line["tallied"] = False
                continue
            if line["key"] is not None:
                first[line["key"]] = (figure["name"], line)
            family.append(line)
    for line, adjusted in zip(family, hypotheses.adjust_family([line["test"] for line in family])):
        line["adjusted_p"] = adjusted
    for figure in figures:
        for line in figure["comparisons"]:
            h = Hypothesis(**line["hypothesis"])
            if "repeats" in line:
                line["adjusted_p"] = first[line["key"]][1]["adjusted_p"]
            line["verdict"] = hypotheses.decide(h, line["test"], line.get("adjusted_p"), family_size=len(family))
    tally: dict[str, int] = {}
    before: dict[str, int] = {}
    for line in family:
        tally[line["verdict"]] = tally.get(line["verdict"], 0) + 1
        if line["interval_verdict"] is not None:
            before[line["interval_verdict"]] = before.get(line["interval_verdict"], 0) + 1
    return {"size": len(family), "alpha": hypotheses.ALPHA, "method": "Holm", "tally": tally,
            "before": before, "identities": sum(line["hypothesis"]["kind"] == "identity"
                                                for figure in figures for line in figure["comparisons"]),
            "repeats": sum("repeats" in line for figure in figures for line in figure["comparisons"])}


def derive_above_clean(rows: list[dict], baseline: dict, fields: list[str]) -> list[dict]:
    """Each row with ``asr_above_clean``: its ASR minus that of the never-poisoned row (``baseline``'s values)
    of the same seed and the same values of every other field; None for the baseline rows themselves and where
    either ASR is missing."""
    others = [f for f in fields if f not in baseline]

    def key(row: dict) -> str:
        return json.dumps([row["seed"], *(row.get(f) for f in others)], sort_keys=True, default=str)

    clean = {key(r): r for r in rows if _matches(r, baseline)}
    out = []
    for row in rows:
        base = None if _matches(row, baseline) else clean.get(key(row))
        value = None
        if base is not None and row.get("attack_success_rate") is not None and \
                base.get("attack_success_rate") is not None:
            value = float(row["attack_success_rate"]) - float(base["attack_success_rate"])
        out.append({**row, ABOVE_CLEAN: value})
    return out


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _value(metric: str, value: float | None, sign: str = "") -> str:
    """Accuracies and rates in percent (points), other metrics as they are."""
    if value is None:
        return "n/a"
    percent = (metric in METRICS and metric != "final_loss") or metric == ABOVE_CLEAN
    return f"{100 * value:{sign}.1f}" if percent else f"{value:{sign}.3g}"


def _side(chosen: dict) -> str:
    return ", ".join(f"{name.rsplit('.', 1)[-1]} {value}" for name, value in chosen.items())


def _p(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}"


def _hypothesis(line: dict) -> str:
    h, metric = line["hypothesis"], line["metric"]
    if h["kind"] == "direction":
        return f"direction: {h['expect']}"
    if h["kind"] == "equivalence":
        return f"equivalence: |a − b| < {_value(metric, h['margin'])}"
    value = h["paper_effect"] if h["paper_effect"] is not None else line["predicted"]
    return f"{h['kind']}: a − b = {_value(metric, value, '+')}"


def _verdict(line: dict) -> str:
    verdict = line["verdict"]
    if "repeats" in line:
        return f"{verdict} (repeats {line['repeats']}; not tallied)"
    detectable = line["test"].get("detectable")
    if verdict in ("inconclusive", "not shown equivalent", "agrees in size"):
        found = f"≥ {_value(line['metric'], detectable)}" if detectable is not None else "none at this n"
        return f"{verdict} (detectable: {found})"
    return verdict


def _tally(counts: dict) -> str:
    return ", ".join(f"{n} {verdict}" for verdict, n in sorted(counts.items(), key=lambda kv: -kv[1])) or "none"


def report(summary: dict) -> str:
    """The Markdown report: the family and its tallies, then per figure its plot, caption, the command, the
    per-run table and one row per comparison (hypothesis, n, per-seed signs, effect ± interval, exact p, adjusted
    p, verdict)."""
    family = summary["family"]
    command = (f"lorasec reproduce {summary['paper']}" + (" --quick" if summary["quick"] else "")
               + "".join(f" --figure {name}" for name in summary.get("only", []))
               + "".join(f" --set {change}" for change in summary.get("overrides", [])))
    scope = (" A subset of the paper's figures: the family below is theirs alone, so adjusted p differ from the "
             "whole paper's report." if summary.get("only") else "")
    scope += (" Run with changed settings (--set): not the paper's specs as written." if summary.get("overrides")
              else "")
    scope += (" A quick smoke run (--quick): the captions describe the full specs; each figure's spec line says "
              "what ran." if summary["quick"] else "")
    count = len(summary["figures"])
    lines = [f"# {summary['title']}", "",
             f"`{command}`: {count} figure{'s' * (count != 1)}.{scope} The family is the {family['size']} tallied "
             f"comparisons of this report: each claim's hypothesis on its primary metric, a comparison repeated in a "
             f"later figure counted once ({family['repeats']} repeats), the {family['identities']} identities "
             f"(closed forms that hold by construction) apart. Each is tested on seed-paired differences a − b by "
             f"the exact sign-flip test, Holm-adjusted over the family at α = {family['alpha']}; verdicts are taken "
             f"on the adjusted p (kinds and vocabulary: `lorasec.core.hypotheses`). Accuracies and rates in "
             f"percentage points; ± is the unadjusted 95% t-interval; signs are a − b per seed. "
             f"{machine.in_words(summary.get('made'))}", "",
             f"**Verdicts:** {_tally(family['tally'])}. Under the earlier rule (the sign of the unadjusted 95% "
             f"t-interval, one verdict per claim and metric) the same comparisons gave: {_tally(family['before'])}.",
             ""]
    for figure in summary["figures"]:
        lines += [f"## {figure['title']}", "", f"![{figure['name']}]({figure['name']}.png)", ""]
        if figure["caption"]:
            lines += [figure["caption"], ""]
        lines += [f"Spec `{figure['spec']}`: {figure['runs']} runs; {figure['settings']}. Per-run results: "
                  f"[`{figure['results']}`]({figure['results']}).", ""]
        if "baseline" in figure:
            never = ", ".join(f"{k} = {v}" for k, v in figure["baseline"].items())
            lines += [f"ASR above clean: each run's ASR minus that of the never-poisoned run ({never}) of the same "
                      f"seed and setting.", ""]
        if "runs_in" in figure:
            lines += [f"It fine-tunes {figure['runs_in']}'s backdoored model, in that figure's directory: a defence "
                      f"and seed both list is one run.", ""]
        if "before" in figure:
            lines += [f"The backdoored model before clean fine-tuning: clean accuracy "
                      f"{100 * figure['before']['clean_accuracy']:.1f}%, attack success rate "
                      f"{100 * figure['before']['attack_success_rate']:.1f}%.", ""]
        if "defences" in figure:
            lines += tables.markdown(
                ("defence", "CACC % (mean ± sd)", "ASR % (mean ± sd)", "best of runs (lowest ASR): CACC / ASR %"),
                ((cell["defence"], f"{100 * cell['clean_accuracy']['mean']:.1f} ± "
                                   f"{100 * cell['clean_accuracy']['sd']:.1f}",
                  f"{100 * cell['attack_success_rate']['mean']:.1f} ± {100 * cell['attack_success_rate']['sd']:.1f}",
                  f"{100 * cell['best']['clean_accuracy']:.1f} / {100 * cell['best']['attack_success_rate']:.1f} "
                  f"(seed {cell['best']['seed']})") for cell in figure["defences"]))
            lines.append("")
        if "scale_sweep" in figure:
            lines += [f"![adapter scale]({figure['scale_sweep']})", ""]
        if not figure["comparisons"]:
            continue
        rows, notes = [], []
        for line in figure["comparisons"]:
            t, metric = line["test"], line["metric"]
            interval = _value(metric, t["mean"], "+") + (
                f" ± {_value(metric, t['ci95'])}" if t["mean"] is not None and t["ci95"] is not None else "")
            at = ", ".join(f"{k.rsplit('.', 1)[-1]} {v}" for k, v in line["at"].items()) or "all"
            rows.append((at, metric.replace("_", " "), f"{_side(line['a'])} − {_side(line['b'])}",
                         _hypothesis(line), t["n"], t["signs"] or "–", interval, _p(t["p"]),
                         _p(line.get("adjusted_p")) if line.get("tallied") or "repeats" in line else "–",
                         line["paper"], _verdict(line)))
            for name, sec in line["secondary"].items():
                notes.append(f"- {at}, {_side(line['a'])} − {_side(line['b'])}: {name.replace('_', ' ')} "
                             f"{_value(name, sec['mean'], '+')}"
                             + (f" ± {_value(name, sec['ci95'])}" if sec["ci95"] is not None else "")
                             + f" ({sec['signs']})")
        lines += tables.markdown(("at", "metric", "a − b", "hypothesis", "n", "signs", "a − b (95% CI)", "p",
                                  "adj. p", "paper", "verdict"), rows)
        if notes:
            lines += ["", "Secondary metrics (shown, not tested):", "", *notes]
        lines.append("")
    return "\n".join(lines)


__all__ = ["Comparison", "Figure", "KernelFigure", "Paper", "PurifyFigure", "SweepFigure", "compare",
           "decide_family", "derive_above_clean", "interval_verdict", "load_paper", "paper_directory", "report",
           "reproduce"]

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

A comparison pairs the runs of a and b by seed. Its verdict: "agrees" when the 95% t-interval of the mean paired
difference a − b lies on the paper's side of zero, "disagrees" when it lies on the other side, "inconclusive" when
it covers zero. Sweeps resume and a kernel figure's measurements are kept in ``OUT/<figure>/kernels.json``, so
an interrupted reproduction picks up where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from lorasec.config import ConfigError, PurifyConfig, RunConfig, check_environment, from_dict, read_file, to_dict
from lorasec.core import files, tables
from lorasec.core.stats import mean_sd, paired_difference
from lorasec.pipelines import entropy_proxies, figures, rundir
from lorasec.pipelines.pretrain import pretrain, pretrain_recipe
from lorasec.pipelines.purify import run_purify, settings_row
from lorasec.pipelines.sweep import METRICS, read_table, run_sweep
from lorasec.sweep_spec import SweepSpec, base_table, spec_from_raw

EXPECTS = ("a > b", "a < b")
PURIFY_METRICS = ("clean_accuracy", "attack_success_rate")


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
    """A figure file's [figure] table."""

    x: str
    y: tuple[str, ...]
    title: str = ""
    hue: tuple[str, ...] = ()
    panel: str = ""
    marks: tuple[float, ...] = ()
    caption: str = ""


@dataclass(frozen=True)
class ClaimTable:
    """One [[claims]] entry of a figure file, as written."""

    metric: str
    a: dict
    b: dict
    where: dict = field(default_factory=dict)
    expect: str = ""
    predict: str = ""
    by: tuple[str, ...] = ()
    paper: str = ""


@dataclass(frozen=True)
class KernelsFile:
    """A kernel figure's own fields: [kernels] (:class:`entropy_proxies.ProxySetting`) and an optional [base]."""

    kernels: dict
    base: str | dict = field(default_factory=dict)


@dataclass(frozen=True)
class Comparison:
    metric: str
    where: dict[str, Any]
    a: dict[str, Any]
    b: dict[str, Any]
    expect: str
    by: tuple[str, ...]
    paper: str
    predict: str = ""


# --- figure kinds ------------------------------------------------------------------------------------------------


class FigureKind(Protocol):
    """What a figure measures and how: a sweep of runs, paper 2's purify pipeline, or kernels without training."""

    values: dict[str, tuple]  # each field the figure varies, with the values it takes
    seeds: tuple[int, ...]
    metrics: tuple[str, ...]

    def start(self) -> tuple:
        """(data, model) configs: what a shared pretrained encoder is made for."""

    def starting_from(self, encoder: Path) -> FigureKind:
        """The same figure with ``model.pretrained`` set to the paper's shared encoder."""

    def home_key(self) -> str:
        """Figures with one non-empty key share a directory (paper 2's tables on one backdoored model)."""

    def run(self, out: Path, report_dir: Path, name: str, progress: bool) -> tuple[list[dict], dict]:
        """Measure into ``out`` (resuming); one row per run (or draw), and what the report adds about it."""


@dataclass(frozen=True)
class SweepFigure:
    """A grid of fine-tuning runs (:mod:`lorasec.sweep_spec`)."""

    spec: SweepSpec
    metrics = METRICS

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

    def run(self, out: Path, report_dir: Path, name: str, progress: bool) -> tuple[list[dict], dict]:
        """One row per run, and what the report adds: the backdoored model before clean fine-tuning, the
        per-defence table and the adapter-scale curve."""
        result = run_purify(self.config, out, progress=progress)
        rows = [{"defence": cell["defence"], **run} for cell in result["defences"] for run in cell["runs"]]
        table = []
        for cell in result["defences"]:
            best = min(cell["runs"], key=lambda run: run["attack_success_rate"])  # the paper's best-of-runs view
            table.append({"defence": cell["defence"], "clean_accuracy": cell["clean_accuracy"],
                          "attack_success_rate": cell["attack_success_rate"],
                          "best": {k: best[k] for k in ("seed", "clean_accuracy", "attack_success_rate")}})
        extra = {"before": result["backdoored"]["downstream"], "defences": table,
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
            if isinstance(held.get("base"), dict) and {**held, "base": rundir.deciding(held["base"])} == key:
                return saved["rows"]
        rows = entropy_proxies.measure(check_environment(cfg.validate()), self.setting)
        files.write_json(path, {"key": key, "rows": rows})
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


# --- loading -----------------------------------------------------------------------------------------------------


def paper_directory(paper: str, experiments: str | None = None) -> Path:
    """``paper1`` -> ``experiments/paper1`` (of ``experiments``, of the checkout lorasec runs from, or of the
    working directory); a directory holding ``paper.toml`` is taken as it is."""
    given = Path(paper)
    if (given / "paper.toml").is_file():
        return given
    roots = [Path(experiments)] if experiments else [Path(__file__).resolve().parents[2] / "experiments",
                                                      Path("experiments")]
    for root in roots:
        if (root / paper / "paper.toml").is_file():
            return root / paper
    found = sorted(p.parent.name for root in roots if root.is_dir() for p in root.glob("*/paper.toml"))
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


def load_paper(directory: str | Path, *, quick: bool = False) -> Paper:
    """Read and validate a paper directory (module docstring); every figure's every cell is validated now."""
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
    quick_base = written.quick.base if quick else {}
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
    return Paper(directory.name, directory, written.title or directory.name, pretrain_steps, quick, tuple(loaded))


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
    comparisons = tuple(_load_claim(f"{path}: claims[{i}]", c, fields, kind.metrics) for i, c in enumerate(claims))
    return Figure(path.stem, path, table.title or path.stem, table.caption, table.x, table.y, table.hue, table.panel,
                  table.marks, comparisons, kind)


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
    if written.metric not in metrics:
        raise ConfigError(f"{where}: metric = {written.metric!r}: must be one of {', '.join(metrics)}")
    expect, predict = written.expect, written.predict
    if predict:
        if predict not in metrics or predict == written.metric:
            raise ConfigError(f"{where}: predict = {predict!r}: must name another metric ({', '.join(metrics)}) whose "
                              f"a − b is the prediction")
        if expect:
            raise ConfigError(f"{where}: give expect (a direction) or predict (a value), not both")
    elif expect not in EXPECTS:
        raise ConfigError(f"{where}: expect = {expect!r}: must be \"a > b\" or \"a < b\" (the paper's direction), "
                          f"or give predict")
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
    return Comparison(written.metric, dict(written.where), dict(written.a), dict(written.b), expect, written.by,
                      written.paper, predict)


# --- running and reporting ---------------------------------------------------------------------------------------


def reproduce(paper: Paper, out_dir: str | Path, *, progress: bool = True) -> dict:
    """Run every figure (resuming finished runs), then write ``report/``: each figure as PNG and PDF, the
    Markdown report with the side-by-side tables, and ``summary.json``. Returns the summary."""
    out_dir = Path(out_dir)
    kinds = [figure.kind for figure in paper.figures]
    if paper.pretrain_steps:
        data, model = kinds[0].start()
        encoder = pretrain(pretrain_recipe(data, model, paper.pretrain_steps), out_dir / "pretrained",
                           progress=progress).resolve()
        kinds = [kind.starting_from(encoder) for kind in kinds]
    homes = _purify_homes(paper.figures, kinds)
    report_dir = out_dir / "report"
    summary = {"paper": paper.name, "title": paper.title, "quick": paper.quick, "figures": []}
    for figure, kind in zip(paper.figures, kinds):
        if progress:
            print(f"lorasec reproduce {paper.name}: {figure.name}", file=sys.stderr)
        home = homes.get(figure.name, figure.name)
        rows, extra = kind.run(out_dir / home, report_dir, figure.name, progress)
        entry = {"name": figure.name, "title": figure.title, "caption": figure.caption, "spec": _shown(figure.path),
                 **extra, **({"runs_in": home} if home != figure.name else {})}
        figures.figure_grid(rows, figure.x, list(figure.y), list(figure.hue), figure.panel or None,
                            report_dir / figure.name, title=figure.title, marks=list(figure.marks))
        entry.update(runs=sum(r.get("source") != "closed form" for r in rows),
                     comparisons=[line for claim in figure.claims for line in compare(rows, claim)])
        summary["figures"].append(entry)
    for home, union in _shared_unions(paper.figures, kinds, homes).items():
        run_purify(union, out_dir / home, progress=False)  # a shared directory's own summary covers all it holds
    files.write_json(report_dir / "summary.json", summary)
    files.write_text(report_dir / "report.md", report(summary))
    names = {figure.name for figure in paper.figures}
    for path in report_dir.iterdir():  # a figure the paper dropped or renamed leaves no stale file behind
        if path.suffix in (".png", ".pdf") and path.stem.removesuffix("-scale-sweep") not in names:
            path.unlink()
    return summary


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


def verdict(difference: dict, expect: str, predicted: float | None = None) -> str:
    """Where the 95% interval of the paired difference a − b lies against the paper's direction, or, given a
    predicted a − b, whether the interval covers it ("agrees") or not ("disagrees")."""
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


def compare(rows: list[dict], claim: Comparison) -> list[dict]:
    """One line per value of ``claim.by``: a's and b's mean over seeds, the seed-paired difference and the verdict."""
    rows = [r for r in rows if _matches(r, claim.where)]
    keys = []
    for row in rows:
        key = tuple(row[name] for name in claim.by)
        if not any(all(_same(k, v) for k, v in zip(key, seen)) for seen in keys):
            keys.append(key)
    out = []
    for key in keys:
        group = [r for r in rows if all(_same(r[n], v) for n, v in zip(claim.by, key))]
        sides = {}
        for side, chosen in (("a", claim.a), ("b", claim.b)):
            by_seed: dict[int, list] = {}
            for row in group:
                if _matches(row, chosen):
                    by_seed.setdefault(row["seed"], []).append(row[claim.metric])
            if any(len(v) > 1 for v in by_seed.values()):
                raise ConfigError(f"claim on {claim.metric}: side {chosen} holds several runs per seed at "
                                  f"{dict(zip(claim.by, key))}; name the fields that tell them apart in `by`")
            sides[side] = {seed: values[0] for seed, values in by_seed.items()}
        difference = paired_difference(sides["a"], sides["b"])
        predicted = None
        if claim.predict:
            means = [mean_sd(r[claim.predict] for r in group if _matches(r, chosen))["mean"]
                     for chosen in (claim.a, claim.b)]
            predicted = None if None in means else means[0] - means[1]
        out.append({"at": {**claim.where, **dict(zip(claim.by, key))}, "metric": claim.metric, "a": claim.a,
                    "b": claim.b, "predicted": predicted, "expect": claim.expect, "paper": claim.paper,
                    "a_stats": mean_sd(sides["a"].values()), "b_stats": mean_sd(sides["b"].values()),
                    "difference": difference, "verdict": verdict(difference, claim.expect, predicted)})
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
    return f"{100 * value:{sign}.1f}" if metric in METRICS and metric != "final_loss" else f"{value:{sign}.3g}"


def _side(chosen: dict) -> str:
    return ", ".join(f"{name.rsplit('.', 1)[-1]} {value}" for name, value in chosen.items())


def report(summary: dict) -> str:
    """The Markdown report: per figure its plot, caption, the command, and the side-by-side table."""
    counts = {"agrees": 0, "disagrees": 0, "inconclusive": 0}
    for figure in summary["figures"]:
        for line in figure["comparisons"]:
            counts[line["verdict"]] += 1
    command = f"lorasec reproduce {summary['paper']}" + (" --quick" if summary["quick"] else "")
    lines = [f"# {summary['title']}", "",
             f"`{command}`: {len(summary['figures'])} figures; comparisons: {counts['agrees']} agree, "
             f"{counts['disagrees']} disagree, {counts['inconclusive']} inconclusive. Each comparison pairs runs by "
             f"seed; a − b is the mean paired difference with its 95% t-interval (accuracies and rates in "
             f"percentage points); the "
             f"verdict says where that interval lies against the paper's direction (inconclusive: it covers zero), "
             f"or, where the paper predicts a value, whether the interval covers it.", ""]
    for figure in summary["figures"]:
        lines += [f"## {figure['title']}", "", f"![{figure['name']}]({figure['name']}.png)", ""]
        if figure["caption"]:
            lines += [figure["caption"], ""]
        lines += [f"Spec `{figure['spec']}`: {figure['runs']} runs; {figure['settings']}.", ""]
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
        rows = []
        for line in figure["comparisons"]:
            d, metric = line["difference"], line["metric"]
            interval = _value(metric, d["mean"], "+") + (
                f" ± {_value(metric, d['ci95'])}" if d["mean"] is not None and d["ci95"] is not None else "")
            at = ", ".join(f"{k.rsplit('.', 1)[-1]} {v}" for k, v in line["at"].items()) or "all"
            expects = f"expects {line['expect']}" if line.get("predicted") is None else \
                f"predicts a − b = {_value(metric, line['predicted'], '+')}"
            rows.append((at, metric.replace("_", " "), _side(line["a"]), _side(line["b"]),
                         _value(metric, line["a_stats"]["mean"]), _value(metric, line["b_stats"]["mean"]), interval,
                         f"{line['paper']} ({expects})", line["verdict"]))
        lines += tables.markdown(("at", "metric", "a", "b", "mean a", "mean b", "a − b (95% CI)", "paper", "verdict"),
                                 rows)
        lines.append("")
    return "\n".join(lines)


__all__ = ["Comparison", "Figure", "KernelFigure", "Paper", "compare", "load_paper", "paper_directory", "report",
           "reproduce", "verdict"]

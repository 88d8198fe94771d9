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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorasec.config import ConfigError, PurifyConfig, RunConfig, from_dict, read_file, to_dict
from lorasec.core import files
from lorasec.core.stats import mean_sd, paired_difference
from lorasec.pipelines import entropy_proxies, figures, rundir
from lorasec.pipelines.pretrain import pretrain, pretrain_recipe
from lorasec.pipelines.purify import run_purify, settings_row
from lorasec.pipelines.sweep import METRICS, read_table, run_sweep
from lorasec.sweep_spec import SweepSpec, base_table, spec_from_raw

PAPER_FIELDS = ("title", "figures", "pretrain_steps", "base", "quick")
QUICK_FIELDS = ("seeds", "pretrain_steps", "base", "figures")
FIGURE_FIELDS = ("title", "x", "y", "hue", "panel", "marks", "caption")
CLAIM_FIELDS = ("metric", "where", "a", "b", "expect", "predict", "by", "paper")
EXPECTS = ("a > b", "a < b")
PURIFY_METRICS = ("clean_accuracy", "attack_success_rate")


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


@dataclass(frozen=True)
class KernelFigure:
    """Paper 1's Fig. 3 kind: entropy proxies of one layer's LoRA kernel (:mod:`entropy_proxies`), no training."""

    base: dict
    setting: entropy_proxies.ProxySetting


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
    config: SweepSpec | PurifyConfig | KernelFigure

    @property
    def values(self) -> dict[str, tuple]:
        """Each field this figure varies and the values it takes."""
        if isinstance(self.config, PurifyConfig):
            rows = [settings_row(self.config, text) for text in self.config.defences]
            return {"defence": tuple(self.config.defences),
                    **{key: tuple(sorted({row[key] for row in rows} - {None})) for key in rows[0]}}
        if isinstance(self.config, KernelFigure):
            return self.config.setting.values
        values = dict(self.config.axes)
        for group in self.config.zips:
            values.update(group)
        return values

    @property
    def seeds(self) -> tuple[int, ...]:
        return self.config.setting.draws if isinstance(self.config, KernelFigure) else tuple(self.config.seeds)

    @property
    def metrics(self) -> tuple[str, ...]:
        if isinstance(self.config, KernelFigure):
            return (*entropy_proxies.METRICS, *(f"{m}_closed" for m in entropy_proxies.METRICS))
        return PURIFY_METRICS if isinstance(self.config, PurifyConfig) else METRICS

    def start(self) -> tuple:
        """(data, model) configs: what a shared pretrained encoder is made for."""
        cfg = self.config if isinstance(self.config, PurifyConfig) else from_dict(RunConfig, self.config.base)
        return cfg.data, cfg.model

    def starting_from(self, encoder: Path) -> SweepSpec | PurifyConfig | KernelFigure:
        """This figure's config with ``model.pretrained`` set to the paper's shared encoder."""
        if isinstance(self.config, PurifyConfig):
            return dataclasses.replace(self.config, model=dataclasses.replace(self.config.model,
                                                                              pretrained=str(encoder)))
        return dataclasses.replace(self.config, base=_merge(self.config.base,
                                                            {"model": {"pretrained": str(encoder)}}))


@dataclass(frozen=True)
class Paper:
    name: str
    directory: Path
    title: str
    pretrain_steps: int
    quick: bool
    figures: tuple[Figure, ...]


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


def _unknown(where: str, raw: dict, allowed: tuple[str, ...]) -> None:
    for key in raw:
        if key not in allowed:
            raise ConfigError(f"{where}: unknown field {key!r}; allowed: {', '.join(allowed)}")


def _strings(where: str, value: Any, *, empty: bool = False) -> tuple[str, ...]:
    value = [value] if isinstance(value, str) else value
    if not isinstance(value, list) or any(not isinstance(v, str) for v in value) or (not value and not empty):
        raise ConfigError(f"{where} = {value!r}: must be a field name or a list of them")
    return tuple(value)


def load_paper(directory: str | Path, *, quick: bool = False) -> Paper:
    """Read and validate a paper directory (module docstring); every figure's every cell is validated now."""
    directory = Path(directory)
    raw = read_file(directory / "paper.toml")
    where = str(directory / "paper.toml")
    _unknown(where, raw, PAPER_FIELDS)
    names = _strings(f"{where}: figures", raw.get("figures"))
    quick_raw = raw.get("quick", {})
    if not isinstance(quick_raw, dict):
        raise ConfigError(f"{where}: [quick] must be a table")
    _unknown(f"{where}: [quick]", quick_raw, QUICK_FIELDS)
    if quick and "figures" in quick_raw:
        chosen = _strings(f"{where}: [quick] figures", quick_raw["figures"])
        if any(name not in names for name in chosen):
            raise ConfigError(f"{where}: [quick] figures = {list(chosen)}: each must be one of figures {list(names)}")
        names = chosen
    base = raw.get("base", {})
    quick_base = quick_raw.get("base", {}) if quick else {}
    pretrain_steps = raw.get("pretrain_steps", 0)
    if quick:
        pretrain_steps = quick_raw.get("pretrain_steps", pretrain_steps)
    if not isinstance(base, dict) or not isinstance(quick_base, dict):
        raise ConfigError(f"{where}: [base] and [quick.base] must be tables")
    if isinstance(pretrain_steps, bool) or not isinstance(pretrain_steps, int) or pretrain_steps < 0:
        raise ConfigError(f"{where}: pretrain_steps = {pretrain_steps!r}: must be an integer >= 0")
    loaded = []
    for name in names:
        path = directory / f"{name}.toml"
        if not path.is_file():
            raise ConfigError(f"{where}: figures lists {name!r}, but {str(path)!r} does not exist")
        loaded.append(_load_figure(path, base, quick_base, quick_raw.get("seeds") if quick else None,
                                   pretrain_steps))
    if pretrain_steps:
        first = [to_dict(part) for part in loaded[0].start()]
        for figure in loaded[1:]:
            if [to_dict(part) for part in figure.start()] != first:
                raise ConfigError(f"{figure.path}: data or model differs from {loaded[0].name}'s; every figure starts "
                                  f"from one pretrained encoder, so data and model come from paper.toml's [base]")
    return Paper(directory.name, directory, str(raw.get("title", directory.name)), pretrain_steps, quick,
                 tuple(loaded))


def _load_figure(path: Path, paper_base: dict, quick_base: dict, seeds: list | None,
                 pretrain_steps: int) -> Figure:
    """A figure file with paper.toml's [base] under it and, for --quick, [quick.base] over it."""
    raw = read_file(path)
    figure = raw.pop("figure", None)
    claims = raw.pop("claims", [])
    if not isinstance(figure, dict):
        raise ConfigError(f"{path}: needs a [figure] table (title, x, y, hue)")
    _unknown(f"{path}: [figure]", figure, FIGURE_FIELDS)
    if "kernels" in raw:
        config = _kernel_figure(path, raw, paper_base, quick_base, seeds)
    elif "defences" in raw or "backdoor" in raw:
        config = _purify_config(path, _merge(_merge(paper_base, raw), quick_base), seeds)
    else:
        config = _sweep_spec(path, raw, paper_base, quick_base, seeds, pretrain_steps)
    draft = Figure(path.stem, path, str(figure.get("title", path.stem)), str(figure.get("caption", "")), "", (),
                   (), "", (), (), config)
    fields = draft.values
    x = figure.get("x")
    if x not in fields:
        raise ConfigError(f"{path}: [figure] x = {x!r}: must be one of the fields it varies: {', '.join(fields)}")
    ys = _strings(f"{path}: [figure] y", figure.get("y"))
    hue = _strings(f"{path}: [figure] hue", figure.get("hue", []), empty=True)
    panel = figure.get("panel", "")
    for name in (*hue, *([panel] if panel else [])):
        if name not in fields:
            raise ConfigError(f"{path}: [figure] {name!r}: not a field it varies; fields: {', '.join(fields)}")
    for y in ys:
        if y not in draft.metrics:
            raise ConfigError(f"{path}: [figure] y {y!r}: not a metric; metrics: {', '.join(draft.metrics)}")
    marks = figure.get("marks", [])
    if not isinstance(marks, list) or any(isinstance(m, bool) or not isinstance(m, (int, float)) for m in marks):
        raise ConfigError(f"{path}: [figure] marks = {marks!r}: must be a list of numbers")
    if not isinstance(claims, list):
        raise ConfigError(f"{path}: claims must be a list of tables ([[claims]])")
    comparisons = tuple(_load_claim(f"{path}: claims[{i}]", c, fields, draft.metrics) for i, c in enumerate(claims))
    return dataclasses.replace(draft, x=x, y=ys, hue=hue, panel=panel, marks=tuple(float(m) for m in marks),
                               claims=comparisons)


def _sweep_spec(path: Path, raw: dict, paper_base: dict, quick_base: dict, seeds: list | None,
                pretrain_steps: int) -> SweepSpec:
    if "pretrain_steps" in raw:
        raise ConfigError(f"{path}: pretrain_steps belongs in paper.toml (one encoder for every figure)")
    try:
        base = base_table(raw.get("base", {}), path)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err} (paper.toml's [base] goes under it)") from None
    raw["base"] = _merge(_merge(paper_base, base), quick_base)
    if seeds is not None:
        raw["seeds"] = seeds
    spec = spec_from_raw(raw, path)
    if pretrain_steps:
        varied = [f for f in spec.fields if f.startswith(("data.", "model."))]
        if varied:
            raise ConfigError(f"{path}: {varied[0]} cannot vary: every figure starts from one pretrained encoder")
    return spec


def _kernel_figure(path: Path, raw: dict, paper_base: dict, quick_base: dict, seeds: list | None) -> KernelFigure:
    _unknown(str(path), raw, ("kernels", "base"))
    table = raw["kernels"]
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [kernels] must be a table")
    _unknown(f"{path}: [kernels]", table, entropy_proxies.FIELDS)
    missing = [f for f in entropy_proxies.FIELDS if f not in table and f != "init"]
    if missing:
        raise ConfigError(f"{path}: [kernels] needs {', '.join(missing)}")
    if seeds is not None:
        table = {**table, "draws": seeds}
    try:
        setting = entropy_proxies.ProxySetting(
            str(table["layer"]), int(table["examples"]), tuple(int(d) for d in table["draws"]),
            tuple(int(r) for r in table["ranks"]), float(table["rank_c"]),
            tuple(float(c) for c in table["variances"]), int(table["variance_rank"]),
            str(table.get("init", "gaussian")))
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{path}: [kernels]: {err}") from None
    try:
        own = base_table(raw.get("base", {}), path)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err} (paper.toml's [base] goes under it)") from None
    base = _merge(_merge(paper_base, own), quick_base)
    try:
        from_dict(RunConfig, base).validate()
    except ConfigError as err:
        raise ConfigError(f"{path}: base.{err}") from None
    return KernelFigure(base, setting.validate(f"{path}: [kernels]"))


def _purify_config(path: Path, raw: dict, seeds: list | None) -> PurifyConfig:
    if seeds is not None:
        raw["seeds"] = seeds
    try:
        return from_dict(PurifyConfig, raw).validate()
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def _load_claim(where: str, raw: Any, values: dict[str, tuple], metrics: tuple[str, ...]) -> Comparison:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: must be a table")
    _unknown(where, raw, CLAIM_FIELDS)
    metric = raw.get("metric")
    if metric not in metrics:
        raise ConfigError(f"{where}: metric = {metric!r}: must be one of {', '.join(metrics)}")
    expect, predict = raw.get("expect", ""), raw.get("predict", "")
    if predict:
        if predict not in metrics or predict == metric:
            raise ConfigError(f"{where}: predict = {predict!r}: must name another metric ({', '.join(metrics)}) whose "
                              f"a − b is the prediction")
        if expect:
            raise ConfigError(f"{where}: give expect (a direction) or predict (a value), not both")
    elif expect not in EXPECTS:
        raise ConfigError(f"{where}: expect = {expect!r}: must be \"a > b\" or \"a < b\" (the paper's direction), "
                          f"or give predict")
    sides = {}
    for side in ("where", "a", "b"):
        chosen = raw.get(side, {} if side == "where" else None)
        if not isinstance(chosen, dict) or (not chosen and side != "where"):
            raise ConfigError(f"{where}: {side} must be a table of FIELD = value, e.g. "
                              f"{{\"adapter.method\" = \"lora\"}}")
        for name, value in chosen.items():
            if name not in values:
                raise ConfigError(f"{where}: {side}.{name}: not a field it varies; fields: {', '.join(values)}")
            if not any(_same(value, v) for v in values[name]):
                raise ConfigError(f"{where}: {side}.{name} = {value!r}: the figure never takes it; values: "
                                  f"{list(values[name])}")
        sides[side] = dict(chosen)
    by = _strings(f"{where}: by", raw.get("by", []), empty=True)
    for name in by:
        if name not in values:
            raise ConfigError(f"{where}: by {name!r}: not a field it varies; fields: {', '.join(values)}")
    return Comparison(metric, sides["where"], sides["a"], sides["b"], expect, by, str(raw.get("paper", "")), predict)


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


def reproduce(paper: Paper, out_dir: str | Path, *, progress: bool = True) -> dict:
    """Run every figure's sweep (resuming finished runs), then write ``report/``: each figure as PNG and PDF, the
    Markdown report with the side-by-side tables, and ``summary.json``. Returns the summary."""
    out_dir = Path(out_dir)
    configs = [figure.config for figure in paper.figures]
    if paper.pretrain_steps:
        data, model = paper.figures[0].start()
        encoder = pretrain(pretrain_recipe(data, model, paper.pretrain_steps), out_dir / "pretrained",
                           progress=progress).resolve()
        configs = [figure.starting_from(encoder) for figure in paper.figures]
    report_dir = out_dir / "report"
    summary = {"paper": paper.name, "title": paper.title, "quick": paper.quick, "figures": []}
    pipelines: dict[str, str] = {}  # purify settings but defences and seeds -> the first figure's directory
    shared: dict[str, PurifyConfig] = {}  # that directory -> its figures' defences and seeds together
    for figure, config in zip(paper.figures, configs):
        if progress:
            print(f"lorasec reproduce {paper.name}: {figure.name}", file=sys.stderr)
        entry = {"name": figure.name, "title": figure.title, "caption": figure.caption, "spec": _shown(figure.path)}
        if isinstance(config, KernelFigure):
            measured = _kernel_rows(config, out_dir / figure.name)
            rows = measured + entropy_proxies.shifted_closed_forms(measured, config.setting)
            entry["settings"] = (f"layer {config.setting.layer}, {config.setting.examples} test sentences, draws "
                                 f"{list(config.setting.draws)}, A {config.setting.init}, s = 1 (α = r)")
        elif isinstance(config, PurifyConfig):
            # Figures on one backdoored model share its directory: it is made once, a defence × seed trained once.
            key = json.dumps(rundir.deciding(to_dict(dataclasses.replace(config, defences=(), seeds=()))),
                             sort_keys=True)
            home = pipelines.setdefault(key, figure.name)
            rows, extra = _purify_rows(config, out_dir / home, report_dir, figure.name, progress)
            if home != figure.name:
                entry["runs_in"] = home
            held = shared.get(home, config)
            shared[home] = dataclasses.replace(
                held, defences=tuple(dict.fromkeys((*held.defences, *config.defences))),
                seeds=tuple(sorted({*held.seeds, *config.seeds})))
            entry.update(extra, settings=f"seeds {list(config.seeds)}, {config.train.steps} steps of clean "
                                        f"fine-tuning each, defences {', '.join(config.defences)}")
        else:
            run_sweep(config, out_dir / figure.name, progress=progress)
            rows = read_table(out_dir / figure.name)
            steps = from_dict(RunConfig, config.base).train.steps
            entry["settings"] = f"{len(config.cells())} cells, seeds {list(config.seeds)}, {steps} steps each"
        figures.figure_grid(rows, figure.x, list(figure.y), list(figure.hue), figure.panel or None,
                            report_dir / figure.name, title=figure.title, marks=list(figure.marks))
        entry.update(runs=sum(r.get("source") != "closed form" for r in rows),
                     comparisons=[line for claim in figure.claims for line in compare(rows, claim)])
        summary["figures"].append(entry)
    for home, union in shared.items():  # a shared directory's own summary, report and config cover all it holds
        if sum(entry.get("runs_in", entry["name"]) == home for entry in summary["figures"]) > 1:
            run_purify(union, out_dir / home, progress=False)
    files.write_json(report_dir / "summary.json", summary)
    files.write_text(report_dir / "report.md", report(summary))
    names = {figure.name for figure in paper.figures}
    for path in report_dir.iterdir():  # a figure the paper dropped or renamed leaves no stale file behind
        if path.suffix in (".png", ".pdf") and path.stem.removesuffix("-scale-sweep") not in names:
            path.unlink()
    return summary


def _kernel_rows(config: KernelFigure, out: Path) -> list[dict]:
    """A kernel figure's measured rows, read back from ``out/kernels.json`` when that file holds this very setting
    (a re-run or resumed reproduction does not measure them again), else measured and written there."""
    cfg = from_dict(RunConfig, config.base)
    key = json.loads(json.dumps({"base": rundir.deciding(to_dict(cfg)), "setting": dataclasses.asdict(config.setting)}))
    path = out / "kernels.json"
    if path.is_file():
        saved = files.read_json(path)
        held = saved.get("key") or {}
        if isinstance(held.get("base"), dict) and {**held, "base": rundir.deciding(held["base"])} == key:
            return saved["rows"]
    rows = entropy_proxies.measure(cfg.validate(), config.setting)
    files.write_json(path, {"key": key, "rows": rows})
    return rows


def _purify_rows(cfg: PurifyConfig, out: Path, report_dir: Path, name: str, progress: bool) -> tuple[list, dict]:
    """Paper 2's pipeline (a backdoored model, then each defence × seed); one row per run, and what the report
    adds: the backdoored model before clean fine-tuning and the adapter-scale curve."""
    result = run_purify(cfg, out, progress=progress)
    rows = [{"defence": cell["defence"], **run} for cell in result["defences"] for run in cell["runs"]]
    before = result["backdoored"]["downstream"]
    table = []
    for cell in result["defences"]:
        best = min(cell["runs"], key=lambda run: run["attack_success_rate"])  # the paper's best-of-runs view
        table.append({"defence": cell["defence"], "clean_accuracy": cell["clean_accuracy"],
                      "attack_success_rate": cell["attack_success_rate"],
                      "best": {k: best[k] for k in ("seed", "clean_accuracy", "attack_success_rate")}})
    extra = {"before": before, "defences": table}
    if result["sweeps"] and (out / "scale_sweep.png").is_file():  # this call's own sweep, not a sharing figure's
        report_dir.mkdir(parents=True, exist_ok=True)
        (report_dir / f"{name}-scale-sweep.png").write_bytes((out / "scale_sweep.png").read_bytes())
        extra["scale_sweep"] = f"{name}-scale-sweep.png"
    return rows, extra


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
            lines += ["| defence | CACC % (mean ± sd) | ASR % (mean ± sd) | best of runs (lowest ASR): CACC / ASR % |",
                      "|---|---|---|---|"]
            for cell in figure["defences"]:
                c, a, best = cell["clean_accuracy"], cell["attack_success_rate"], cell["best"]
                lines.append(f"| {cell['defence']} | {100 * c['mean']:.1f} ± {100 * c['sd']:.1f} | "
                             f"{100 * a['mean']:.1f} ± {100 * a['sd']:.1f} | {100 * best['clean_accuracy']:.1f} / "
                             f"{100 * best['attack_success_rate']:.1f} (seed {best['seed']}) |")
            lines.append("")
        if "scale_sweep" in figure:
            lines += [f"![adapter scale]({figure['scale_sweep']})", ""]
        if not figure["comparisons"]:
            continue
        lines += ["| at | metric | a | b | mean a | mean b | a − b (95% CI) | paper | verdict |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for line in figure["comparisons"]:
            d, metric = line["difference"], line["metric"]
            interval = _value(metric, d["mean"], "+") + (
                f" ± {_value(metric, d['ci95'])}" if d["mean"] is not None and d["ci95"] is not None else "")
            at = ", ".join(f"{k.rsplit('.', 1)[-1]} {v}" for k, v in line["at"].items()) or "all"
            expects = f"expects {line['expect']}" if line.get("predicted") is None else \
                f"predicts a − b = {_value(metric, line['predicted'], '+')}"
            lines.append(f"| {at} | {metric.replace('_', ' ')} | {_side(line['a'])} | {_side(line['b'])} | "
                         f"{_value(metric, line['a_stats']['mean'])} | {_value(metric, line['b_stats']['mean'])} | "
                         f"{interval} | {line['paper']} ({expects}) | {line['verdict']} |")
        lines.append("")
    return "\n".join(lines)


__all__ = ["Comparison", "Figure", "KernelFigure", "Paper", "compare", "load_paper", "paper_directory", "report",
           "reproduce", "verdict"]

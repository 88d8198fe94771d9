"""Numbers in README and docs, rendered from the committed results: ``lorasec render [--check]``.

A Markdown file marks each block that quotes results::

    <!-- render: tally paper1 -->
    (rendered text, rewritten by `lorasec render`)
    <!-- /render -->

and :func:`render_text` replaces every block with what its renderer makes of the files under ``figures/`` (the
reports' ``summary.json``, ``verify.json``, the main job's summary) or of the code itself (the configuration
reference from the schema; the command line's and the claims registry's, which the layers above pass in). ``--check`` changes nothing and fails when a
block differs from its rendering, which is what the test suite runs: a number in the docs that drifts from the file
behind it is an error, not a matter of care.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

from lorasec.config import reference
from lorasec.core import machine, tables
from lorasec.core.errors import ConfigError

MARKER = re.compile(r"<!-- render: (?P<name>[\w-]+)(?P<args>(?: [\w./-]+)*) -->\n(?P<body>.*?)<!-- /render -->",
                    re.DOTALL)
DEFAULT_FILES = ("README.md", "docs")


def _json(root: Path, relative: str) -> dict:
    path = root / relative
    if not path.is_file():
        raise ConfigError(f"render: {relative} is missing; run the command that writes it (see docs/results.md)")
    return json.loads(path.read_text())


def _tally(counts: dict) -> str:
    order = ("agrees", "agrees in size", "equivalent", "consistent", "disagrees", "opposite sign",
             "smaller than the paper's",
             "larger than the paper's", "not shown equivalent", "inconsistent", "inconclusive", "no claim")
    ranked = sorted(counts.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order))
    return ", ".join(f"{n} {verdict}" for verdict, n in ranked) or "none"


def tally(root: Path, paper: str, *options: str) -> str:
    """One line: a reproduced paper's family, its verdicts under the hypotheses as stated, and the earlier rule's
    tally of the same comparisons (or, for a report made before the hypotheses, its own tally, marked so); with the
    option ``dated`` (results pages, not the README), when and on what machine the report was written."""
    summary = _json(root, f"figures/{paper}/summary.json")
    family = summary.get("family")
    if family is None:
        counts: dict = {}
        for figure in summary["figures"]:
            for line in figure["comparisons"]:
                counts[line["verdict"]] = counts.get(line["verdict"], 0) + 1
        return (f"`{paper}` (made before hypotheses were tested as stated; per-run results not kept): "
                f"{sum(counts.values())} comparisons by the earlier rule, {_tally(counts)}.")
    return (f"`{paper}`: {family['size']} tested comparisons (Holm over the report, α = {family['alpha']}): "
            f"{_tally(family['tally'])}; the earlier rule on the same runs: {_tally(family['before'])}. "
            f"{family['identities']} identities and {family['repeats']} repeats shown apart."
            + (f" {machine.in_words(summary.get('made'))}" if "dated" in options else ""))


def _percent(value) -> str:
    return "n/a" if value is None else f"{100 * value:+.1f}"


def claims(root: Path, paper: str) -> str:
    """A table of a reproduced paper's tested comparisons: figure, where, hypothesis, n, a − b with its 95%
    t-interval, adjusted p and verdict."""
    summary = _json(root, f"figures/{paper}/summary.json")
    rows = []
    for figure in summary["figures"]:
        for line in figure["comparisons"]:
            if not line.get("tallied"):
                continue
            t = line["test"]
            percent = line["metric"] not in ("H1", "H2", "final_loss")
            value = (f"{_percent(t['mean'])} ± {100 * t['ci95']:.1f}" if percent else
                     f"{t['mean']:+.3g} ± {t['ci95']:.2g}") if t["ci95"] is not None else "n/a"
            at = ", ".join(f"{k.rsplit('.', 1)[-1]} {v}" for k, v in line["at"].items()) or "all"
            sides = " − ".join(", ".join(str(v) for v in side.values()) for side in (line["a"], line["b"]))
            rows.append((figure["name"], at, f"{line['metric'].replace('_', ' ')}: {sides}",
                         line["hypothesis"]["kind"], t["n"], value,
                         "n/a" if line.get("adjusted_p") is None else f"{line['adjusted_p']:.3g}", line["verdict"]))
    return "\n".join(tables.markdown(("figure", "at", "a − b", "hypothesis", "n", "a − b (points, 95% CI)",
                                      "adj. p", "verdict"), rows))


def verify(root: Path) -> str:
    """``lorasec verify``'s committed checks (figures/verify.json): claims by verdict, then identities."""
    checks = _json(root, "figures/verify.json")
    found = [c for c in checks if c["kind"] == "claim"]
    counts: dict = {}
    for c in found:
        counts[c["verdict"]] = counts.get(c["verdict"], 0) + 1
    others = [c for c in checks if c["kind"] != "claim"]
    names = sorted({c["claim"] for c in found})
    return (f"{len(found)} claim checks over {len(names)} claims: {_tally(counts)}; {len(others)} identity and "
            f"consistency checks, {sum(c['verdict'] == 'inconsistent' for c in others)} inconsistent.")


def verify_claims(root: Path) -> str:
    """Per registered claim of the committed ``lorasec verify`` output: its kind and how its checks came out."""
    checks = _json(root, "figures/verify.json")
    claims_seen: dict[str, dict] = {}
    for c in checks:
        entry = claims_seen.setdefault(c["claim"], {"kinds": set(), "verdicts": {}})
        entry["kinds"].add(c["kind"])
        entry["verdicts"][c["verdict"]] = entry["verdicts"].get(c["verdict"], 0) + 1
    rows = [(f"`{name}`", ", ".join(sorted(e["kinds"])), sum(e["verdicts"].values()), _tally(e["verdicts"]))
            for name, e in claims_seen.items()]
    return "\n".join(tables.markdown(("claim", "kind", "checks", "verdicts"), rows))


def study(root: Path, name: str = "study") -> str:
    """A committed study summary (``figures/NAME-summary.json``; the main job's is ``study``) as a table, mean ±
    sd in percent."""
    summary = _json(root, f"figures/{name}-summary.json")

    def cell(stats: dict) -> str:
        return "n/a" if stats["mean"] is None else f"{100 * stats['mean']:.1f} ± {100 * stats['sd']:.1f}"

    rows = [(c["attack"], c["arm"], cell(c["clean_accuracy"]), cell(c["attack_success_rate"]),
             cell(c["triggered_accuracy"])) for c in summary["cells"]]
    model = summary.get("model", "")
    named = [summary.get("task", ""), model if "/" not in model else ""]  # a path: the study's own encoder
    head = (", ".join(n for n in named if n) + ": " + f"{len(summary['seeds'])} seeds, {summary['steps']} steps"
            + (f", encoder pretrained {summary['pretrain_steps']} steps" if summary.get("pretrain_steps") else "")
            + f". {machine.in_words(summary.get('made'))}")
    return head + "\n\n" + "\n".join(tables.markdown(("attack", "method, lr", "CACC %", "ASR %", "triggered acc. %"),
                                                      rows))


def kernels(root: Path, name: str = "ntk_minilm") -> str:
    """A committed ``lorasec ntk`` summary (``figures/NAME/summary.json``): the per-layer order, Fisher
    information and TTR of LoRA against full fine-tuning."""
    summary = _json(root, f"figures/{name}/summary.json")
    order = summary["per_layer_order"]
    rows = [(measure, f"{summary['full']['fisher'][key]:.4g}", f"{summary['lora']['fisher'][key]:.4g}")
            for measure, key in (("information bits", "information_bits"), ("effective rank", "effective_rank"),
                                 ("λ_max", "lambda_max"), ("trace", "trace"))]
    for trigger, ttr in summary.get("ttr", {}).items():
        rows.append((f"TTR M′ ({trigger}, {ttr['pairs']} pairs): raw", f"{ttr['full']:.4g}", f"{ttr['lora']:.4g}"))
        rows.append((f"TTR M′ ({trigger}): normalised by the kernel's scale", f"{ttr['normalised']['full']:.3f}",
                     f"{ttr['normalised']['lora']:.3f}"))
    head = (f"{summary['num_examples']} test examples, {len(summary['adapted_layers'])} adapted layers: "
            f"K_LoRA ⪯ K_FF in {order['lora_below_ff']} of {order['layers']} layers; Theorem 3.6's orders hold in "
            + ", ".join(f"{n} ({k})" for k, n in order["theorem_3_6"].items()) + " of them. "
            + machine.in_words(summary.get("made")))
    return head + "\n\n" + "\n".join(tables.markdown(("measure (whole model)", "full fine-tuning", "LoRA"), rows))


def infinite(root: Path) -> str:
    """The committed ``lorasec infinite`` result (``figures/infinite/infinite.json``): the finite encoders' error
    against their infinite-width kernel, per width, and its fitted slope against the predicted one."""
    result = _json(root, "figures/infinite/infinite.json")
    rows = [(w, f"{m:.4f}") for w, m in zip(result["widths"], result["mean"])]
    head = (f"{result['num_layers']}-layer encoder, {result['parameterization']} parameterisation, {result['draws']} "
            f"networks per width, {result['examples']} sentences of {result['length']} tokens: relative error "
            f"against the limit falls with slope {result['slope']:.3f} in log-log (predicted "
            f"{result['predicted_slope']:g}). {machine.in_words(result.get('made'))}")
    return head + "\n\n" + "\n".join(tables.markdown(("width", "mean relative error"), rows))


def _interval(ci) -> str:
    return "—" if ci is None else f"[{ci[0]:+.2f}, {ci[1]:+.2f}]"


def prediction(root: Path, name: str = "predict_synthetic") -> str:
    """A committed ``lorasec predict`` report (``figures/NAME/summary.json``): how each predictor ranks attack
    success across the sweep's cells, the claims, the kernel's drift by method and the cost."""
    summary = _json(root, f"figures/{name}/summary.json")
    scores = sorted((s for s in summary["scores"] if s["outcome"] == "attack_success_rate"),
                    key=lambda s: -abs(s["spearman"]) if s["spearman"] is not None else 0)
    rows = [(f"`{s['predictor']}`", "undefined" if s["spearman"] is None else f"{s['spearman']:+.2f}",
             _interval(s["spearman_ci95"]), "undefined" if s["kendall"] is None else f"{s['kendall']:+.2f}",
             "—" if s["p_adjusted"] is None else f"{s['p_adjusted']:.2g}") for s in scores]
    claim_rows = [(c["predicted"], c["measured"], c["tolerance"], c["verdict"]) for c in summary["claims"]]
    drift: dict[str, list[float]] = {}
    for curve in summary["drift"]:
        value = curve["snapshots"][-1]["relative_change"]
        if value is not None:
            drift.setdefault(curve.get("adapter.method", "lora"), []).append(value)
    moved = "; ".join(f"{method}: median {sorted(v)[len(v) // 2]:.2f} (range {min(v):.2f}–{max(v):.2f}, {len(v)} runs)"
                      for method, v in sorted(drift.items()))
    cost = summary["cost"]
    head = (f"{summary['cells']} cells × {len(summary['seeds'])} seeds; Spearman's ρ and Kendall's τ of each "
            f"predictor's cell mean against the measured attack success rate, bootstrap 95% interval over cells, "
            f"Holm-adjusted permutation p over the report's {len(summary['scores'])} scores. "
            f"{machine.in_words(summary.get('made'))}")
    after = "; ".join(f"{d['measure'].replace('_', ' ')} ρ = {d['spearman']:+.2f} {_interval(d['spearman_ci95'])}"
                      for d in summary["drift_scores"] if d["spearman"] is not None)
    tail = (f"Kernel drift at the end of training, ‖K_T − K_0‖ / ‖K_0‖ on the probe: {moved}. The trained kernel's "
            f"measures against attack success (one seed per cell, measured after training, not predictors): "
            f"{after}. Predictors took "
            f"{100 * (cost['predictors_fraction'] or 0):.1f}% of the sweep's training time on this machine "
            f"({cost['predictors_seconds']:.0f} s against {cost['training_seconds']:.0f} s).")
    return "\n".join([head, "", *tables.markdown(("predictor", "ρ", "ρ 95%", "τ", "Holm p"), rows), "",
                      *tables.markdown(("claim (thresholds fixed before the run)", "measured", "tolerance",
                                        "verdict"), claim_rows), "", tail])


BASELINES = ("poison_rate", "learning_rate_sum")  # what the config alone says (lorasec.diagnostics.predictors)


def prediction_line(root: Path, name: str = "predict_synthetic", *options: str) -> str:
    """One line of a committed ``lorasec predict`` report: its claims' verdicts and the best-ranked predictor of
    attack success; the seeds the predictors were computed for when not all; with the option ``cost``, what the
    predictors cost against the sweep's training."""
    summary = _json(root, f"figures/{name}/summary.json")
    counts: dict = {}
    for c in summary["claims"]:
        counts[c["verdict"]] = counts.get(c["verdict"], 0) + 1
    asr = {s["predictor"]: s for s in summary["scores"]
           if s["outcome"] == "attack_success_rate" and s["spearman"] is not None}
    best = max((s for predictor, s in asr.items() if predictor not in BASELINES), key=lambda s: abs(s["spearman"]),
               default=None)
    ranked = "no predictor was defined" if best is None else (
        f"the best predictor of attack success is `{best['predictor']}`, ρ = {best['spearman']:+.2f} "
        f"{_interval(best['spearman_ci95'])}")
    for baseline in BASELINES:
        if baseline in asr:
            ranked += f"; the baseline `{baseline}` alone: ρ = {asr[baseline]['spearman']:+.2f}"
    chosen = summary.get("predictor_seeds", summary["seeds"])
    seeds = "" if chosen == summary["seeds"] else f", predictors from seed{'s' * (len(chosen) > 1)} " + \
        ", ".join(map(str, chosen)) + " of each"
    cost = summary["cost"]
    spent = (f" The predictors took {100 * cost['predictors_fraction']:.1f}% of the sweep's training time "
             f"({cost['predictors_seconds']:.0f} s against {cost['training_seconds']:.0f} s)."
             if "cost" in options and cost.get("predictors_fraction") is not None else "")
    return (f"`{name}`: {summary['cells']} cells × {len(summary['seeds'])} seeds{seeds}; {len(summary['claims'])} "
            f"claims with thresholds fixed before the runs: {_tally(counts)}; {ranked}.{spent}")


def config_reference(root: Path) -> str:
    """Every config field: type, default, meaning (:mod:`lorasec.config.reference`, read from the schema)."""
    from lorasec.sweep_spec import SweepFile

    return (reference.markdown_reference() + "\n"
            + reference.markdown_table(SweepFile, "a sweep spec: lorasec sweep, each figure of lorasec reproduce"))


RENDERERS: dict[str, Callable[..., str]] = {"tally": tally, "claims": claims, "verify": verify,
                                            "verify-claims": verify_claims, "study": study, "kernels": kernels,
                                            "infinite": infinite, "config-reference": config_reference,
                                            "prediction": prediction, "prediction-line": prediction_line}


def render_text(text: str, root: Path, where: str = "", extra: dict[str, Callable[..., str]] | None = None) -> str:
    """``text`` with every marked block rendered anew from the results under ``root``; ``extra`` adds renderers
    the layers above give (the command line's reference, the claims registry)."""
    renderers = {**RENDERERS, **(extra or {})}

    def replace(match: re.Match) -> str:
        name, args = match["name"], match["args"].split()
        if name not in renderers:
            raise ConfigError(f"{where}: render block {name!r} is unknown; renderers: {', '.join(renderers)}")
        return f"<!-- render: {name}{match['args']} -->\n{renderers[name](root, *args).rstrip()}\n<!-- /render -->"

    return MARKER.sub(replace, text)


def markdown_files(paths: list[Path]) -> list[Path]:
    """Every Markdown file of ``paths`` (files, or directories searched recursively)."""
    out = []
    for path in paths:
        out += sorted(path.rglob("*.md")) if path.is_dir() else [path] if path.is_file() else []
    return out


def render(paths: list[Path], root: Path, *, check: bool = False,
           extra: dict[str, Callable[..., str]] | None = None) -> list[Path]:
    """Render the marked blocks of ``paths``; with ``check``, write nothing and return the files that differ."""
    differ = []
    for path in markdown_files(paths):
        text = path.read_text()
        rendered = render_text(text, root, str(path), extra)
        if rendered != text:
            differ.append(path)
            if not check:
                path.write_text(rendered)
    return differ

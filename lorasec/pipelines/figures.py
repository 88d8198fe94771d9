"""Every figure and table lorasec draws, from the summaries the pipelines write (PNG through matplotlib's
``Figure`` objects, never pyplot: drawing a file leaves a notebook's inline backend alone; tables as Markdown)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np

from lorasec.core import tables
from lorasec.core.stats import ci95_half_width, format_general, format_mean_sd


class _Files:
    """The two pyplot calls these figures use, on plain ``Figure`` objects: no global backend switch and no
    figure registered with pyplot (switching to Agg here once turned off a notebook's inline plots)."""

    @staticmethod
    def subplots(nrows: int = 1, ncols: int = 1, *, figsize=None, **kwargs):
        from matplotlib.figure import Figure

        fig = Figure(figsize=figsize)
        return fig, fig.subplots(nrows, ncols, **kwargs)

    @staticmethod
    def close(fig) -> None:
        fig.clear()


def _pyplot() -> _Files:
    return _Files()


def study_figure(summary: dict, path: Path) -> None:
    plt = _pyplot()
    attacks = list(dict.fromkeys(c["attack"] for c in summary["cells"]))
    methods = list(dict.fromkeys(c["arm"] for c in summary["cells"]))
    cell = {(c["attack"], c["arm"]): c for c in summary["cells"]}
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    width = 0.8 / len(methods)
    for j, method in enumerate(methods):
        xs = [i + (j - (len(methods) - 1) / 2) * width for i in range(len(attacks))]
        cacc = [cell[a, method]["clean_accuracy"] for a in attacks]
        axes[0].bar(xs, [100 * s["mean"] for s in cacc], width, yerr=[100 * s["sd"] for s in cacc],
                    label=method, capsize=3)
        backdoors = [a for a in attacks if cell[a, method]["attack_success_rate"]["mean"] is not None]
        asr = [cell[a, method]["attack_success_rate"] for a in backdoors]
        bx = [attacks.index(a) + (j - (len(methods) - 1) / 2) * width for a in backdoors]
        axes[1].bar(bx, [100 * s["mean"] for s in asr], width, yerr=[100 * s["sd"] for s in asr],
                    label=method, capsize=3)
    for i, a in enumerate(attacks):
        if cell[a, methods[0]]["attack_success_rate"]["mean"] is None:
            axes[1].text(i, 2, "no trigger", ha="center", fontsize=8, color="gray")
    for ax, title in zip(axes, ("clean accuracy (CACC, %)", "attack success rate (ASR, %)")):
        ax.set_xticks(range(len(attacks)), [a.replace("@", "\n@") for a in attacks], fontsize=8)
        ax.set_title(title)
        ax.set_ylim(0, 105)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=len(methods), fontsize=8)
    fig.suptitle(f"LoRA vs full fine-tuning, {summary.get('task', 'synthetic')} task, mean ± sd over "
                 f"{len(summary['seeds'])} seeds")
    fig.tight_layout(rect=(0, 0.07, 1, 1))  # the shared legend goes below the panels, off the bars
    fig.savefig(path, dpi=120)
    plt.close(fig)


def study_table(summary: dict) -> str:
    lines = [
        "# lorasec study: LoRA vs full fine-tuning under training-time attacks",
        "",
        (f"Synthetic topic task, encoder pretrained by masked LM for {summary['pretrain_steps']} steps, "
         if summary.get("pretrain_steps") else f"Task {summary.get('task')}, model {summary.get('model')}, ")
        + f"fine-tuned {summary['steps']} steps; seeds {summary['seeds']}; mean ± sd (%).",
        "",
        "| attack | method, lr | CACC | ASR | triggered acc. |",
        "|---|---|---|---|---|",
    ]
    for c in summary["cells"]:
        lines.append(f"| {c['attack']} | {c['arm']} | {format_mean_sd(c['clean_accuracy'])} | "
                     f"{format_mean_sd(c['attack_success_rate'])} | "
                     f"{format_mean_sd(c['triggered_accuracy'])} |")
    lines += ["", "![study](study.png)", ""]
    return "\n".join(lines)


def purify_figure(summary: dict, path: Path) -> None:
    plt = _pyplot()
    cells = summary["defences"]
    names = [c["defence"] for c in cells]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, key, title in zip(axes, ("clean_accuracy", "attack_success_rate"), ("CACC (%)", "ASR (%)")):
        ax.bar(range(len(cells)), [100 * c[key]["mean"] for c in cells],
               yerr=[100 * c[key]["sd"] for c in cells], capsize=3, color="tab:blue")
        before = summary["backdoored"]["downstream"][key]
        ax.axhline(100 * before, ls="--", color="tab:red", lw=1, label="backdoored, before fine-tuning")
        ax.set_xticks(range(len(cells)), names)
        ax.set_ylim(0, 105)
        ax.set_title(title)
    axes[1].legend(fontsize=7)
    fig.suptitle(f"clean fine-tuning of a backdoored model, mean ± sd over {len(summary['seeds'])} seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def purify_table(summary: dict) -> str:
    b, control = summary["backdoored"], summary.get("never_poisoned")
    lines = [
        "# lorasec purify: does clean fine-tuning remove a planted backdoor?",
        "",
        f"Backdoored model: proxy CACC {100 * b['proxy']['clean_accuracy']:.1f}%, ASR "
        f"{100 * b['proxy']['attack_success_rate']:.1f}%; on the downstream test set before fine-tuning CACC "
        f"{100 * b['downstream']['clean_accuracy']:.1f}%, ASR {100 * b['downstream']['attack_success_rate']:.1f}%.",
    ]
    if control:
        lines.append(f"Never poisoned (the clean pretrained encoder fully fine-tuned on the same clean set): CACC "
                     f"{format_mean_sd(control['clean_accuracy'])}%, ASR {format_mean_sd(control['attack_success_rate'])}%"
                     f" (a clean model's own errors on triggered inputs); ASR above clean subtracts it seed by seed.")
    lines += [
        f"Seeds {summary['seeds']}; mean ± sd. Spectral strength σ_max(W_pre)/σ_max(ΔW): median over adapted "
        "matrices (larger = spectrally weaker update). s*, crossing: medians over layers of the critical scale and "
        "the true crossing, in each defence's own units (LoRA: its scale; others: multiples of the update).",
        "",
        *tables.markdown(("defence", "CACC %", "ASR %", "ASR above clean %", "spectral strength",
                          "Pt condition share", "s*", "crossing"),
                         ((c["defence"], format_mean_sd(c["clean_accuracy"]), format_mean_sd(c["attack_success_rate"]),
                           format_mean_sd(c["asr_above_clean"]) if "asr_above_clean" in c else "n/a",
                           format_general(c["spectral_strength"]), format_general(c["pt_condition_share"]),
                           format_general(c["s_star_median"]), format_general(c["crossing_median"]))
                          for c in summary["defences"])),
    ]
    for name, curve in summary["sweeps"].items():
        lines.append("")
        lines.append(f"Scale sweep ({name}): trained s = {curve['s_train']:g}; ASR {crossing_text(curve)}")
    lines += ["", "![purify](purify.png)", "", "![scale sweep](scale_sweep.png)", ""]
    return "\n".join(lines)


def crossing_text(curve: dict) -> str:
    """``'below 50% from s = 1.57 ± 0.22'`` for a scale sweep's mean over seeds (``purify.mean_curve``), saying in
    how many seeds when not all cross: the mean is over the seeds that do, so it must not read as a tight crossing."""
    cross, runs = curve["asr_crossing"], curve.get("runs")
    if cross["mean"] is None:
        return "never below 50% on the grid"
    if runs is not None and cross["n"] < runs:
        value = f"{cross['mean']:.3g}" if cross["n"] == 1 else format_general(cross)
        return f"below 50% from s = {value} in {cross['n']} of {runs} seeds (never on the grid in the others)"
    return f"below 50% from s = {format_general(cross)}"


def scale_sweep_figure(curves: dict[str, dict], path: Path, *, marks: dict[str, float] | None = None,
                       title: str = "") -> None:
    """One panel per metric; ``curves`` maps a label to :func:`sweep` output, ``marks`` names vertical lines. When
    a mark lies far past the swept scales the axis turns symmetric-log (linear up to 1), so the curves are not
    squeezed against zero."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    swept = [s for curve in curves.values() for s in curve["scales"]]
    far = [v for v in (marks or {}).values() if v is not None and np.isfinite(v) and v > 2 * max(swept, default=0)]
    if far:
        for ax in axes:
            ax.set_xscale("symlog", linthresh=1.0)
    for label, curve in curves.items():
        for ax, key in zip(axes, ("clean_accuracy", "attack_success_rate")):
            ax.plot(curve["scales"], [100 * v for v in curve[key]], marker="o", ms=3, label=label)
    for name, value in (marks or {}).items():
        if value is not None and np.isfinite(value):
            for ax in axes:
                ax.axvline(value, ls="--", lw=1, color="gray")
            axes[1].text(value, 102, name, rotation=90, fontsize=7, va="top", ha="right", color="gray")
    for ax, name in zip(axes, ("CACC (%)", "ASR (%)")):
        ax.set_xlabel("adapter scale s")
        ax.set_ylabel(name)
        ax.set_ylim(0, 105)
    axes[0].legend(fontsize=7)
    fig.suptitle(title or "scale sweep")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def spectra_figure(report: dict, path: Path) -> None:
    """ΔW singular spectra per adapted matrix (``lorasec spectral``)."""
    plt = _pyplot()

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, row in report.items():
        values = np.asarray(row["singular_values_delta"])
        ax.semilogy(np.arange(1, values.size + 1), np.maximum(values, 1e-12), alpha=0.7, label=name)
    ax.set_xlabel("index")
    ax.set_ylabel("singular value of ΔW")
    ax.set_title("update spectra per adapted matrix")
    if len(report) <= 12:
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def ntk_spectrum_figure(spectra: dict, path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, values in spectra.items():
        positive = values[values > 0]
        ax.semilogy(np.arange(1, positive.size + 1), positive, marker=".", label=f"{name} ({positive.size})")
    ax.set_xlabel("index")
    ax.set_ylabel("eigenvalue of the traced NTK")
    ax.set_title("NTK spectra: LoRA factors vs full fine-tuning")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def convergence_figure(report: dict, stem: Path) -> list[Path]:
    """Relative NTK error of finite stax encoders against width (per draw and mean), with the n^-1/2 law."""
    plt = _pyplot()
    widths, errors = np.asarray(report["widths"]), np.asarray(report["errors"])
    fig, ax = plt.subplots(figsize=(6, 4))
    for draw in range(errors.shape[1]):
        ax.scatter(widths, errors[:, draw], color="tab:blue", alpha=0.35, s=14)
    ax.plot(widths, errors.mean(1), "o-", color="tab:blue", label=f"mean of {errors.shape[1]} networks "
            f"(slope {report['slope']:.2f})")
    ax.plot(widths, errors.mean(1)[0] * np.sqrt(widths[0] / widths), "k--", label=r"$\propto$ width$^{-1/2}$")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(widths, [str(w) for w in widths])
    ax.minorticks_off()
    ax.set_xlabel("width")
    ax.set_ylabel("relative Frobenius error of the NTK")
    ax.set_title(f"stax encoder ({report['num_layers']} layer, {report['parameterization']}): finite -> infinite")
    ax.legend(fontsize=8)
    return _save_png_pdf(plt, fig, stem)


def _sortable(value):
    return (0, value, "") if isinstance(value, (int, float)) and not isinstance(value, bool) else (1, 0, str(value))


def sweep_plot(rows: list[dict], x: str, y: str, hue: str | None, stem: Path) -> list[Path]:
    """Mean of ``y`` over seeds against ``x``, one line per ``hue`` value, with its 95% t-interval as a band;
    fields that vary but are neither x nor hue are pooled (and named in the title). Writes PNG and PDF."""
    plt = _pyplot()
    groups: dict = {}
    for row in rows:
        value = row.get(y)
        if value is None or not np.isfinite(value):
            continue
        groups.setdefault(row.get(hue) if hue else y, {}).setdefault(row[x], []).append(float(value))
    skip = {"cell", "seed", "run", x, y, *(k for k in (hue,) if k)}
    fixed = {k for k in rows[0] if k not in skip and isinstance(rows[0][k], (int, float, str))
             and not k.endswith(("accuracy", "rate", "loss", "seconds", "steps", "step", "members"))}
    within: dict = {}
    for row in rows:  # a field is pooled when it takes several values at one (x, hue) point
        point = (_json_key(row[x]), _json_key(row.get(hue)) if hue else "")
        for k in fixed:
            within.setdefault((point, k), set()).add(_json_key(row.get(k)))
    pooled = sorted({k for (_, k), values in within.items() if len(values) > 1})
    fig, ax = plt.subplots(figsize=(6, 4))
    _mean_bands(ax, {(f"{hue} = {label}" if hue else y): by_x for label, by_x in groups.items()},
                [r[x] for r in rows])
    seeds = len({r["seed"] for r in rows})
    per_point = sorted({len(v) for by_x in groups.values() for v in by_x.values()})
    runs = str(per_point[0]) if len(per_point) == 1 else f"{per_point[0]}-{per_point[-1]}"
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    title = f"{y}: mean and 95% interval, {runs} runs per point ({seeds} seed{'s' * (seeds > 1)})"
    if pooled:
        title += f"\npooled over {', '.join(pooled)}"
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    return _save_png_pdf(plt, fig, stem)


def _numeric(values: list) -> bool:
    """Whether an x-axis of these values is drawn as numbers (lines and bands) rather than categories (points and
    bars)."""
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def _mean_bands(ax, groups: dict, xs_seen: list, marks: list[float] = ()) -> None:
    """One line per group (label -> {x: [values over seeds]}): the mean with its 95% t-interval as a band; a log
    x-axis when positive numbers, with the ``marks`` to be drawn, span a decade and a half or more (ranks 4-256)."""
    numeric = _numeric(xs_seen)
    for label, by_x in sorted(groups.items(), key=lambda kv: _sortable(kv[0])):
        xs = sorted(by_x, key=_sortable)
        position = xs if numeric else list(range(len(xs)))
        means = np.array([np.mean(by_x[v]) for v in xs])
        half = np.array([ci95_half_width(by_x[v]) or 0.0 for v in xs])
        if numeric:
            ax.plot(position, means, marker="o", label=label)
            ax.fill_between(position, means - half, means + half, alpha=0.2)
        else:  # categories (defences): no line between them
            ax.errorbar(position, means, yerr=half, marker="o", linestyle="none", capsize=3, label=label)
            ax.set_xticks(position, [str(v) for v in xs], rotation=30, fontsize=8)
    span = [*xs_seen, *marks] if numeric else []
    if span and all(v > 0 for v in span) and max(span) / min(span) >= 10 ** 1.5:
        ax.set_xscale("log")


# What a reader sees instead of a config field or metric name; rates and accuracies are drawn in percent.
LABELS = {
    "clean_accuracy": "clean accuracy (%)", "attack_success_rate": "attack success rate (%)",
    "asr_above_clean": "ASR above the never-poisoned model (points)",
    "triggered_accuracy": "accuracy on triggered inputs (%)", "robust_accuracy": "robust accuracy (%)",
    "final_loss": "final training loss", "H1": "H'₁ = log Σλ", "H2": "H'₂ = log Σλ²",
    "attack.poison_rate": "poison rate", "attack.kind": "attack", "adapter.method": "method", "train.lr": "lr",
    "adapter.rank": "LoRA rank r", "adapter.init_scale": "c (Var A = c/n)", "r_or_c": "r (rank panel) or c",
    "source": "", "sweep": "sweep", "defence": "defence", "rora.cl": "Cl dropout p", "rora.tr": "Tr weight λ",
    "rora.tr_k": "Tr rank k", "rora.pt_layers": "Pt layers",
}
PERCENT = ("clean_accuracy", "attack_success_rate", "asr_above_clean", "triggered_accuracy", "robust_accuracy")


def label(name: str) -> str:
    """A field or metric as a reader reads it (:data:`LABELS`, else its last dotted part in words)."""
    return LABELS.get(name, _short(name))


def _setting(name: str, value) -> str:
    shown = {"full": "full fine-tuning", "lora": "LoRA"}.get(value, value) if name == "adapter.method" else value
    return f"{label(name)} {shown}".strip() if label(name) and name != "adapter.method" else str(shown)


def figure_grid(rows: list[dict], x: str, ys: list[str], hue: list[str], panel: str | None, stem: Path, *,
                title: str, marks: list[float] = ()) -> list[Path]:
    """A paper figure: one row of panels per metric in ``ys``, one column per value of ``panel``; in each, the
    mean over seeds of the metric against ``x`` with its 95% t-interval as a band (categories of ``x``: points with
    bars), one line per combination of the ``hue`` fields; ``marks`` are x positions drawn as dotted lines (the
    paper's own settings). Rates and accuracies in percent; an ASR above the never-poisoned model gets a line at 0.
    Writes PNG and PDF."""
    plt = _pyplot()
    panels = sorted({r[panel] for r in rows}, key=_sortable) if panel else [None]
    fig, axes = plt.subplots(len(ys), len(panels), figsize=(4.2 * len(panels), 3.2 * len(ys)), squeeze=False)
    for i, y in enumerate(ys):
        scale = 100.0 if y in PERCENT else 1.0
        for j, value in enumerate(panels):
            ax = axes[i][j]
            chosen = [r for r in rows if (panel is None or r[panel] == value) and r.get(x) is not None]
            groups: dict = {}
            for row in chosen:
                if row.get(y) is not None and np.isfinite(row[y]):
                    name = ", ".join(_setting(h, row[h]) for h in hue) or label(y)
                    groups.setdefault(name, {}).setdefault(row[x], []).append(scale * float(row[y]))
            if panel:
                ax.set_title(_setting(panel, value), fontsize=9)
            if not groups:  # e.g. triggered accuracy under label flipping, which has no trigger
                ax.text(0.5, 0.5, f"no {label(y).split(' (')[0]} here", ha="center", va="center",
                        transform=ax.transAxes, color="grey")
                ax.set_xticks([])
                ax.set_yticks([])
                continue
            _mean_bands(ax, groups, [r[x] for r in chosen if r.get(y) is not None], list(marks))
            for mark in marks:
                ax.axvline(mark, color="grey", linestyle=":", linewidth=1)
            if y == "asr_above_clean":
                ax.axhline(0.0, color="black", linewidth=0.8)
            ax.set_xlabel(label(x))
            ax.set_ylabel(label(y), fontsize=8)
            if y in ("attack_success_rate", "triggered_accuracy"):
                ax.set_ylim(-3, 103)  # clean accuracy keeps its own range: its differences are points
            if not any(a.get_legend() for a in fig.axes):  # the first panel with data
                ax.legend(fontsize=7)
    seeds = len({r["seed"] for r in rows})
    drawn = ("lines", "bands") if _numeric([r[x] for r in rows if r.get(x) is not None]) else ("points", "bars")
    lines = [title, f"{drawn[0]}: mean over {seeds} seed{'s' * (seeds > 1)}; {drawn[1]}: 95% t-interval of the mean"
             + ("; dotted: the paper's settings" if marks else "")]
    width = int(13 * 4.2 * len(panels))  # characters of a 10-point title that fit across the panels
    fig.suptitle("\n".join(textwrap.fill(line, width) for line in lines), fontsize=10)
    return _save_png_pdf(plt, fig, stem)


def defence_figure(rows: list[dict], ys: list[str], stem: Path, *, title: str, order: list[str],
                   paper: dict | None = None, lines: dict | None = None) -> list[Path]:
    """Paper 2's tables as a figure: one panel per metric in ``ys``, one column per defence in ``order`` (the
    paper's) with the mean over seeds and its 95% t-interval, each seed as a dot beside it (no bars: the clean
    accuracy axis keeps the range its differences need), the paper's own values (``paper``:
    defence -> {metric: value}) as red diamonds, and reference levels (``lines``: name -> {metric: value}, e.g.
    the backdoored model before fine-tuning) as dashed lines. Percent throughout. Writes PNG and PDF."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(ys), figsize=(max(5.0, 0.7 * len(order)) * len(ys) / 1.4, 3.8), squeeze=False)
    styles = ("--", "-.", ":")
    for ax, y in zip(axes[0], ys):
        scale = 100.0 if y in PERCENT else 1.0
        for k, name in enumerate(order):
            values = [scale * r[y] for r in rows if r.get("defence") == name and r.get(y) is not None]
            if not values:
                continue
            half = ci95_half_width(values) or 0.0
            first = not any(line.get_label() == "one seed" for line in ax.lines)
            ax.errorbar(k, np.mean(values), yerr=half, fmt="s", color="tab:blue", capsize=4, markersize=6,
                        label="mean, 95% t-interval" if first else None)
            ax.plot([k + 0.15] * len(values), values, ".", color="black", markersize=3, alpha=0.6,
                    label="one seed" if first else None)
            target = (paper or {}).get(name, {}).get(y)
            if target is not None:
                ax.plot(k, scale * target, "D", color="tab:red", markersize=6,
                        label="the paper's value" if not any(t.get_label() == "the paper's value"
                                                             for t in ax.lines) else None)
        for (name, levels), style in zip((lines or {}).items(), styles):
            if levels.get(y) is not None:
                ax.axhline(scale * levels[y], color="tab:gray", linestyle=style, linewidth=1, label=name)
        if y == "asr_above_clean":
            ax.axhline(0.0, color="black", linewidth=0.8)
        ax.set_xticks(range(len(order)), order, rotation=35, fontsize=8, ha="right")
        ax.set_ylabel(label(y), fontsize=8)
        if y in ("attack_success_rate", "triggered_accuracy"):
            ax.set_ylim(-3, 103)
    axes[0][0].legend(fontsize=6)
    seeds = len({r["seed"] for r in rows})
    fig.suptitle(textwrap.fill(f"{title} ({seeds} seeds)", int(13 * 5 * len(ys) / 1.4)), fontsize=10)
    return _save_png_pdf(plt, fig, stem)


def _save_png_pdf(plt, fig, stem: Path) -> list[Path]:
    fig.tight_layout()
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    png, pdf = stem.parent / f"{stem.name}.png", stem.parent / f"{stem.name}.pdf"
    fig.savefig(png, dpi=120)
    fig.savefig(pdf, dpi=120, metadata={"CreationDate": None})  # the same figure, the same bytes: no diff churn
    plt.close(fig)
    return [png, pdf]


def _short(field: str) -> str:
    return field.rsplit(".", 1)[-1].replace("_", " ")


def _json_key(value) -> str:
    import json

    return json.dumps(value, sort_keys=True)


def sweep_table(summary: list[dict], fields: list[str]) -> str:
    """A sweep's per-cell summary as Markdown: each axis value, then mean ± 95% half-width (n) per metric."""
    metrics = ("clean_accuracy", "attack_success_rate", "final_loss")
    header = [*fields, "runs", *metrics]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for cell in summary:
        cols = [str(cell[f]) for f in fields] + [str(cell["runs"])]
        for metric in metrics:
            s = cell[metric]
            if s["mean"] is None:
                cols.append("n/a")
            else:
                scale = 100.0 if metric != "final_loss" else 1.0
                half = f" ± {s['ci95'] * scale:.3g}" if s["ci95"] is not None else ""
                cols.append(f"{s['mean'] * scale:.3g}{half} ({s['n']})")
        lines.append("| " + " | ".join(cols) + " |")
    return "\n".join(lines) + "\n\naccuracy and ASR in %; ± is the 95% t-interval half-width over seeds (n runs)\n"


PREDICTOR_LABELS = {
    "linearised_attack_success_rate": "linearised network's ASR (%)", "ntk_margin_push": "NTK first-order margin push",
    "sign_margin_push": "sign-kernel first-order margin push", "ntk_attack_success_rate": "NTK first-order ASR (%)",
    "sign_attack_success_rate": "sign-kernel first-order ASR (%)", "m_prime": "M' (paper 1)",
    "m_prime_normalised": "M' / mean ‖K(x, x)‖", "trigger_target_alignment": "trigger-target alignment at start",
}


def prediction_figures(summary: dict, out_dir: Path, *, shown: int = 4) -> list[Path]:
    """Per outcome, the ``shown`` best-ranked predictors' cell means against the measured cell means (bars: the
    seeds' sd), LoRA and full fine-tuning apart; and the drift of the replayed runs' kernels against steps."""
    plt = _pyplot()
    written = []
    by_cell: dict[int, list[dict]] = {}
    for row in summary["runs"]:
        by_cell.setdefault(row["cell"], []).append(row)
    for outcome in sorted({s["outcome"] for s in summary["scores"]}):
        scores = sorted((s for s in summary["scores"] if s["outcome"] == outcome and s["spearman"] is not None),
                        key=lambda s: -abs(s["spearman"]))[:shown]
        if not scores:
            continue
        fig, axes = plt.subplots(1, len(scores), figsize=(3.6 * len(scores), 3.4), squeeze=False)
        for ax, score in zip(axes[0], scores):
            name = score["predictor"]
            scale = 100.0 if name.endswith(("attack_success_rate", "clean_accuracy")) else 1.0
            for method, colour in (("lora", "tab:blue"), ("full", "tab:red")):
                xs, ys, errs = [], [], []
                for cell, members in sorted(by_cell.items()):
                    if members[0].get("adapter.method", "lora") != method:
                        continue
                    predicted = [m[name] for m in members if m.get(name) is not None]
                    measured = [m[outcome] for m in members if m.get(outcome) is not None]
                    if predicted and measured:
                        xs.append(scale * float(np.mean(predicted)))
                        ys.append(100.0 * float(np.mean(measured)))
                        errs.append(100.0 * float(np.std(measured, ddof=1)) if len(measured) > 1 else 0.0)
                if xs:
                    ax.errorbar(xs, ys, yerr=errs, fmt="o", ms=3.5, color=colour, alpha=0.8, elinewidth=0.8,
                                label="LoRA" if method == "lora" else "full fine-tuning")
            low, high = score["spearman_ci95"] or (float("nan"), float("nan"))
            ax.set_title(f"ρ = {score['spearman']:+.2f} [{low:+.2f}, {high:+.2f}]", fontsize=9)
            ax.set_xlabel(PREDICTOR_LABELS.get(name, name.replace("_", " ")), fontsize=8)
            ax.set_ylabel(f"measured {label(outcome)} (%, bars: sd over seeds)", fontsize=8)
            ax.legend(fontsize=7)
        fig.suptitle(f"{summary['name']}: predicted before training vs measured ({summary['cells']} cells)",
                     fontsize=10)
        written += _save_png_pdf(plt, fig, Path(out_dir) / f"calibration-{outcome}")
    if summary["drift"]:
        fig, axes = plt.subplots(1, 3, figsize=(12, 3.4), squeeze=False)
        titles = {"relative_change": "‖K_t − K_0‖ / ‖K_0‖", "kernel_target_alignment": "kernel-target alignment",
                  "trigger_target_alignment": "trigger-target alignment"}
        for ax, (measure, title) in zip(axes[0], titles.items()):
            for curve in summary["drift"]:
                steps = [s["step"] for s in curve["snapshots"]]
                values = [s.get(measure) for s in curve["snapshots"]]
                lora_run = curve.get("adapter.method", "lora") == "lora"
                ax.plot(steps, values, color="tab:blue" if lora_run else "tab:red", alpha=0.35, lw=0.9)
            ax.set_title(title, fontsize=9)
            ax.set_xlabel("training step", fontsize=8)
        axes[0][0].plot([], [], color="tab:blue", label="LoRA")
        axes[0][0].plot([], [], color="tab:red", label="full fine-tuning")
        axes[0][0].legend(fontsize=7)
        fig.suptitle(f"{summary['name']}: the empirical NTK of the trained parameters along training "
                     f"({len(summary['drift'])} runs, one line each)", fontsize=10)
        written += _save_png_pdf(plt, fig, Path(out_dir) / "drift")
    return written

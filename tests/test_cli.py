"""The command line's regular parts: --version, help on every flag, `config show`, errors before JAX is imported,
and commands that say what they will train or fetch before they start."""

from __future__ import annotations

import argparse
import subprocess
import sys
import tomllib

import pytest

import theory
from lorasec import __version__, cli
from lorasec.config import RunConfig, from_dict


def _subparsers(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield name, sub
                yield from ((f"{name} {n}", s) for n, s in _subparsers(sub))


def test_version_and_help_on_every_flag(capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"lorasec {__version__}"
    missing = [f"{name} {'/'.join(a.option_strings) or a.dest}" for name, sub in _subparsers(cli._parser())
               for a in sub._actions if not isinstance(a, argparse._HelpAction) and not a.help]
    assert missing == []


@pytest.mark.parametrize("argv, line", [
    (["reproduce", "paper1", "--quik"], "unrecognized arguments: --quik; did you mean '--quick'? (see `lorasec "
                                        "reproduce --help`)"),
    (["trian"], "did you mean 'train'? (see `lorasec --help`)"),
    (["config", "show", "--kindd", "run"], "did you mean '--kind'? (see `lorasec config show --help`)"),
    (["sweep"], "the following arguments are required: spec (see `lorasec sweep --help`)"),
])
def test_a_wrong_call_is_one_line_with_the_closest_flag(argv, line, capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(argv)
    err = capsys.readouterr().err
    assert done.value.code == 2 and err.count("\n") == 1 and err.startswith("lorasec: error: ") and line in err


def test_commands_that_work_take_set_out_and_no_progress():
    takes = {name: {o for a in sub._actions for o in a.option_strings} for name, sub in _subparsers(cli._parser())}
    for name in ("train", "pretrain", "study", "sweep", "purify", "reproduce", "verify"):
        assert {"--set", "--out", "--no-progress"} <= takes[name], name
    for name in ("ntk", "config show"):
        assert "--set" in takes[name], name


def test_config_show_prints_a_toml_that_reads_back(capsys):
    assert cli.main(["config", "show", "experiments/synthetic_badnets_lora.toml", "--set", "train.lr=3e-5"]) == 0
    text = capsys.readouterr().out
    cfg = from_dict(RunConfig, tomllib.loads(text))
    assert cfg.train.lr == 3e-5 and cfg.attack.kind == "badnets" and "# LoRA rank r. >= 1.\nrank = " in text
    assert cli.main(["config", "show", "experiments/study.toml"]) == 0
    assert "9 cells x seeds [0, 1, 2]" in capsys.readouterr().out
    assert cli.main(["config", "show", "--set", "train.lrr=3"]) == 2
    assert capsys.readouterr().err.strip() == "lorasec: error: train.lrr: unknown field; did you mean 'lr'?"


def test_a_config_error_comes_before_jax_is_imported():
    probe = ("import sys; from lorasec import cli; code = cli.main(['train', 'experiments/synthetic_badnets_lora.toml',"
             " '--set', 'train.lr=-1']); print(code, 'jax' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["2", "False"] and "train.lr = -1" in done.stderr
    probe = ("import sys; from lorasec import cli; code = cli.main(['verify', 'full_ft_forgets_better', '--set', "
             "'train.stepz=9']); print(code, 'jax' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["2", "False"] and "train.stepz: unknown field" in done.stderr


def test_verify_says_what_it_will_train_or_fetch_first(tmp_path, monkeypatch, capsys):
    asked = {}
    monkeypatch.setattr(theory, "verify", lambda names, purify_dir, progress, settings: asked.update(
        out=purify_dir, settings=settings) or [])
    assert cli.main(["verify", "lora_spectrally_weak", "full_ft_forgets_better", "--out", str(tmp_path),
                     "--set", "seeds=[0,1,2]"]) == 0
    assert asked == {"out": tmp_path, "settings": ["seeds=[0,1,2]"]}
    said = capsys.readouterr().err.splitlines()
    assert len(said) == 1 and said[0].endswith("; with --set seeds=[0,1,2]")
    assert said[0].startswith(f"lorasec: verify trains the default purify pipeline into {str(tmp_path)!r}")
    assert cli.main(["verify", "lemma_3_1", "--set", "seeds=[0,1,2]"]) == 2  # nothing it would change
    assert "none of the chosen claims reads the purify pipeline" in capsys.readouterr().err
    (tmp_path / "summary.json").write_text("{}")
    assert cli.main(["verify", "lora_spectrally_weak", "lemma_3_1", "--purify", str(tmp_path)]) == 0
    assert capsys.readouterr().err == ""

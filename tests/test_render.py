"""README's and the docs' result blocks are rendered from the committed results, and the committed text matches
them: a number that drifts from the file behind it fails here."""

import json
from pathlib import Path

import pytest

from lorasec.cli import main
from lorasec.config import ConfigError
from lorasec.pipelines import render

ROOT = Path(__file__).resolve().parents[1]


def _summary(tmp_path: Path) -> Path:
    line = {"tallied": True, "at": {"attack.poison_rate": 0.3}, "a": {"adapter.method": "lora"},
            "b": {"adapter.method": "full"}, "metric": "clean_accuracy", "hypothesis": {"kind": "direction"},
            "test": {"n": 12, "mean": -0.031, "ci95": 0.012}, "adjusted_p": 0.0049, "verdict": "agrees"}
    summary = {"figures": [{"name": "fig1", "comparisons": [line, {**line, "tallied": False}]}],
               "family": {"size": 1, "alpha": 0.05, "tally": {"agrees": 1}, "before": {"inconclusive": 1},
                          "identities": 0, "repeats": 1}}
    (tmp_path / "figures" / "paperx").mkdir(parents=True)
    (tmp_path / "figures" / "paperx" / "summary.json").write_text(json.dumps(summary))
    return tmp_path


def test_blocks_are_rendered_from_the_files_and_checked(tmp_path):
    root = _summary(tmp_path)
    page = root / "page.md"
    page.write_text("intro\n<!-- render: tally paperx -->\nstale number 42\n<!-- /render -->\n"
                    "<!-- render: claims paperx -->\n<!-- /render -->\nend\n")
    assert render.render([page], root, check=True) == [page] and "42" in page.read_text()
    assert render.render([page], root) == [page]
    text = page.read_text()
    assert "1 tested comparisons (Holm over the report, α = 0.05): 1 agrees" in text and "42" not in text
    assert "| fig1 | poison_rate 0.3 | clean accuracy: lora − full | direction | 12 | -3.1 ± 1.2 | 0.0049 | agrees |" \
        in text
    assert text.startswith("intro\n") and text.endswith("end\n")
    assert render.render([page], root, check=True) == []  # rendering twice changes nothing


def test_a_missing_result_or_renderer_is_one_line(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("<!-- render: tally nowhere -->\n<!-- /render -->\n")
    with pytest.raises(ConfigError, match="figures/nowhere/summary.json is missing"):
        render.render([page], tmp_path)
    page.write_text("<!-- render: guess -->\n<!-- /render -->\n")
    with pytest.raises(ConfigError, match="render block 'guess' is unknown"):
        render.render([page], tmp_path)


def test_readme_and_docs_match_the_committed_results(monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    code = main(["render", "--check"])
    assert code == 0, capsys.readouterr().out + " (run `uv run lorasec render` and commit the result)"

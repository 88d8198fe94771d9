"""The documentation: a site that builds with warnings as errors, references generated from the code (every
config field has a meaning; `lorasec render --check` in test_render.py keeps the pages equal to their rendering)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from lorasec.config import from_dict, reference, schema

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("kind", list(reference.CONFIGS))
def test_every_field_has_a_meaning_and_show_reads_back(kind):
    cls = reference.CONFIGS[kind]
    fields = reference.describe(cls())
    assert fields and not [f.name for f in fields if not f.meaning], "write a docstring under each such field"
    assert from_dict(cls, tomllib.loads(reference.commented_toml(cls()))) == cls()


def test_every_config_class_of_the_schema_is_documented():
    from lorasec.sweep_spec import SweepFile

    classes = [c for c in vars(schema).values() if isinstance(c, type) and dataclasses.is_dataclass(c)] + [SweepFile]
    undocumented = [f"{c.__name__}.{name}" for c in classes for name, text in reference.meanings(c).items()
                    if not text]
    assert len(classes) >= 10 and undocumented == []


def test_a_changed_value_is_shown_with_its_meaning():
    cfg = schema.RunConfig(train=schema.TrainConfig(lr=3e-5))
    text = reference.commented_toml(cfg)
    assert "# AdamW's peak learning rate. > 0.\nlr = 3e-05\n" in text and "\n[train]\n" in text
    assert reference.markdown_reference().count("| `train.lr` | `float` | `0.001` |") == 3  # run, study, purify


def test_the_site_builds_with_warnings_as_errors(tmp_path):
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    api = (tmp_path / "site" / "reference" / "api" / "index.html").read_text()
    assert "structured_lora_ntk" in api and "train_run" in api
    assert "train.steps_per_dispatch" in (tmp_path / "site" / "reference" / "config" / "index.html").read_text()

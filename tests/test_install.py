"""lorasec as a user installs it: pip's path without TensorFlow (requirements-pip.txt, the notebooks' install cell),
and the wheel installed into a fresh environment outside the checkout, running a claim and a figure there."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
TENSORFLOW = re.compile(r"^(tensorflow|tf2jax|tf-keras|keras|tensorboard)([-_].*)?$", re.IGNORECASE)


def _requirement_name(line: str) -> str:
    return re.split(r"[<>=!~;\[ ]", line, maxsplit=1)[0].lower().replace("_", "-")


def _pip_requirements() -> list[str]:
    lines = (ROOT / "requirements-pip.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def _neural_tangents_pin() -> str:
    (pin,) = [d for d in PYPROJECT["project"]["dependencies"] if _requirement_name(d) == "neural-tangents"]
    return pin


def test_pip_requirements_are_pyprojects_less_neural_tangents():
    declared = [d for d in PYPROJECT["project"]["dependencies"] if _requirement_name(d) != "neural-tangents"]
    assert _pip_requirements() == declared, "requirements-pip.txt must list pyproject's dependencies (same ranges, " \
                                            "same order) less neural-tangents"


def test_the_notebooks_install_by_the_pip_path():
    cells = {path.name: nbformat.read(path, as_version=4).cells[1].source for path in ROOT.glob("notebooks/*.ipynb")}
    assert len(set(cells.values())) == 1, "every lesson's install cell is the same"
    cell = next(iter(cells.values()))
    assert '"requirements-pip.txt"' in cell and f'"--no-deps", "{_neural_tangents_pin()}"' in cell
    compile(cell, "install cell", "exec")


def _uv() -> str:
    found = os.environ.get("UV") or shutil.which("uv")
    if not found:
        pytest.fail("uv not found (neither $UV, which `uv run` sets, nor uv on PATH); run the tests with `uv run "
                    "pytest`")
    return found


def _run(command: list[str], cwd: Path, env: dict | None = None, timeout: int = 900) -> str:
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(map(str, command))} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.mark.slow
def test_pip_resolves_the_requirements_without_tensorflow(tmp_path):
    """pip's own resolver (a dry run against the index) on README's pip path installs no TensorFlow; the same
    resolver on the package alone would (neural-tangents declares it)."""
    _run([sys.executable, "-m", "venv", str(tmp_path / "venv")], tmp_path)
    pip = [str(tmp_path / "venv" / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check",
           "--dry-run", "--quiet"]
    _run([*pip, "--report", str(tmp_path / "ours.json"), "-r", str(ROOT / "requirements-pip.txt")], tmp_path)
    ours = {i["metadata"]["name"] for i in json.loads((tmp_path / "ours.json").read_text())["install"]}
    assert {"jax", "flax", "optax"} <= ours and not any(TENSORFLOW.match(n) for n in ours), sorted(ours)
    _run([*pip, "--no-deps", "--report", str(tmp_path / "nt.json"), _neural_tangents_pin()], tmp_path)
    (nt,) = json.loads((tmp_path / "nt.json").read_text())["install"]
    assert nt["metadata"]["name"] == "neural-tangents"  # and with --no-deps nothing else
    _run([*pip, "--report", str(tmp_path / "plain.json"), _neural_tangents_pin()], tmp_path)
    plain = {i["metadata"]["name"] for i in json.loads((tmp_path / "plain.json").read_text())["install"]}
    assert any(TENSORFLOW.match(n) for n in plain), "the control: neural-tangents' own requirements pull TensorFlow"


@pytest.mark.slow
def test_the_wheel_works_outside_the_checkout(tmp_path):
    """Build the wheel, install it into a fresh environment (the locked versions, neural-tangents without its
    requirements), and from a directory outside the checkout run a claim and one figure's quick reproduction."""
    uv = _uv()
    _run([uv, "build", "--wheel", "--out-dir", str(tmp_path / "dist"), str(ROOT)], ROOT)
    (wheel,) = (tmp_path / "dist").glob("lorasec-*.whl")
    pins = _run([uv, "export", "--frozen", "--no-hashes", "--no-emit-project", "--no-default-groups",
                 "--format", "requirements-txt"], ROOT)
    kept = [line for line in pins.splitlines() if line and not line.startswith(("#", " "))
            and _requirement_name(line) != "neural-tangents"]
    (tmp_path / "pins.txt").write_text("\n".join(kept) + "\n")
    venv = tmp_path / "venv"
    _run([uv, "venv", "--python", sys.executable, str(venv)], tmp_path)
    python = str(venv / "bin" / "python")
    _run([uv, "pip", "install", "--python", python, "-r", str(tmp_path / "pins.txt")], tmp_path)
    _run([uv, "pip", "install", "--python", python, "--no-deps", _neural_tangents_pin(), str(wheel)], tmp_path)
    installed = _run([python, "-c", "import importlib.metadata as m; print('\\n'.join(d.metadata['Name'] for d in "
                                    "m.distributions()))"], tmp_path).split()
    assert not any(TENSORFLOW.match(n) for n in installed), sorted(installed)
    away = tmp_path / "elsewhere"
    away.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["LORASEC_CACHE"] = str(tmp_path / "cache")
    lorasec = str(venv / "bin" / "lorasec")
    assert PYPROJECT["project"]["version"] in _run([lorasec, "--version"], away, env)
    out = _run([lorasec, "verify", "lemma_3_1"], away, env)
    assert "lemma_3_1" in out and "0 inconsistent" in out
    _run([lorasec, "reproduce", "paper1", "--quick", "--figure", "fig4_rank", "--no-progress", "--out", "r"], away,
         env)
    report = away / "r" / "report-fig4_rank"
    assert (report / "fig4_rank.png").is_file() and (report / "fig4_rank.csv").is_file()
    summary = json.loads((report / "summary.json").read_text())
    assert [f["name"] for f in summary["figures"]] == ["fig4_rank"] and summary["figures"][0]["runs"] > 0
    assert not (away / "experiments").exists()  # the specs came from the installed package


def test_the_version_is_pyprojects():
    import lorasec

    assert lorasec.__version__ == PYPROJECT["project"]["version"]

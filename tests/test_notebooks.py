"""The teaching notebooks (notebooks/*.ipynb): stored without outputs, written against the public facade only, and
executed top to bottom with every exercise's checker shown to accept the right answer and reject a wrong one."""

from __future__ import annotations

import ast
import re
import time
import tomllib
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

import lorasec

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
SOLUTIONS = tomllib.loads((NOTEBOOK_DIR / "solutions.toml").read_text())
ANSWER = re.compile(r"^answer_(\d+) = None\b")
PRIVATE_IMPORT = re.compile(r"\bfrom\s+lorasec\.|\bimport\s+lorasec\.|\blorasec\.[a-z_]+\.")


def _read(path: Path):
    return nbformat.read(path, as_version=4)


def exercises(nb) -> list[tuple[str, str]]:
    """(number, checking cell's source) of each exercise: an ``answer_K = None`` cell, then the cell checking it."""
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    found = []
    for cell, following in zip(code, code[1:]):
        match = ANSWER.match(cell.source)
        if match:
            assert f"answer_{match.group(1)}" in following.source and "check_answer" in following.source
            body = ast.parse(following.source).body
            assert len(body) == 1 and isinstance(body[0], ast.Expr), "a checking cell is one check_answer call"
            found.append((match.group(1), following.source))
    return found


def test_there_are_five_lessons():
    assert [p.stem for p in NOTEBOOKS] == sorted(SOLUTIONS) and len(NOTEBOOKS) == 5


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stored_clean_and_uses_the_facade_only(path):
    nb = _read(path)
    nbformat.validate(nb)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert all(not cell.outputs and cell.execution_count is None for cell in code), "stored with outputs"
    assert 'find_spec("lorasec")' in code[0].source, "the first code cell installs lorasec when it is missing"
    for cell in code:
        assert not PRIVATE_IMPORT.search(cell.source), cell.source
        for name in re.findall(r"\blorasec\.([A-Za-z_]\w*)", cell.source):
            assert name in lorasec.__all__ or name == "__version__", f"lorasec.{name} is not in the facade"
    assert 2 <= len(exercises(nb)) <= 3
    assert {number for number, _ in exercises(nb)} == {k.removeprefix("answer_") for k in SOLUTIONS[path.stem]}


def _answer_checks(nb, solutions: dict) -> str:
    """A cell that runs each checker with the right answer (must pass) and with a wrong one (must raise)."""
    lines = []
    for number, check in exercises(nb):
        answer = solutions[f"answer_{number}"]
        lines += [f"answer_{number} = {answer['right']}",
                  f"accepted = ({check.strip()})",
                  f"assert accepted is True, 'exercise {number}: the right answer was not accepted'",
                  f"answer_{number} = {answer['wrong']}",
                  "try:", *(f"    {line}" for line in check.strip().splitlines()),
                  "except AssertionError:", "    pass", "else:",
                  f"    raise RuntimeError('exercise {number}: a wrong answer was accepted')"]
    return "\n".join(lines)


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_and_its_exercises_check(path):
    nb = _read(path)
    nb.cells.append(nbformat.v4.new_code_cell(_answer_checks(nb, SOLUTIONS[path.stem])))
    start = time.perf_counter()
    client = NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK_DIR)}})
    client.execute()
    print(f"{path.name}: {time.perf_counter() - start:.0f} s")
    figures = sum("image/png" in output.get("data", {}) for cell in nb.cells if cell.cell_type == "code"
                  for output in cell.outputs)
    assert figures >= 2, "a lesson's point is its figures"


def test_drawing_a_figure_file_leaves_the_notebook_backend_alone(tmp_path):
    """A pipeline that draws (run_purify, run_sweep) once switched matplotlib to Agg, silencing inline plots."""
    import matplotlib
    import numpy as np

    from lorasec.pipelines import figures

    backend = matplotlib.get_backend()
    matplotlib.use("svg")  # stands in for the inline backend: anything but Agg
    try:
        figures.ntk_spectrum_figure({"full": np.array([3.0, 1.0, 0.1])}, tmp_path / "spectrum.png")
        assert matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use(backend)
    assert (tmp_path / "spectrum.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

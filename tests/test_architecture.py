"""The layers import one way, checked by import-linter's contracts in pyproject.toml; docs/architecture.md names
every subpackage and module."""

from __future__ import annotations

import os
import pkgutil
from pathlib import Path

import lorasec

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_are_kept():
    from importlinter import cli

    previous = os.getcwd()
    os.chdir(ROOT)
    try:
        assert cli.lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True) == 0
    finally:
        os.chdir(previous)


def test_no_project_code_is_loaded_by_file_path():
    """theory/ is a package imported by name (the contracts above see it); nothing loads project code by path."""
    for folder in ("lorasec", "theory"):
        for path in (ROOT / folder).rglob("*.py"):
            text = path.read_text()
            for needle in ("spec_from_file_location", "exec_module", "SourceFileLoader", "runpy."):
                assert needle not in text, f"{path.relative_to(ROOT)} loads code by path ({needle})"


def test_the_architecture_page_names_every_layer_and_module():
    section = (ROOT / "docs" / "architecture.md").read_text()
    for package in pkgutil.iter_modules(lorasec.__path__):
        assert f"{package.name}/" in section or f"{package.name}.py" in section, package.name
        if package.ispkg:
            for module in pkgutil.iter_modules([str(ROOT / "lorasec" / package.name)]):
                assert f"{module.name}" in section, f"{package.name}.{module.name}"


def test_facade_names_resolve():
    for name in lorasec.__all__:
        assert getattr(lorasec, name) is not None, name

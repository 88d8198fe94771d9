"""``lorasec verify``: discover the claim modules of the top-level ``theory/`` folder and run them.

``theory/`` is not an installed package: it is found by path, next to the ``lorasec`` package of a checkout (or
at ``$LORASEC_THEORY``), and each module is loaded under the private name ``lorasec_theory.<module>``, where its
:func:`lorasec.core.claims.claim` decorators register its claims.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import types
from pathlib import Path

from lorasec.config import ConfigError
from lorasec.core import claims

PACKAGE = "lorasec_theory"


def theory_dir() -> Path:
    configured = os.environ.get("LORASEC_THEORY")
    path = Path(configured) if configured else Path(__file__).resolve().parents[2] / "theory"
    if not path.is_dir():
        raise ConfigError(f"theory folder {str(path)!r} not found: run from a lorasec checkout or set "
                          f"LORASEC_THEORY to its theory/ folder")
    return path


def load_module(name: str) -> types.ModuleType:
    """The claim module ``theory/<name>.py`` (loaded once)."""
    qualified = f"{PACKAGE}.{name}"
    if qualified in sys.modules:
        return sys.modules[qualified]
    folder = theory_dir()
    if PACKAGE not in sys.modules:
        package = types.ModuleType(PACKAGE)
        package.__path__ = [str(folder)]
        sys.modules[PACKAGE] = package
    path = folder / f"{name}.py"
    if not path.is_file():
        raise ConfigError(f"no claim module {str(path)!r}")
    spec = importlib.util.spec_from_file_location(qualified, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[qualified] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[qualified]
        raise
    return module


def discover() -> dict[str, claims.Claim]:
    """Load every module of ``theory/`` (each registers its claims); the registry."""
    for path in sorted(theory_dir().glob("*.py")):
        if path.stem != "__init__":
            load_module(path.stem)
    return claims.REGISTRY


def run(names=(), purify_dir: str | Path = "runs/verify/purify") -> list[claims.Check]:
    """Run the named claims (all when empty); paper 2's trained-model claims read ``purify_dir``."""
    registry = discover()
    unknown = [n for n in names if n not in registry]
    if unknown:
        raise ConfigError(f"verify {unknown[0]!r}: no such claim; registered: {', '.join(registry)}")
    checks = []
    for name in list(names) or list(registry):
        item = registry[name]
        checks += item.run(Path(purify_dir)) if item.trains else item.run()
    return checks

"""Paper claims as code: each module of this package registers its claims in :mod:`lorasec.core.claims`, and
``lorasec verify`` (:func:`run`) runs them.

Paper 1 (Liang et al., ICML 2025): ``lemma_3_1`` (kernel order and its finite-n edge), ``corollary_3_5`` (the
LoRA kernel law at init and its fluctuation with r), ``theorem_2_2`` (Fisher–NTK duality), ``theorem_3_6``
(information bits and Rényi entropies), ``ttr_direction`` (the TTR metric over poisoned pairs), ``minilm_kernels``
(the per-layer kernel claims on MiniLM). Paper 2 (Luong & Chen 2026): ``proposition_4_2`` (the critical scaling
threshold and its counter-example), ``forgetting`` (LoRA's failure to forget, on trained models).

The package sits above :mod:`lorasec.pipelines` and below :mod:`lorasec.cli` in the import layers (pyproject's
contracts): claim modules use the whole engine, and nothing in the engine imports them.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

from lorasec.core import claims
from lorasec.core.errors import ConfigError


def discover() -> dict[str, claims.Claim]:
    """Import every claim module of this package (each registers its claims); the registry, ordered by module
    name and then as each module registers them, whichever module was imported first."""
    modules = [f"{__name__}.{module.name}" for module in pkgutil.iter_modules(__path__)]
    for module in modules:
        importlib.import_module(module)
    rank = {module: i for i, module in enumerate(modules)}
    order = sorted(claims.REGISTRY, key=lambda name: rank.get(claims.REGISTRY[name].run.__module__, len(rank)))
    return {name: claims.REGISTRY[name] for name in order}


def registry_markdown(root: Path) -> str:
    """The claims registry as a Markdown table (``docs/theory.md``): each claim's name, module, paper and
    statement, with the kinds and verdicts of its checks in the committed ``figures/verify.json`` (``lorasec
    verify --json figures/verify.json`` writes it)."""
    import json

    from lorasec.core import tables

    path = Path(root) / "figures" / "verify.json"
    if not path.is_file():
        raise ConfigError("render: figures/verify.json is missing; run `lorasec verify --json figures/verify.json`")
    seen: dict[str, dict] = {}
    for check in json.loads(path.read_text()):
        entry = seen.setdefault(check["claim"], {"kinds": set(), "verdicts": {}})
        entry["kinds"].add(check["kind"])
        entry["verdicts"][check["verdict"]] = entry["verdicts"].get(check["verdict"], 0) + 1
    rows = []
    for name, item in discover().items():
        entry = seen.get(name, {"kinds": set(), "verdicts": {}})
        verdicts = ", ".join(f"{n} {v}" for v, n in sorted(entry["verdicts"].items(), key=lambda kv: -kv[1]))
        rows.append((f"`{name}`", f"`theory/{item.run.__module__.rpartition('.')[2]}.py`", item.paper,
                     item.statement.replace("|", "\\|"), ", ".join(sorted(entry["kinds"])) or "not run",
                     verdicts or "not run"))
    return "\n".join(tables.markdown(("claim", "module", "paper", "statement", "kinds", "verdicts (checks)"), rows))


def reads_purify(item: claims.Claim) -> bool:
    """Whether a claim reads the purify pipeline that ``verify --set`` configures (paper 2's trained-model claims);
    the prediction claims train their own sweep beside it."""
    return item.trains and item.run.__module__ == f"{__name__}.forgetting"


def verify(names=(), purify_dir: str | Path = "runs/verify/purify", progress: bool = False,
           settings: tuple[str, ...] | list[str] = ()) -> list[claims.Check]:
    """Run the named claims (all when empty); paper 2's trained-model claims read ``purify_dir``.

    Args:
        names: claim names (``lorasec verify --list`` shows them).
        purify_dir: a ``lorasec purify`` output, made there with the default synthetic setting when absent.
        progress: show progress bars while that pipeline trains.
        settings: ``KEY=VALUE`` overrides of that pipeline's config (:func:`theory.forgetting.prepare`).
    Returns:
        Every check of every claim run, claims and identities alike (:class:`lorasec.core.claims.Check`).
    """
    registry = discover()
    unknown = [n for n in names if n not in registry]
    if unknown:
        raise ConfigError(f"verify {unknown[0]!r}: no such claim; registered: {', '.join(registry)}")
    checks = []
    if (progress or settings) and any(reads_purify(registry[name]) for name in list(names) or list(registry)):
        from theory.forgetting import prepare

        prepare(Path(purify_dir), progress=progress, settings=settings)
    for name in list(names) or list(registry):
        item = registry[name]
        checks += item.run(Path(purify_dir)) if item.trains else item.run()
    return checks

"""Import neural-tangents 0.6.5 (its last release, Dec 2023) on current JAX without TensorFlow.

neural-tangents reads names that JAX has since moved or removed. Before the import this module puts them back
where neural-tangents looks, taking each from its new home; nothing of JAX's own behaviour is changed.

What is restored (see shared DEPENDENCIES.md for the survey):

- ``jax.core.{Jaxpr, JaxprEqn, Literal, Var, Primitive}`` from ``jax.extend.core``;
- ``jax.core.{get_aval, lattice_join, DShapedArray}`` (only read on implementation 3's debug path);
- the ``jax.util`` module (``safe_map``, ``safe_zip``);
- ``jax.interpreters.ad.{zeros_like_p, config, source_info_util, reducing_transposes, backward_pass}``.

After the import, ``neural_tangents.predict`` (only that module) reads two names through stand-ins:

- ``jax.core.eval_context`` as ``jax.ensure_compile_time_eval``: old JAX evaluated a block eagerly with it; current
  JAX lets a jitted caller's tracer escape through it (``gradient_descent_mse`` under ``jax.jit`` raised
  ``UnexpectedTracerError``);
- ``scipy.linalg.eigvalsh(eigvals=...)`` as ``subset_by_index=...``: scipy 1.14 removed the keyword
  (``max_learning_rate`` raised ``TypeError``).

Tested on jax 0.10.x (the lock). What works afterwards, checked in ``tests/test_nt_compat.py``:
empirical NTK implementations 1 (Jacobian contraction) and 2 (NTK-vector products), ``stax``, and
``predict.gradient_descent_mse`` (also under ``jax.jit``) and ``predict.max_learning_rate``.
Implementation 3 (structured derivatives) needs JAX's old internal ``ad.linearize`` signature and is not
supported; ``implementation=AUTO`` reads the old ``cost_analysis()`` list and is not supported either.
``neural_tangents.experimental`` (the only TensorFlow user) is never imported.
"""

from __future__ import annotations

import importlib
import sys
import types

SUPPORTED_IMPLEMENTATIONS = (1, 2)


def _restore_names() -> None:
    import jax
    import jax.core as core
    import jax.extend.core as ext_core
    import jax.interpreters.ad as ad
    from jax._src import core as src_core
    from jax._src import source_info_util
    from jax._src import util as src_util
    from jax._src.interpreters import ad as src_ad

    for name in ("Jaxpr", "JaxprEqn", "Literal", "Var", "Primitive"):
        if not hasattr(core, name):
            setattr(core, name, getattr(ext_core, name))
    if not hasattr(core, "get_aval"):
        core.get_aval = src_core.get_aval if hasattr(src_core, "get_aval") else jax.typeof
    if not hasattr(core, "lattice_join"):
        core.lattice_join = lambda a, b: a if a == b else a.join(b) if hasattr(a, "join") else a
    if not hasattr(core, "DShapedArray"):
        core.DShapedArray = type("DShapedArray", (), {})  # never instantiated: dynamic shapes are gone

    if "jax.util" not in sys.modules:
        try:
            importlib.import_module("jax.util")
        except ImportError:
            util = types.ModuleType("jax.util")
            util.safe_map = src_util.safe_map
            util.safe_zip = src_util.safe_zip
            sys.modules["jax.util"] = util
            jax.util = util

    if not hasattr(ad, "zeros_like_p"):
        # Only used as a dictionary key for rules of a primitive JAX no longer emits.
        ad.zeros_like_p = ext_core.Primitive("zeros_like")
    for name, value in (
        ("config", jax.config),
        ("source_info_util", source_info_util),
        ("reducing_transposes", getattr(src_ad, "reducing_transposes", {})),
        ("backward_pass", getattr(src_ad, "backward_pass", None)),
    ):
        if not hasattr(ad, name) and value is not None:
            setattr(ad, name, value)


def _block_experimental() -> None:
    """neural_tangents/__init__ imports ``experimental`` (TensorFlow): stand a module in its place that says so."""

    def _refuse(name):
        raise AttributeError(
            f"neural_tangents.experimental.{name} needs TensorFlow, which lorasec never installs"
        )

    blocked = types.ModuleType("neural_tangents.experimental")
    blocked.__getattr__ = _refuse
    sys.modules.setdefault("neural_tangents.experimental", blocked)


class _StandIn(types.ModuleType):
    """A module read as ``base``, but for the names given."""

    def __init__(self, base, **names):
        super().__init__(base.__name__)
        self._base = base
        self.__dict__.update(names)

    def __getattr__(self, name):
        return getattr(self._base, name)


def _eigvalsh(a, *args, eigvals=None, **kwargs):
    import scipy.linalg

    if eigvals is not None:
        kwargs["subset_by_index"] = eigvals
    return scipy.linalg.eigvalsh(a, *args, **kwargs)


def _repair_predict() -> None:
    """The module docstring's two stand-ins, seen by ``neural_tangents._src.predict`` alone."""
    import jax
    import scipy
    import scipy.linalg
    from neural_tangents._src import predict

    predict.jax = _StandIn(jax, core=_StandIn(jax.core, eval_context=jax.ensure_compile_time_eval))
    predict.sp = _StandIn(scipy, linalg=_StandIn(scipy.linalg, eigvalsh=_eigvalsh))


def import_neural_tangents():
    """Return the ``neural_tangents`` module, importable on current JAX (idempotent)."""
    if "neural_tangents" in sys.modules:
        return sys.modules["neural_tangents"]
    _restore_names()
    _block_experimental()
    try:
        module = importlib.import_module("neural_tangents")
        _repair_predict()
        return module
    except ImportError as err:  # pragma: no cover - depends on a JAX outside the tested range
        import jax

        raise ImportError(
            f"neural-tangents 0.6.5 did not import on jax {jax.__version__} even with lorasec's "
            f"compatibility names ({err}); lorasec's tested range is the one in pyproject.toml"
        ) from err

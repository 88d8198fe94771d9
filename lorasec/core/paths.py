"""Dotted names of NNX paths: ``("encoder", "layers", 0, "attention", "query")`` -> ``"encoder.layers.0.attention.query"``,
the names lorasec's configs, filters and reports use for modules and variables."""

from __future__ import annotations


def dotted(path) -> str:
    """The dotted name of an NNX module or variable path (a tuple of attribute names and list indices)."""
    return ".".join(str(p) for p in path)

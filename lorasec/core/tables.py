"""Markdown tables for reports: one helper, so every report lays its tables out alike."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def markdown(header: Sequence[str], rows: Iterable[Sequence]) -> list[str]:
    """The lines of a Markdown table: ``header``, its rule, then one line per row (cells formatted with ``str``;
    a ``|`` inside a cell is escaped)."""

    def line(cells: Sequence) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return [line(header), "|" + "---|" * len(header), *(line(row) for row in rows)]

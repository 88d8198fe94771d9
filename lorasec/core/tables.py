"""Tables for reports and results: Markdown for reading, CSV for analysis; one helper each, so every report lays
its tables out alike."""

from __future__ import annotations

import csv as _csv
import io
from collections.abc import Iterable, Sequence


def markdown(header: Sequence[str], rows: Iterable[Sequence]) -> list[str]:
    """The lines of a Markdown table: ``header``, its rule, then one line per row (cells formatted with ``str``;
    a ``|`` inside a cell is escaped)."""

    def line(cells: Sequence) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return [line(header), "|" + "---|" * len(header), *(line(row) for row in rows)]


def csv(columns: Sequence[str], rows: Iterable[dict]) -> str:
    """CSV text with a header of ``columns`` and one line per row (missing and None values empty, other keys of the
    rows left out)."""
    buffer = io.StringIO()
    writer = _csv.DictWriter(buffer, list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in columns})
    return buffer.getvalue()

"""The one plain-text table formatter: CLI output, layer tables and load-test reports."""

from __future__ import annotations

from collections.abc import Sequence


def table_lines(rows: Sequence[Sequence[str]], align: str = "left") -> list[str]:
    """Columns padded to their widest cell, two spaces apart; `align` "left" or "right"."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    pad = str.ljust if align == "left" else str.rjust
    return [
        "  ".join(pad(cell, w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


def format_table(rows: Sequence[Sequence[str]], align: str = "left") -> str:
    return "\n".join(table_lines(rows, align))

"""Markdown pieces of the reports: a table cell with its CI, a table.

    format_cell(row)                       # '0.500 [0.300, 0.700]', 'undefined (reason)' or '—'
    md_table(["scope", "rate"], [["broad", "0.1"]], "lr")
"""

from __future__ import annotations

import math


def md_cell(text) -> str:
    """A table cell: pipes escaped, newlines flattened."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def format_cell(row) -> str:
    """'0.500 [0.300, 0.700]', 'undefined (reason)', or '—' when there is no row."""
    if row is None:
        return "—"
    if row["status"] != "ok":
        return f"undefined ({row['note']})"
    if not math.isfinite(row["value"]):
        return "—"
    out = f"{row['value']:.3f}"
    if math.isfinite(row["ci_low"]) and math.isfinite(row["ci_high"]):
        out += f" [{row['ci_low']:.3f}, {row['ci_high']:.3f}]"
    return out


def md_table(header: list[str], rows: list[list], align: str | None = None) -> str:
    align = align or "l" * len(header)
    sep = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(map(md_cell, header)) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(map(md_cell, r)) + " |" for r in rows]
    return "\n".join(lines)


def first_row(df, **eq):
    """The first row of `df` whose columns equal the given values, or None."""
    mask = None
    for k, v in eq.items():
        mask = (df[k] == v) if mask is None else mask & (df[k] == v)
    hit = df if mask is None else df[mask]
    return None if hit.empty else hit.iloc[0]

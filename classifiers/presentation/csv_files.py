"""Every CSV the tool writes goes through here: cells that a spreadsheet would run as a formula
are neutralised (OWASP's advice for CSV injection: a cell starting with = + - @, tab or
carriage return gets a leading apostrophe), so a file named ``=HYPERLINK(...)x.png`` stays text.
Numbers we format ourselves (a negative score) are written as they are.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Iterable, Sequence

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value: object) -> str:
    """``value`` as CSV text that a spreadsheet shows and never evaluates."""
    text = "" if value is None else str(value)
    if text.startswith(_FORMULA_START):
        try:
            float(text)  # -0.5 is a number, not a formula
            return text
        except ValueError:
            return "'" + text
    return text


def write_csv(out: str | Path, header: Sequence[str], rows: Iterable[Sequence[object]]) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow([safe_cell(h) for h in header])
        for row in rows:
            writer.writerow([safe_cell(v) for v in row])
    return out

#!/usr/bin/env python3
"""Demo agent: add up the numeric columns of every CSV file in a folder into totals.csv."""

from __future__ import annotations

import csv
import io
import re
import sys
from decimal import Decimal, InvalidOperation
from pathlib import Path

from agentkit import Agent, shown

NAME = "csv_totals"
AGENT = Agent(NAME)
OUTPUT = "totals.csv"
MAX_BYTES = 20_000_000  # enough for any spreadsheet a person keeps; read only the start of more
# Spreadsheet exports write "1,234.50", "$12", "12 %" or "(12.00)" for a negative amount.
DECORATION = re.compile(r"[\s,$€£¥%]")

csv.field_size_limit(1_000_000)


def number(cell: str) -> Decimal | None:
    text = DECORATION.sub("", cell)
    negative = text.startswith("(") and text.endswith(")")
    try:
        value = Decimal(text.strip("()"))
    except InvalidOperation:
        return None
    if not value.is_finite():
        return None  # "NaN" and "Infinity" parse, but are not amounts
    return -value if negative else value


def column_totals(text: str) -> list[tuple[str, Decimal, int]]:
    """(column, total, numeric cells) for each column whose non-empty cells are all numbers."""
    try:
        dialect: type[csv.Dialect] | csv.Dialect = csv.Sniffer().sniff(text[:8192], ",;\t|")
    except csv.Error:
        dialect = csv.excel
    rows = list(csv.reader(io.StringIO(text), dialect))
    if not rows:
        return []
    header, body = rows[0], rows[1:]
    totals = []
    for i, name in enumerate(header):
        cells = [row[i].strip() for row in body if i < len(row) and row[i].strip()]
        values = [number(c) for c in cells]
        if values and all(v is not None for v in values):
            totals.append((name.strip() or f"column {i + 1}", sum(values, Decimal(0)), len(values)))
    return totals


def render(results: list[tuple[str, str, Decimal, int]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["file", "column", "total", "rows"])
    for file, column, total, count in results:
        writer.writerow([file, column, format(total, "f"), count])
    return out.getvalue()


def main(argv: list[str]) -> int:
    root = Path(argv[1] if len(argv) > 1 else ".")
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() == ".csv" and p.name != OUTPUT)
    AGENT.say(f"found {len(paths)} CSV files in {shown(root.resolve())}")
    results = []
    for path in paths:
        try:
            with path.open("rb") as f:
                text = f.read(MAX_BYTES).decode("utf-8-sig", errors="replace")
            totals = column_totals(text)
        except (OSError, csv.Error) as e:
            AGENT.say(f"skipping {shown(path)}: {getattr(e, 'strerror', None) or e}")
            continue
        AGENT.say(f"{shown(path.relative_to(root))}: {len(totals)} numeric columns")
        results += [(shown(path.relative_to(root).as_posix()), *t) for t in totals]
    AGENT.write_or_print(root, OUTPUT, render(results))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

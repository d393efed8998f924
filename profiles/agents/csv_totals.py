#!/usr/bin/env python3
"""Demo agent: add up the numeric columns of every CSV file in a folder into totals.csv."""

from __future__ import annotations

import csv
import errno
import io
import os
import re
import sys
from decimal import Decimal, InvalidOperation
from pathlib import Path

NAME = "csv_totals"
OUTPUT = "totals.csv"
MAX_BYTES = 20_000_000  # enough for any spreadsheet a person keeps; read only the start of more
# Spreadsheet exports write "1,234.50", "$12", "12 %" or "(12.00)" for a negative amount.
DECORATION = re.compile(r"[\s,$€£¥%]")

csv.field_size_limit(1_000_000)


def say(text: str) -> None:
    print(f"{NAME}: {text}", flush=True)


def shown(path: Path) -> str:
    """A file name safe to print: agents see names chosen by whoever made the files."""
    # Escape control characters and undecodable bytes (which Python holds as lone surrogates).
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(path))


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


def write_or_print(root: Path, text: str) -> None:
    partial = root / f".{OUTPUT}.partial"
    try:
        # Write beside, then rename: a reader never sees half a file.
        partial.write_text(text, encoding="utf-8")
        os.replace(partial, root / OUTPUT)
    except OSError as e:
        if e.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise
        say(f"the folder is read-only here ({e.strerror}), so {OUTPUT} is printed instead:")
        sys.stdout.write(text)
        return
    say(f"wrote {OUTPUT}")


def main(argv: list[str]) -> int:
    root = Path(argv[1] if len(argv) > 1 else ".")
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() == ".csv" and p.name != OUTPUT)
    say(f"found {len(paths)} CSV files in {shown(root.resolve())}")
    results = []
    for path in paths:
        try:
            with path.open("rb") as f:
                text = f.read(MAX_BYTES).decode("utf-8-sig", errors="replace")
            totals = column_totals(text)
        except (OSError, csv.Error) as e:
            say(f"skipping {shown(path)}: {getattr(e, 'strerror', None) or e}")
            continue
        say(f"{shown(path.relative_to(root))}: {len(totals)} numeric columns")
        results += [(shown(path.relative_to(root).as_posix()), *t) for t in totals]
    write_or_print(root, render(results))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

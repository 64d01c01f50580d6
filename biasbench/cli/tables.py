"""Tables for `list` and `count`: they fit the width, never break a word or a number.

A table is aligned columns separated by two spaces, one line per row (so `grep` finds a row
whole), the same text on a terminal and in a pipe (headers bold on a terminal). A table wider
than the output becomes one record per row ("header: value" lines). Titles and notes wrap
between words. The width is `COLUMNS` when set, else the terminal's, else 80.
"""

from __future__ import annotations

import os
import shutil
import sys
import textwrap
from collections.abc import Sequence

GAP = "  "


def output_width() -> int:
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    return shutil.get_terminal_size((80, 24)).columns if sys.stdout.isatty() else 80


def wrap(text: str, width: int, first: str = "", rest: str = "  ") -> list[str]:
    return textwrap.wrap(text, width, initial_indent=first, subsequent_indent=rest, break_long_words=False,
                         break_on_hyphens=False) or [first.rstrip()]


def table_lines(headers: Sequence[str], rows: Sequence[Sequence[str]], width: int,
                left: frozenset[int] = frozenset({0}), records: bool = False) -> list[tuple[str, bool]]:
    """(line, is_header) pairs: aligned columns, or records when asked or the columns do not fit."""
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    if records or sum(widths) + len(GAP) * (len(widths) - 1) > width:
        out: list[tuple[str, bool]] = []
        for row in rows:
            out.append((row[0], True))
            for header, cell in zip(headers[1:], row[1:], strict=True):
                out += [(line, False) for line in wrap(cell, width, first=f"  {header}: ", rest="    ")]
        return out

    def line(cells: Sequence[str]) -> str:
        return GAP.join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return [(line(headers), True), (GAP.join("-" * w for w in widths), False)] + [(line(r), False) for r in rows]


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[str]], notes: Sequence[str] = (),
                left: frozenset[int] = frozenset({0}), records: bool = False) -> None:
    width = output_width()
    lines = [(t, True) for t in wrap(title, width, rest="")] if title else []
    lines += table_lines(headers, rows, width, left, records)
    lines += [(t, False) for note in notes for t in wrap(note, width)]
    if not sys.stdout.isatty():
        sys.stdout.write("".join(f"{text}\n" for text, _ in lines))
        return
    from rich.console import Console
    from rich.text import Text

    console = Console(highlight=False, soft_wrap=True)
    for text, bold in lines:
        console.print(Text(text, style="bold" if bold else ""))

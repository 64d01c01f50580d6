"""Tables and prose for a terminal, a CI log or a pipe: they fit the width, never break a word.

A table is rendered as aligned columns separated by two spaces, one line per row, so `grep`
finds a row whole. When the columns do not fit the width, the first (key) column is repeated
and the others are moved into further blocks below; a column too wide to stand beside the key
at all is shown per row as a small record (the key, then "header: value", wrapped between
words). No cell is ever cut, and no word broken.
Prose (titles, notes) is wrapped between words. On a terminal headers are bold; in a pipe the
text is the same, without escape codes. The width is `COLUMNS` when set, else the terminal's,
else 80 (the width of CI logs).
"""

from __future__ import annotations

import os
import shutil
import sys
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TextIO

GAP = "  "
Line = tuple[str, str]  # (text, rich style: "" or "bold")


def output_width(stream: TextIO | None = None) -> int:
    """`COLUMNS` when it is a positive number, else the terminal's width, else 80."""
    try:
        columns = int(os.environ.get("COLUMNS", ""))
        if columns > 0:
            return columns
    except ValueError:
        pass
    stream = stream or sys.stdout
    if is_terminal(stream):
        return shutil.get_terminal_size((80, 24)).columns
    return 80


def is_terminal(stream: TextIO | None = None) -> bool:
    stream = stream or sys.stdout
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def wrap(text: str, width: int, *, first: str = "", rest: str | None = None) -> list[str]:
    """Lines of at most `width` characters, broken only between words (a single word longer
    than the width stays whole on its own line)."""
    rest = " " * len(first) if rest is None else rest
    return textwrap.wrap(text, width, initial_indent=first, subsequent_indent=rest, break_long_words=False,
                         break_on_hyphens=False) or [first.rstrip()]


@dataclass
class TextTable:
    headers: list[str]
    rows: list[list[str]]
    title: str = ""
    caption: str = ""  # a sentence printed under the table (what the columns mean)
    left: set[int] = field(default_factory=lambda: {0})  # left-aligned columns; the rest align right
    records: bool = False  # every row as a record (the key, then "header: value" lines)


def _cell(text: str, w: int, left: bool) -> str:
    return text.ljust(w) if left else text.rjust(w)


def _blocks(widths: list[int], width: int) -> tuple[list[list[int]], list[int]]:
    """Column indices per block, each block led by the key column 0, and the columns too wide
    to stand beside the key at all (shown as records instead)."""
    blocks: list[list[int]] = []
    current, used, records = [0], widths[0], []
    for i in range(1, len(widths)):
        need = len(GAP) + widths[i]
        if widths[0] + need > width:
            records.append(i)
            continue
        if used + need > width:
            blocks.append(current)
            current, used = [0], widths[0]
        current.append(i)
        used += need
    if len(current) > 1 or not blocks:
        blocks.append(current)
    return blocks, records


def fits(table: TextTable, width: int) -> bool:
    """Whether every column stands in one block of `width` characters (no repeated key column)."""
    widths = [max([len(table.headers[i])] + [len(r[i]) for r in table.rows]) for i in range(len(table.headers))]
    return sum(widths) + len(GAP) * (len(widths) - 1) <= width


def render(table: TextTable, width: int) -> list[Line]:
    """The table as lines of at most `width` characters (except a single word wider than it)."""
    lines: list[Line] = [(t, "bold") for t in wrap(table.title, width)] if table.title else []
    cols = len(table.headers)
    widths = [max([len(table.headers[i])] + [len(r[i]) for r in table.rows]) for i in range(cols)]
    blocks, records = _blocks(widths, width)
    if table.records or (records and all(len(b) == 1 for b in blocks)):
        blocks = []  # nothing fits beside the key: every column as a record
        records = list(range(1, cols))
    for n, block in enumerate(blocks):
        if n:
            lines.append(("", ""))
        lines.append((GAP.join(_cell(table.headers[i], widths[i], i in table.left) for i in block).rstrip(),
                      "bold"))
        lines.append((GAP.join("-" * widths[i] for i in block), ""))
        for row in table.rows:
            lines.append((GAP.join(_cell(row[i], widths[i], i in table.left) for i in block).rstrip(), ""))
    if records:
        lines += ([("", "")] if blocks else []) + _records(table, records, width)
    if table.caption:
        lines += [(t, "") for t in wrap(table.caption, width)]
    return lines


def _records(table: TextTable, columns: list[int], width: int) -> list[Line]:
    """Per row: the key, then an indented "header: value" line (wrapped) per column."""
    lines: list[Line] = []
    for row in table.rows:
        lines.append((row[0], "bold"))
        for i in columns:
            lines += [(t, "") for t in wrap(row[i], width, first=f"  {table.headers[i]}: ", rest="    ")]
    return lines


def notes(texts: Sequence[str], width: int, prefix: str = "note: ") -> list[Line]:
    """Each text as `note: ...`, wrapped with a hanging indent."""
    return [(t, "") for text in texts for t in wrap(text, width, first=prefix)]


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[str]], notes: Sequence[str] = (), *,
                left: set[int] | frozenset[int] = frozenset({0}), records: bool = False,
                stream: TextIO | None = None) -> None:
    """Render one table at the output's width, with notes under it, and print it."""
    width = output_width(stream)
    table = TextTable(list(headers), [list(r) for r in rows], title=title, left=set(left), records=records)
    emit(render(table, width) + [(t, "") for text in notes for t in wrap(text, width)], stream)


def emit(lines: Sequence[Line], stream: TextIO | None = None) -> None:
    """Print lines: styled through rich on a terminal, plain text otherwise."""
    stream = stream or sys.stdout
    if not is_terminal(stream):
        stream.write("".join(f"{text}\n" for text, _ in lines))
        return
    from rich.console import Console
    from rich.text import Text

    console = Console(file=stream, highlight=False, soft_wrap=True)
    for text, style in lines:
        console.print(Text(text, style=style or ""))

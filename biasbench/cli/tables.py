"""Tables in the terminal: a rich table on a terminal, plain aligned lines in a pipe.

Plain lines (one row per line, columns separated by two spaces, no borders) stay grep-able in
CI logs; both forms keep every cell on one line, so keep headers short enough for 80 columns.
"""

from __future__ import annotations

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from biasbench.runlog import say


def print_table(console: Console, title: str, headers: list[str], rows: list[list[str]]) -> None:
    """Columns right-aligned except the first; cells never wrap."""
    if console.is_terminal:
        table = Table(title=escape(title), box=box.SIMPLE_HEAD, pad_edge=False)
        for i, h in enumerate(headers):
            table.add_column(escape(h), justify="left" if i == 0 else "right", no_wrap=True)
        for row in rows:
            table.add_row(*(escape(c) for c in row))
        console.print(table)
        return
    widths = [max(len(x) for x in col) for col in zip(headers, *rows)]
    say(console, title)
    for line in (headers, *rows):
        cells = [line[0].ljust(widths[0]), *(x.rjust(w) for x, w in zip(line[1:], widths[1:]))]
        console.print("  ".join(cells).rstrip(), highlight=False, markup=False, overflow="ignore", crop=False,
                      soft_wrap=True)

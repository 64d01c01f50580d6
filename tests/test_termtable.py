"""biasbench.termtable: tables that fit a width without cutting a cell, in a terminal or a pipe."""

from __future__ import annotations

import io

import pytest

from biasbench.termtable import TextTable, emit, output_width, render, wrap

ROWS = [["quickstart_smoke[optim.lr=0.05]", "3", "98.42% ± 0.09%", "35,674", "inconclusive: needs ~13 replicates"],
        ["dac", "3", "98.14% ± 0.09%", "39,994", "better"]]
HEADERS = ["group", "runs", "test_acc ± SE", "params", "verdict"]


def texts(lines: list[tuple[str, str]]) -> list[str]:
    return [t for t, _ in lines]


@pytest.mark.parametrize("width,blocks", [(200, 1), (80, 2), (60, 2), (50, 3)])
def test_columns_move_to_blocks_and_no_cell_is_cut(width: int, blocks: int) -> None:
    lines = texts(render(TextTable(HEADERS, ROWS, title="a title that is long enough to be wrapped " * 2), width))
    assert all(len(line) <= width for line in lines)
    assert sum(line.startswith("group") for line in lines) == blocks
    for row in ROWS:
        for cell in row[1:4]:  # every cell whole, on a line that starts with its row's key
            assert any(line.startswith(row[0]) and cell in line for line in lines), (cell, width)
    if width < 67:  # key + verdict do not fit side by side: the verdict is a record, wrapped between words
        assert "  verdict: better" in lines
        assert " ".join(" ".join(lines).split()).count("verdict: inconclusive: needs ~13 replicates") == 1
    else:
        assert any(line.startswith(ROWS[0][0]) and line.endswith(ROWS[0][4]) for line in lines)


def test_every_column_a_record_when_nothing_fits_beside_the_key() -> None:
    lines = texts(render(TextTable(HEADERS, ROWS), 32))
    assert "quickstart_smoke[optim.lr=0.05]" in lines and "  params: 35,674" in lines
    assert "  verdict: inconclusive: needs" in lines and "    ~13 replicates" in lines


def test_wrap_breaks_only_between_words() -> None:
    text = " ".join(f"word{i:03d}" for i in range(40)) + " /a/very/long/path/that/is/one/word"
    lines = wrap(text, 30, first="note: ")
    assert " ".join(" ".join(lines).split()) == "note: " + text
    assert all(len(line) <= 30 for line in lines if " " in line.strip())


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bold_headers_on_a_terminal_plain_text_in_a_pipe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)
    lines = render(TextTable(HEADERS, ROWS), 200)
    pipe, tty = io.StringIO(), Tty()
    emit(lines, pipe)
    emit(lines, tty)
    assert "\x1b[" not in pipe.getvalue() and pipe.getvalue().splitlines() == texts(lines)
    assert "\x1b[1m" in tty.getvalue()
    assert output_width(pipe) == 80  # a pipe or CI log without COLUMNS: 80 columns
    monkeypatch.setenv("COLUMNS", "123")
    assert output_width(pipe) == 123

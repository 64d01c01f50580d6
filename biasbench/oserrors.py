"""Turning an operating-system error on writing into one `error:` line (exit 2).

A read-only folder, a full disk or a path whose parent is a file must not end `compare --json`
or `report --out` with a traceback: the user gets the path and the cause, and since every write
goes through `biasbench.fsutil`'s temporary-file-then-rename, nothing written before is lost.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from biasbench.errors import UserError


@contextmanager
def writing(path: Path, fix: str) -> Iterator[None]:
    """Run a write of `path`; an `OSError` becomes `UserError` naming `path`, the cause and `fix`."""
    try:
        yield
    except OSError as e:
        cause = e.strerror or str(e) or type(e).__name__
        raise UserError(f"cannot write `{path}`: {cause}; {fix}") from None

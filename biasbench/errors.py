"""The one exception type that reaches the user as a single line.

Anything raised as `UserError` is printed as `error: <message>` with exit code 2 and no
traceback. Messages say what is wrong *and* how to fix it.
"""

from __future__ import annotations

import difflib
import sys
from collections.abc import Iterable


def rebuild_error(cls: type[BaseException], args: tuple, state: dict) -> BaseException:
    """An exception as it was pickled, rebuilt without calling `cls.__init__`, whose parameters
    need not be its `args` (WriteError takes a path and a reason, its args hold the message)."""
    exc = cls.__new__(cls, *args)
    exc.args = args
    exc.__dict__.update(state)
    return exc


class UserError(Exception):
    """Bad input from the user: a recipe, a path, a name. Printed as one line, exit code 2.

    Every subclass survives pickling (a sweep worker sends its failure to the parent process)."""

    def __reduce__(self):
        return rebuild_error, (type(self), self.args, dict(self.__dict__))


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """' (did you mean `x`?)' for the closest choice, or '' when nothing is close."""
    close = difflib.get_close_matches(str(name), list(choices), n=1, cutoff=0.6)
    return f" (did you mean `{close[0]}`?)" if close else ""


def warn(text: str) -> None:
    """One warning line on stderr (also under --quiet: what it says is worth knowing)."""
    print(f"warning: {' '.join(text.split())}", file=sys.stderr, flush=True)

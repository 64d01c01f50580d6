"""The one exception type that reaches the user as a single line.

Anything raised as `UserError` is printed as `error: <message>` with exit code 2 and no
traceback. Messages say what is wrong *and* how to fix it.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """Bad input from the user: a recipe, a path, a name. Printed as one line, exit code 2."""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """' (did you mean `x`?)' for the closest choice, or '' when nothing is close."""
    close = difflib.get_close_matches(str(name), list(choices), n=1, cutoff=0.6)
    return f" (did you mean `{close[0]}`?)" if close else ""

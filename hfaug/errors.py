"""The one exception users see: a problem with their input, reported in one line with exit code 2."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class HfaugError(Exception):
    """A user error: a bad recipe, bad input data, an unknown language, a missing column.

    The CLI prints ``str(error)`` on one line without a traceback and exits with code 2.
    The message should say what is wrong, where, and how to fix it.
    """

    exit_code = 2


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest choice, or the list of valid ones."""
    choices = sorted(set(choices))
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.5)
    if close:
        return f" (did you mean '{close[0]}'?)"
    return f" (valid: {', '.join(choices)})" if choices else ""


class HubError(HfaugError):
    """The Hub (or the network to it) failed after retries: not the recipe's fault, so its own exit code.

    The message names what was done and what was not, and the command that finishes the work.
    """

    exit_code = 3

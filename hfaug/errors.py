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


def storage_problem(exc: BaseException, where: object = None) -> str | None:
    """One line for a storage failure anywhere in ``exc``'s chain (a full disk, a folder that may
    not be written), or None when it is something else. ``where`` (the run directory) stands in
    for the path when the error does not name one (pyarrow, SQLite and torch often do not)."""
    import errno

    node: BaseException | None = exc
    seen = set()
    while node is not None and id(node) not in seen:
        seen.add(id(node))
        code = getattr(node, "errno", None)
        text = str(node)
        path = getattr(node, "filename", None) or where or "the output folder"
        if code == errno.ENOSPC or "No space left on device" in text or "database or disk is full" in text:
            return (f"no space left on {path}; finished stages and cached work are kept, free some space "
                    "and rerun the same command to resume")
        if code in (errno.EACCES, errno.EPERM) and isinstance(node, OSError):
            if where is not None and not _on_the_way(path, where):  # a file read elsewhere, not the output
                return f"cannot access {path}: permission denied; check its permissions"
            return (f"cannot write {path}: permission denied; choose a writable folder with --output-dir "
                    "(recipe: output_dir)")
        if code == errno.EROFS:
            return (f"cannot write {path}: read-only file system; choose a writable folder with --output-dir "
                    "(recipe: output_dir)")
        node = node.__cause__ or node.__context__
    return None


def _on_the_way(path: object, root: object) -> bool:
    """``path`` is the run directory, a folder above it, or inside it."""
    from pathlib import Path

    path, root = Path(str(path)).absolute(), Path(str(root)).absolute()
    return path == root or path in root.parents or root in path.parents

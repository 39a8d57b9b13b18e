"""Files and folders that appear whole or not at all.

Every cache entry, manifest, ledger and folder written in place goes through here: the content
is written under a temporary name beside the target (unique per process and call, so processes
sharing a run directory, such as the ranks of ``accelerate launch``, never write into each
other's), then renamed over it; a failure removes the temporary file or folder. A reader, or a
rerun after a crash, sees the old version or the new one, never half a file.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["atomic_folder", "atomic_path", "replace_folder", "save_npy", "temp_path", "write_bytes", "write_json",
           "write_text"]


def temp_path(path: str | Path, suffix: str = "") -> Path:
    """A hidden name beside ``path``, unique to this process and call (``suffix`` kept last, for
    writers that insist on an extension such as ``np.save``)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}{suffix}")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextmanager
def atomic_path(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path to write ``path``'s new content to; renamed over ``path`` when the
    block ends, removed when it raises."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path, suffix)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | Path, text: str) -> None:
    """UTF-8 text; also replaces a hard link with a file of its own (the linked file is untouched)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | Path, data: Any, *, indent: int | None = 2) -> None:
    """JSON as people read it: UTF-8 as it is, anything else (paths, dates) as its string."""
    write_text(path, json.dumps(data, indent=indent, default=str, ensure_ascii=False) + "\n")


def save_npy(path: str | Path, array: Any) -> None:
    """``np.save`` through a temporary ``.npy`` name (np.save appends the extension otherwise)."""
    import numpy as np

    with atomic_path(path, suffix=".npy") as tmp:
        np.save(tmp, array)


def replace_folder(new: Path, final: Path) -> None:
    """Put folder ``new`` where ``final`` is: the old one is moved aside first and removed last,
    so ``final`` is always one whole version (for a moment, none)."""
    old = final.with_name(f".{final.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    if final.exists():
        os.replace(final, old)
    try:
        os.replace(new, final)
    except BaseException:
        if old.exists() and not final.exists():
            os.replace(old, final)  # the old version back
        raise
    _remove(old)


@contextmanager
def atomic_folder(path: str | Path, *, replace: bool = True) -> Iterator[Path]:
    """Yield an empty temporary folder to fill; it becomes ``path`` when the block ends and is
    removed when it raises. ``replace=False``: an existing ``path`` is kept and the new folder
    dropped (another process made the same folder first)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    tmp.mkdir()
    try:
        yield tmp
        if replace:
            replace_folder(tmp, path)
        else:
            try:
                os.replace(tmp, path)
            except OSError:  # ``path`` exists (and is not empty): the other process's copy stands
                _remove(tmp)
    except BaseException:
        _remove(tmp)
        raise

"""Writes that appear whole or not at all, through one helper (hfaug/atomic.py)."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path

import numpy as np
import pytest

from hfaug.atomic import atomic_folder, atomic_path, save_npy, write_json, write_text
from hfaug.runs import write_json_atomic

PACKAGE = Path(__file__).resolve().parents[1] / "hfaug"


def test_no_module_renames_files_itself():
    # every rename into place (and so every temp name) is atomic.py's: one rule for uniqueness and clean-up
    renames = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
               if p.name != "atomic.py" and (n := len(re.findall(r"\bos\.(?:replace|rename)\(", p.read_text())))}
    assert renames == {}


def test_writers_in_one_process_never_share_a_temp_file(tmp_path):
    # threads of one process (the engine's ledger, a notebook) writing the same file: a temp name
    # made from the process id alone is shared, and one writer renames the other's file away
    path = tmp_path / "counts.json"
    errors = []

    def writer(n: int) -> None:
        try:
            for i in range(60):
                write_json_atomic(path, {"writer": n, "i": i, "pad": "x" * 2000})
        except Exception as e:  # noqa: BLE001 -- collected for the assertion
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert json.loads(path.read_text())["i"] == 59
    assert [p.name for p in tmp_path.iterdir()] == ["counts.json"]


def test_a_failed_write_keeps_the_old_version_and_no_temp_file(tmp_path):
    write_json(tmp_path / "a.json", {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "a.json") as tmp:
            tmp.write_text('{"v": 2, "half')
            raise RuntimeError("killed mid-write")
    assert json.loads((tmp_path / "a.json").read_text()) == {"v": 1}

    save_npy(tmp_path / "e.npy", np.arange(3))
    with pytest.raises(Exception):  # noqa: B017 -- whatever pickle raises for a lambda
        save_npy(tmp_path / "e.npy", np.array([lambda: 0], dtype=object))
    assert np.load(tmp_path / "e.npy").tolist() == [0, 1, 2]

    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_folder(tmp_path / "folder") as tmp:
            (tmp / "new.txt").write_text("new")
            raise RuntimeError("killed mid-save")
    assert [p.name for p in (tmp_path / "folder").iterdir()] == ["old.txt"]
    with atomic_folder(tmp_path / "folder") as tmp:
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in (tmp_path / "folder").iterdir()] == ["new.txt"]
    with atomic_folder(tmp_path / "folder", replace=False) as tmp:  # another process made it first
        (tmp / "other.txt").write_text("other")
    assert [p.name for p in (tmp_path / "folder").iterdir()] == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "e.npy", "folder"]


def test_write_text_breaks_a_hard_link_instead_of_writing_through_it(tmp_path):
    (tmp_path / "previous.md").write_text("previous stage")
    (tmp_path / "linked.md").hardlink_to(tmp_path / "previous.md")
    write_text(tmp_path / "linked.md", "this stage")
    assert (tmp_path / "previous.md").read_text() == "previous stage"
    assert (tmp_path / "linked.md").read_text() == "this stage"

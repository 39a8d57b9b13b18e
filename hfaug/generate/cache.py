"""The request cache: every finished request is written the moment it finishes and committed in
small batches, so a killed run loses only the requests in flight and the last uncommitted batch
(at most ``commit_rows`` rows or ``commit_seconds`` of replies), and a rerun sends only what is
missing.

A request's key hashes (model, prompt, parameters, seed). The store is one SQLite file in the
stage's cache folder, in WAL mode with ``synchronous=NORMAL``: each commit survives the process
being killed (the point here) without an fsync per request, which would cap throughput. A commit
still costs about 0.7 ms of the event loop's time, which at hundreds of replies a second is a
large share of the request phase: writes are grouped into one transaction that is committed every
``commit_rows`` rows, when a write finds the open batch older than ``commit_seconds``, on
``flush()`` (the request loop calls it every ``commit_seconds`` and when it ends, error or not)
and on ``close()``.
Failed requests are stored as failed with the error, and are sent again by the next run.
A reply with no text is never a success: ``put`` stores it as failed, and a success row without
text (written by an older version) is not returned, so a rerun sends the request again.
``refresh=True`` reads nothing (every request is sent again) and overwrites what it finishes.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

OK = "ok"
FAILED = "failed"
#: a batch is committed at this many written rows ...
COMMIT_ROWS = 64
#: ... or when it is this old (seconds): what a kill -9 can lose, and a rerun sends again
COMMIT_SECONDS = 0.25


def request_key(model: str, messages, params: dict, seed: int) -> str:
    payload = json.dumps({"model": model, "messages": [list(m) for m in messages], "params": params, "seed": seed},
                         sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def usable(output: Any) -> bool:
    """A reply worth keeping: some text, or log-probabilities to read a label from."""
    return isinstance(output, dict) and (bool(output.get("text")) or bool(output.get("logprobs")))


class RequestCache:
    """Finished requests by key. ``get`` returns only successful ones."""

    def __init__(self, path: str | Path | None, *, readonly: bool = False, refresh: bool = False,
                 commit_rows: int = COMMIT_ROWS, commit_seconds: float = COMMIT_SECONDS):
        self.path = str(path) if path else ":memory:"
        self.refresh = refresh
        self.commit_rows = max(1, int(commit_rows))
        self.commit_seconds = commit_seconds
        self._pending = 0  # rows written in the open transaction
        self._opened = 0.0  # when it was opened (monotonic)
        self.commits = 0
        if readonly:  # an existing cache, looked at without a write (generate --dry-run)
            self._db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)
            return
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS requests (key TEXT PRIMARY KEY, status TEXT NOT NULL, "
            "output TEXT, error TEXT, attempts INTEGER, updated REAL)"
        )

    def get(self, key: str) -> dict | None:
        return self.get_many([key]).get(key)

    def get_many(self, keys: list[str]) -> dict[str, dict]:
        out: dict[str, dict] = {}
        if self.refresh:
            return out
        for i in range(0, len(keys), 500):
            chunk = keys[i:i + 500]
            marks = ",".join("?" * len(chunk))
            for key, output in self._db.execute(
                    f"SELECT key, output FROM requests WHERE status = ? AND key IN ({marks})", (OK, *chunk)):
                value = json.loads(output)
                if usable(value):
                    out[key] = value
        return out

    def put(self, key: str, output: dict[str, Any], attempts: int = 1) -> None:
        if not usable(output):
            self.put_failed(key, "empty reply: no generated text", attempts)
            return
        self._begin()
        self._db.execute("INSERT OR REPLACE INTO requests VALUES (?, ?, ?, NULL, ?, ?)",
                         (key, OK, json.dumps(output, ensure_ascii=False), attempts, time.time()))
        self._wrote()

    def put_failed(self, key: str, error: str, attempts: int) -> None:
        # a failure never overwrites a success (two runs racing on one cache)
        self._begin()
        self._db.execute(
            "INSERT INTO requests VALUES (?, ?, NULL, ?, ?, ?) ON CONFLICT(key) DO UPDATE SET "
            "error = excluded.error, attempts = excluded.attempts, updated = excluded.updated "
            "WHERE requests.status != 'ok'", (key, FAILED, error, attempts, time.time()))
        self._wrote()

    def _begin(self) -> None:
        if not self._pending:
            self._db.execute("BEGIN")
            self._opened = time.monotonic()

    def _wrote(self) -> None:
        self._pending += 1
        if self._pending >= self.commit_rows or time.monotonic() - self._opened >= self.commit_seconds:
            self.flush()

    def flush(self) -> None:
        """Commit the open batch: what is written is then safe from a kill."""
        if self._pending:
            self._db.execute("COMMIT")
            self._pending = 0
            self.commits += 1

    def discard(self, keys: list[str]) -> None:
        """Forget finished requests whose answer turned out unusable (an LLM label that names no
        label), so the next run asks again."""
        self.flush()
        self._db.executemany("DELETE FROM requests WHERE key = ?", [(k,) for k in keys])

    def counts(self) -> dict[str, int]:
        return dict(self._db.execute("SELECT status, COUNT(*) FROM requests GROUP BY status").fetchall())

    def failed(self) -> dict[str, str]:
        return dict(self._db.execute("SELECT key, error FROM requests WHERE status = ?", (FAILED,)).fetchall())

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self._db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

"""The request cache: every finished request is written the moment it finishes, so a killed run
loses only the requests in flight and a rerun sends only what is missing.

A request's key hashes (model, prompt, parameters, seed). The store is one SQLite file in the
stage's cache folder, in WAL mode with ``synchronous=NORMAL``: each commit survives the process
being killed (the point here) without an fsync per request, which would cap throughput.
Failed requests are stored as failed with the error, and are sent again by the next run.
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


def request_key(model: str, messages, params: dict, seed: int) -> str:
    payload = json.dumps({"model": model, "messages": [list(m) for m in messages], "params": params, "seed": seed},
                         sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class RequestCache:
    """Finished requests by key. ``get`` returns only successful ones."""

    def __init__(self, path: str | Path | None, *, readonly: bool = False):
        self.path = str(path) if path else ":memory:"
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
        row = self._db.execute("SELECT output FROM requests WHERE key = ? AND status = ?", (key, OK)).fetchone()
        return json.loads(row[0]) if row else None

    def get_many(self, keys: list[str]) -> dict[str, dict]:
        out: dict[str, dict] = {}
        for i in range(0, len(keys), 500):
            chunk = keys[i:i + 500]
            marks = ",".join("?" * len(chunk))
            for key, output in self._db.execute(
                    f"SELECT key, output FROM requests WHERE status = ? AND key IN ({marks})", (OK, *chunk)):
                out[key] = json.loads(output)
        return out

    def put(self, key: str, output: dict[str, Any], attempts: int = 1) -> None:
        self._db.execute("INSERT OR REPLACE INTO requests VALUES (?, ?, ?, NULL, ?, ?)",
                         (key, OK, json.dumps(output, ensure_ascii=False), attempts, time.time()))

    def put_failed(self, key: str, error: str, attempts: int) -> None:
        # a failure never overwrites a success (two runs racing on one cache)
        self._db.execute(
            "INSERT INTO requests VALUES (?, ?, NULL, ?, ?, ?) ON CONFLICT(key) DO UPDATE SET "
            "error = excluded.error, attempts = excluded.attempts, updated = excluded.updated "
            "WHERE requests.status != 'ok'", (key, FAILED, error, attempts, time.time()))

    def counts(self) -> dict[str, int]:
        return dict(self._db.execute("SELECT status, COUNT(*) FROM requests GROUP BY status").fetchall())

    def failed(self) -> dict[str, str]:
        return dict(self._db.execute("SELECT key, error FROM requests WHERE status = ?", (FAILED,)).fetchall())

    def close(self) -> None:
        self._db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

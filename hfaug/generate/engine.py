"""Sending requests: bounded concurrency, retries with exponential backoff and jitter, the
cache written as each request finishes, and a progress bar with rows done, failures and rate.

Finished requests are committed to the cache in small batches (every 64 rows or 0.25 s, and when
the run ends, error or not), so a killed run loses at most that last batch, which a rerun sends.

A validation error (422 and the like) stops new requests, lets those in flight finish (and be
cached), then ends the run with one line quoting the server. A request still failing after its
retries is recorded as failed in the cache, never turned into an empty row, and the next run
sends it again. Only a server's or the network's failure (a :class:`RequestError`, classified by
:mod:`hfaug.retry`) is retried or recorded; any other exception from a backend is a bug and ends
the run at once with its traceback. When every recent request to every endpoint failed to connect, a circuit breaker
(:mod:`.endpoints`) ends the run early, naming the URLs.

Counts (sent, retries, failed, by reason) add up over every run that used the same cache, in
``<cache>.counts.json`` next to it (:class:`Ledger`), so a stage resumed after a crash or a rerun
reports the whole effort, not only its last run's.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..atomic import write_json
from ..prompts import Request
from ..retry import RetryPolicy, aretrying
from .cache import RequestCache, request_key
from .endpoints import Breaker
from .types import BackendBase, Generation, RequestError

__all__ = ["Ledger", "Outcome", "RetryPolicy", "keys_for", "run_requests", "run_sync"]

#: seconds of nothing but connection failures on every endpoint before a run stops
UNREACHABLE_AFTER = 30.0

logger = logging.getLogger(__name__)


@dataclass
class Outcome:
    keys: list[str]  # one per request, in order
    results: dict[str, dict] = field(default_factory=dict)  # key -> Generation.to_dict()
    failed: dict[str, str] = field(default_factory=dict)  # key -> last error
    stats: Counter = field(default_factory=Counter)  # sent, cached, retries, retry_<reason>, failed
    fatal: RequestError | None = None


def run_sync(coro):
    """Run a coroutine from synchronous code, also when an event loop already runs (notebooks)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box: dict[str, Any] = {}

    def target():
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as e:  # re-raised in the caller's thread
            box["error"] = e

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


class Ledger:
    """Request counts summed over every run that used one cache (a JSON file beside it).

    Saved at most every ``every`` seconds while requests finish and at the end, so a killed run
    loses at most that much of its counts (its finished requests are in the cache regardless).
    """

    KEYS = ("sent", "retries", "failed")  # and retry_<reason>, failed_<reason>; "cached" is per run

    def __init__(self, path: Path, every: float = 2.0):
        self.path = path
        self.every = every
        self.base = self.read(path)
        self._saved = time.monotonic()

    @classmethod
    def for_cache(cls, cache: RequestCache | None) -> "Ledger | None":
        if cache is None or cache.path == ":memory:":
            return None
        return cls(cls.path_for(cache.path))

    @staticmethod
    def path_for(cache_path: str | Path) -> Path:
        path = Path(cache_path)
        return path.with_name(f"{path.stem}.counts.json")

    @staticmethod
    def read(path: Path) -> Counter:
        try:
            return Counter(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            return Counter()

    def totals(self, stats: Counter) -> Counter:
        out = Counter(self.base)
        for key, value in stats.items():
            if key in self.KEYS or key.startswith(("retry_", "failed_")):
                out[key] += value
        return out

    def save(self, stats: Counter, *, force: bool = False) -> None:
        if not force and time.monotonic() - self._saved < self.every:
            return
        self._saved = time.monotonic()
        write_json(self.path, dict(sorted(self.totals(stats).items())), indent=None)


def keys_for(backend_model: str, requests: list[Request], params: dict) -> list[str]:
    return [request_key(backend_model, r.messages, params, r.seed) for r in requests]


async def run_requests(backend: BackendBase, requests: list[Request], params: dict[str, Any], *,
                       cache: RequestCache | None, concurrency: int = 32, retry: RetryPolicy | None = None,
                       progress: bool = True, desc: str = "generate", cache_model: str | None = None,
                       unreachable_after: float = UNREACHABLE_AFTER) -> Outcome:
    """Send every request not already in ``cache``; returns what finished, failed and how.

    ``unreachable_after``: seconds of only connection failures on every endpoint before the run
    stops (``outcome.fatal`` with reason ``unreachable``); 0 never stops."""
    retry = retry or RetryPolicy()
    keys = keys_for(cache_model or backend.model, requests, params)
    outcome = Outcome(keys=keys)
    cached = cache.get_many(keys) if cache is not None else {}
    outcome.results.update(cached)
    todo: list[tuple[str, Request]] = []
    queued = set(cached)
    for key, request in zip(keys, requests):
        if key not in queued:  # identical requests (same prompt and seed) are sent once
            queued.add(key)
            todo.append((key, request))
    outcome.stats["cached"] = len(cached)
    if not todo:
        return outcome

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(set(keys)), initial=len(cached), desc=desc, unit="req", mininterval=0.5,
                   dynamic_ncols=True)
    limit = max(1, concurrency)
    if backend.max_concurrency:
        limit = min(limit, backend.max_concurrency)
    workers = 1 if backend.batch_size > 1 else limit
    queue: asyncio.Queue = asyncio.Queue()
    for item in todo:
        queue.put_nowait(item)
    stop = asyncio.Event()
    breaker = Breaker(getattr(backend, "endpoints", None), unreachable_after)
    ledger = Ledger.for_cache(cache)

    def postfix():
        if bar is not None:
            bar.set_postfix(failed=len(outcome.failed), retries=outcome.stats["retries"], refresh=False)
        if ledger is not None:
            ledger.save(outcome.stats)

    async def attempt(batch: list[tuple[str, Request]]) -> list[Generation]:
        outcome.stats["sent"] += len(batch)
        try:
            gens = await backend.agenerate([r for _, r in batch], params)
            if len(gens) != len(batch):
                raise RequestError(f"backend returned {len(gens)} texts for {len(batch)} prompts",
                                   retryable=False, reason="backend")
        except RequestError as e:  # a server's or the network's failure; anything else is a bug
            breaker.failed(e, e.reason)
            if breaker.tripped and outcome.fatal is None:
                outcome.fatal = RequestError(breaker.message(), retryable=False, reason="unreachable")
                stop.set()  # wakes the requests waiting to retry: they end as failed
            raise
        breaker.alive()
        return gens

    async def send(batch: list[tuple[str, Request]]) -> None:
        tries = [1]

        def on_retry(error, failure, attempt) -> None:
            outcome.stats["retries"] += len(batch)
            outcome.stats[f"retry_{failure.reason}"] += len(batch)
            tries[0] += 1
            postfix()

        try:
            # one line per retry at DEBUG: at scale they are counted (progress bar, ledger) instead
            gens = await aretrying(lambda: attempt(batch), desc, retry, stop=stop, on_retry=on_retry,
                                   log_level=logging.DEBUG, only=RequestError)
        except RequestError as err:
            for key, _ in batch:
                outcome.failed[key] = err.message
                if cache is not None:
                    cache.put_failed(key, err.message, tries[0])
            outcome.stats["failed"] += len(batch)
            outcome.stats[f"failed_{err.reason}"] += len(batch)
            if not err.retryable and outcome.fatal is None:
                outcome.fatal = err
                stop.set()
            postfix()
            return
        for (key, _), gen in zip(batch, gens):
            result = gen.to_dict()
            outcome.results[key] = result
            if cache is not None:
                cache.put(key, result, tries[0])
        if bar is not None:
            bar.update(len(batch))
        if ledger is not None:
            ledger.save(outcome.stats)

    async def worker() -> None:
        while not stop.is_set():
            batch = []
            while len(batch) < backend.batch_size and not queue.empty():
                batch.append(queue.get_nowait())
            if not batch:
                return
            await send(batch)

    async def committer() -> None:
        # the cache commits in batches (see RequestCache): a reply that finished is committed
        # within commit_seconds even when no other reply follows it
        while True:
            await asyncio.sleep(cache.commit_seconds)
            cache.flush()

    flusher = asyncio.ensure_future(committer()) if cache is not None else None
    tasks = [asyncio.ensure_future(worker()) for _ in range(workers)]
    try:
        try:
            await asyncio.gather(*tasks)
        except BaseException:
            # a bug in one request (or an interrupt) ends them all before the cache is flushed and closed
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
    finally:
        if flusher is not None:
            flusher.cancel()
            cache.flush()  # also when the run ends on an error: what finished is kept
        if ledger is not None:
            ledger.save(outcome.stats, force=True)
        if bar is not None:
            postfix()
            bar.refresh()
            bar.close()
    outcome.stats["not_sent"] = queue.qsize()
    return outcome

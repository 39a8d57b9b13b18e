"""Sending requests: bounded concurrency, retries with exponential backoff and jitter, the
cache written as each request finishes, and a progress bar with rows done, failures and rate.

A validation error (422 and the like) stops new requests, lets those in flight finish (and be
cached), then ends the run with one line quoting the server. A request still failing after its
retries is recorded as failed in the cache, never turned into an empty row, and the next run
sends it again.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ..prompts import Request
from .backends import Backend, RequestError, classify_error
from .cache import RequestCache, request_key

logger = logging.getLogger(__name__)


@dataclass
class RetryPolicy:
    max_retries: int = 6
    backoff: float = 1.0  # seconds before the first retry; doubles each time
    backoff_max: float = 60.0

    def delay(self, attempt: int) -> float:
        # full jitter around the exponential step keeps many clients from retrying in lockstep
        return min(self.backoff_max, self.backoff * (2 ** attempt)) * random.uniform(0.5, 1.5)


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


def keys_for(backend_model: str, requests: list[Request], params: dict) -> list[str]:
    return [request_key(backend_model, r.messages, params, r.seed) for r in requests]


async def run_requests(backend: Backend, requests: list[Request], params: dict[str, Any], *,
                       cache: RequestCache | None, concurrency: int = 32, retry: RetryPolicy | None = None,
                       progress: bool = True, desc: str = "generate", cache_model: str | None = None) -> Outcome:
    """Send every request not already in ``cache``; returns what finished, failed and how."""
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

    def postfix():
        if bar is not None:
            bar.set_postfix(failed=len(outcome.failed), retries=outcome.stats["retries"], refresh=False)

    async def send(batch: list[tuple[str, Request]]) -> None:
        attempt = 0
        while True:
            outcome.stats["sent"] += len(batch)
            try:
                gens = await backend.agenerate([r for _, r in batch], params)
                if len(gens) != len(batch):
                    raise RequestError(f"backend returned {len(gens)} texts for {len(batch)} prompts",
                                       retryable=False, reason="backend")
            except asyncio.CancelledError:
                raise
            except Exception as e:
                err = classify_error(e)
                if err.retryable and attempt < retry.max_retries and not stop.is_set():
                    outcome.stats["retries"] += len(batch)
                    outcome.stats[f"retry_{err.reason}"] += len(batch)
                    postfix()
                    wait = retry.delay(attempt)
                    if err.retry_after:  # the server knows best when it will have room again
                        wait = max(wait, min(err.retry_after, retry.backoff_max))
                    await asyncio.sleep(wait)
                    attempt += 1
                    continue
                for key, _ in batch:
                    outcome.failed[key] = err.message
                    if cache is not None:
                        cache.put_failed(key, err.message, attempt + 1)
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
                    cache.put(key, result, attempt + 1)
            if bar is not None:
                bar.update(len(batch))
            return

    async def worker() -> None:
        while not stop.is_set():
            batch = []
            while len(batch) < backend.batch_size and not queue.empty():
                batch.append(queue.get_nowait())
            if not batch:
                return
            await send(batch)

    try:
        await asyncio.gather(*(worker() for _ in range(workers)))
    finally:
        if bar is not None:
            postfix()
            bar.refresh()
            bar.close()
    outcome.stats["not_sent"] = queue.qsize()
    return outcome

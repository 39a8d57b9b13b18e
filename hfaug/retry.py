"""One retry rule for every networked call: generation servers, the endpoint probe, the Hub.

Only what the network or a server did is retried or reported to the user as such:

- transient (retried with doubling waits): a connection that failed or dropped, a timeout, an
  HTTP 5xx, 429 (overloaded, TGI's ``OverloadedError``), 424 (TGI's "failed during generation"),
  408 and 425, and a reply that is not valid JSON;
- permanent (ends at once, reported in one line): any other HTTP answer, such as 422 (a
  validation error) or 401/404;
- anything else is a programming error (a ``TypeError`` in hfaug's or a model's code, ...): it
  is never retried and never turned into a user error, so it surfaces at once with its traceback.

:func:`classify` is that rule; :func:`retrying` and :func:`aretrying` call a function under it,
with one log line per retry.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: statuses worth sending again besides every 5xx: the server is busy, not the request wrong
# (424 is TGI's "Request failed during generation": a shard hiccup, an OOM on one batch)
TRANSIENT_STATUS = frozenset({408, 424, 425, 429})

#: packages in which a reply that fails to parse is a malformed reply; raised elsewhere (hfaug's
#: own code, a model's code) the same exception types are bugs
CLIENT_PACKAGES = frozenset({"huggingface_hub", "aiohttp", "requests", "urllib3"})


def transient_status(status: int) -> bool:
    return status >= 500 or status in TRANSIENT_STATUS


@dataclass(frozen=True)
class Failure:
    """What a failed call says about the network or the server."""

    reason: str  # timeout, connection, malformed, http_<status>
    transient: bool
    status: int | None = None
    retry_after: float | None = None  # seconds the server asked to wait (Retry-After)
    message: str = ""


@dataclass
class RetryPolicy:
    """``max_retries`` more attempts after the first, waiting ``backoff`` seconds doubling each time
    up to ``backoff_max``; with ``jitter`` each wait is drawn from 0.5 to 1.5 times its step, which
    keeps many clients from retrying in lockstep."""

    max_retries: int = 6
    backoff: float = 1.0
    backoff_max: float = 60.0
    jitter: bool = True

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        wait = min(self.backoff_max, self.backoff * (2 ** attempt))
        if self.jitter:
            wait *= random.uniform(0.5, 1.5)
        if retry_after:  # the server knows best when it will have room again
            wait = max(wait, min(retry_after, self.backoff_max))
        return wait


def status_of(exc: BaseException) -> int | None:
    """The HTTP status in ``exc`` or an exception it was raised from (aiohttp's ``status``,
    requests' and huggingface_hub's ``response.status_code``)."""
    for node in _chain(exc):
        status = getattr(node, "status", None)
        if not isinstance(status, int):
            status = getattr(getattr(node, "response", None), "status_code", None)
        if isinstance(status, int):
            return status
    return None


def _chain(exc: BaseException):
    seen: set[int] = set()
    node: BaseException | None = exc
    while node is not None and id(node) not in seen:
        seen.add(id(node))
        yield node
        node = node.__cause__ or node.__context__


def raised_in_client(exc: BaseException) -> bool:
    """The innermost frame of ``exc``'s traceback is in a client library or the json module."""
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    path = Path(tb.tb_frame.f_code.co_filename)
    if path.parent == Path(json.__file__).parent:
        return True
    parts = path.parts
    for marker in ("site-packages", "dist-packages"):
        if marker in parts and parts.index(marker) + 1 < len(parts):
            return parts[parts.index(marker) + 1] in CLIENT_PACKAGES
    return False


def _retry_after(exc: BaseException) -> float | None:
    for node in _chain(exc):
        headers = getattr(node, "headers", None) or getattr(getattr(node, "response", None), "headers", None)
        value = headers.get("Retry-After") if headers else None
        if value:
            try:
                return float(value)
            except (TypeError, ValueError):  # an HTTP date: fall back to the backoff
                return None
    return None


def classify(exc: BaseException) -> Failure | None:
    """What ``exc`` says about the network or a server; None when it is not such an error (a
    programming error: raise it). An exception with a boolean ``retryable`` (generate's
    RequestError) has been classified already and is taken at its word."""
    retryable = getattr(exc, "retryable", None)
    if isinstance(retryable, bool):
        return Failure(getattr(exc, "reason", "error"), retryable, getattr(exc, "status", None),
                       getattr(exc, "retry_after", None), getattr(exc, "message", str(exc)))
    import aiohttp
    import requests
    from huggingface_hub.errors import InferenceTimeoutError, OverloadedError, ValidationError

    message = str(exc)
    if isinstance(exc, (InferenceTimeoutError, asyncio.TimeoutError, TimeoutError, requests.Timeout)):
        return Failure("timeout", True, message=message)
    # huggingface_hub's HTTP errors (Hub and text generation alike) are requests' HTTPError
    if isinstance(exc, (requests.HTTPError, aiohttp.ClientResponseError)):
        status = status_of(exc)
        if isinstance(exc, OverloadedError):
            status = status or 429
        if isinstance(exc, ValidationError):
            status = status or 422
        if status is None:  # no answer came with it: the connection failed
            return Failure("connection", True, message=message)
        return Failure(f"http_{status}", transient_status(status), status, _retry_after(exc), message)
    if isinstance(exc, (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, ConnectionError,
                        requests.ConnectionError)):
        return Failure("connection", True, message=message)
    if isinstance(exc, (json.JSONDecodeError, aiohttp.ContentTypeError)):
        return Failure("malformed", True, message=message)
    if isinstance(exc, (KeyError, IndexError, TypeError, ValueError)) and raised_in_client(exc):
        return Failure("malformed", True, message=message)  # the client could not parse the reply
    return None


def is_transient(exc: BaseException) -> bool:
    """Worth calling again: a transient network or server failure (see :func:`classify`)."""
    failure = classify(exc)
    return failure is not None and failure.transient


def is_network_error(exc: BaseException) -> bool:
    """A failure of the network or a server (transient or not), as opposed to a programming error."""
    return classify(exc) is not None


def short(exc: BaseException) -> str:
    """The first line of an error, at most 200 characters."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:200]


def retrying(fn: Callable[[], T], what: str, policy: RetryPolicy, *,
             describe: Callable[[BaseException], str] = short) -> T:
    """Call ``fn``; a transient failure is retried up to ``policy.max_retries`` times with one
    warning per retry. The last failure, and any other exception, is raised as it is."""
    for attempt in range(policy.max_retries + 1):
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 -- filtered by classify
            failure = classify(e)
            if failure is None or not failure.transient or attempt == policy.max_retries:
                raise
            delay = policy.delay(attempt, failure.retry_after)
            logger.warning("%s failed (%s); retry %d/%d in %.1fs", what, describe(e), attempt + 1,
                           policy.max_retries, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")  # the loop returns or raises


async def aretrying(fn: Callable[[], Awaitable[T]], what: str, policy: RetryPolicy, *,
                    stop: asyncio.Event | None = None,
                    on_retry: Callable[[BaseException, Failure, int], None] | None = None,
                    log_level: int = logging.WARNING, only: type[BaseException] = Exception,
                    describe: Callable[[BaseException], str] = short) -> T:
    """The asynchronous :func:`retrying`. ``stop`` (when set) ends the waiting and the retries:
    the last failure is raised. ``on_retry(error, failure, attempt)`` is called before each wait
    (to count retries); ``log_level`` is that of the one line per retry (many concurrent requests
    log theirs at DEBUG and count them instead). Exceptions that are not ``only`` are raised at once
    (generate's engine retries only what its backends classified)."""
    attempt = 0
    while True:
        try:
            return await fn()
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 -- filtered by classify
            failure = classify(e) if isinstance(e, only) else None
            stopped = stop is not None and stop.is_set()
            if failure is None or not failure.transient or attempt >= policy.max_retries or stopped:
                raise
            delay = policy.delay(attempt, failure.retry_after)
            if on_retry is not None:
                on_retry(e, failure, attempt)
            if logger.isEnabledFor(log_level):
                logger.log(log_level, "%s failed (%s); retry %d/%d in %.1fs", what, describe(e), attempt + 1,
                           policy.max_retries, delay)
            if stop is None:
                await asyncio.sleep(delay)
            else:
                try:
                    await asyncio.wait_for(stop.wait(), delay)
                except asyncio.TimeoutError:
                    pass
            attempt += 1

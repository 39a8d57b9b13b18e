"""Dead endpoints found early, not after hours of retries.

Before a run, :func:`check_endpoints` asks every server URL for ``/info`` (TGI), ``/health`` or
``/v1/models`` (OpenAI-compatible servers): any HTTP answer, even a 404, means something listens.
A URL where nothing listens ends the run at once, with one line naming it.

During a run, :class:`Breaker` watches the requests: when every recent request to every endpoint
failed to connect (refused, no route, unknown host) for ``unreachable_after`` seconds, with no
answer of any kind in between, the servers are down and retrying with backoff would only wait
(120 requests to a refused port took minutes; 200,000 would take days). The run then stops,
naming the URLs; finished requests are in the cache and a rerun resumes. A server that answers,
even with 503, is alive and keeps the ordinary retries; a short restart (under the window) is
ridden out.
"""

from __future__ import annotations

import asyncio
import os
import time
from urllib.parse import urlsplit

from ..errors import HfaugError
from ..retry import classify

#: what a server answers on: TGI's /info, OpenAI-compatible servers' /health and /v1/models
PROBES = ("/info", "/health", "/v1/models")


def connect_failure(exc: BaseException | None) -> tuple[str, int | None, str] | None:
    """(host, port, what happened) when ``exc`` (or an exception it was raised from) is a failure
    to open a connection; None for anything else (an answer, a timeout, a dropped connection)."""
    import aiohttp

    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, aiohttp.ClientConnectorError):
            code = getattr(exc.os_error, "errno", None)
            # asyncio's strerror ("Connect call failed (...)") hides the reason the errno names
            reason = os.strerror(code) if isinstance(code, int) and code > 0 else str(exc.os_error)
            return exc.host, exc.port, (reason or "cannot connect").lower()
        if isinstance(exc, ConnectionRefusedError):
            return "", None, "connection refused"
        exc = exc.__cause__ or exc.__context__
    return None


def _endpoint_for(host: str, port: int | None, endpoints: list[str]) -> str:
    for url in endpoints:
        parts = urlsplit(url)
        default = 443 if parts.scheme == "https" else 80
        if parts.hostname == host and (parts.port or default) == port:
            return url
    return f"{host}:{port}" if host else (endpoints[0] if len(endpoints) == 1 else "the server")


async def check_endpoints(endpoints: list[str], *, timeout: float = 5.0, where: str = "generate") -> None:
    """Raise a one-line HfaugError naming every URL where nothing answers on any probe route."""
    import aiohttp

    async def probe(session, url: str) -> str | None:
        problem = None
        for route in PROBES:
            try:
                async with session.get(url.rstrip("/") + route, timeout=aiohttp.ClientTimeout(total=timeout)):
                    return None  # any HTTP answer: the server is there
            except aiohttp.ClientConnectorError as e:
                failure = connect_failure(e)
                return failure[2] if failure else str(e)  # refused: the other routes cannot do better
            except asyncio.TimeoutError:
                problem = f"no answer within {timeout:g} s"
            except Exception as e:  # noqa: BLE001 -- what the network did; anything else is a bug
                if classify(e) is None:
                    raise
                problem = f"{type(e).__name__}: {e}"
        return problem

    async with aiohttp.ClientSession(trust_env=False) as session:
        problems = await asyncio.gather(*(probe(session, url) for url in endpoints))
    dead = [(url, p) for url, p in zip(endpoints, problems) if p is not None]
    if dead:
        listed = "; ".join(f"{url} ({problem})" for url, problem in dead)
        raise HfaugError(f"{where}: cannot reach {listed}; start the server or fix {where}.endpoints "
                         f"(GET {', '.join(PROBES)} got no answer)")


class Breaker:
    """Trips when every endpoint's requests have only failed to connect for ``after`` seconds."""

    def __init__(self, endpoints: list[str] | None, after: float):
        self.endpoints = list(endpoints or [])
        self.after = after
        self.down_since: float | None = None  # first connect failure since the last sign of life
        self.down: dict[str, str] = {}  # endpoint -> what happened, since then

    def alive(self) -> None:
        """A request got an answer (a result or an HTTP error): the servers are up."""
        self.down_since = None
        self.down.clear()

    def failed(self, exc: BaseException, reason: str) -> None:
        """A request failed with ``exc`` (classified as ``reason``: timeout, connection, http_503, ...)."""
        failure = connect_failure(exc)
        if failure is None:
            if reason != "timeout":  # a timeout says nothing either way; other failures came with an answer
                self.alive()
            return
        host, port, what = failure
        if self.down_since is None:
            self.down_since = time.monotonic()
        self.down[_endpoint_for(host, port, self.endpoints)] = what

    @property
    def tripped(self) -> bool:
        if self.after <= 0 or self.down_since is None:
            return False
        every = not self.endpoints or set(self.endpoints) <= set(self.down)
        return every and time.monotonic() - self.down_since >= self.after

    def message(self) -> str:
        urls = "; ".join(f"{url} ({what})" for url, what in self.down.items())
        return (f"every request to every endpoint failed to connect for {time.monotonic() - self.down_since:.0f} s: "
                f"{urls}")

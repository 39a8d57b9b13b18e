"""What the backends (:mod:`.backends`) and the sender (:mod:`.engine`) share: a generation, a
failed request and the backend interface. Both import this module and neither imports the other
for it, so there is no import circle between them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..prompts import Request


@dataclass
class Generation:
    """One generated text and what the server said about it."""

    text: str
    generated_tokens: int | None = None
    finish_reason: str | None = None
    endpoint: str | None = None
    logprobs: list | None = None  # top tokens per step, when the server returns them

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


class RequestError(Exception):
    """A request that failed at the server or on the way to it. ``retryable`` errors (429, 503,
    timeouts, connection errors, malformed bodies) are retried with backoff; the others (422 and
    the like) end the run. Anything a backend raises that is not a RequestError is a bug."""

    def __init__(self, message: str, *, retryable: bool, reason: str, status: int | None = None,
                 retry_after: float | None = None):
        super().__init__(message)
        self.message = " ".join(str(message).split())
        self.retryable = retryable
        self.reason = reason
        self.status = status
        self.retry_after = retry_after  # seconds the server asked to wait (Retry-After)


class BackendBase:
    """The interface: ``agenerate`` one text per request; ``batch_size`` requests per call."""

    name = "base"
    batch_size = 1
    #: the most requests worth having in flight (from the server's /info), None if unknown
    max_concurrency: int | None = None

    def __init__(self, model: str):
        self.model = model
        self.model_id = model  # recorded as gen_model

    async def start(self) -> None:
        """Open connections, read server info, load weights."""

    async def close(self) -> None:
        """Release what ``start`` opened."""

    async def agenerate(self, requests: list[Request], params: dict[str, Any]) -> list[Generation]:
        raise NotImplementedError

"""Generation backends behind one small interface.

``Backend.agenerate(requests, params)`` generates one text per request (a batch for in-process
models, one request at a time for servers); ``Backend.generate(prompts, **params)`` is the plain
synchronous call for notebooks. Backends:

- ``tgi``: Text Generation Inference through huggingface_hub's ``AsyncInferenceClient.text_generation``
  (seed, details, stop, grammar, top_n_tokens); reads ``/info`` to size concurrency and check lengths.
- ``openai``: chat completions on any OpenAI-compatible server (TGI's Messages API, vLLM, SGLang,
  ``transformers serve``) through ``AsyncInferenceClient.chat_completion``.
- ``transformers``: an in-process causal LM with a chat template (the offline demo default).
- ``dummy``: deterministic text from the prompt and seed, for tests and dry runs of a recipe.

Several endpoint URLs spread the requests (least busy first), so generation scales over servers.
Only the asynchronous client is used: with ``HF_HUB_OFFLINE=1`` huggingface_hub 0.36's synchronous
``InferenceClient`` refuses even a 127.0.0.1 URL, the asynchronous one does not.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from typing import Any

from ..errors import HfaugError
from ..extras import missing
from ..prompts import Request
from ..retry import classify, transient_status
from .engine import run_requests, run_sync
from .types import BackendBase, Generation, RequestError

__all__ = ["Backend", "Generation", "RequestError", "make_backend"]

logger = logging.getLogger(__name__)

#: chat formats for TGI's raw-prompt route (the Llama-2 chat format is the paper's model's)
PROMPT_FORMATS = {
    "llama2": (
        "{% set sys = messages | selectattr('role', 'equalto', 'system') | map(attribute='content') | list %}"
        # no literal <s>: TGI (and every tokenizer of the family) adds BOS itself, a second one in
        # the text shifts the model off its training format
        "{% for m in messages if m.role != 'system' %}{% if m.role == 'user' %}"
        "{% if not loop.first %}<s>{% endif %}[INST] "
        "{% if loop.first and sys %}<<SYS>>\n{{ sys[0] }}\n<</SYS>>\n\n{% endif %}{{ m.content }} [/INST]"
        "{% else %} {{ m.content }} </s>{% endif %}{% endfor %}"
    ),
    "chatml": (
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
        "<|im_start|>assistant\n"
    ),
    "zephyr": "{% for m in messages %}<|{{ m.role }}|>\n{{ m.content }}</s>\n{% endfor %}<|assistant|>\n",
    "plain": "{% for m in messages %}{{ m.content }}\n\n{% endfor %}",
}


class Backend(BackendBase):
    """A backend with the plain synchronous call for notebooks."""

    def generate(self, prompts: list, **params) -> list[str]:
        """Generate one text per prompt (a string or a list of chat messages), synchronously.
        A ``seed`` parameter seeds the first prompt, the next gets seed + 1, and so on."""
        seed = int(params.pop("seed", 0))
        requests = []
        for i, prompt in enumerate(prompts):
            messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
            requests.append(Request("prompt", None, i, tuple((m["role"], m["content"]) for m in messages), seed + i))

        async def go():
            await self.start()
            try:
                return await run_requests(self, requests, params, cache=None, progress=False)
            finally:
                await self.close()

        outcome = run_sync(go())
        return [outcome.results[outcome.keys[i]]["text"] for i in range(len(requests))]


# ---------------------------------------------------------------------------------------------
# servers


#: what the pooled client is given for "no token": never sent (its Authorization header is replaced)
_NO_TOKEN = "hfaug-no-token"


def _pooled_client_class():
    """An AsyncInferenceClient that sends every request through one shared aiohttp session.

    huggingface_hub 0.36 opens (and closes) a new ``aiohttp.ClientSession`` per request in
    ``_get_client_session``, so every request pays a new connection; at concurrency 32 that costs
    about a tenth of the throughput. The client offers no way to pass a session, so this subclass
    overrides that one method to hand out a view of a shared session whose ``close`` is a no-op.
    Everything else (payloads, provider helpers, error parsing) stays the library's.
    """
    from huggingface_hub import AsyncInferenceClient

    class _SessionView:
        def __init__(self, session, headers: dict, timeout):
            self._session, self._headers, self._timeout = session, headers, timeout

        async def post(self, url, **kwargs):
            return await self._session.post(url, headers=self._headers, timeout=self._timeout, **kwargs)

        async def close(self):  # the shared session outlives each request
            return None

    class PooledAsyncInferenceClient(AsyncInferenceClient):
        def __init__(self, *args, session=None, auth: str | None = None, **kwargs):
            # token None makes the library read the login token file twice per request (the api key,
            # then the headers); over the shared session the Authorization header is hfaug's anyway
            # (see _get_client_session), so a placeholder resolves it once, here, and is never sent
            super().__init__(*args, token=auth or (_NO_TOKEN if session is not None else None), **kwargs)
            self._shared_session = session
            self._auth = auth

        def _get_client_session(self, headers=None):
            if self._shared_session is None:
                return super()._get_client_session(headers=headers)
            import aiohttp

            # the Authorization header is hfaug's choice per endpoint (token_for): the client would
            # otherwise add the login token of this machine to whatever URL it posts to
            merged = {k: v for k, v in {**self.headers, **(headers or {})}.items() if k.lower() != "authorization"}
            if self._auth:
                merged["authorization"] = f"Bearer {self._auth}"
            return _SessionView(self._shared_session, merged, aiohttp.ClientTimeout(total=self.timeout))

    return PooledAsyncInferenceClient


def classify_error(exc: BaseException) -> RequestError:
    """Map what the client raised to a RequestError (retryable or not, by :func:`hfaug.retry.classify`),
    keeping the server's message. Anything that is not a network or server failure is a bug and
    is raised as it is."""
    if isinstance(exc, RequestError):
        return exc
    failure = classify(exc)
    if failure is None:
        raise exc
    if failure.status is None:
        what = {"timeout": "timed out", "connection": "connection error", "malformed": "malformed response"}
        text = str(exc) if failure.reason == "timeout" else repr(exc)
        return RequestError(f"{what.get(failure.reason, failure.reason)}: {text}", retryable=failure.transient,
                            reason=failure.reason)
    message = str(exc)
    for node in (exc, exc.__cause__, exc.__context__):
        payload = getattr(node, "response_error_payload", None)
        if isinstance(payload, dict) and payload.get("error"):
            err = payload["error"]
            message = err.get("message", str(err)) if isinstance(err, dict) else str(err)
            break
    return RequestError(f"HTTP {failure.status}: {message}", retryable=failure.transient,
                        reason=failure.reason, status=failure.status, retry_after=failure.retry_after)


#: hosts that are the Hub's own inference services: the Hub token is theirs
# the Hub's own hosts: the apex and its subdomains only (a dotted suffix, so that a look-alike
# such as "evilhuggingface.co" never gets the token)
HUB_HOST = "huggingface.co"
HUB_HOST_SUFFIXES = (".huggingface.co", ".hf.space", ".huggingface.cloud")
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}


def token_for(url: str, token: str | None, token_endpoints=()) -> str | None:
    """The token an endpoint gets: the Hub's own services (https) always, another server only
    when the recipe lists it in ``generate.token_endpoints``, and never in clear text over http
    to a host other than this machine (a listed one is refused with one line)."""
    from urllib.parse import urlsplit

    if not token:
        return None
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    listed = url.rstrip("/") in {u.rstrip("/") for u in token_endpoints}
    hub = parts.scheme == "https" and (host == HUB_HOST or host.endswith(HUB_HOST_SUFFIXES))
    if not (hub or listed):
        return None
    if parts.scheme != "https" and host not in LOCAL_HOSTS:
        raise HfaugError(f"generate.token_endpoints: {url} is plain http to another host; the token would travel "
                         f"in clear text: use https (or drop it from token_endpoints)")
    return token


class _ServerBackend(Backend):
    """Shared by tgi and openai: one aiohttp session, endpoints picked least-busy first."""

    def __init__(self, model: str, endpoints: list[str], *, timeout: float = 120.0, concurrency: int = 32,
                 headers: dict | None = None, token: str | None = None, token_endpoints=()):
        super().__init__(model)
        if not endpoints:
            raise HfaugError(f"generate: backend '{self.name}' needs at least one URL in generate.endpoints")
        self.endpoints = [url.rstrip("/") for url in endpoints]
        self.timeout = timeout
        self.concurrency = concurrency
        self.headers = headers or {}
        # the token per endpoint: the Hub's services and the ones the recipe names, nothing else
        self.tokens = {url: token_for(url, token, token_endpoints) for url in self.endpoints}
        self._session = None
        self._clients: dict[str, Any] = {}
        self._busy = {url: 0 for url in self.endpoints}
        self.info: dict[str, dict] = {}

    async def start(self) -> None:
        import aiohttp

        # one connector for every endpoint, sized to the concurrency so connections are reused
        connector = aiohttp.TCPConnector(limit=max(self.concurrency, 1) * 2, limit_per_host=0,
                                         ttl_dns_cache=300)
        self._session = aiohttp.ClientSession(connector=connector, trust_env=False)
        cls = _pooled_client_class()
        for url in self.endpoints:
            self._clients[url] = self._client_for(cls, url)
        await self._read_info()

    def _client_for(self, cls, url):
        return cls(model=url, timeout=self.timeout, headers=self.headers, auth=self.tokens[url],
                   session=self._session)

    async def _read_info(self) -> None:
        """TGI's /info (also served by TGI's Messages API): model id, max concurrency, lengths."""
        import aiohttp

        for url in self.endpoints:
            try:
                async with self._session.get(f"{url}/info", timeout=aiohttp.ClientTimeout(total=10)) as r:
                    if r.status == 200:
                        self.info[url] = await r.json(content_type=None)
            except Exception as e:  # /info is optional (vLLM, SGLang, transformers serve lack it)
                if classify(e) is None:  # not the server's answer or the network's failure: a bug
                    raise
                logger.debug("no /info at %s: %r", url, e)
        limits = [i.get("max_concurrent_requests") for i in self.info.values()]
        if self.info and all(isinstance(x, int) and x > 0 for x in limits) and len(self.info) == len(self.endpoints):
            self.max_concurrency = sum(limits)
        ids = {i.get("model_id") for i in self.info.values() if i.get("model_id")}
        if len(ids) == 1:
            self.model_id = ids.pop()

    def check_lengths(self, max_new_tokens: int) -> None:
        for url, info in self.info.items():
            total = info.get("max_total_tokens")
            if isinstance(total, int) and max_new_tokens >= total:
                raise HfaugError(
                    f"generate: max_new_tokens={max_new_tokens} does not fit the server at {url} "
                    f"(max_total_tokens={total}); lower generate.max_new_tokens")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _pick(self) -> str:
        low = min(self._busy.values())
        choices = [url for url, n in self._busy.items() if n == low]
        return choices[0] if len(choices) == 1 else random.choice(choices)

    async def agenerate(self, requests: list[Request], params: dict[str, Any]) -> list[Generation]:
        (request,) = requests
        url = self._pick()
        self._busy[url] += 1
        try:
            gen = await self._send(url, request, params)
        except RequestError:
            raise
        except Exception as e:
            raise classify_error(e) from e
        finally:
            self._busy[url] -= 1
        gen.endpoint = url
        return [gen]

    async def _send(self, url: str, request: Request, params: dict[str, Any]) -> Generation:
        """One request to ``url``; the protocol's own part of :meth:`agenerate`."""
        raise NotImplementedError


def _field(item, name: str):
    return item.get(name) if isinstance(item, dict) else getattr(item, name)


class TGIBackend(_ServerBackend):
    """Text Generation Inference's native route: a prompt string rendered from the chat
    messages with ``prompt_format`` (a name in PROMPT_FORMATS or a Jinja chat template)."""

    name = "tgi"

    def __init__(self, model: str, endpoints: list[str], *, prompt_format: str = "auto", details: bool = False,
                 adapter_id: str | None = None, **kwargs):
        super().__init__(model, endpoints, **kwargs)
        # huggingface_hub parses every generated token's details into dataclasses, which costs
        # about a third of the client's CPU at hundreds of requests/s: ask only when wanted
        self.details = details
        self.prompt_format = prompt_format
        self.adapter_id = adapter_id
        self._template = None
        if prompt_format != "auto":
            import jinja2

            source = PROMPT_FORMATS.get(prompt_format, prompt_format)
            self._template = jinja2.Environment(keep_trailing_newline=True).from_string(source)
        self._tokenizer = None
        self._rendered: dict[tuple, str] = {}

    async def start(self) -> None:
        await super().start()
        if self._template is None and self._tokenizer is None:
            self._tokenizer = self._chat_tokenizer()
        if self.adapter_id:
            await self._check_adapter()

    def _chat_tokenizer(self):
        """The served model's own chat template (prompt_format: auto): from generate.model when
        it names a model, else from the model id the server's /info reports."""
        candidates = [m for m in (self.model, self.model_id) if m and m != "tgi"]
        errors = []
        for name in dict.fromkeys(candidates):
            try:
                from transformers import AutoTokenizer

                from ..config import resolve

                tok = AutoTokenizer.from_pretrained(resolve(name))
            except Exception as e:  # noqa: BLE001 -- any loading failure: try the next name, then say so
                errors.append(f"{name}: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
                continue
            if tok.chat_template:
                return tok
            errors.append(f"{name}: the tokenizer has no chat template")
        why = "; ".join(errors) or "no model name (set generate.model) and no model_id in the server's /info"
        raise HfaugError(f"generate.prompt_format is auto but the model's chat template is not available ({why}); "
                         f"set generate.prompt_format to llama2, chatml, zephyr, plain or a Jinja chat template")

    #: rendered prompts kept per distinct message tuple (many requests share a prompt, differing by seed)
    RENDER_CACHE = 4096

    def render(self, request: Request) -> str:
        text = self._rendered.get(request.messages)
        if text is None:
            text = self._render(request)
            if len(self._rendered) >= self.RENDER_CACHE:
                self._rendered.clear()
            self._rendered[request.messages] = text
        return text

    def _render(self, request: Request) -> str:
        if self._template is not None:
            return self._template.render(messages=request.chat)
        tok = self._tokenizer
        text = tok.apply_chat_template(list(request.chat), tokenize=False, add_generation_prompt=True)
        bos = tok.bos_token
        # TGI adds BOS itself: a template's own {{ bos_token }} would make it twice
        return text[len(bos):] if bos and text.startswith(bos) else text

    async def _check_adapter(self) -> None:
        """TGI answers a request naming an adapter it did not load with the base model, silently
        (its server maps unknown adapter ids to index 0). Two greedy probes with and without the
        adapter that come back identical mean the adapter is not there."""
        probes = [Request("probe", None, i, (("user", text),), 0) for i, text in
                  enumerate(("Write one sentence about a river.", "Name three colours."))]
        params = {"greedy": True, "max_new_tokens": 16}
        for url, client in self._clients.items():
            same = 0
            for probe in probes:
                try:
                    base = await self._one(client, probe, params)
                    tuned = await self._one(client, probe, {**params, "adapter_id": self.adapter_id})
                except Exception as e:
                    raise HfaugError(f"generate.adapter_id: the adapter check at {url} failed: "
                                     f"{classify_error(e).message}") from None
                same += base.text == tuned.text
            if same == len(probes):
                raise HfaugError(f"generate.adapter_id '{self.adapter_id}': the server at {url} answers exactly as "
                                 f"without it (TGI serves the base model for an adapter it did not load); start TGI "
                                 f"with --lora-adapters {self.adapter_id} or fix the id")

    async def _send(self, url: str, request: Request, params: dict[str, Any]) -> Generation:
        return await self._one(self._clients[url], request, params)

    async def _one(self, client, request: Request, params: dict[str, Any]) -> Generation:
        kwargs = {k: params[k] for k in ("temperature", "top_p", "top_k", "max_new_tokens", "repetition_penalty",
                                         "stop", "grammar", "top_n_tokens", "truncate", "typical_p", "adapter_id")
                  if params.get(k) is not None}
        if not kwargs.get("stop"):
            kwargs.pop("stop", None)
        details = self.details or bool(kwargs.get("top_n_tokens"))
        greedy = bool(params.get("greedy"))
        if greedy:
            kwargs = {k: v for k, v in kwargs.items() if k not in ("temperature", "top_p", "top_k")}
        # return_full_text=False: TGI's POST / (the client's route) defaults it to true for
        # text-generation models, which would put the prompt in front of every generation
        out = await client.text_generation(self.render(request), details=details, do_sample=not greedy,
                                           seed=request.seed, return_full_text=False, **kwargs)
        if not details:
            return Generation(out)
        details = out.details
        top = None
        if details is not None and getattr(details, "top_tokens", None):
            # huggingface_hub leaves these nested lists as plain dicts
            top = [[{"text": _field(t, "text"), "logprob": _field(t, "logprob")} for t in step]
                   for step in details.top_tokens]
        return Generation(out.generated_text, getattr(details, "generated_tokens", None),
                          getattr(details, "finish_reason", None), logprobs=top)


#: the fields an OpenAI-compatible server may reject that hfaug can do without (dropped per endpoint
#: with a warning, then the request is sent again): constraints and log-probabilities
OPTIONAL_FIELDS = ("response_format", "structured_outputs", "guided_choice", "regex", "logprobs", "top_logprobs",
                   "stop")


def _stream_error(err) -> RequestError:
    """An error event inside an HTTP 200 stream, classified like the status code it stands for.
    TGI's chat route sends ``{"error": {"message", "http_status_code": 422}}`` for every kind (its
    ``into_openai_event``), so the kind comes from the message (its InferError texts); the native
    routes send ``{"error", "error_type"}``."""
    if isinstance(err, dict):
        message = str(err.get("message") or err)
        kind = err.get("type") or err.get("error_type")
    else:
        message, kind = str(err), None
    text = message.lower()
    if kind == "overloaded" or "overloaded" in text:
        status = 429
    elif kind == "validation" or "validation error" in text or "template error" in text:
        status = 422
    elif kind == "generation" or "failed during generation" in text:
        status = 424
    elif kind in ("incomplete_generation", "incomplete_generation_stream") or "incomplete generation" in text:
        status = 500
    else:
        status = 500  # an unnamed failure mid-stream: sent again, like a 500
    return RequestError(f"HTTP {status} (in stream): {message}", retryable=transient_status(status),
                        reason=f"http_{status}", status=status)


def read_chat_body(body: bytes, content_type: str = "") -> tuple[str, str | None, int | None, list | None]:
    """(text, finish_reason, completion_tokens, top logprobs) from a chat completion answered as
    one JSON body or as a server-sent-event stream, whichever came (``transformers serve``
    always streams; some proxies answer a streaming request with one body)."""
    raw = body.decode("utf-8", errors="replace").strip()
    if raw.startswith("{") and "text/event-stream" not in content_type:
        events = [raw]
    else:
        events = [line[5:].strip() for line in raw.splitlines() if line.startswith("data:")]
    parts, finish, tokens, top = [], None, None, []
    for event in events:
        if not event or event == "[DONE]":
            continue
        try:
            data = json.loads(event)
        except json.JSONDecodeError as e:
            raise RequestError(f"malformed response: {event[:120]!r}", retryable=True, reason="malformed") from e
        if not isinstance(data, dict):
            raise RequestError(f"malformed response: {event[:120]!r}", retryable=True, reason="malformed")
        if data.get("error") is not None:
            raise _stream_error(data["error"] if isinstance(data["error"], dict) else
                                {"message": data["error"], "type": data.get("error_type")})
        usage = data.get("usage") or {}
        tokens = usage.get("completion_tokens", tokens)
        for choice in data.get("choices") or []:
            piece = choice.get("message") or choice.get("delta") or {}
            parts.append(piece.get("content") or "")
            finish = choice.get("finish_reason") or finish
            content = (choice.get("logprobs") or {}).get("content") if isinstance(choice.get("logprobs"), dict) else None
            for step in content or []:
                top.append([{"text": t.get("token", ""), "logprob": t.get("logprob")}
                            for t in step.get("top_logprobs") or []])
    return "".join(parts), finish, tokens, (top or None)


class OpenAIBackend(_ServerBackend):
    """Chat completions on an OpenAI-compatible server; ``model`` is sent as the model name.

    The request goes straight over the shared aiohttp session and the reply is read as a JSON
    body or an event stream, whichever the server sends. What each server needs:

    - TGI's Messages API: errors arrive as events inside a 200 stream (classified as status codes);
      a label constraint is ``response_format {type: regex}``.
    - vLLM: rejects a regex response_format (400); the constraint is ``structured_outputs.choice``
      (0.11 and later) or ``guided_choice`` (before).
    - SGLang: rejects it too; the constraint is its ``regex`` field.
    - ``transformers serve``: always streams and rejects (422) fields it does not use, such as
      ``logprobs``, ``response_format`` and ``stop``.

    The server is recognised from ``/info`` (TGI) or ``/v1/models`` ``owned_by`` (vLLM, SGLang).
    A field a server still rejects is dropped for that endpoint with a warning (answers are then
    parsed), and the request is sent again. A reply without text is a protocol error: retried,
    then failed; when most replies are empty the run stops with the likely cause.
    """

    name = "openai"
    #: empty replies seen before "most replies are empty" can stop the run
    EMPTY_MIN = 8

    def __init__(self, model: str, endpoints: list[str], **kwargs):
        super().__init__(model, endpoints, **kwargs)
        self.kinds: dict[str, tuple[str, str | None]] = {}  # url -> (server kind, version)
        self.dropped: dict[str, set[str]] = {url: set() for url in self.endpoints}
        self.replies = 0
        self.empty = 0
        self._endpoint_headers: dict[str, dict] = {}

    def _client_for(self, cls, url):
        return None  # requests go straight over the shared session (see _one)

    async def start(self) -> None:
        await super().start()
        for url in self.endpoints:
            self.kinds[url] = await self._server_kind(url)

    async def _get_json(self, endpoint: str, path: str):
        import aiohttp

        url = f"{self._base(endpoint)}{path}"
        try:
            async with self._session.get(url, headers=self._headers_for(endpoint),
                                         timeout=aiohttp.ClientTimeout(total=10)) as r:
                return await r.json(content_type=None) if r.status == 200 else None
        except Exception as e:  # noqa: BLE001 -- an optional route: absent is an answer too
            if classify(e) is None:  # not the server's answer or the network's failure: a bug
                raise
            logger.debug("no %s: %r", url, e)
            return None

    async def _server_kind(self, url: str) -> tuple[str, str | None]:
        if url in self.info:
            return "tgi", self.info[url].get("version")
        models = await self._get_json(url, "/v1/models")
        owners = {m.get("owned_by") for m in (models or {}).get("data", []) if isinstance(m, dict)}
        for kind in ("vllm", "sglang"):
            if kind in owners:
                version = await self._get_json(url, "/version")
                return kind, (version or {}).get("version")
        return "other", None

    @staticmethod
    def _base(url: str) -> str:
        return url[:-3] if url.endswith("/v1") else url

    def _chat_url(self, url: str) -> str:
        if url.endswith("/chat/completions"):
            return url
        return f"{self._base(url)}/v1/chat/completions"

    def _headers_for(self, url: str) -> dict:
        # resolved once per endpoint: a request only looks them up
        headers = self._endpoint_headers.get(url)
        if headers is None:
            headers = dict(self.headers)
            token = self.tokens.get(url.rstrip("/"))
            if token:
                headers["Authorization"] = f"Bearer {token}"
            self._endpoint_headers[url] = headers
        return headers

    def _constraint(self, url: str, params: dict[str, Any]) -> dict[str, Any]:
        """The label constraint in the form this server accepts (none where it has none)."""
        labels, grammar = params.get("label_names"), params.get("grammar")
        if not (labels or grammar):
            return {}
        kind, version = self.kinds.get(url, ("other", None))
        if kind == "tgi" and grammar:
            return {"response_format": grammar}
        if kind == "vllm" and labels:
            major_minor = tuple(int(x) for x in (version or "0.11").split(".")[:2] if x.isdigit())
            return {"structured_outputs": {"choice": list(labels)}} if major_minor >= (0, 11) else \
                {"guided_choice": list(labels)}
        if kind == "sglang" and grammar and grammar.get("type") == "regex":
            return {"regex": grammar["value"]}
        self._warn_once(url, "constraint", f"the server at {url} has no known constrained-choice form: "
                                           f"LLM label answers are parsed")
        return {}

    def _warn_once(self, url: str, what: str, message: str) -> None:
        if what not in self.dropped[url]:
            self.dropped[url].add(what)
            logger.warning("generate: %s", message)

    def _body(self, url: str, request: Request, params: dict[str, Any]) -> dict[str, Any]:
        greedy = bool(params.get("greedy"))
        body = {"model": self.model, "messages": request.chat, "seed": request.seed,
                "temperature": 0.0 if greedy else params.get("temperature"),
                "top_p": None if greedy else params.get("top_p"),
                "max_tokens": params.get("max_new_tokens"), "stop": params.get("stop") or None}
        if params.get("top_n_tokens"):
            body.update(logprobs=True, top_logprobs=params["top_n_tokens"])
        body.update(self._constraint(url, params))
        # Streaming is the one mode every OpenAI-compatible server speaks (`transformers serve`
        # answers only with a stream); log-probabilities need the plain response
        body["stream"] = not params.get("top_n_tokens")
        return {k: v for k, v in body.items() if v is not None and k not in self.dropped[url]}

    async def _send(self, url: str, request: Request, params: dict[str, Any]) -> Generation:
        import aiohttp

        for _ in range(len(OPTIONAL_FIELDS) + 1):
            body = self._body(url, request, params)
            async with self._session.post(self._chat_url(url), json=body, headers=self._headers_for(url),
                                          timeout=aiohttp.ClientTimeout(total=self.timeout)) as r:
                raw = await r.read()
                status, content_type = r.status, r.headers.get("Content-Type", "")
                retry_after = r.headers.get("Retry-After")
            if status == 200:
                return self._generation(url, raw, content_type)
            message = _error_message(raw)
            rejected = [f for f in OPTIONAL_FIELDS if f in body and f in message] if status in (400, 422) else []
            if not rejected:
                try:
                    wait = float(retry_after) if retry_after else None
                except ValueError:
                    wait = None
                raise RequestError(f"HTTP {status}: {message}", retryable=transient_status(status),
                                   reason=f"http_{status}", status=status, retry_after=wait)
            for field_name in rejected:
                self._warn_once(url, field_name, f"the server at {url} rejects '{field_name}' ({message[:160]}); "
                                                 f"sending without it" + (" (answers are parsed)" if field_name in
                                                 ("response_format", "structured_outputs", "guided_choice",
                                                  "regex") else ""))
        raise RequestError(f"HTTP 400: the server at {url} rejects the request", retryable=False, reason="http_400")

    def _generation(self, url: str, raw: bytes, content_type: str) -> Generation:
        text, finish, tokens, top = read_chat_body(raw, content_type)
        self.replies += 1
        if text or top:  # whitespace is a (poor) generation: cleaning drops it, the server is fine
            return Generation(text, tokens, finish, logprobs=top)
        self.empty += 1
        if self.empty >= self.EMPTY_MIN and self.empty * 2 > self.replies:
            raise RequestError(
                f"{self.empty} of {self.replies} replies from {url} carried no generated text: the server is likely "
                f"not answering chat completions for model '{self.model}' (check generate.model, that the model "
                f"has a chat template, and that the URL is the server's base URL)", retryable=False, reason="empty")
        raise RequestError(f"empty reply: no generated text in the server's answer ({raw[:120]!r})",
                           retryable=True, reason="empty")


def _error_message(raw: bytes) -> str:
    """The message of an error body: OpenAI's {error: {message}}, TGI's {error}, vLLM's
    {message}, FastAPI's {detail}, else the text."""
    text = raw.decode("utf-8", errors="replace")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return " ".join(text.split())[:300]
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict):
            return str(err.get("message", err))
        for key in ("error", "message", "detail"):
            if data.get(key):
                return str(data[key])
    return str(data)[:300]


# ---------------------------------------------------------------------------------------------
# in process


class TransformersBackend(Backend):
    """A local causal LM with a chat template, generating ``batch_size`` prompts per call.

    Sampling is seeded per batch (with the first request's seed), as the authors' code did.
    Random-weight test models need ``min_new_tokens``, else they stop at once.
    """

    name = "transformers"

    def __init__(self, model: str, *, batch_size: int = 16, device: str | None = None,
                 trust_remote_code: bool = False, threads: int | None = None, adapter: str | None = None,
                 torch_dtype: str | None = None, device_map: str | None = None):
        super().__init__(model)
        self.torch_dtype = torch_dtype  # "bfloat16", "float16", "float32" or "auto"; None: the library's default
        self.device_map = device_map  # "auto" spreads a large model over the GPUs (needs accelerate)
        self.adapter = adapter  # a peft LoRA adapter folder (the adapt stage's), merged on load
        self.batch_size = batch_size
        self.threads = threads
        self._saved_threads: int | None = None
        self.device = device
        self.trust_remote_code = trust_remote_code
        self._model = self._tokenizer = None

    async def start(self) -> None:
        if self.threads:
            import torch

            # small models on a busy CPU run many times faster on one thread than on several
            self._saved_threads = torch.get_num_threads()
            torch.set_num_threads(self.threads)
        if self._model is not None:
            return
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from ..config import resolve

        path = resolve(self.model)
        self._tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=self.trust_remote_code)
        self._tokenizer.padding_side = "left"  # decoder-only models continue from the right edge
        if self._tokenizer.pad_token is None:
            self._tokenizer.pad_token = self._tokenizer.eos_token
        kwargs: dict[str, Any] = {"trust_remote_code": self.trust_remote_code}
        if self.torch_dtype:
            import torch

            kwargs["dtype"] = self.torch_dtype if self.torch_dtype == "auto" else getattr(torch, self.torch_dtype)
        if self.device_map:
            kwargs["device_map"] = self.device_map
        self._model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        if self.adapter:
            try:
                from peft import PeftModel
            except ImportError as e:
                raise missing("generate: a LoRA adapter", e, prefer="generate") from None
            # merged once, so generation runs at the base model's speed
            self._model = PeftModel.from_pretrained(self._model, self.adapter).merge_and_unload()
        if self.device and not self.device_map:  # a device map has placed the weights already
            self._model.to(self.device)
        self._model.eval()

    async def close(self) -> None:
        if self._saved_threads:
            import torch

            torch.set_num_threads(self._saved_threads)
            self._saved_threads = None

    async def agenerate(self, requests: list[Request], params: dict[str, Any]) -> list[Generation]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self._generate, requests, params)

    def _generate(self, requests: list[Request], params: dict[str, Any]) -> list[Generation]:
        import torch

        tok = self._tokenizer
        if tok.chat_template:
            texts = [tok.apply_chat_template(r.chat, tokenize=False, add_generation_prompt=True) for r in requests]
        else:
            texts = ["\n\n".join(m["content"] for m in r.chat) + "\n\n" for r in requests]
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self._model.device)
        if params.get("label_names"):
            return self._score_labels(enc, params["label_names"])
        greedy = bool(params.get("greedy"))
        kwargs = {"do_sample": not greedy, "temperature": None if greedy else params.get("temperature"),
                  "top_p": None if greedy else params.get("top_p"),
                  "top_k": None if greedy else (params.get("top_k") or 0),
                  "max_new_tokens": params.get("max_new_tokens"),
                  "min_new_tokens": params.get("min_new_tokens") or None,
                  "no_repeat_ngram_size": params.get("no_repeat_ngram_size") or None,
                  "repetition_penalty": params.get("repetition_penalty"),
                  "pad_token_id": tok.pad_token_id}
        top_n = params.get("top_n_tokens") or 0
        torch.manual_seed(requests[0].seed)
        with torch.inference_mode():
            out = self._model.generate(**enc, **{k: v for k, v in kwargs.items() if v is not None},
                                       output_scores=bool(top_n), return_dict_in_generate=True)
        new = out.sequences[:, enc["input_ids"].shape[1]:]
        tops: list[list | None] = [None] * len(requests)
        if top_n:
            # the server's top_n_tokens, from the processed scores of each step
            steps = [torch.log_softmax(score.float(), dim=-1).topk(top_n, dim=-1) for score in out.scores]
            tops = [[[{"text": tok.decode([int(i)]), "logprob": float(v)}
                      for v, i in zip(step.values[b], step.indices[b])] for step in steps]
                    for b in range(len(requests))]
        gens = []
        for row, top in zip(new, tops):
            n = int((row != tok.pad_token_id).sum())
            text = tok.decode(row, skip_special_tokens=True)
            for stop in params.get("stop") or []:
                text = text.split(stop, 1)[0]
            gens.append(Generation(text, n, "length" if n >= (params.get("max_new_tokens") or 0) else "stop",
                                   logprobs=top))
        return gens


    def _score_labels(self, enc, labels: list[str]) -> list[Generation]:
        """In process, a classification needs no sampling: each label's whole log-probability as
        the answer (the sum over its tokens) is exact, where a server gives only a top-n of first
        tokens (and label names may share their first token)."""
        import torch

        ids, mask = enc["input_ids"], enc["attention_mask"]
        batch, length = ids.shape
        step: list[list[dict]] = [[] for _ in range(batch)]
        for label in labels:
            lab = torch.tensor(self._tokenizer.encode(label, add_special_tokens=False), device=ids.device)
            k = len(lab)
            x = torch.cat([ids, lab.expand(batch, k)], dim=1)
            m = torch.cat([mask, torch.ones(batch, k, dtype=mask.dtype, device=mask.device)], dim=1)
            positions = (m.cumsum(-1) - 1).clamp(min=0)  # left padding: positions start at each row's text
            with torch.inference_mode():
                logits = self._model(input_ids=x, attention_mask=m, position_ids=positions).logits
            logp = torch.log_softmax(logits[:, length - 1:length + k - 1].float(), dim=-1)
            total = logp.gather(-1, lab.expand(batch, k).unsqueeze(-1)).squeeze(-1).sum(-1)
            for b, value in enumerate(total.tolist()):
                step[b].append({"text": label, "logprob": value})
        out = []
        for row in step:
            best = max(row, key=lambda t: t["logprob"])
            out.append(Generation(best["text"], 1, "stop", logprobs=[row]))
        return out


class DummyBackend(Backend):
    """Deterministic sentences from (prompt, seed): same request, same text. For tests."""

    name = "dummy"
    WORDS = ("the hotel staff was friendly and the room was clean city trip museum train ticket movie plot "
             "actors phone battery screen camera council budget policy minister law story night river "
             "village old road market price weather quiet loud slow fast great poor simple bright").split()

    def __init__(self, model: str = "dummy", *, batch_size: int = 8):
        super().__init__(model)
        self.batch_size = batch_size

    @classmethod
    def text_for(cls, prompt: str, seed: int) -> str:
        import hashlib

        rng = random.Random(int(hashlib.sha256(f"{seed}|{prompt}".encode()).hexdigest()[:12], 16))
        words = [rng.choice(cls.WORDS) for _ in range(rng.randint(8, 16))]
        return " ".join(words).capitalize() + "."

    async def agenerate(self, requests: list[Request], params: dict[str, Any]) -> list[Generation]:
        out = []
        for r in requests:
            text = self.text_for(json.dumps(r.chat), r.seed)
            out.append(Generation(text, len(text.split())))
        return out


def make_backend(config, *, model: str) -> Backend:
    """The backend a GenerateConfig asks for."""
    if config.backend == "transformers":
        return TransformersBackend(model, batch_size=config.batch_size, device=config.device,
                                   trust_remote_code=config.trust_remote_code, threads=config.threads,
                                   adapter=config.adapter, torch_dtype=config.torch_dtype,
                                   device_map=config.device_map)
    if config.backend == "dummy":
        return DummyBackend(model, batch_size=config.batch_size)
    import os

    token = os.environ.get(config.token_env) if config.token_env else None
    if token is None:
        from huggingface_hub import get_token

        # what the client would read from the login cache on every request, read once
        token = get_token()
    common = dict(timeout=config.timeout, concurrency=config.concurrency, token=token,
                  token_endpoints=list(config.token_endpoints))
    if config.backend == "tgi":
        return TGIBackend(model, list(config.endpoints), prompt_format=config.prompt_format, details=config.details,
                          adapter_id=config.adapter_id, **common)
    if config.backend == "openai":
        return OpenAIBackend(model, list(config.endpoints), **common)
    raise HfaugError(f"generate: unknown backend '{config.backend}'")

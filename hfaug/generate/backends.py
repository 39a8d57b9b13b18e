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
from dataclasses import dataclass
from typing import Any

from ..errors import HfaugError
from ..prompts import Request

logger = logging.getLogger(__name__)

RETRYABLE_STATUS = {408, 425, 429, 500, 502, 503, 504}

#: chat formats for TGI's raw-prompt route (the Llama-2 chat format is the paper's model's)
PROMPT_FORMATS = {
    "llama2": (
        "{% set sys = messages | selectattr('role', 'equalto', 'system') | map(attribute='content') | list %}"
        "{% for m in messages if m.role != 'system' %}{% if m.role == 'user' %}<s>[INST] "
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
    """A request that failed. ``retryable`` errors (429, 503, timeouts, connection errors,
    malformed bodies) are retried with backoff; the others (422 and the like) end the run."""

    def __init__(self, message: str, *, retryable: bool, reason: str, status: int | None = None,
                 retry_after: float | None = None):
        super().__init__(message)
        self.message = " ".join(str(message).split())
        self.retryable = retryable
        self.reason = reason
        self.status = status
        self.retry_after = retry_after  # seconds the server asked to wait (Retry-After)


class Backend:
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

    def generate(self, prompts: list, **params) -> list[str]:
        """Generate one text per prompt (a string or a list of chat messages), synchronously.
        A ``seed`` parameter seeds the first prompt, the next gets seed + 1, and so on."""
        from .engine import run_requests, run_sync

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
        def __init__(self, *args, session=None, **kwargs):
            super().__init__(*args, **kwargs)
            self._shared_session = session

        def _get_client_session(self, headers=None):
            if self._shared_session is None:
                return super()._get_client_session(headers=headers)
            import aiohttp

            merged = {**self.headers, **(headers or {})}
            return _SessionView(self._shared_session, merged, aiohttp.ClientTimeout(total=self.timeout))

    return PooledAsyncInferenceClient


def classify_error(exc: BaseException) -> RequestError:
    """Map what the client raised to a RequestError (retryable or not), keeping the server's
    message. Unknown exceptions are bugs and are re-raised by the caller."""
    import aiohttp
    from huggingface_hub.errors import InferenceTimeoutError, OverloadedError, ValidationError

    if isinstance(exc, RequestError):
        return exc
    if isinstance(exc, (InferenceTimeoutError, asyncio.TimeoutError, TimeoutError)):
        return RequestError(f"timed out: {exc}", retryable=True, reason="timeout")
    status, payload, headers = None, None, None
    node: BaseException | None = exc
    while node is not None and status is None:
        status = getattr(node, "status", None)
        payload = getattr(node, "response_error_payload", None)
        headers = getattr(node, "headers", None)
        node = node.__cause__ or node.__context__
    retry_after = None
    try:
        retry_after = float(headers.get("Retry-After")) if headers and headers.get("Retry-After") else None
    except (TypeError, ValueError):  # an HTTP date: fall back to the backoff
        retry_after = None
    message = str(exc)
    if isinstance(payload, dict) and payload.get("error"):
        err = payload["error"]
        message = err.get("message", str(err)) if isinstance(err, dict) else str(err)
    if isinstance(exc, OverloadedError):
        status = status or 429
    if isinstance(exc, ValidationError):
        status = status or 422
    if status is not None:
        return RequestError(f"HTTP {status}: {message}", retryable=status in RETRYABLE_STATUS,
                            reason=f"http_{status}", status=status, retry_after=retry_after)
    if isinstance(exc, (aiohttp.ClientConnectionError, ConnectionError, aiohttp.ClientPayloadError)):
        return RequestError(f"connection error: {exc!r}", retryable=True, reason="connection")
    if isinstance(exc, (json.JSONDecodeError, aiohttp.ContentTypeError, KeyError, IndexError, TypeError,
                        ValueError)):
        return RequestError(f"malformed response: {exc!r}", retryable=True, reason="malformed")
    raise exc


class _ServerBackend(Backend):
    """Shared by tgi and openai: one aiohttp session, endpoints picked least-busy first."""

    def __init__(self, model: str, endpoints: list[str], *, timeout: float = 120.0, concurrency: int = 32,
                 headers: dict | None = None, token: str | None = None):
        super().__init__(model)
        if not endpoints:
            raise HfaugError(f"generate: backend '{self.name}' needs at least one URL in generate.endpoints")
        self.endpoints = [url.rstrip("/") for url in endpoints]
        self.timeout = timeout
        self.concurrency = concurrency
        self.headers = headers or {}
        self.token = token
        self._session = None
        self._clients: dict[str, Any] = {}
        self._busy = {url: 0 for url in self.endpoints}
        self.info: dict[str, dict] = {}

    def _client(self, url: str):
        raise NotImplementedError

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
        return cls(model=url, timeout=self.timeout, headers=self.headers, token=self.token, session=self._session)

    async def _read_info(self) -> None:
        """TGI's /info (also served by TGI's Messages API): model id, max concurrency, lengths."""
        import aiohttp

        for url in self.endpoints:
            try:
                async with self._session.get(f"{url}/info", timeout=aiohttp.ClientTimeout(total=10)) as r:
                    if r.status == 200:
                        self.info[url] = await r.json(content_type=None)
            except Exception as e:  # /info is optional (vLLM, SGLang, transformers serve lack it)
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
            gen = await self._one(self._clients[url], request, params)
        except Exception as e:
            raise classify_error(e) from e
        finally:
            self._busy[url] -= 1
        gen.endpoint = url
        return [gen]

    async def _one(self, client, request: Request, params: dict[str, Any]) -> Generation:
        raise NotImplementedError


def _field(item, name: str):
    return item.get(name) if isinstance(item, dict) else getattr(item, name)


class TGIBackend(_ServerBackend):
    """Text Generation Inference's native route: a prompt string rendered from the chat
    messages with ``prompt_format`` (a name in PROMPT_FORMATS or a Jinja chat template)."""

    name = "tgi"

    def __init__(self, model: str, endpoints: list[str], *, prompt_format: str = "llama2", details: bool = False,
                 **kwargs):
        super().__init__(model, endpoints, **kwargs)
        # huggingface_hub parses every generated token's details into dataclasses, which costs
        # about a third of the client's CPU at hundreds of requests/s: ask only when wanted
        self.details = details
        import jinja2

        source = PROMPT_FORMATS.get(prompt_format, prompt_format)
        self._template = jinja2.Environment(keep_trailing_newline=True).from_string(source)

    def render(self, request: Request) -> str:
        return self._template.render(messages=request.chat)

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
        out = await client.text_generation(self.render(request), details=details, do_sample=not greedy,
                                           seed=request.seed, **kwargs)
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


class OpenAIBackend(_ServerBackend):
    """Chat completions on an OpenAI-compatible server; ``model`` is sent as the model name."""

    name = "openai"

    def _client_for(self, cls, url):
        return cls(base_url=url, timeout=self.timeout, headers=self.headers, api_key=self.token,
                   session=self._session)

    async def _one(self, client, request: Request, params: dict[str, Any]) -> Generation:
        greedy = bool(params.get("greedy"))
        kwargs = {"temperature": 0.0 if greedy else params.get("temperature"),
                  "top_p": None if greedy else params.get("top_p"),
                  "max_tokens": params.get("max_new_tokens"), "stop": params.get("stop") or None}
        if params.get("top_n_tokens"):
            kwargs.update(logprobs=True, top_logprobs=params["top_n_tokens"])
        if params.get("grammar"):
            kwargs["response_format"] = params["grammar"]
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        if not params.get("top_n_tokens"):
            # Streaming is the one mode every OpenAI-compatible server speaks (`transformers serve`
            # answers only with a stream); log-probabilities need the plain response.
            parts, finish = [], None
            stream = await client.chat_completion(request.chat, model=self.model, seed=request.seed,
                                                  stream=True, **kwargs)
            async for chunk in stream:
                if not chunk.choices:
                    continue
                delta = chunk.choices[0]
                parts.append(delta.delta.content or "")
                finish = delta.finish_reason or finish
            return Generation("".join(parts), None, finish)
        out = await client.chat_completion(request.chat, model=self.model, seed=request.seed, **kwargs)
        choice = out.choices[0]
        usage = getattr(out, "usage", None)
        top = None
        if getattr(choice, "logprobs", None) and choice.logprobs.content:
            top = [[{"text": _field(t, "token"), "logprob": _field(t, "logprob")} for t in _field(step, "top_logprobs")]
                   for step in choice.logprobs.content]
        return Generation(choice.message.content or "", getattr(usage, "completion_tokens", None),
                          choice.finish_reason, logprobs=top)


# ---------------------------------------------------------------------------------------------
# in process


class TransformersBackend(Backend):
    """A local causal LM with a chat template, generating ``batch_size`` prompts per call.

    Sampling is seeded per batch (with the first request's seed), as the authors' code did.
    Random-weight test models need ``min_new_tokens``, else they stop at once.
    """

    name = "transformers"

    def __init__(self, model: str, *, batch_size: int = 16, device: str | None = None,
                 trust_remote_code: bool = False, threads: int | None = None, adapter: str | None = None):
        super().__init__(model)
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
        self._model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=self.trust_remote_code)
        if self.adapter:
            try:
                from peft import PeftModel
            except ImportError:
                raise HfaugError("generate: a LoRA adapter needs peft: pip install 'hfaug[generate]'") from None
            # merged once, so generation runs at the base model's speed
            self._model = PeftModel.from_pretrained(self._model, self.adapter).merge_and_unload()
        if self.device:
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
                                   adapter=config.adapter)
    if config.backend == "dummy":
        return DummyBackend(model, batch_size=config.batch_size)
    import os

    token = os.environ.get(config.token_env) if config.token_env else None
    if token is None:
        from huggingface_hub import get_token

        # what the client would read from the login cache on every request, read once
        token = get_token()
    common = dict(timeout=config.timeout, concurrency=config.concurrency, token=token)
    if config.backend == "tgi":
        return TGIBackend(model, list(config.endpoints), prompt_format=config.prompt_format, details=config.details,
                          **common)
    if config.backend == "openai":
        return OpenAIBackend(model, list(config.endpoints), **common)
    raise HfaugError(f"generate: unknown backend '{config.backend}'")

"""A Text Generation Inference-protocol server for tests and benchmarks (aiohttp, 127.0.0.1).

Routes (as TGI serves them): ``POST /`` (a list with one generation, or SSE when ``stream``),
``POST /generate``, ``POST /generate_stream`` (server-sent events), ``GET /info``, and the
OpenAI-style ``POST /v1/chat/completions``. Text is deterministic in (prompt, seed); a regex
grammar of alternatives ``(a|b|c)`` (TGI ``grammar``, OpenAI ``response_format``) is honoured,
with top tokens / top logprobs for the answer.

Injectable behaviour (``configure()`` in process, or ``POST /_admin/config``):
``latency`` seconds per request; ``fault_rate`` with ``faults`` drawn from 429, 503, timeout,
malformed, disconnect, 422, 424; ``reject_after`` = N: every generation request after the first N is
answered 422 with ``reject_message``; ``overloaded_first`` = N: the first N get 429, with a
``Retry-After`` header when ``retry_after`` is set. ``GET /_admin/stats`` counts requests (all, by route, by
fault, distinct (prompt, seed) pairs answered).

Strict where the real servers are (TGI 3.3 router source, vLLM 0.11 / SGLang / transformers 4.57 serve):
``POST /`` returns the prompt in front of the generation unless ``return_full_text`` is false
(TGI's compat route defaults it to true for text-generation models); on the chat route a
streaming request's errors (overload, validation, generation) come as an event inside an HTTP
200 stream, ``{"error": {"message", "http_status_code": 422}}`` as TGI sends them; an
``adapter_id`` TGI did not load (``lora_adapters``) gets the base model's answer, silently.
``flavor`` makes the chat route act as another server: ``vllm`` / ``sglang`` (no ``/info``,
``/v1/models`` owned by them, a regex ``response_format`` rejected with 400; vLLM honours
``structured_outputs.choice`` and ``guided_choice``, SGLang its ``regex`` field) or
``transformers`` (``transformers serve``: always streams, 422 for fields it does not use).
``reply`` = ``empty`` answers chat requests with no content; ``nonstream`` answers a streaming
chat request with one JSON body.

Use in a test: ``with TGIServer(latency=0.01) as server: server.url`` (a thread), or as a
process: ``python tests/tgi_server.py --latency 0.05`` prints ``READY <url>``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import random
import re
import threading
import time
from collections import Counter

WORDS = ("the hotel staff was friendly and the room was clean city trip museum train ticket movie plot actors "
         "phone battery screen camera council budget policy minister law story night river village old road "
         "market price weather quiet loud slow fast great poor simple bright garden festival bridge").split()
SCAFFOLDS = ("", "", "Sure! Here is a review: ", "Review: ", '"')


def text_for(prompt: str, seed: int | None) -> str:
    rng = random.Random(int(hashlib.sha256(f"{seed}|{prompt}".encode()).hexdigest()[:12], 16))
    words = [rng.choice(WORDS) for _ in range(rng.randint(8, 16))]
    body = " ".join(words).capitalize() + "."
    scaffold = rng.choice(SCAFFOLDS)
    return f'{scaffold}{body}"' if scaffold == '"' else scaffold + body


class State:
    def __init__(self, latency: float = 0.0, fault_rate: float = 0.0, faults=("429", "503"),
                 timeout_s: float = 5.0, reject_after: int | None = None,
                 reject_message: str = "Input validation error: `temperature` must be strictly positive",
                 max_concurrent_requests: int = 128, max_total_tokens: int = 2048, seed: int = 0,
                 overloaded_first: int = 0, retry_after: float | None = None, flavor: str = "tgi",
                 reply: str = "normal", lora_adapters: tuple = (), model_id: str = "hfaug://tiny/chat-lm"):
        self.flavor = flavor
        self.reply = reply
        self.lora_adapters = list(lora_adapters)
        self.model_id = model_id
        self.bodies: list[dict] = []  # the last chat request bodies, for tests to look at
        self.latency = latency
        self.fault_rate = fault_rate
        self.faults = list(faults)
        self.timeout_s = timeout_s
        self.reject_after = reject_after
        self.reject_message = reject_message
        self.max_concurrent_requests = max_concurrent_requests
        self.max_total_tokens = max_total_tokens
        self.rng = random.Random(seed)
        self.overloaded_first = overloaded_first  # the first N generation requests get 429
        self.retry_after = retry_after  # Retry-After seconds sent with 429 and 503
        self.counts: Counter = Counter()
        self.authorization: Counter = Counter()  # Authorization header (None: absent) -> requests
        self.answered: Counter = Counter()  # (prompt, seed) -> successful answers
        self.generation_requests = 0

    def update(self, **kwargs) -> None:
        for key, value in kwargs.items():
            if key == "seed":
                self.rng = random.Random(value)
            elif not hasattr(self, key):
                raise KeyError(key)
            else:
                setattr(self, key, value)

    def stats(self) -> dict:
        return {"requests": self.generation_requests, "counts": dict(self.counts),
                "distinct_answered": len(self.answered), "answered": sum(self.answered.values()),
                "repeated": sum(v - 1 for v in self.answered.values() if v > 1),
                "authorization": {str(k): v for k, v in self.authorization.items()}}


def build_app(state: State):
    from aiohttp import web

    def error(status: int, message: str, error_type: str | None = None):
        body = {"error": message}
        if error_type:
            body["error_type"] = error_type
        headers = {"Retry-After": str(state.retry_after)} if state.retry_after and status in (429, 503) else None
        return web.json_response(body, status=status, headers=headers)

    async def fault_or_none(request, route: str):
        """Count the request, wait the latency, maybe answer with a fault."""
        state.generation_requests += 1
        state.counts[route] += 1
        state.authorization[request.headers.get("Authorization")] += 1
        n = state.generation_requests
        if state.latency:
            await asyncio.sleep(state.latency)
        if n <= state.overloaded_first:
            state.counts["fault_429"] += 1
            return error(429, "Model is overloaded", "overloaded")
        if state.reject_after is not None and n > state.reject_after:
            state.counts["fault_422"] += 1
            return error(422, state.reject_message, "validation")
        if state.fault_rate and state.faults and state.rng.random() < state.fault_rate:
            kind = state.rng.choice(state.faults)
            state.counts[f"fault_{kind}"] += 1
            if kind == "429":
                return error(429, "Model is overloaded", "overloaded")
            if kind == "503":
                return error(503, "Service Unavailable: the model is loading")
            if kind == "422":
                return error(422, state.reject_message, "validation")
            if kind == "424":  # TGI's GenerationError: a failure on the shard, not the request's fault
                return error(424, "Request failed during generation: CUDA out of memory", "generation")
            if kind == "timeout":
                await asyncio.sleep(state.timeout_s)
                return None
            if kind == "malformed":
                return web.Response(status=200, text='{"generated_text": "trunc', content_type="application/json")
            if kind == "disconnect":
                request.transport.close()
                return web.Response(status=500)
        return None

    def constrained(prompt: str, grammar: dict | None) -> tuple[str, list[tuple[str, float]]] | None:
        """A regex grammar of alternatives '(a|b|c)': answer one of them, with log-probabilities
        that favour an alternative picked by the prompt (as a grammar-constrained TGI would)."""
        if not grammar or grammar.get("type") != "regex":
            return None
        m = re.fullmatch(r"\((.*)\)", grammar.get("value", ""))
        if not m:
            return None
        options = m.group(1).split("|")
        first = int(hashlib.sha256(prompt.encode()).hexdigest()[:8], 16) % len(options)
        scored = [(opt, -0.2 if i == first else -2.0 - i) for i, opt in enumerate(options)]
        return options[first], sorted(scored, key=lambda t: -t[1])

    def generation(prompt: str, params: dict) -> dict:
        seed = params.get("seed")
        state.answered[(prompt, seed)] += 1
        answer = constrained(prompt, params.get("grammar"))
        adapter = params.get("adapter_id")
        # TGI maps an adapter id it did not load to the base model (index 0) without a word
        tuned = f"{prompt}|adapter:{adapter}" if adapter in state.lora_adapters else prompt
        text = answer[0] if answer else text_for(tuned, seed)
        tokens = text.split()
        top_n = params.get("top_n_tokens") or 0
        details = {
            "finish_reason": "eos_token", "generated_tokens": len(tokens), "seed": seed, "prefill": [],
            "tokens": [{"id": i, "text": " " + t, "logprob": -1.0, "special": False} for i, t in enumerate(tokens)],
        }
        if top_n and answer:
            details["top_tokens"] = [[{"id": j, "text": " " + opt, "logprob": lp, "special": False}
                                      for j, (opt, lp) in enumerate(answer[1][:top_n])]]
        elif top_n:
            details["top_tokens"] = [[{"id": j, "text": " " + WORDS[j], "logprob": -1.0 - j, "special": False}
                                      for j in range(top_n)] for _ in tokens]
        return {"generated_text": text, "details": details if params.get("details") else None}

    def validate(params: dict, chat: bool = False):
        temperature = params.get("temperature")
        # TGI's native route wants a positive temperature; the chat route takes 0 (greedy)
        if temperature is not None and (temperature < 0 or (temperature == 0 and not chat)):
            return error(422, "Input validation error: `temperature` must be strictly positive", "validation")
        if (params.get("max_new_tokens") or 0) >= state.max_total_tokens:
            return error(422, f"Input validation error: `max_new_tokens` must be < {state.max_total_tokens}",
                         "validation")
        return None

    async def read_json(request):
        try:
            return await request.json()
        except Exception:
            return None

    async def sse(request, prompt: str, params: dict):
        out = generation(prompt, {**params, "details": True})
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        tokens = out["details"]["tokens"]
        for i, token in enumerate(tokens):
            last = i == len(tokens) - 1
            full = (prompt if params.get("return_full_text") else "") + out["generated_text"]
            event = {"index": i, "token": token, "generated_text": full if last else None,
                     "details": {"finish_reason": "eos_token", "generated_tokens": len(tokens),
                                 "seed": params.get("seed")} if last else None}
            await response.write(f"data:{json.dumps(event)}\n\n".encode())
        await response.write_eof()
        return response

    async def handle(request, route: str, stream: bool | None = None):
        body = await read_json(request)
        if not isinstance(body, dict) or not isinstance(body.get("inputs"), str):
            state.counts["bad_request"] += 1
            return error(422, "Failed to deserialize the JSON body: missing field `inputs`", "validation")
        params = body.get("parameters") or {}
        bad = validate(params)
        if bad is not None:
            state.generation_requests += 1
            state.counts["fault_422"] += 1
            return bad
        fault = await fault_or_none(request, route)
        if fault is not None:
            return fault
        if route == "/" and params.get("return_full_text") is None:
            # TGI's compat route: the default by pipeline tag, true for text-generation models
            params = {**params, "return_full_text": True}
        if stream if stream is not None else body.get("stream"):
            return await sse(request, body["inputs"], params)
        out = generation(body["inputs"], params)
        if params.get("return_full_text"):
            out["generated_text"] = body["inputs"] + out["generated_text"]
        if out["details"] is None:
            del out["details"]
        return web.json_response([out] if route == "/" else out)

    async def root(request):
        return await handle(request, "/")

    async def generate(request):
        return await handle(request, "/generate", stream=False)

    async def generate_stream(request):
        return await handle(request, "/generate_stream", stream=True)

    def stream_error(message: str):
        """TGI's chat route: every error of a streaming request is an event in a 200 stream."""
        async def send(request):
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            event = {"error": {"message": message, "http_status_code": 422}}
            await response.write(f"data:{json.dumps(event)}\n\n".encode())
            await response.write_eof()
            return response
        return send

    def flavor_rejects(body: dict):
        """What vLLM, SGLang and transformers serve refuse before generating."""
        fmt = body.get("response_format")
        if state.flavor in ("vllm", "sglang") and isinstance(fmt, dict) and fmt.get("type") not in (
                "text", "json_object", "json_schema", "structural_tag"):
            return web.json_response({"object": "error", "type": "BadRequestError", "code": 400, "message": (
                "1 validation error: response_format.type Input should be 'text', 'json_object', 'json_schema' "
                "or 'structural_tag'")}, status=400)
        if state.flavor == "transformers":
            unused = sorted(set(body) & {"logprobs", "top_logprobs", "response_format", "stop", "n"})
            if unused:
                return web.json_response({"detail": f"Unused fields in the request: {set(unused)}"}, status=422)
        return None

    def flavor_grammar(body: dict):
        """The label constraint in the form this flavor honours."""
        if state.flavor == "tgi":
            return body.get("response_format")
        if state.flavor == "vllm":
            choice = (body.get("structured_outputs") or {}).get("choice") or body.get("guided_choice")
            return {"type": "regex", "value": "(" + "|".join(choice) + ")"} if choice else None
        if state.flavor == "sglang" and body.get("regex"):
            return {"type": "regex", "value": body["regex"]}
        return None

    async def chat(request):
        body = await read_json(request)
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            return error(422, "Failed to deserialize the JSON body: missing field `messages`", "validation")
        state.bodies = (state.bodies + [body])[-50:]
        stream = bool(body.get("stream")) or state.flavor == "transformers"  # transformers serve always streams
        rejected = flavor_rejects(body)
        if rejected is not None:
            state.counts["rejected"] += 1
            return rejected
        bad = validate({"temperature": body.get("temperature"), "max_new_tokens": body.get("max_tokens")}, chat=True)
        if bad is not None:
            state.generation_requests += 1
            state.counts["fault_422"] += 1
            if stream and state.flavor == "tgi":
                return await stream_error(json.loads(bad.body)["error"])(request)
            return bad
        fault = await fault_or_none(request, "/v1/chat/completions")
        if fault is not None:
            if stream and state.flavor == "tgi" and fault.status in (422, 424, 429):
                return await stream_error(json.loads(fault.body)["error"])(request)
            return fault
        prompt = json.dumps(body["messages"], sort_keys=True)
        top_n = body.get("top_logprobs") if body.get("logprobs") else 0
        adapter = body.get("model") if body.get("model") not in (None, "tgi") else None  # TGI: model = adapter
        out = generation(prompt, {"seed": body.get("seed"), "details": True, "grammar": flavor_grammar(body),
                                  "top_n_tokens": top_n, "adapter_id": adapter})
        if state.reply == "empty":
            out["generated_text"] = ""
            out["details"]["tokens"] = [{"id": 0, "text": "", "logprob": -1.0, "special": False}]
        n = out["details"]["generated_tokens"]
        if stream and state.reply != "nonstream":  # TGI's Messages API streams chat.completion.chunk events
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            tokens = out["details"]["tokens"]
            for i, token in enumerate(tokens):
                last = i == len(tokens) - 1
                chunk = {"id": "chatcmpl-test", "object": "chat.completion.chunk", "created": int(time.time()),
                         "model": body.get("model") or "hfaug/tgi-test", "system_fingerprint": "test",
                         "choices": [{"index": 0, "delta": {"role": "assistant", "content": token["text"]},
                                      "logprobs": None, "finish_reason": "stop" if last else None}]}
                await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
            return response
        logprobs = None
        if top_n:
            logprobs = {"content": [{"token": t["text"], "logprob": t["logprob"],
                                     "top_logprobs": [{"token": c["text"], "logprob": c["logprob"]} for c in step]}
                                    for t, step in zip(out["details"]["tokens"], out["details"]["top_tokens"])]}
        return web.json_response({
            "id": "chatcmpl-test", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model") or "hfaug/tgi-test", "system_fingerprint": "test",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": out["generated_text"]},
                         "logprobs": logprobs, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": len(prompt.split()), "completion_tokens": n,
                      "total_tokens": n + len(prompt.split())},
        })

    async def info(request):
        if state.flavor != "tgi":
            return web.json_response({"detail": "Not Found"}, status=404)
        return web.json_response({
            "model_id": state.model_id, "model_sha": None, "model_pipeline_tag": "text-generation",
            "max_concurrent_requests": state.max_concurrent_requests, "max_best_of": 2,
            "max_stop_sequences": 4, "max_input_tokens": state.max_total_tokens // 2,
            "max_total_tokens": state.max_total_tokens, "validation_workers": 2, "max_client_batch_size": 4,
            "router": "text-generation-router", "version": "3.3.6-test",
        })

    async def models(request):
        owner = {"vllm": "vllm", "sglang": "sglang"}.get(state.flavor, "hfaug")
        return web.json_response({"object": "list", "data": [
            {"id": state.model_id, "object": "model", "created": 0, "owned_by": owner}]})

    async def version(request):
        if state.flavor in ("vllm", "sglang"):
            return web.json_response({"version": "0.11.0" if state.flavor == "vllm" else "0.5.4"})
        return web.json_response({"detail": "Not Found"}, status=404)

    async def admin_config(request):
        try:
            state.update(**(await request.json()))
        except (KeyError, TypeError) as e:
            return error(400, f"unknown setting {e}")
        return web.json_response({"ok": True})

    async def admin_stats(request):
        return web.json_response(state.stats())

    app = web.Application()
    app.router.add_post("/", root)
    app.router.add_post("/generate", generate)
    app.router.add_post("/generate_stream", generate_stream)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/info", info)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/version", version)
    app.router.add_post("/_admin/config", admin_config)
    app.router.add_get("/_admin/stats", admin_stats)
    return app


class TGIServer:
    """The server on a free port of 127.0.0.1, in a background thread with its own event loop."""

    def __init__(self, **settings):
        self.state = State(**settings)
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner = None

    def start(self) -> "TGIServer":
        self._thread.start()
        self.url = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=30)
        return self

    async def _start(self) -> str:
        from aiohttp import web

        self._runner = web.AppRunner(build_app(self.state), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def configure(self, **settings) -> None:
        self._loop.call_soon_threadsafe(lambda: self.state.update(**settings))
        asyncio.run_coroutine_threadsafe(asyncio.sleep(0), self._loop).result(timeout=10)

    def stats(self) -> dict:
        return asyncio.run_coroutine_threadsafe(self._stats(), self._loop).result(timeout=10)

    async def _stats(self) -> dict:
        return self.state.stats()

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def __enter__(self) -> "TGIServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--fault-rate", type=float, default=0.0)
    parser.add_argument("--faults", default="429,503")
    args = parser.parse_args()
    from aiohttp import web

    state = State(latency=args.latency, fault_rate=args.fault_rate, faults=args.faults.split(","))

    async def serve():
        runner = web.AppRunner(build_app(state), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", args.port)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        print(f"READY http://127.0.0.1:{port}", flush=True)
        await asyncio.Event().wait()

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()

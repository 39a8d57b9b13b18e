"""hfaug against servers that behave like the real ones: TGI's defaults and stream errors, vLLM's,
SGLang's and `transformers serve`'s chat routes, empty replies, adapters and where the token goes.
The stand-in (tests/tgi_server.py) is strict on each point as the real server is."""

from __future__ import annotations

import json
import logging
import sqlite3
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tgi_server import TGIServer  # noqa: E402

from hfaug.errors import HfaugError  # noqa: E402
from hfaug.generate import CleanConfig, GenerateConfig, generate  # noqa: E402
from hfaug.generate.backends import PROMPT_FORMATS, TGIBackend  # noqa: E402
from hfaug.generate.cache import RequestCache  # noqa: E402
from hfaug.generate.classify import classify  # noqa: E402
from hfaug.prompts import Request  # noqa: E402
from hfaug.tasks import get_task  # noqa: E402

SENTIMENT = get_task("sentiment")


def config(url: str, **kw) -> GenerateConfig:
    base = dict(backend="tgi", endpoints=[url], n_per_class=3, progress=False, max_retries=2, backoff=0.01,
                clean=CleanConfig(min_chars=1, near_duplicates=False))
    return GenerateConfig(**{**base, **kw})


def ok_rows(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT COUNT(*) FROM requests WHERE status = 'ok'").fetchone()[0]


# ---------------------------------------------------------------------------------------------
# TGI's native route


def test_tgi_generations_do_not_carry_their_prompt(tmp_path):
    with TGIServer() as server:
        out, _, _ = generate(config(server.url, prompt_format="plain"), SENTIMENT, seed=1)
    assert len(out["raw"]) == 9
    # TGI's POST / defaults return_full_text to true: without return_full_text=false every
    # output would begin with the rendered prompt (the plain format joins messages with blank lines)
    assert not any("\n\n" in o for o in out["raw"]["output"])
    assert all(len(o.split()) <= 20 for o in out["raw"]["output"])


def test_llama2_format_has_no_literal_bos_and_auto_reads_the_chat_template(tmp_path):
    import jinja2

    text = jinja2.Environment().from_string(PROMPT_FORMATS["llama2"]).render(
        messages=[{"role": "system", "content": "S"}, {"role": "user", "content": "U"}])
    assert not text.startswith("<s>") and text.startswith("[INST] <<SYS>>")
    request = Request("review", None, 0, (("system", "S"), ("user", "Tell me")), 1)
    with TGIServer() as server:  # its /info names hfaug://tiny/chat-lm, whose template uses <|user|>
        backend = TGIBackend("tgi", [server.url])
        from hfaug.generate.engine import run_sync

        run_sync(backend.start())
        rendered = backend.render(request)
        run_sync(backend.close())
        assert "<|user|>" in rendered and "Tell me" in rendered and not rendered.startswith("<s>")
    with TGIServer(model_id="nobody/unknown-model") as server:
        with pytest.raises(HfaugError, match="chat template is not available.*set generate.prompt_format"):
            generate(config(server.url), SENTIMENT, seed=1)


def test_424_generation_errors_are_retried(tmp_path):
    with TGIServer(fault_rate=0.4, faults=["424"], seed=3) as server:
        out, _, metrics = generate(config(server.url, prompt_format="plain", max_retries=6), SENTIMENT, seed=1)
        assert server.stats()["counts"].get("fault_424", 0) > 0
    assert len(out["raw"]) == 9 and metrics["requests"].get("retry_http_424", 0) > 0


def test_an_adapter_tgi_did_not_load_is_refused(tmp_path):
    with TGIServer(lora_adapters=["me/good-adapter"]) as server:
        with pytest.raises(HfaugError, match="answers exactly as without it.*--lora-adapters me/typo"):
            generate(config(server.url, prompt_format="plain", adapter_id="me/typo"), SENTIMENT, seed=1)
        out, _, _ = generate(config(server.url, prompt_format="plain", adapter_id="me/good-adapter"), SENTIMENT, seed=1)
        assert len(out["raw"]) == 9


def test_the_token_is_resolved_once_per_backend_not_per_request(monkeypatch):
    """huggingface_hub reads the login token (file or environment) for the api key and again for the
    headers of every request unless the client holds one; hfaug resolves it at backend start."""
    import huggingface_hub.inference._providers._common as common
    import huggingface_hub.inference._providers.hf_inference as hf_inference
    import huggingface_hub.utils._headers as headers

    from hfaug.generate import backends

    reads = []
    real = common.get_token

    def counted():
        reads.append(1)
        return real()

    for module in (common, hf_inference, headers):
        monkeypatch.setattr(module, "get_token", counted)
    monkeypatch.setattr(backends, "get_token", counted, raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with TGIServer() as server:
        backend = TGIBackend("m", [server.url], prompt_format="plain")
        out, _, _ = generate(config(server.url, prompt_format="plain", n_per_class=10), SENTIMENT, seed=1,
                             backend=backend)
        assert server.stats()["authorization"] == {"None": 30}  # and the placeholder is never sent
    assert len(out["raw"]) == 30 and reads == []


def test_a_prompt_is_rendered_once_per_distinct_messages():
    backend = TGIBackend("m", ["http://127.0.0.1:1"], prompt_format="llama2")
    chats = [(("system", "Be brief."), ("user", f"Write review {i % 3}.")) for i in range(30)]
    rendered = [backend.render(Request("review", "positive", i, chat, seed=i)) for i, chat in enumerate(chats)]
    assert len(backend._rendered) == 3  # one template render per distinct message tuple
    assert rendered[4] == rendered[1] == "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nWrite review 1. [/INST]"


def test_the_token_goes_only_where_it_belongs(tmp_path, monkeypatch):
    from hfaug.generate.backends import HUB_HOST, HUB_HOST_SUFFIXES, token_for

    monkeypatch.setenv("HF_TOKEN", "hf_secret_value")
    for backend in ("tgi", "openai"):
        with TGIServer() as server:
            generate(config(server.url, backend=backend, prompt_format="plain"), SENTIMENT, seed=1)
            assert server.stats()["authorization"] == {"None": 9}, backend  # a local server the recipe did not name
            generate(config(server.url, backend=backend, prompt_format="plain", token_endpoints=[server.url]),
                     SENTIMENT, seed=2)
            assert server.stats()["authorization"]["Bearer hf_secret_value"] == 9, backend
    # Hub hosts are only named, never reached: token_for reads the URL and opens no connection
    assert token_for(f"https://{HUB_HOST}", "t") == "t"
    assert token_for(f"https://router{HUB_HOST_SUFFIXES[0]}/v1", "t") == "t"
    assert token_for(f"https://x.endpoints{HUB_HOST_SUFFIXES[-1]}", "t") == "t"
    assert token_for(f"http://{HUB_HOST}.evil.example", "t") is None
    assert token_for(f"https://evil{HUB_HOST}", "t") is None  # a look-alike host, not a subdomain
    assert token_for("https://gpu-box.example:8080", "t") is None
    assert token_for("https://gpu-box.example:8080", "t", ["https://gpu-box.example:8080/"]) == "t"
    with pytest.raises(HfaugError, match="plain http to another host"):
        token_for("http://gpu-box.example:8080", "t", ["http://gpu-box.example:8080"])


# ---------------------------------------------------------------------------------------------
# OpenAI-compatible chat routes


def test_tgi_chat_stream_errors_are_classified_like_status_codes(tmp_path):
    # overload inside a 200 stream: retried
    with TGIServer(overloaded_first=4) as server:
        out, _, metrics = generate(config(server.url, backend="openai"), SENTIMENT, seed=1)
        assert len(out["raw"]) == 9 and metrics["requests"]["retry_http_429"] == 4
    # a validation error inside the stream: the run stops with one line quoting TGI
    with TGIServer(reject_after=2) as server:
        with pytest.raises(HfaugError, match="rejected a request.*Input validation error"):
            generate(config(server.url, backend="openai"), SENTIMENT, seed=1, cache_dir=tmp_path / "c")
        assert ok_rows(tmp_path / "c" / "requests.sqlite") == 2


@pytest.mark.parametrize("flavor, field", [("vllm", "structured_outputs"), ("sglang", "regex"), ("tgi", "response_format")])
def test_llm_labels_use_each_servers_constraint(flavor, field):
    import datasets

    data = datasets.Dataset.from_dict({"text": ["great room", "awful trip", "it was a train", "nice film"]})
    with TGIServer(flavor=flavor) as server:
        from hfaug.generate.backends import OpenAIBackend

        labels, stats = classify(data, SENTIMENT, OpenAIBackend("m", [server.url]), progress=False)
        assert all(field in body for body in server.state.bodies), flavor
        assert server.stats()["counts"].get("rejected", 0) == 0
    assert stats["failed"] == 0 and stats["unparsed"] == 0
    assert all(a in SENTIMENT.labels for a in labels["llm_answer"])  # held to the label names
    assert stats["from_logprobs"] == 4


def test_a_rejected_constraint_falls_back_to_parsing_with_a_warning(caplog):
    import datasets

    from hfaug.generate.backends import OpenAIBackend

    data = datasets.Dataset.from_dict({"text": ["great room", "awful trip"]})
    with TGIServer(flavor="vllm") as server:
        backend = OpenAIBackend("m", [server.url])
        from hfaug.generate.engine import run_sync

        async def go():
            await backend.start()
            backend.kinds[server.url] = ("tgi", None)  # misrecognised: sends TGI's regex response_format
            from hfaug.generate.classify import aclassify

            try:
                return await aclassify(data, SENTIMENT, backend, progress=False)
            finally:
                await backend.close()

        with caplog.at_level(logging.WARNING):
            labels, stats = run_sync(go())
        # rejected once per request already in flight, then sent without it
        assert 1 <= server.stats()["counts"]["rejected"] <= 2
    assert stats["failed"] == 0 and len(labels) == 2
    assert "rejects 'response_format'" in caplog.text and "answers are parsed" in caplog.text


def test_transformers_serve_streams_are_read_and_unused_fields_dropped(tmp_path):
    import datasets

    from hfaug.generate.backends import OpenAIBackend

    with TGIServer(flavor="transformers") as server:
        out, _, metrics = generate(config(server.url, backend="openai", stop=["\n\n"]), SENTIMENT, seed=1)
        assert len(out["data"]) == 9 and metrics["requests"].get("failed", 0) == 0
        data = datasets.Dataset.from_dict({"text": ["great room", "awful trip"]})
        labels, stats = classify(data, SENTIMENT, OpenAIBackend("m", [server.url]), progress=False)
    # logprobs are refused by transformers serve: the streamed answer is read and parsed instead
    assert stats["failed"] == 0 and len(labels) == 2 and all(labels["llm_answer"])


def test_empty_replies_are_failures_never_cached_and_stop_the_run(tmp_path):
    cache = tmp_path / "c" / "requests.sqlite"
    with TGIServer(reply="empty") as server:
        with pytest.raises(HfaugError, match="carried no generated text.*check generate.model"):
            generate(config(server.url, backend="openai", n_per_class=6), SENTIMENT, seed=1, cache_dir=tmp_path / "c")
        assert ok_rows(cache) == 0
        # the server is fixed: a plain rerun sends the requests again
        server.configure(reply="normal")
        out, _, metrics = generate(config(server.url, backend="openai", n_per_class=6), SENTIMENT, seed=1,
                                   cache_dir=tmp_path / "c")
    assert len(out["raw"]) == 18 and metrics["requests"]["sent"] == 18 and ok_rows(cache) == 18


def test_a_body_answered_to_a_streaming_request_is_read(tmp_path):
    with TGIServer(reply="nonstream") as server:
        out, _, _ = generate(config(server.url, backend="openai"), SENTIMENT, seed=1)
    assert len(out["raw"]) == 9 and all(o.strip() for o in out["raw"]["output"])


def test_cache_keeps_no_empty_success_and_refresh_resends(tmp_path):
    path = tmp_path / "r.sqlite"
    with RequestCache(path) as cache:
        cache.put("a", {"text": ""})
        cache.put("b", {"text": "fine"})
        cache._db.execute("INSERT INTO requests VALUES ('old', 'ok', '{\"text\": \"\"}', NULL, 1, 0)")  # older version
        assert cache.get_many(["a", "b", "old"]) == {"b": {"text": "fine"}}
        assert cache.counts() == {"ok": 2, "failed": 1}
    with RequestCache(path, refresh=True) as cache:
        assert cache.get_many(["b"]) == {}
    with TGIServer() as server:
        section = dict(prompt_format="plain")
        generate(config(server.url, **section), SENTIMENT, seed=1, cache_dir=tmp_path / "g")
        generate(config(server.url, **section), SENTIMENT, seed=1, cache_dir=tmp_path / "g")
        assert server.stats()["requests"] == 9
        generate(config(server.url, refresh_cache=True, **section), SENTIMENT, seed=1, cache_dir=tmp_path / "g")
        assert server.stats()["requests"] == 18


def test_unparseable_llm_labels_are_not_cached(tmp_path):
    import datasets

    from hfaug.generate.backends import OpenAIBackend

    data = datasets.Dataset.from_dict({"text": ["great room", "awful trip"]})
    with TGIServer(flavor="transformers") as server, RequestCache(tmp_path / "l.sqlite") as cache:
        labels, stats = classify(data, SENTIMENT, OpenAIBackend("m", [server.url]), cache=cache, progress=False)
        unparsed = stats["unparsed"]
        assert cache.counts().get("ok", 0) == 2 - unparsed
    assert unparsed > 0  # free text from a server without constraints: some answers name no label


# ---------------------------------------------------------------------------------------------
# in process


def test_in_process_backend_takes_dtype_and_device_map(tiny):
    import torch

    from hfaug.generate.backends import TransformersBackend
    from hfaug.generate.engine import run_sync

    backend = TransformersBackend(str(tiny["chat-lm"]), torch_dtype="bfloat16", device_map="cpu")
    run_sync(backend.start())
    assert backend._model.dtype == torch.bfloat16 and str(backend._model.device) == "cpu"
    cfg = GenerateConfig(torch_dtype="float16", device_map="auto")
    from hfaug.generate.backends import make_backend

    made = make_backend(cfg, model="m")
    assert made.torch_dtype == "float16" and made.device_map == "auto"
    assert json.dumps(cfg.sampling("review"))  # the dtype is not a sampling parameter

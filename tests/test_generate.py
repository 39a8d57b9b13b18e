"""The generate stage against a TGI-protocol server on 127.0.0.1 (tests/tgi_server.py), the
tiny in-process chat LM, and the cleaning rules."""

from __future__ import annotations

import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tgi_server import TGIServer  # noqa: E402

from hfaug import cli  # noqa: E402
from hfaug.config import load_recipe  # noqa: E402
from hfaug.errors import HfaugError  # noqa: E402
from hfaug.generate import CleanConfig, GenerateConfig, generate  # noqa: E402
from hfaug.generate.clean import clean_text, duplicates  # noqa: E402
from hfaug.pipeline import run_stage  # noqa: E402
from hfaug.prompts import domain_for, premise_requests, templates_for  # noqa: E402
from hfaug.runs import Run  # noqa: E402
from hfaug.tasks import get_task  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SOURCES = {"sentiment": "hfaug://data/demo/sentiment_en.jsonl", "nli": "hfaug://data/demo/nli_en.jsonl"}


@pytest.fixture
def tgi():
    with TGIServer() as server:
        yield server


def recipe_dict(tmp_path, task: str, generate_section: dict) -> dict:
    return {"name": "gen", "task": task, "seed": 7, "output_dir": str(tmp_path / "runs"),
            "source": {"path": SOURCES[task]}, "generate": {"progress": False, **generate_section}}


def make_run(tmp_path, task: str, generate_section: dict) -> Run:
    run = Run(load_recipe(recipe_dict(tmp_path, task, generate_section)))
    run_stage(run, "source")
    return run


def write_recipe(tmp_path, task: str, generate_section: dict) -> str:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe_dict(tmp_path, task, generate_section)))
    assert cli.main(["-q", "source", "--config", str(path)]) == 0
    return str(path)


def cache_counts(run: Run) -> dict:
    with sqlite3.connect(run.cache_dir("generate") / "requests.sqlite") as db:
        return dict(db.execute("SELECT status, COUNT(*) FROM requests GROUP BY status").fetchall())


# ---------------------------------------------------------------------------------------------
# end to end against the TGI-protocol server


def test_offline_mode_is_on_and_local_endpoints_still_work(tgi, tmp_path):
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    run = make_run(tmp_path, "sentiment", {"backend": "tgi", "endpoints": [tgi.url], "n_per_class": 2})
    manifest, _ = run_stage(run, "generate")
    assert manifest["rows_out"]["data"] == 6


def test_sentiment_end_to_end_cache_and_growing_n(tgi, tmp_path):
    section = {"backend": "tgi", "endpoints": [tgi.url], "n_per_class": 10, "concurrency": 8}
    run = make_run(tmp_path, "sentiment", section)
    manifest, skipped = run_stage(run, "generate")
    assert not skipped and tgi.stats()["requests"] == 30
    data = run.load("generate")
    task = get_task("sentiment")
    assert data.column_names == ["id", "task", "text", "lang", "origin", "prompt_label", "gen_model", "gen_params"]
    assert data.features["prompt_label"].names == list(task.labels)
    assert len(data) == 30 and len(set(data["id"])) == 30
    assert sorted(data["prompt_label"]) == sorted([0, 1, 2] * 10)
    assert set(data["lang"]) == {"en"} and set(data["origin"]) == {"synthetic"}
    assert set(data["gen_model"]) == {"hfaug://tiny/chat-lm"}  # from /info
    params = [json.loads(p) for p in data["gen_params"]]
    assert len({p["seed"] for p in params}) == 30 and {p["temperature"] for p in params} == {1.5}
    # the server wraps some texts in scaffolding ("Review: ...", quotes): the clean text has none
    raw = run.load("generate", "raw")
    assert len(raw) == 30 and any(o.startswith(("Review:", "Sure!", '"')) for o in raw["output"])
    assert not any(t.startswith(("Review", "Sure", '"')) for t in data["text"])
    assert manifest["metrics"]["requests"]["sent"] == 30 and manifest["rows_in"] == 30

    # forced rerun: everything comes from the cache
    run_stage(run, "generate", force=True)
    assert tgi.stats()["requests"] == 30
    # a larger n sends only the new requests and keeps the old rows
    run2 = Run(load_recipe(recipe_dict(tmp_path, "sentiment", {**section, "n_per_class": 15})))
    run_stage(run2, "generate")
    assert tgi.stats()["requests"] == 45
    assert set(data["id"]) < set(run2.load("generate")["id"])


def test_nli_premises_then_hypotheses_over_two_endpoints(tmp_path):
    with TGIServer() as a, TGIServer() as b:
        run = make_run(tmp_path, "nli", {"backend": "tgi", "endpoints": [a.url, b.url], "n_premises": 20,
                                         "concurrency": 4})
        manifest, _ = run_stage(run, "generate")
        sa, sb = a.stats()["requests"], b.stats()["requests"]
    assert sa + sb == 20 + 60 and sa > 10 and sb > 10  # both servers served
    data = run.load("generate")
    assert len(data) == 60 and len(set(data["id"])) == 60
    assert "premise" in data.column_names and "hypothesis" in data.column_names and "text" not in data.column_names
    by_premise = {}
    for row in data:
        by_premise.setdefault(row["premise"], []).append(row["prompt_label"])
    assert len(by_premise) == 20 and all(sorted(v) == [0, 1, 2] for v in by_premise.values())
    params = json.loads(data[0]["gen_params"])
    assert params["premise_params"]["temperature"] == 1.7 and "premise_seed" in params
    raw = run.load("generate", "raw")
    assert sorted(set(raw["kind"])) == ["hypothesis", "premise"] and len(raw) == 80
    assert manifest["metrics"]["requests"]["premises_kept"] == 20


def test_openai_route_sentiment(tgi, tmp_path):
    run = make_run(tmp_path, "sentiment", {"backend": "openai", "model": "served-model", "endpoints": [tgi.url],
                                           "n_per_class": 3})
    run_stage(run, "generate")
    assert tgi.stats()["counts"] == {"/v1/chat/completions": 9}
    assert len(run.load("generate")) == 9


def test_resume_after_kill_sends_only_missing_requests(tgi, tmp_path):
    tgi.configure(latency=0.05)
    path = write_recipe(tmp_path, "sentiment", {"backend": "tgi", "endpoints": [tgi.url], "n_per_class": 40,
                                                "concurrency": 4})
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "hfaug", "-q", "generate", "--config", path], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while tgi.stats()["requests"] < 40 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert proc.poll() is None, "the generation finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    first = tgi.stats()["requests"]
    run = Run(load_recipe(path))
    assert run.manifest("generate") is None  # the killed stage left no output
    cached = cache_counts(run).get("ok", 0)
    assert 0 < cached < 120

    tgi.configure(latency=0.0)
    assert cli.main(["-q", "generate", "--config", path]) == 0
    assert tgi.stats()["requests"] - first == 120 - cached  # only the missing ones
    data = run.load("generate")
    assert len(data) == 120 and len(set(data["id"])) == 120
    assert tgi.stats()["distinct_answered"] == 120


KILLED_MID_RUN = r"""
import os, signal, sys
from hfaug.generate.backends import DummyBackend
from hfaug.generate.cache import RequestCache
from hfaug.generate.engine import run_requests, run_sync
from hfaug.prompts import Request

class KilledAfter(DummyBackend):
    # answers 25 requests, then the process is killed (kill -9) while asking for the 26th
    async def agenerate(self, requests, params):
        self.calls = getattr(self, "calls", 0) + 1
        if self.calls > 25:
            os.kill(os.getpid(), signal.SIGKILL)
        return await super().agenerate(requests, params)

requests = [Request("review", "positive", i, (("user", f"review {i}"),), i) for i in range(40)]
cache = RequestCache(sys.argv[1], commit_rows=10, commit_seconds=3600)
run_sync(run_requests(KilledAfter("m", batch_size=1), requests, {}, cache=cache, concurrency=1, progress=False))
"""


def test_cache_commits_in_batches_and_a_rerun_resends_only_the_uncommitted(tmp_path):
    from hfaug.generate.backends import DummyBackend
    from hfaug.generate.cache import RequestCache
    from hfaug.generate.engine import run_requests, run_sync
    from hfaug.prompts import Request

    path = tmp_path / "a" / "requests.sqlite"

    def committed() -> int:  # what another process sees: only committed rows
        with sqlite3.connect(path) as db:
            return db.execute("SELECT COUNT(*) FROM requests WHERE status = 'ok'").fetchone()[0]

    # one commit per batch of rows, not per row; flush and close commit the rest
    with RequestCache(path, commit_rows=10, commit_seconds=3600) as cache:
        for i in range(25):
            cache.put(f"k{i}", {"text": f"t{i}"})
        assert committed() == 20 and cache.commits == 2
        cache.flush()
        assert committed() == 25 and cache.commits == 3
        cache.put("k25", {"text": "t25"})
    assert committed() == 26
    path = tmp_path / "b" / "requests.sqlite"
    path.parent.mkdir()

    # a run killed after 25 replies keeps its two committed batches (20 rows) and loses the open one
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", KILLED_MID_RUN, str(path)], env=env, cwd=ROOT, timeout=120,
                          capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert committed() == 20
    # the rerun sends only what was not committed
    requests = [Request("review", "positive", i, (("user", f"review {i}"),), i) for i in range(40)]
    with RequestCache(path) as cache:
        outcome = run_sync(run_requests(DummyBackend("m", batch_size=1), requests, {}, cache=cache, concurrency=1,
                                        progress=False))
    assert outcome.stats["cached"] == 20 and outcome.stats["sent"] == 20
    assert len(outcome.results) == 40 and committed() == 40


def test_ten_percent_faults_complete_and_count_retries(tgi, tmp_path):
    tgi.configure(fault_rate=0.1, faults=["429", "503", "timeout", "malformed", "disconnect"], timeout_s=1.0, seed=3)
    run = make_run(tmp_path, "sentiment", {"backend": "tgi", "endpoints": [tgi.url], "n_per_class": 30,
                                           "concurrency": 8, "timeout": 0.5, "backoff": 0.01, "max_retries": 8})
    manifest, _ = run_stage(run, "generate")
    stats = tgi.stats()
    faults = sum(v for k, v in stats["counts"].items() if k.startswith("fault_"))
    assert faults >= 3
    requests = manifest["metrics"]["requests"]
    assert requests["retries"] == faults and requests.get("failed", 0) == 0
    assert requests["sent"] == 90 + faults
    data = run.load("generate")
    assert len(data) == 90 and len(set(data["id"])) == 90
    assert not manifest["dropped"]


def test_422_ends_with_one_line_and_keeps_finished_rows(tgi, tmp_path, capsys):
    msg = "Input validation error: `inputs` tokens + `max_new_tokens` must be <= 4096"
    tgi.configure(reject_after=10, reject_message=msg)
    path = write_recipe(tmp_path, "sentiment", {"backend": "tgi", "endpoints": [tgi.url], "n_per_class": 10,
                                                "concurrency": 1})
    capsys.readouterr()
    assert cli.main(["-q", "generate", "--config", path]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and msg in err and "422" in err
    assert tgi.stats()["counts"]["fault_422"] == 1  # not retried, nothing sent after it
    run = Run(load_recipe(path))
    assert cache_counts(run) == {"ok": 10, "failed": 1} and run.manifest("generate") is None

    tgi.configure(reject_after=None)
    assert cli.main(["-q", "generate", "--config", path]) == 0
    assert tgi.stats()["requests"] == 11 + 20
    assert len(run.load("generate")) == 30


def test_requests_failing_after_retries_are_recorded_and_retried_next_run(tgi, tmp_path):
    tgi.configure(fault_rate=1.0, faults=["503"])
    run = make_run(tmp_path, "sentiment", {"backend": "tgi", "endpoints": [tgi.url], "n_per_class": 2,
                                           "backoff": 0.001, "max_retries": 2})
    with pytest.raises(HfaugError, match="6 of 6 reviews requests still failed after 2 retries"):
        run_stage(run, "generate")
    assert tgi.stats()["requests"] == 6 * 3 and cache_counts(run) == {"failed": 6}
    tgi.configure(fault_rate=0.0)
    run_stage(run, "generate")
    assert cache_counts(run) == {"ok": 6} and len(run.load("generate")) == 6


def test_dry_run_sends_a_few_requests_and_writes_nothing(tgi, tmp_path, capsys):
    path = write_recipe(tmp_path, "nli", {"backend": "tgi", "endpoints": [tgi.url], "n_premises": 50,
                                          "dry_run_requests": 2})
    capsys.readouterr()
    assert cli.main(["-q", "generate", "--config", path, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "premises: 50 requests" in out and "hypotheses: 150 requests" in out and "total: ~" in out
    assert tgi.stats()["requests"] == 4
    run = Run(load_recipe(path))
    assert run.manifest("generate") is None and not (run.root / "cache" / "generate" / "requests.sqlite").exists()
    # after a partial run, the estimate counts only what is still missing
    tgi.configure(reject_after=4 + 10)
    assert cli.main(["-q", "generate", "--config", path, "--generate.concurrency", "1"]) == 2
    tgi.configure(reject_after=None)
    capsys.readouterr()
    assert cli.main(["-q", "generate", "--config", path, "--dry-run", "--generate.concurrency", "1"]) == 0
    assert "premises: 40 requests (10 more already cached)" in capsys.readouterr().out


def test_dry_run_asks_what_the_run_asks_with_few_shot_prompts(tgi, tmp_path, capsys):
    path = write_recipe(tmp_path, "sentiment", {"backend": "tgi", "endpoints": [tgi.url], "n_per_class": 2,
                                                "few_shot": 1, "dry_run_requests": 1})
    assert cli.main(["-q", "generate", "--config", path]) == 0
    sent = tgi.stats()["requests"]
    capsys.readouterr()
    assert cli.main(["-q", "generate", "--config", path, "--dry-run"]) == 0
    # the sample carries the run's few-shot examples, so every request is found in the cache
    assert "reviews: 0 requests (6 more already cached)" in capsys.readouterr().out
    assert tgi.stats()["requests"] == sent + 1


def test_server_protocol_stream_and_list_routes(tgi):
    """The test server speaks TGI as huggingface_hub's client expects (the SSE stream included)."""
    import asyncio

    from huggingface_hub import AsyncInferenceClient

    async def go():
        client = AsyncInferenceClient(model=tgi.url)
        tokens = [t async for t in await client.text_generation("Hi", stream=True, details=True, seed=1,
                                                                    return_full_text=False)]
        full = await client.text_generation("Hi", seed=1, details=True, top_n_tokens=2, return_full_text=False)
        return tokens, full

    tokens, full = asyncio.run(go())
    assert tokens[-1].generated_text == full.generated_text
    assert "".join(t.token.text for t in tokens).strip() == full.generated_text
    assert len(full.details.top_tokens[0]) == 2


# ---------------------------------------------------------------------------------------------
# the in-process backend, config errors


def test_transformers_backend_on_the_tiny_chat_lm(tiny, tmp_path):
    config = GenerateConfig(backend="transformers", model=str(tiny["chat-lm"]), n_per_class=4, min_new_tokens=8,
                            max_new_tokens=12, threads=1, batch_size=6, progress=False,
                            clean=CleanConfig(min_chars=1, near_duplicates=False))
    out, dropped, metrics = generate(config, get_task("sentiment"), seed=1, cache_dir=tmp_path / "c")
    raw = out["raw"]
    assert len(raw) == 12 and all(8 <= n <= 12 for n in raw["generated_tokens"])
    assert len(out["data"]) + sum(dropped.values()) == 12
    again, _, metrics2 = generate(config, get_task("sentiment"), seed=1, cache_dir=tmp_path / "c")
    assert metrics2["requests"]["cached"] == 12 and metrics2["requests"].get("sent", 0) == 0
    assert again["raw"]["output"] == raw["output"]
    fresh, _, _ = generate(config, get_task("sentiment"), seed=1, cache_dir=tmp_path / "other")
    assert fresh["raw"]["output"] == raw["output"]  # seeded: same text without the cache


def test_transformers_serve_openai_route(tiny, tmp_path):
    """A real OpenAI-compatible server: `transformers serve` on the tiny chat LM."""
    pytest.importorskip("openai", reason="`transformers serve` needs the 'openai' package (transformers[serving]: "
                                         "openai, fastapi, uvicorn, pydantic), not installed in this environment")
    import shutil
    import urllib.error
    import urllib.request

    exe = shutil.which("transformers") or str(Path(sys.executable).with_name("transformers"))
    from conftest import free_port

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([exe, "serve", "--host", "127.0.0.1", "--port", str(port), "--force-model",
                             str(tiny["chat-lm"]), "--log-level", "error"], stdout=subprocess.DEVNULL,
                            stderr=(tmp_path / "serve.log").open("w"), env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        deadline = time.time() + 90
        while True:
            try:
                urllib.request.urlopen(f"{url}/v1/models", timeout=2)
                break
            except urllib.error.HTTPError:
                break  # any HTTP answer means the server is up
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    pytest.fail("transformers serve did not start")
                time.sleep(0.5)
        run = make_run(tmp_path, "sentiment", {"backend": "openai", "model": str(tiny["chat-lm"]), "endpoints": [url],
                                               # `transformers serve` generates one request at a time
                                               "n_per_class": 2, "max_new_tokens": 16, "concurrency": 1,
                                               "max_retries": 1, "backoff": 0.1,
                                               "clean": {"min_chars": 1}})
        try:
            manifest, _ = run_stage(run, "generate")
        except Exception as e:  # show what the server said
            pytest.fail(f"{e}\n--- transformers serve log ---\n{(tmp_path / 'serve.log').read_text()[-3000:]}")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    requests = manifest["metrics"]["requests"]
    assert requests["sent"] == 6 and requests.get("failed", 0) == 0
    assert manifest["rows_out"]["data"] + sum(manifest["dropped"].values()) == 6


@pytest.mark.parametrize("section, message", [
    ({"backend": "tgi"}, "needs generate.endpoints"),
    ({"templates": {"postive": "x"}}, "did you mean 'positive'"),
    ({"templates": {"premise": "about {topic}"}}, "uses {topic}"),
    ({"bakend": "tgi"}, "unknown key 'generate.bakend'"),
    ({"endpoints": ["localhost:8080"], "backend": "tgi"}, "not an http(s) URL"),
])
def test_config_errors_are_one_line(tmp_path, capsys, section, message):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe_dict(tmp_path, "sentiment", section)))
    assert cli.main(["generate", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err


# ---------------------------------------------------------------------------------------------
# prompts and cleaning


def test_domain_mix_and_stable_requests():
    mix = {"travel": 0.4, "government": 0.4, "fiction": 0.2}
    domains = [domain_for(i, mix) for i in range(100)]
    assert abs(domains.count("travel") - 40) <= 2 and abs(domains.count("fiction") - 20) <= 2
    templates = templates_for("nli")
    small, large = premise_requests(10, templates, mix, 1), premise_requests(30, templates, mix, 1)
    assert large[:10] == small  # raising n only appends requests


@pytest.mark.parametrize("raw, expected", [
    ("Sure! Here is a review:\nThe hotel was lovely and the staff kind.", "The hotel was lovely and the staff kind."),
    ('Here you go: "The battery lasts two full days."', "The battery lasts two full days."),
    ("[INST] ignore [/INST] Review: A dull film with a weak plot.</s>", "A dull film with a weak plot."),
    ("1. The museum opens at nine   every day.", "The museum opens at nine every day."),
    ("The café was great!!!  Loved it ,really.", "The caf was great! Loved it, really."),
    ("-- ** The train was late again today.", "The train was late again today."),
    ("Too short.", None),
    ("Random\x04 weights\x16 emit control characters.", "Random weights emit control characters."),
])
def test_cleaning_rules(raw, expected):
    text, reason = clean_text(raw, CleanConfig())
    assert text == expected
    assert (reason is None) == (expected is not None)


PREMISE = "The museum opens at nine every morning."


@pytest.mark.parametrize("raw, kind, expected", [
    # 'Review' is dropped as a word only
    ("Reviewers say the phone is fast and the screen is bright.", "review",
     "Reviewers say the phone is fast and the screen is bright."),
    ("Review 2: The screen is bright and the phone is fast.", "review", "The screen is bright and the phone is fast."),
    # the authors' order: the text after the last colon first, then inside quotes
    ('Here is a review of the "Galaxy S23": The camera is superb and the battery lasts.', "review",
     "The camera is superb and the battery lasts."),
    # a bare preamble is no row
    ("Sure! Here is a review:", "review", None),
    ("Certainly! Here's one for you:\n", "review", None),
    # hypotheses: the first colon segment, never the premise quoted back
    ("Sure! Here is a sentence: The museum is closed at night. Note: it is short.", "hypothesis",
     "The museum is closed at night. Note"),
    (f'The sentence "{PREMISE}" implies "The museum has morning opening hours."', "hypothesis",
     "The museum has morning opening hours."),
    (f"Sentence: {PREMISE}\nHypothesis: The museum is open in the morning.", "hypothesis",
     "The museum is open in the morning."),
    (f'Given "{PREMISE}", here is a contradiction: "The museum never opens before noon."', "hypothesis",
     "The museum never opens before noon."),
])
def test_cleaning_rules_as_the_authors_ran_them(raw, kind, expected):
    text, reason = clean_text(raw, CleanConfig(), kind=kind, premise=PREMISE if kind == "hypothesis" else None)
    assert text == expected
    if expected is None:
        assert reason == "preamble_only"


def test_a_hypothesis_that_is_only_its_premise_is_never_kept():
    for raw in (f'Here it is: "{PREMISE}"', f"Hypothesis: {PREMISE}", f'"{PREMISE}"'):
        assert clean_text(raw, kind="hypothesis", premise=PREMISE) == (None, "hypothesis_copies_premise"), raw


def test_cleaning_rules_can_be_switched_off():
    raw = "Note: the café opens at 9:30 daily for everyone."
    assert clean_text(raw)[0] == "daily for everyone."  # the paper's colon rule, as it was
    off = CleanConfig(after_last_colon=False, ascii_only=False, strip_scaffolding=False)
    assert clean_text(raw, off)[0] == "Note: the café opens at 9:30 daily for everyone."
    assert clean_text("x" * 17)[1] == "too_short" and clean_text("x" * 18)[0] == "x" * 18
    assert clean_text("a b c d e f g h i j k", CleanConfig(min_words=12))[1] == "too_few_words"


def test_duplicates_exact_and_near():
    texts = ["The hotel room was clean and the staff were friendly.",
             "the hotel room was clean, and the staff were friendly!",  # exact after normalising
             "The hotel room was clean and the staff were very friendly.",  # near
             "A completely different sentence about trains in winter."]
    assert duplicates(texts) == {1: "exact_duplicate", 2: "near_duplicate"}
    assert duplicates(texts, CleanConfig(near_duplicates=False)) == {1: "exact_duplicate"}
    assert duplicates(texts, CleanConfig(dedupe=False, near_duplicates=False)) == {}


def test_few_shot_examples_come_from_the_source_data(tgi, tmp_path):
    run = make_run(tmp_path, "sentiment", {"backend": "tgi", "endpoints": [tgi.url], "n_per_class": 3,
                                           "few_shot": 1})
    run_stage(run, "generate")
    source_ids = set(run.load("source", "train")["id"])
    params = [json.loads(p) for p in run.load("generate")["gen_params"]]
    shown = [p["few_shot_ids"] for p in params]
    assert all(len(ids) == 3 and set(ids) <= source_ids for ids in shown)  # one per class
    assert len({tuple(ids) for ids in shown}) > 1  # each request gets its own examples


def test_lora_adapter_from_the_adapt_stage_is_loaded(tiny, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from hfaug.runs import StageResult, execute, write_json_atomic

    base = str(tiny["chat-lm"])

    def fake_adapt(ctx):  # what the adapt stage leaves: adapter/ and adapt.json
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                               LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
        model.save_pretrained(ctx.out_dir / "adapter")
        write_json_atomic(ctx.out_dir / "adapt.json", {"adapter": "adapter", "base_model": "hfaug://tiny/chat-lm",
                                                        "base_model_path": base})
        return StageResult()

    section = {"backend": "transformers", "model": base, "n_per_class": 2, "min_new_tokens": 6, "max_new_tokens": 6,
               "threads": 1, "clean": {"min_chars": 1, "near_duplicates": False}}
    data = recipe_dict(tmp_path, "sentiment", section)
    plain = generate(GenerateConfig(**{**section, "clean": CleanConfig(**section["clean"])}), get_task("sentiment"),
                     seed=7).datasets["raw"]["output"]
    data["adapt"] = {"model": base}
    run = Run(load_recipe(data))
    run_stage(run, "source")
    execute(run, "adapt", fake_adapt, None, [])
    manifest, _ = run_stage(run, "generate")
    assert manifest["metrics"]["adapter"].endswith("adapter")
    adapted = run.load("generate", "raw")["output"]
    assert len(adapted) == len(plain) == 6 and adapted != plain

    bad = recipe_dict(tmp_path, "sentiment", {**section, "model": "some/other-model"})
    bad["adapt"] = {"model": base}
    run2 = Run(load_recipe(bad), root=run.root)
    with pytest.raises(HfaugError, match="trained its adapter on 'hfaug://tiny/chat-lm'"):
        run_stage(run2, "generate", force=True)


@pytest.mark.parametrize("backend", ["tgi", "openai"])
def test_llm_labels_constrained_answer_and_soft_labels(tgi, tmp_path, backend):
    run = make_run(tmp_path, "sentiment", {"backend": backend, "endpoints": [tgi.url], "n_per_class": 4,
                                           "llm_labels": True, "model": "m"})
    manifest, _ = run_stage(run, "generate")
    data, labels = run.load("generate"), run.load("generate", "llm_labels")
    names = ["negative", "neutral", "positive"]
    assert labels["id"] == data["id"] and labels.features["llm_label"].names == names
    for row in labels:
        k = row["llm_label"]
        assert row["llm_answer"] == names[k]  # the grammar-constrained answer is the hard label
        # the server's top tokens give the answer -0.2 and option i -2 - i (tgi_server.constrained):
        # renormalised over the labels in the task's order, which a permuted or one-hot label would miss
        weights = [math.exp(-0.2 if i == k else -2.0 - i) for i in range(3)]
        assert row["llm_soft_label"] == pytest.approx([w / sum(weights) for w in weights], abs=1e-6)
    stats = manifest["metrics"]["llm_labels"]
    assert stats["from_logprobs"] == 12 and stats["unparsed"] == 0
    # the agreement is the share of rows whose LLM label is the prompt's label, recounted by id
    prompt_label = dict(zip(data["id"], data["prompt_label"]))
    agree = [prompt_label[i] == v for i, v in zip(labels["id"], labels["llm_label"])]
    assert stats["agreement_with_prompt_label"] == pytest.approx(sum(agree) / len(agree), abs=1e-4)


def test_llm_labels_in_process_are_exact_label_probabilities(tiny):
    import datasets

    from hfaug.generate.backends import TransformersBackend
    from hfaug.generate.classify import classify, parse_answer, soft_label

    ds = datasets.Dataset.from_dict({"text": ["I loved this hotel.", "The train was late and dirty."]})
    out, stats = classify(ds, get_task("sentiment"), TransformersBackend(str(tiny["chat-lm"]), threads=1),
                          progress=False)
    assert stats["from_logprobs"] == 2 and len(out) == 2
    # each label's whole log-probability as the answer, one unpadded prompt at a time: the stage
    # scores both (left-padded) prompts in one batch, so wrong positions or masks would show here
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hfaug.generate.classify import classification_requests

    task = get_task("sentiment")
    tok = AutoTokenizer.from_pretrained(tiny["chat-lm"])
    model = AutoModelForCausalLM.from_pretrained(tiny["chat-lm"]).eval()
    assert tok.chat_template
    for request, probs, label in zip(classification_requests(ds, task), out["llm_soft_label"], out["llm_label"]):
        prompt = tok(tok.apply_chat_template(request.chat, tokenize=False, add_generation_prompt=True),
                     add_special_tokens=False)["input_ids"]
        scores = []
        for name in task.labels:
            answer = tok.encode(name, add_special_tokens=False)
            with torch.no_grad():
                logits = model(torch.tensor([prompt + answer])).logits[0]
            logp = torch.log_softmax(logits[len(prompt) - 1:-1].float(), dim=-1)
            scores.append(float(sum(logp[j, t] for j, t in enumerate(answer))))
        expected = torch.softmax(torch.tensor(scores, dtype=torch.float64), dim=0).tolist()
        assert probs == pytest.approx(expected, rel=1e-3)  # relative: the small probabilities count too
        assert label == max(range(3), key=expected.__getitem__)
    assert parse_answer("Positive.", ["negative", "neutral", "positive"]) == 2
    assert parse_answer("I think it is neutral", ["negative", "neutral", "positive"]) == 1
    assert parse_answer("no idea", ["negative", "neutral", "positive"]) == -1
    probs = soft_label([[{"text": " pos", "logprob": math.log(0.6)}, {"text": "neg", "logprob": math.log(0.2)}]],
                       ["negative", "neutral", "positive"])
    assert probs == pytest.approx([0.25, 0.0, 0.75])


def test_server_info_sizes_concurrency_and_checks_lengths(tmp_path):
    with TGIServer(max_concurrent_requests=3, max_total_tokens=200) as server:
        run = make_run(tmp_path, "sentiment", {"backend": "tgi", "endpoints": [server.url], "n_per_class": 2})
        with pytest.raises(HfaugError, match="max_total_tokens=200"):
            run_stage(run, "generate")  # the default max_new_tokens (256) cannot fit
        assert server.stats()["requests"] == 0

    from hfaug.generate.backends import TGIBackend
    from hfaug.generate.engine import run_sync

    with TGIServer(max_concurrent_requests=3) as a, TGIServer(max_concurrent_requests=4) as b:
        backend = TGIBackend("m", [a.url, b.url])

        async def go():
            await backend.start()
            await backend.close()

        run_sync(go())
        assert backend.max_concurrency == 7 and backend.model_id == "hfaug://tiny/chat-lm"


def test_backend_generate_is_the_plain_interface(tgi):
    from hfaug.generate.backends import DummyBackend, TGIBackend

    prompts = ["Write a short review.", [{"role": "user", "content": "Write a sentence."}]]
    dummy = DummyBackend().generate(prompts, seed=3)
    assert dummy == DummyBackend().generate(prompts, seed=3) != DummyBackend().generate(prompts, seed=4)
    texts = TGIBackend("m", [tgi.url], prompt_format="plain").generate(prompts, seed=3, max_new_tokens=20)
    assert len(texts) == 2 and all(texts) and tgi.stats()["requests"] == 2


def test_nli_drops_are_counted_and_hypotheses_deduplicated_per_premise(tmp_path):
    """A server that repeats itself: equal premises and equal hypotheses are dropped, by reason."""
    from hfaug.generate.backends import Backend, Generation

    class Repetitive(Backend):
        name = "repetitive"

        async def agenerate(self, requests, params):
            out = []
            for r in requests:
                if r.kind == "premise":  # premises 0 and 1 are the same sentence
                    out.append(Generation(premises[max(r.index, 1)]))
                elif r.label in ("entailment", "neutral"):  # neutral repeats the entailment hypothesis
                    out.append(Generation(f"Something happened at {r.meta['premise'][:12]}."))
                else:
                    out.append(Generation("Nobody met."))  # too short
            return out

    premises = ["", "The council voted on the budget on Monday.", "A quiet river runs past the old mill.",
                "She bought two train tickets to the coast."]
    config = GenerateConfig(backend="dummy", n_premises=4, progress=False)
    out, dropped, metrics = generate(config, get_task("nli"), backend=Repetitive("r"))
    assert dropped == {"premise_exact_duplicate": 3, "exact_duplicate": 3, "too_short": 3}
    assert len(out["data"]) + sum(dropped.values()) == metrics["rows_requested"] == 12
    assert out["data"]["prompt_label"] == [0, 0, 0]  # the entailment hypotheses came first
    raw = out["raw"]
    assert sorted(d for d in raw["dropped"] if d) == ["exact_duplicate"] * 4 + ["too_short"] * 3


def test_per_label_counts_for_extra_neutral_generations(tgi, tmp_path):
    run = make_run(tmp_path, "sentiment", {"backend": "tgi", "endpoints": [tgi.url], "n_per_class": 2,
                                           "n_by_label": {"neutral": 5}})
    run_stage(run, "generate")
    labels = run.load("generate")["prompt_label"]
    assert sorted(labels) == [0, 0, 1, 1, 1, 1, 1, 2, 2] and tgi.stats()["requests"] == 9
    bad = make_run(tmp_path / "b", "sentiment", {"backend": "tgi", "endpoints": [tgi.url], "n_by_label": {"neutrl": 5}})
    with pytest.raises(HfaugError, match="label 'neutrl' in generate.n_by_label is not a sentiment label"):
        run_stage(bad, "generate")


def test_retry_after_from_the_server_is_honoured(tgi):
    import asyncio

    from hfaug.generate.backends import TGIBackend
    from hfaug.generate.engine import RetryPolicy, run_requests

    tgi.configure(overloaded_first=1, retry_after=0.6)
    backend = TGIBackend("m", [tgi.url], prompt_format="plain")
    requests = premise_requests(1, templates_for("nli"), {"travel": 1.0}, 1)

    async def go():
        await backend.start()
        try:
            start = time.perf_counter()
            outcome = await run_requests(backend, requests, {"max_new_tokens": 8}, cache=None, progress=False,
                                         retry=RetryPolicy(max_retries=3, backoff=0.001))
            return outcome, time.perf_counter() - start
        finally:
            await backend.close()

    outcome, elapsed = asyncio.run(go())
    assert outcome.stats["retry_http_429"] == 1 and len(outcome.results) == 1
    assert elapsed >= 0.6  # the backoff alone would have waited about a millisecond


def test_held_out_rows_are_set_aside_before_the_pool_cap(tgi, tmp_path):
    """The paper's split: shuffle, hold rows out, then cap the candidate pool."""
    section = {"backend": "tgi", "endpoints": [tgi.url], "n_per_class": 6, "clean": {"min_chars": 1}}
    full = make_run(tmp_path / "a", "sentiment", {**section, "max_rows": None})
    run_stage(full, "generate")
    everything = full.load("generate")["id"]
    run = make_run(tmp_path / "b", "sentiment", {**section, "held_out": 4, "max_rows": 10})
    manifest, _ = run_stage(run, "generate")
    held, pool = run.load("generate", "held_out")["id"], run.load("generate")["id"]
    assert len(held) == 4 and len(pool) == min(10, len(everything) - 4)
    assert not set(held) & set(pool) and set(held) | set(pool) <= set(everything)
    assert held == everything[:4]  # the same seeded shuffle: the first rows are held out
    assert manifest["dropped"].get("over_max_rows", 0) == len(everything) - 4 - len(pool)


# ---------------------------------------------------------------------------------------------
# the authors' prompts, verbatim (train_llama2/generate_*_zeroshot*.py)

AUTHORS_REVIEW_SYSTEM = ("You are a user providing reviews on travels, movies and various electronic gadgets. Please "
                         "only generate the review without any additional content before or after.")
AUTHORS_NEUTRAL_SYSTEM = ("You are a user who talks about travels, movies and various electronic gadgets in a "
                          "fact-based, and non-opinionated manner. Please don't involve emotional language or bias. "
                          "Please only generate the description without any additional content before or after.")
AUTHORS_POSITIVE = ("Please generate a single review in not more than two short sentences on one of the system "
                    "specified products/movies/travels indicating a positive sentiment.")
AUTHORS_NEUTRAL = ("Please generate a single and very short sentence on one of the system specified "
                   "products/movies/travels. It should provide very general information.")
AUTHORS_STRICT = ("Please generate a single and very short sentence on one of the system specified "
                  "products/movies/travels. It should provide very general information, strictly do not use "
                  "positive words or adjectives.")
AUTHORS_ENTAIL_SYSTEM = ("Please generate a single sentence that is implied from the sentence provided by the user. "
                         "The sentence generated could encompass either a portion or the entirety of the information "
                         "contained in the given sentence. Please ensure the generations are grammatically correct. "
                         "Please only share the generation without any additional content before or after.")


def test_sentiment_prompts_are_the_authors_per_label_with_the_strict_neutral_run():
    from hfaug.generate import GenerateConfig
    from hfaug.prompts import sentiment_requests

    config = GenerateConfig()
    task = get_task("sentiment")
    requests = sentiment_requests(task.labels, 1, templates_for("sentiment"), config.domains, 0, n_strict_neutral=2)
    chats = {(r.label, r.meta.get("variant")): r.chat for r in requests}
    assert chats["positive", None] == [{"role": "system", "content": AUTHORS_REVIEW_SYSTEM},
                                       {"role": "user", "content": AUTHORS_POSITIVE}]
    assert chats["neutral", None] == [{"role": "system", "content": AUTHORS_NEUTRAL_SYSTEM},
                                      {"role": "user", "content": AUTHORS_NEUTRAL}]
    assert chats["neutral", "strict"][1]["content"] == AUTHORS_STRICT
    assert len(requests) == 5 and len({r.seed for r in requests}) == 5
    # the news variant: one system turn for every label
    news = sentiment_requests(task.labels, 1, templates_for("sentiment", prompt_set="news"), config.domains, 0)
    assert {r.chat[0]["content"] for r in news} == {
        "You are a user providing reviews on news across a range of subjects, including politics, sports, food, "
        "entertainment, education, lifestyle, travel, fashion, agriculture etc. Please only generate the review "
        "without any additional content before or after."}
    assert {r.label: r for r in news}["neutral"].chat[1]["content"].endswith("on news in one of the system specified subjects, indicating "
                                                                   "neither negative nor positive sentiment.")
    # a recipe's own system turn replaces every label's (unless it names one too)
    mine = templates_for("sentiment", {"system": "Mine about {domains}.", "system@positive": "Pos."})
    own = {r.label: r.chat[0]["content"] for r in sentiment_requests(task.labels, 1, mine, ["x"], 0)}
    assert own == {"negative": "Mine about x.", "neutral": "Mine about x.", "positive": "Pos."}
    assert config.top_k == 50


def test_nli_prompts_are_the_authors_per_domain_and_per_label():
    from hfaug.prompts import hypothesis_requests

    templates = templates_for("nli")
    mix = {"travel": 0.5, "government": 0.5}
    premises = {r.meta["domain"]: r.chat for r in premise_requests(4, templates, mix, 1)}
    assert premises["travel"] == [
        {"role": "system", "content": "You are a user who talks about other people's traveling experiences. Please "
                                      "only generate the traveling experience in a single sentence without any "
                                      "additional content before or after."},
        {"role": "user", "content": "Please generate a single and short sentence."}]
    assert premises["government"][1]["content"] == ("Please generate a single and short sentence belonging to the "
                                                    "government domain.")
    hyps = {r.label: r.chat for r in hypothesis_requests([(0, "travel", "It rained.")], get_task("nli").labels,
                                                         templates, 1)}
    assert hyps["entailment"] == [{"role": "system", "content": AUTHORS_ENTAIL_SYSTEM},
                                  {"role": "user", "content": "Sentence: It rained."}]  # no quotes
    assert hyps["contradiction"][0]["content"].startswith("Please generate a single sentence that logically "
                                                          "contradicts")
    # a user's own per-domain premise prompt and per-label hypothesis instruction
    own = templates_for("nli", {"premise@fiction": "Tell a {domain} line.", "hypothesis_system@neutral": "N."})
    fiction = premise_requests(5, own, {"fiction": 1.0}, 1)[0]
    assert fiction.chat[1]["content"] == "Tell a fiction line."
    assert hypothesis_requests([(0, "x", "P.")], ["neutral"], own, 1)[0].chat[0]["content"] == "N."


@pytest.mark.parametrize("templates, message", [
    ({"positive@x": "{premise}"}, "uses {premise}"),
    ({"negtive@strict": "x"}, "did you mean 'negative'"),
    ({"entailment@x": "x"}, "only system@<label>"),
])
def test_qualified_template_keys_are_checked(tmp_path, capsys, templates, message):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe_dict(tmp_path, "sentiment", {"templates": templates})))
    assert cli.main(["generate", "--config", str(path)]) == 2
    assert message in capsys.readouterr().err


def test_no_repeat_ngram_size_is_recorded_as_not_applied_on_servers(tgi, tmp_path, caplog):
    import logging

    run = make_run(tmp_path, "sentiment", {"backend": "tgi", "endpoints": [tgi.url], "n_per_class": 1,
                                           "no_repeat_ngram_size": 2})
    with caplog.at_level(logging.WARNING, logger="hfaug.generate"):
        manifest, _ = run_stage(run, "generate")
    warnings = [r.getMessage() for r in caplog.records if "not applied" in r.getMessage()]
    assert len(warnings) == 1 and "no_repeat_ngram_size=2" in warnings[0]
    assert manifest["metrics"]["not_applied"] == {"no_repeat_ngram_size": 2}
    params = json.loads(run.load("generate")[0]["gen_params"])
    assert "no_repeat_ngram_size" not in params and params["top_k"] == 50  # what was sent
    from hfaug.publish import provenance
    from hfaug.runs import StageContext

    ctx = StageContext(run=run, stage="publish", config=None, out_dir=tmp_path)
    sampling = provenance(ctx, {})["generator"]["sampling"]
    assert sampling["no_repeat_ngram_size"].startswith("2 (not applied")

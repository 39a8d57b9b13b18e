"""Reliability as users meet it: one run per run directory, data mistakes and storage failures as
one line, dead endpoints caught early, counts that survive resumed runs, no leftovers."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import free_port  # noqa: E402
from tgi_server import TGIServer  # noqa: E402

from hfaug import cli  # noqa: E402
from hfaug.config import load_recipe  # noqa: E402
from hfaug.errors import HfaugError  # noqa: E402
from hfaug.generate.clean import clean_text  # noqa: E402
from hfaug.pipeline import run_stage  # noqa: E402
from hfaug.runs import LOCK, Run, StageResult, execute  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SOURCE = "hfaug://data/demo/sentiment_en.jsonl"


def write_recipe(tmp_path, **sections) -> Path:
    recipe = {"name": "rel", "task": "sentiment", "seed": 7, "output_dir": str(tmp_path / "runs"),
              "source": {"path": SOURCE}, **sections}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def all_files_in_place(run_root: Path) -> list[str]:
    """Stage folders whose manifest names a missing file (none in a valid run directory)."""
    broken = []
    for manifest in run_root.glob("*/manifest.json"):
        files = json.loads(manifest.read_text())["files"]
        broken += [f"{manifest.parent.name}/{f}" for f in files if not (manifest.parent / f).exists()]
    return broken


# ---------------------------------------------------------------------------------------------
# one run per run directory


def test_a_second_run_exits_2_naming_the_holder_then_waits_and_takes_over_a_dead_holders_lock(tmp_path, capsys):
    path = write_recipe(tmp_path)
    root = tmp_path / "runs" / "rel"
    root.mkdir(parents=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from hfaug.runs import run_lock\n"
                               "with run_lock(Path(sys.argv[1])):\n    print('READY', flush=True); time.sleep(120)",
         str(root)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "READY"
        assert cli.main(["-q", "run", str(path)]) == 2
        err = one_line(capsys)
        assert f"pid {holder.pid}" in err and "--wait" in err and str(root) in err
        assert not (root / "source").exists()

        done: list[int] = []
        waiter = threading.Thread(target=lambda: done.append(cli.main(["-q", "run", str(path), "--wait"])))
        waiter.start()
        time.sleep(1.0)
        assert waiter.is_alive() and not done  # waiting for the holder
        holder.send_signal(signal.SIGKILL)  # dies holding it: the lock is taken over
        waiter.join(timeout=120)
        assert done == [0]
    finally:
        holder.kill()
        holder.wait()
    assert Run(load_recipe(path)).manifest("source")["rows_out"]["train"] > 0
    assert (root / LOCK).read_text() == ""  # released


def test_two_runs_on_one_recipe_keep_the_run_directory_valid(tmp_path, tiny, capsys):
    path = write_recipe(
        tmp_path,
        generate={"backend": "dummy", "n_per_class": 20, "progress": False},
        teacher={"model": "hfaug://tiny/encoder", "epochs": 1, "batch_size": 16, "eval_steps": None})
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    runs = [subprocess.Popen([sys.executable, "-m", "hfaug", "-q", "run", str(path), "--wait"], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    root = tmp_path / "runs" / "rel"
    lock = root / LOCK
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (lock.exists() and lock.read_text()):
        time.sleep(0.05)
    holder = json.loads(lock.read_text())["pid"]
    assert holder in {p.pid for p in runs}
    capsys.readouterr()
    assert cli.main(["-q", "run", str(path)]) == 2  # a third one, without --wait
    assert "in use by another hfaug run" in one_line(capsys)
    outs = [p.communicate(timeout=300) for p in runs]
    assert [p.returncode for p in runs] == [0, 0], [o[1][-2000:] for o in outs]
    teacher_lines = [next(line for line in out.splitlines() if line.startswith("teacher ")) for out, _ in outs]
    assert sorted(line.split()[1] for line in teacher_lines) == ["ran", "skipped"]  # trained once
    assert not all_files_in_place(root)
    assert (root / "teacher" / "best" / "config.json").is_file()
    assert not list(root.glob(".*.tmp*"))
    run = Run(load_recipe(path))
    assert len(run.load("generate")) > 0 and run.require("teacher")


def test_a_stage_whose_manifest_names_a_missing_file_is_rerun_not_skipped(tmp_path):
    import datasets

    run = Run(load_recipe(write_recipe(tmp_path)))
    make = lambda ctx: StageResult(datasets={"data": datasets.Dataset.from_dict({"x": [1, 2, 3]})})  # noqa: E731
    manifest, _ = execute(run, "a", make, {"k": 1}, [])
    arrow = next(f for f in manifest["files"] if f.endswith(".arrow"))
    assert execute(run, "a", make, {"k": 1}, [])[1]  # complete: skipped
    (run.stage_dir("a") / arrow).unlink()  # a copy cut short, a hand deletion
    with pytest.raises(HfaugError, match=f"stage 'a' .* incomplete .*{arrow}"):
        run.require("a")
    _, skipped = execute(run, "a", make, {"k": 1}, [])
    assert not skipped and len(run.load("a")) == 3 and not run.missing_files("a")


def test_a_failed_stage_leaves_no_tmp_folder(tmp_path):
    run = Run(load_recipe(write_recipe(tmp_path)))

    def boom(ctx):
        (ctx.out_dir / "part").write_text("half")
        raise RuntimeError("stage failed")

    with pytest.raises(RuntimeError):
        execute(run, "a", boom, {"k": 1}, [])
    assert not (run.root / ".a.tmp").exists() and not run.stage_dir("a").exists()


# ---------------------------------------------------------------------------------------------
# data mistakes: one line, exit code 2


def _bytes(tmp_path, name: str, data: bytes) -> str:
    (tmp_path / name).write_bytes(data)
    return str(tmp_path / name)


@pytest.mark.parametrize("name, data, message", [
    ("empty.csv", b"", "is empty"),
    ("empty.jsonl", b"\n\n", "is empty"),
    ("header.csv", b"text,label\n", "has a header but no rows"),
    ("corrupt.jsonl", b'{"text": "good", "label": "negative"}\n{"text": "cut\n{"text": "ok", "label": "neutral"}\n',
     "line 2 is not valid JSON"),
    ("latin1.csv", b"text,label\ngood,positive\nh\xe9llo,negative\n", "not UTF-8 text (byte 0xe9 at byte offset 26)"),
    ("latin1.jsonl", b'{"text": "caf\xe9", "label": "negative"}\n', "not UTF-8 text (byte 0xe9 at byte offset 13)"),
])
def test_bad_local_data_is_one_line_naming_the_file(tmp_path, capsys, name, data, message):
    path = write_recipe(tmp_path)
    data_path = _bytes(tmp_path, name, data)
    assert cli.main(["-q", "source", "--config", str(path), "--source.path", data_path]) == 2
    err = one_line(capsys)
    assert message in err and name in err and err.startswith("hfaug: error: source:")


def test_a_missing_local_file_is_not_looked_for_on_the_hub(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write_recipe(tmp_path)
    import datasets

    def no_hub(*args, **kwargs):
        raise AssertionError("a path-like reference went to load_dataset")

    monkeypatch.setattr(datasets, "load_dataset", no_hub)
    for ref in ("data/train.csv", "./train", "../x/y/train"):
        assert cli.main(["-q", "source", "--config", str(path), "--source.path", ref]) == 2
        err = one_line(capsys)
        assert f"data file '{ref}' not found" in err and "fix source.path" in err
    # a Hub id shape still goes to the Hub (load_dataset)
    with pytest.raises(AssertionError, match="went to load_dataset"):
        cli.main(["-q", "source", "--config", str(path), "--source.path", "user/name"])


def test_a_missing_evaluate_test_set_is_one_line(tmp_path, capsys):
    path = write_recipe(tmp_path, evaluate={"models": {"m": "hfaug://tiny/encoder"},
                                            "test_sets": [{"path": str(tmp_path / "hi_test.jsonl"), "lang": "hi"}]})
    assert cli.main(["-q", "evaluate", "--config", str(path)]) == 2
    err = one_line(capsys)
    assert "evaluate.test_sets[0]" in err and "hi_test.jsonl' not found" in err


def test_texts_of_invisible_characters_are_dropped_as_empty(tmp_path):
    rows = [{"text": "\u200b\u200b", "label": "negative"}, {"text": " \ufeff\u200b ", "label": "neutral"},
            {"text": "fine\u200b", "label": "positive"}]
    data = tmp_path / "zw.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    run = Run(load_recipe(write_recipe(tmp_path)))
    run.recipe.sections["source"].path = str(data)
    manifest, _ = run_stage(run, "source")
    assert manifest["dropped"] == {"empty_text": 2}
    assert sum(manifest["rows_out"].values()) == 1
    assert clean_text("\u200b \u200b") == (None, "empty")


def test_a_read_only_output_folder_is_one_line(tmp_path, capsys):
    path = write_recipe(tmp_path)
    if os.geteuid() == 0:
        out = "/sys/hfaug-read-only"  # the superuser writes anywhere else
    else:
        (tmp_path / "ro").mkdir(mode=0o555)
        out = str(tmp_path / "ro")
    assert cli.main(["-q", "source", "--config", str(path), "--output-dir", out]) == 2
    err = one_line(capsys)
    assert "cannot write" in err and out in err and "--output-dir" in err


def test_a_full_disk_is_one_line_and_keeps_finished_work(tmp_path, capsys, monkeypatch):
    path = write_recipe(tmp_path, generate={"backend": "dummy", "n_per_class": 5, "progress": False})
    assert cli.main(["-q", "source", "--config", str(path)]) == 0
    import datasets

    real = datasets.Dataset.save_to_disk

    def full(self, *args, **kwargs):  # what ENOSPC looks like when the disk fills while saving
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(datasets.Dataset, "save_to_disk", full)
    capsys.readouterr()
    assert cli.main(["-q", "generate", "--config", str(path)]) == 2
    root = tmp_path / "runs" / "rel"
    assert one_line(capsys).startswith(f"hfaug: error: no space left on {root}")
    run = Run(load_recipe(path))
    assert run.manifest("generate") is None and not (root / ".generate.tmp").exists()
    assert len(run.load("source", "train")) > 0 and not all_files_in_place(root)  # finished stages kept
    monkeypatch.setattr(datasets.Dataset, "save_to_disk", real)
    assert cli.main(["-q", "generate", "--config", str(path)]) == 0
    assert len(run.load("generate")) > 0


def test_a_budget_larger_than_the_pool_is_said_on_the_console(tmp_path, capsys):
    from test_select import pool

    path = write_recipe(tmp_path, select={"strategies": ["top-k"], "budgets": [3], "figures": False, "min_words": 0})
    run = Run(load_recipe(path))
    rows = [("a", 0, 0.9), ("b", 0, 0.8), ("c", 0, 0.7), ("d", 1, 0.9), ("e", 2, 0.9), ("f", 2, 0.6), ("g", 2, 0.5)]
    execute(run, "label", lambda ctx: StageResult(datasets={"data": pool(rows, lang="en")}), None, [])
    capsys.readouterr()
    assert cli.main(["-q", "select", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "en-topk-3: the budget is larger than the pool; 7 rows selected, short by neutral 2" in out


# ---------------------------------------------------------------------------------------------
# servers: dead endpoints, counts over resumed runs, the length check


@pytest.fixture
def tgi():
    with TGIServer() as server:
        yield server


def gen_run(tmp_path, generate: dict) -> Run:
    run = Run(load_recipe(write_recipe(tmp_path, generate={"progress": False, **generate})))
    run_stage(run, "source")
    return run


def test_a_dead_endpoint_is_found_before_anything_is_sent(tgi, tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"
    run = gen_run(tmp_path, {"backend": "tgi", "endpoints": [tgi.url, dead], "n_per_class": 4,
                             "max_retries": 1, "backoff": 0.01})
    with pytest.raises(HfaugError, match=f"cannot reach {dead} \\(connection refused\\).*generate.endpoints"):
        run_stage(run, "generate")
    assert tgi.stats()["requests"] == 0


def test_the_circuit_breaker_stops_when_every_endpoint_refuses(tmp_path):
    from hfaug.generate.backends import TGIBackend
    from hfaug.generate.engine import RetryPolicy, run_requests, run_sync
    from hfaug.prompts import Request

    dead = [f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"]
    backend = TGIBackend("m", dead, prompt_format="plain")
    requests = [Request("review", "positive", i, (("user", f"write {i}"),), i) for i in range(60)]

    async def go():
        await backend.start()
        try:
            return await run_requests(backend, requests, {"max_new_tokens": 8}, cache=None, concurrency=8,
                                      retry=RetryPolicy(max_retries=6, backoff=0.1, backoff_max=0.2),
                                      progress=False, unreachable_after=0.3)
        finally:
            await backend.close()

    outcome = run_sync(go())
    assert outcome.fatal is not None and outcome.fatal.reason == "unreachable"
    assert all(url in outcome.fatal.message for url in dead) and "failed to connect" in outcome.fatal.message
    # without the breaker every request is tried 7 times (420 attempts)
    assert outcome.stats["sent"] < 120 and outcome.stats["not_sent"] > 0 and not outcome.results

    # through the stage (the check before the run switched off): one line naming the URL
    run = gen_run(tmp_path, {"backend": "tgi", "endpoints": dead[:1], "n_per_class": 10, "check_endpoints": False,
                             "prompt_format": "plain", "unreachable_after": 0.3, "backoff": 0.1, "backoff_max": 0.2})
    with pytest.raises(HfaugError, match=f"failed to connect .*{dead[0]}.*0 finished requests are kept"):
        run_stage(run, "generate")


def test_counts_add_up_over_resumed_runs_and_failures_within_the_fraction_are_retried(tgi, tmp_path):
    tgi.configure(overloaded_first=4)  # one at a time: the first 2 requests fail twice each (429)
    run = gen_run(tmp_path, {"backend": "tgi", "endpoints": [tgi.url], "n_per_class": 2, "max_retries": 1,
                             "backoff": 0.001, "concurrency": 1, "max_failed_fraction": 0.5})
    first, _ = run_stage(run, "generate")
    assert first["rows_out"]["data"] == 4 and first["incomplete"]["reason"] == "2 requests failed after retries"
    assert first["metrics"]["requests_total"] == {"failed": 2, "failed_http_429": 2, "retries": 2,
                                                  "retry_http_429": 2, "sent": 8}
    tgi.configure(overloaded_first=12)  # the next 4 attempts fail too
    second, skipped = run_stage(run, "generate")  # a plain rerun retries the 2; they fail again
    assert not skipped and tgi.stats()["requests"] == 12
    assert second["run_id"] == first["run_id"]  # the same output: downstream stays fresh
    assert second["metrics"]["requests"]["sent"] == 4 and second["metrics"]["requests_total"]["sent"] == 12

    third, skipped = run_stage(run, "generate")  # the server has room now
    assert not skipped and third["rows_out"]["data"] == 6 and "incomplete" not in third
    assert third["run_id"] != first["run_id"] and tgi.stats()["requests"] == 14
    assert third["metrics"]["requests"]["sent"] == 2
    assert third["metrics"]["requests_total"] == {"failed": 4, "failed_http_429": 4, "retries": 4,
                                                  "retry_http_429": 4, "sent": 14}
    assert run_stage(run, "generate")[1]  # complete now: skipped


def test_the_length_check_of_a_sentiment_recipe_ignores_premise_tokens(tmp_path):
    with TGIServer(max_total_tokens=300) as server:
        run = gen_run(tmp_path, {"backend": "tgi", "endpoints": [server.url], "n_per_class": 2,
                                 "max_new_tokens": 64, "premise_max_new_tokens": 512})
        manifest, _ = run_stage(run, "generate")
        assert manifest["rows_out"]["data"] == 6


# ---------------------------------------------------------------------------------------------
# programming errors are bugs, not server failures


# a generate run whose in-process backend has a bug (a TypeError inside agenerate)
_BROKEN_BACKEND = """
import sys
from hfaug import cli
from hfaug.generate.backends import DummyBackend

calls = []

def text_for(cls, prompt, seed):
    calls.append(seed)
    raise TypeError("unsupported operand type(s) for +: 'int' and 'str' (injected)")

DummyBackend.text_for = classmethod(text_for)
try:
    code = cli.main(sys.argv[1:])
finally:
    print(f"calls={len(calls)}", file=sys.stderr)
sys.exit(code)
"""


def test_a_programming_error_in_a_backend_surfaces_at_once_with_its_traceback(tmp_path):
    # before: classified as a "malformed response", retried 6 times with doubling waits (about a
    # minute at the default backoff) and then reported as a user error (exit 2, no traceback)
    path = write_recipe(tmp_path, generate={"progress": False, "backend": "dummy", "n_per_class": 2,
                                            "batch_size": 1, "concurrency": 1, "backoff": 0.01})
    assert cli.main(["-q", "source", "--config", str(path)]) == 0
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", _BROKEN_BACKEND, "-q", "generate", "--config", str(path)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback" in proc.stderr and "TypeError: unsupported operand" in proc.stderr
    assert "calls=1" in proc.stderr  # sent once, never retried
    assert "hfaug: error" not in proc.stderr


def test_a_programming_error_in_the_server_path_is_raised_not_retried(tgi, tmp_path, monkeypatch):
    from hfaug.generate.backends import TGIBackend

    calls = []

    def render(self, request):
        calls.append(request)
        raise TypeError("'NoneType' object is not subscriptable (injected)")

    monkeypatch.setattr(TGIBackend, "render", render)
    run = gen_run(tmp_path, {"backend": "tgi", "endpoints": [tgi.url], "n_per_class": 2, "concurrency": 1,
                             "prompt_format": "plain", "backoff": 0.01})
    with pytest.raises(TypeError, match="injected"):
        run_stage(run, "generate")
    assert len(calls) == 1 and tgi.stats()["requests"] == 0


def test_only_network_and_server_failures_are_transient():
    import asyncio

    import aiohttp
    from huggingface_hub.errors import OverloadedError, ValidationError

    from hfaug.retry import classify, is_transient

    def raised(exc):  # with a traceback in this file: raised by hfaug's side, not a client library
        try:
            raise exc
        except Exception as e:  # noqa: BLE001
            return e

    def http(status):
        from yarl import URL

        info = aiohttp.RequestInfo(URL("http://127.0.0.1/generate"), "POST", {}, URL("http://127.0.0.1/generate"))
        return aiohttp.ClientResponseError(info, (), status=status, message="x")

    assert all(is_transient(e) for e in (ConnectionResetError(), asyncio.TimeoutError(), http(503), http(500),
                                         http(429), http(424), OverloadedError("Model is overloaded")))
    assert not any(is_transient(e) for e in (http(422), http(404), ValidationError("Input validation error")))
    assert classify(http(422)).reason == "http_422"
    for bug in (TypeError("x"), KeyError("x"), ValueError("x"), IndexError("x"), AttributeError("x"), ZeroDivisionError()):
        assert classify(raised(bug)) is None, bug
    try:
        json.loads('{"generated_text": "trunc')
    except ValueError as e:  # a body cut short: the server's fault, sent again
        assert classify(e).reason == "malformed" and is_transient(e)


def test_a_bug_in_one_request_ends_the_requests_in_flight_too(tmp_path):
    import asyncio

    from hfaug.generate.backends import DummyBackend
    from hfaug.generate.cache import RequestCache
    from hfaug.generate.engine import run_requests, run_sync
    from hfaug.prompts import Request

    class Broken(DummyBackend):
        finished = 0

        async def agenerate(self, requests, params):
            if requests[0].index == 3:
                raise TypeError("injected")
            await asyncio.sleep(0.2)
            Broken.finished += 1
            return await super().agenerate(requests, params)

    requests = [Request("review", "positive", i, (("user", f"write {i}"),), i) for i in range(40)]

    async def go(cache):
        with pytest.raises(TypeError, match="injected"):
            await run_requests(Broken("m", batch_size=1), requests, {}, cache=cache, concurrency=8, progress=False)
        await asyncio.sleep(0.5)  # what is still running would finish (and go on) meanwhile

    with RequestCache(tmp_path / "requests.sqlite") as cache:
        run_sync(go(cache))
    assert Broken.finished == 0  # the requests in flight were cancelled, not finished or sent on

"""Serve: the Gradio app through gradio_client, the Space's app.py as deployed, `hfaug serve` on a
run, and a real headless Chromium (Debian's chromium driven by Playwright) clicking through the UI."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import free_port
from test_export import demo_rows, make_student  # the same tiny trained students

from hfaug.export import export_onnx
from hfaug.runs import Run, StageResult, execute
from hfaug.serve import build_demo, launch, load_models, parse_models
from hfaug.testing import tiny_model

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
POSITIVE = "The staff were friendly and the room was spotless, a wonderful stay."

pytestmark = pytest.mark.slow


def client(url: str):
    from gradio_client import Client

    return Client(url, verbose=False)


@contextlib.contextmanager
def server_process(cmd: list[str], log: Path, stop: int = signal.SIGTERM, **popen):
    """Start a server whose output goes to ``log`` (a pipe nobody reads fills up and blocks it).

    On exit it is sent ``stop`` and, if still there after 60 s, killed: no server outlives its test.
    """
    if stop == signal.SIGINT:
        # Ctrl+C reaches a terminal's foreground process; a test run started in the background
        # (`make test &`, nohup) ignores SIGINT and its children would inherit that
        popen.setdefault("preexec_fn", lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, **popen)
        try:
            yield proc
        finally:
            proc.send_signal(stop)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise AssertionError(f"server did not stop within 60 s:\n{log.read_text()[-3000:]}") from None


def wait_until_up(url: str, proc: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    import httpx

    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"server at {url} did not come up in {timeout}s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def onnx_models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("serve")
    encoder = tiny_model("encoder")
    export_onnx(make_student(root / "sentiment-student", encoder, "sentiment", steps=30), root / "sentiment")
    export_onnx(make_student(root / "nli-student", encoder, "nli", steps=0), root / "nli")  # compared to itself
    export_onnx(make_student(root / "untrained", encoder, "sentiment", steps=0), root / "sentiment-untrained")
    return {"sentiment": root / "sentiment", "nli": root / "nli", "sentiment-untrained": root / "sentiment-untrained"}


@pytest.fixture(scope="module")
def app(onnx_models):
    models = load_models({"en-student": str(onnx_models["sentiment"])})
    demo = build_demo(models, max_chars=200, concurrency_limit=2)
    url = launch(demo, port=free_port())
    yield url, models["en-student"]
    demo.close()


def test_round_trip_through_gradio_client(app):
    url, clf = app
    c = client(url)
    params = c.view_api(return_format="dict", print_info=False)["named_endpoints"]["/predict"]["parameters"]
    assert [p["parameter_name"] for p in params] == ["text", "model"]

    result = c.predict(POSITIVE, "en-student", api_name="/predict")
    probs = clf.predict_proba([POSITIVE])[0]
    assert result["label"] == clf.labels[int(probs.argmax())] == "positive"
    got = {item["label"]: item["confidence"] for item in result["confidences"]}
    assert got.keys() == set(clf.labels)
    np.testing.assert_allclose([got[label] for label in clf.labels], probs, atol=1e-6)


def test_bad_input_is_refused_with_a_clear_error_and_the_server_keeps_serving(app):
    from gradio_client.exceptions import AppError

    url, clf = app
    c = client(url)
    for text, message in [("", "The text is empty: please type a sentence."),
                          ("   \n ", "The text is empty"),
                          ("x" * 201, "The text is 201 characters long; the limit is 200. Please shorten it.")]:
        with pytest.raises(AppError, match=message):
            c.predict(text, "en-student", api_name="/predict")
    with pytest.raises(AppError, match="not in the list of choices"):
        c.predict(POSITIVE, "no-such-model", api_name="/predict")
    # exactly at the limit is fine, and the server still answers
    assert c.predict("y" * 200, "en-student", api_name="/predict")["label"] in clf.labels
    assert c.predict(POSITIVE, "en-student", api_name="/predict")["label"] == "positive"


def test_concurrent_callers_get_their_own_answers(app):
    url, clf = app
    c = client(url)
    texts = [r["text"] for r in demo_rows("sentiment_en_dev")[:16]]
    jobs = [c.submit(t, "en-student", api_name="/predict") for t in texts]  # all at once, queue limit 2
    labels = [job.result(timeout=120)["label"] for job in jobs]
    assert labels == clf.predict(texts)


def test_nli_app_takes_a_premise_and_a_hypothesis(onnx_models):
    from gradio_client.exceptions import AppError

    models = load_models(parse_models(f"nli-en={onnx_models['nli']}"))
    demo = build_demo(models)
    try:
        c = client(launch(demo, port=free_port()))
        params = c.view_api(return_format="dict", print_info=False)["named_endpoints"]["/predict"]["parameters"]
        assert [p["parameter_name"] for p in params] == ["premise", "hypothesis", "model"]
        rows = demo_rows("nli_en_dev")
        clf = models["nli-en"]
        seen = []
        # one premise, two hypotheses: the app's probabilities are the model's for that very pair
        for hypothesis in (rows[0]["hypothesis"], rows[1]["hypothesis"]):
            result = c.predict(rows[0]["premise"], hypothesis, "nli-en", api_name="/predict")
            got = {item["label"]: item["confidence"] for item in result["confidences"]}
            want = dict(zip(clf.labels, clf.predict_proba([rows[0]["premise"]], [hypothesis])[0]))
            assert got == pytest.approx(want, abs=1e-6) and result["label"] == max(want, key=want.get)
            seen.append(got)
        assert seen[0] != seen[1]  # the hypothesis reaches the model
        with pytest.raises(AppError, match="The hypothesis is empty"):
            c.predict(rows[0]["premise"], "", "nli-en", api_name="/predict")
    finally:
        demo.close()


def test_pair_task_of_its_own_takes_two_texts_from_its_info(onnx_models, tmp_path):
    """A custom two-column task (not NLI's labels) shows two boxes when hfaug.json names its columns."""
    import json

    folder = tmp_path / "para"
    shutil.copytree(onnx_models["nli"], folder)
    config = json.loads((folder / "config.json").read_text())
    config["id2label"] = {"0": "same", "1": "related", "2": "different"}
    config["label2id"] = {v: int(k) for k, v in config["id2label"].items()}
    (folder / "config.json").write_text(json.dumps(config))

    def parameters() -> list[str]:
        demo = build_demo(load_models({"para": str(folder)}))
        try:
            api = client(launch(demo, port=free_port())).view_api(return_format="dict", print_info=False)
            return [p["parameter_name"] for p in api["named_endpoints"]["/predict"]["parameters"]]
        finally:
            demo.close()

    assert parameters() == ["text", "model"]  # no hfaug.json: labels alone cannot tell
    (folder / "hfaug.json").write_text(json.dumps({"name": "para", "task": "para",
                                                   "labels": ["same", "related", "different"],
                                                   "text_columns": ["first", "second"]}))
    assert parameters() == ["premise", "hypothesis", "model"]


def push_to_local_hub(folder: Path, repo_id: str, monkeypatch) -> str:
    """Upload ``folder`` as ``onnx/`` of a model repo on the test Hub; returns the server URL."""
    import huggingface_hub.constants as hf_constants
    from hub_server import HubServer
    from huggingface_hub import HfApi

    server = HubServer().start()
    # the client's import-time constants, pointed at the test Hub for this upload
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_constants, "ENDPOINT", server.url)
    api = HfApi(endpoint=server.url, token="hf_test_token")
    api.create_repo(repo_id)
    api.upload_folder(repo_id=repo_id, folder_path=str(folder), path_in_repo="onnx")
    assert "onnx/model.onnx" in server.files(repo_id, repo_type="model")
    return server


def test_space_metadata_and_app_run_as_deployed(onnx_models, tmp_path, monkeypatch):
    import gradio

    front = yaml.safe_load((ROOT / "spaces" / "README.md").read_text(encoding="utf-8").split("---\n")[1])
    assert front["sdk"] == "gradio" and front["app_file"] == "app.py"
    assert front["sdk_version"] == gradio.__version__  # the version the tests ran
    assert (ROOT / "spaces" / front["app_file"]).is_file()
    assert len(front["short_description"]) <= 60  # the Hub rejects longer ones
    requirements = [line.split(">")[0].split("=")[0].strip() for line in
                    (ROOT / "spaces" / "requirements.txt").read_text().splitlines() if line.strip()[:1].isalpha()]
    # published packages only: no hfaug (not on the index), no torch, no transformers
    assert set(requirements) <= {"onnxruntime", "tokenizers", "numpy", "huggingface_hub"}, requirements

    # the Space's way: `python app.py`, models given by a Space variable: a local folder and a Hub repo
    hub = push_to_local_hub(onnx_models["sentiment"], "org/hi-student", monkeypatch)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env.update({"HFAUG_MODELS": f"student={onnx_models['sentiment']}, hub=org/hi-student/onnx",
                "HFAUG_MAX_CHARS": "50", "HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "space-home"),
                "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port)})
    log = tmp_path / "app.log"
    try:
        with server_process([sys.executable, "app.py"], log, cwd=ROOT / "spaces", env=env) as proc:
            url = f"http://127.0.0.1:{port}/"
            wait_until_up(url, proc, log)
            c = client(url)
            local = c.predict(POSITIVE[:50], "student", api_name="/predict")
            assert local["label"] in ("positive", "neutral", "negative")
            assert c.predict(POSITIVE[:50], "hub", api_name="/predict") == local  # the same model, from the Hub
            from gradio_client.exceptions import AppError

            with pytest.raises(AppError, match="the limit is 50"):
                c.predict(POSITIVE, "student", api_name="/predict")
    finally:
        hub.stop()


def test_hfaug_serve_on_a_run(onnx_models, tmp_path, capsys):
    from hfaug.cli import main
    from hfaug.config import load_recipe

    data = {"name": "srv", "task": "sentiment", "output_dir": str(tmp_path / "runs"),
            "source": {"path": "hfaug://data/demo/sentiment_en.jsonl"}, "serve": {"max_chars": 80}}
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(data))
    assert main(["serve", "--config", str(recipe)]) == 2
    assert "stage 'export' has no output" in capsys.readouterr().err

    def fake_export(ctx):  # the export stage's layout: fp32 for both, int8 for one
        for name in ("topk", "divk"):
            shutil.copytree(onnx_models["sentiment"], ctx.out_dir / "onnx" / name)
        shutil.copytree(onnx_models["sentiment"], ctx.out_dir / "int8" / "topk")
        return StageResult()

    execute(Run(load_recipe(str(recipe))), "export", fake_export, None, [])
    assert main(["serve", "--config", str(recipe), "--serve.models", "[top-k]"]) == 2
    assert "no exported student 'top-k'" in capsys.readouterr().err

    port = free_port()
    log = tmp_path / "serve.log"
    cmd = [sys.executable, "-m", "hfaug", "serve", "--config", str(recipe), "--port", str(port), "--share", "false"]
    with server_process(cmd, log, stop=signal.SIGINT, cwd=tmp_path) as proc:  # Ctrl+C closes it cleanly
        url = f"http://127.0.0.1:{port}/"
        wait_until_up(url, proc, log)
        c = client(url)
        assert c.predict(POSITIVE, "topk", api_name="/predict")["label"] == "positive"
        assert c.predict(POSITIVE, "divk", api_name="/predict")["label"] == "positive"
    out = log.read_text()
    assert proc.returncode == 0, out
    assert "serving 2 student(s): divk (" in out and "/export/int8/topk)" in out and "/export/onnx/divk)" in out
    assert f"browser: http://127.0.0.1:{port}/" in out and "api_name='/predict'" in out
    assert "no int8 export; serving fp32" in out


@pytest.mark.browser
def test_headless_chromium_types_clicks_and_reads_the_label(app, artifacts, tmp_path):
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"{CHROMIUM} is missing: `make chromium` installs Debian's chromium for this test")
    from playwright.sync_api import expect, sync_playwright

    url, clf = app
    with sync_playwright() as pw:
        browser = pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            # "networkidle": the app has fetched its config and wired its inputs, as a person waits for the
            # page to finish loading; text typed before that is dropped by the frontend on a busy machine
            page.goto(url, wait_until="networkidle", timeout=60_000)
            box = page.locator("#text textarea")
            box.fill(POSITIVE, timeout=60_000)
            page.locator("#classify").click()
            label = page.locator("#prediction [data-testid='label-output-value']")
            expect(label).to_have_text(clf.predict([POSITIVE])[0], timeout=60_000)
            assert label.inner_text() == "positive"
            expect(page.locator("#prediction")).to_contain_text("%")  # the probabilities are listed
            page.screenshot(path=str(artifacts / "serve_browser.png"), full_page=True)

            # an empty box: the UI says why, and the next request works again
            box.fill("")
            page.locator("#classify").click()
            toast = page.get_by_test_id("toast-text")
            expect(toast).to_have_text("The text is empty: please type a sentence.", timeout=30_000)
            page.wait_for_timeout(600)  # let the toast finish sliding in before the screenshot
            page.screenshot(path=str(artifacts / "serve_browser_error.png"), full_page=True)
            box.fill(POSITIVE)
            page.locator("#classify").click()
            expect(label).to_have_text("positive", timeout=60_000)
        finally:
            browser.close()
    assert (artifacts / "serve_browser.png").stat().st_size > 10_000


# ---------------------------------------------------------------------------------------------
# the Space on its own: published packages only, students as publish-model lays them out


def space_venv(tmp_path: Path) -> Path:
    """A fresh venv with what a Space installs: gradio at sdk_version, then requirements.txt alone."""
    front = yaml.safe_load((ROOT / "spaces" / "README.md").read_text(encoding="utf-8").split("---\n")[1])
    venv = tmp_path / "space-venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    # the machine's pip cache (conftest moved XDG_CACHE_HOME into the session's temp folder)
    cache = os.environ.get("HFAUG_PIP_CACHE") or str(Path.home() / ".cache" / "pip")
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "PIP_CACHE_DIR": cache,
           "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    proc = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", f"gradio=={front['sdk_version']}",
                           "-r", str(ROOT / "spaces" / "requirements.txt")], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"the package index is unreachable here, so no Space venv: {proc.stderr[-500:]}")
    return venv / "bin" / "python"


@pytest.fixture(scope="module")
def published_student(onnx_models, tmp_path_factory):
    """Two versions of a student repo in publish-model's layout: v1 one model, main another (int8 and fp32)."""
    from hfaug.export import quantize_onnx
    from hfaug.publish import model_layout

    root = tmp_path_factory.mktemp("published")
    versions = {}
    for version, fp32 in (("v1", onnx_models["sentiment"]), ("v2", onnx_models["sentiment-untrained"])):
        (fp32 / "model.onnx_data").write_bytes(b"\0" * 64)  # what a > 2 GB fp32 graph has beside it
        int8 = quantize_onnx(fp32, root / f"int8-{version}")
        assert not (int8 / "model.onnx_data").exists()  # the int8 model is one file
        (fp32 / "model.onnx_data").unlink()
        student = root / f"student-{version}"
        shutil.copytree(fp32, student, ignore=shutil.ignore_patterns("*.onnx"))  # stands for the PyTorch folder
        versions[version] = model_layout({"model": student, "onnx": fp32, "int8": int8}, root / version)
    return versions


def upload_versions(hub, layouts: dict[str, Path], repo_id: str) -> None:
    """``repo_id`` on the test Hub: each layout committed in order, each commit tagged by its version."""
    from huggingface_hub import HfApi

    api = HfApi(endpoint=hub.url, token="hf_test_token")
    api.create_repo(repo_id)
    for version, folder in layouts.items():
        info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), delete_patterns="*")
        api.create_tag(repo_id, tag=version, revision=info.oid)


def test_space_predictor_matches_the_hfaug_onnx_classifier(onnx_models):
    """The Space's tokenizers-only predictor feeds the model exactly what transformers' tokenizer does."""
    from hfaug.predict import OnnxClassifier
    from hfaug.serve import space

    texts = [r["text"] for r in demo_rows("sentiment_en_dev")[:12]] + ["word " * 300]  # one truncated
    for max_length in (128, 16):
        want = OnnxClassifier(onnx_models["sentiment"], max_length=max_length, batch_size=4).predict_proba(texts)
        got = space.OnnxPredictor(onnx_models["sentiment"] / "model.onnx", max_length=max_length,
                                  batch_size=4).predict_proba(texts)
        np.testing.assert_allclose(got, want, atol=1e-6)
    rows = demo_rows("nli_en_dev")[:8]
    premises, hypotheses = [r["premise"] for r in rows], [r["hypothesis"] for r in rows]
    want = OnnxClassifier(onnx_models["nli"], max_length=24).predict_proba(premises, hypotheses)
    got = space.OnnxPredictor(onnx_models["nli"] / "model.onnx", max_length=24).predict_proba(premises, hypotheses)
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_space_reads_repo_revision_fp32_and_int8_of_the_publish_layout(published_student, hub):
    from hfaug.serve import load_models, space

    upload_versions(hub, published_student, "org/student")
    models = load_models({"main": "org/student", "v1": "org/student@v1", "v1-fp32": "org/student@v1:fp32",
                          "main-fp32": "org/student:fp32", "local": str(published_student["v1"])})
    assert models["main"].path.name == models["v1"].path.name == "model_quantized.onnx"
    assert models["v1-fp32"].path.name == "model.onnx"
    texts = [POSITIVE, "A dull, noisy room and rude staff."]
    proba = {name: m.predict_proba(texts) for name, m in models.items()}
    np.testing.assert_allclose(proba["v1"], proba["local"], atol=1e-6)  # the tag, not main
    assert not np.allclose(proba["v1"], proba["main"], atol=1e-3)
    assert not np.allclose(proba["v1"], proba["v1-fp32"], atol=1e-7)  # int8 really is the quantised model
    # Optimum reads the very same files
    from optimum.onnxruntime import ORTModelForSequenceClassification

    ort_model = ORTModelForSequenceClassification.from_pretrained(
        published_student["v1"], subfolder="onnx", file_name="model_quantized.onnx")
    enc = space.load_tokenizer(published_student["v1"] / "onnx", 128).encode_batch(texts)
    logits = ort_model(input_ids=np.array([e.ids for e in enc]), attention_mask=np.array([e.attention_mask for e in enc])).logits
    np.testing.assert_allclose(space.softmax(np.asarray(logits)), proba["v1"], atol=1e-5)
    with pytest.raises(Exception, match="has no model.onnx"):
        space.pick_file({"model_quantized.onnx"}, "fp32", "org/x@v1/onnx")


@pytest.mark.venv
def test_space_deploys_from_its_folder_alone_in_a_fresh_venv(published_student, tmp_path, hub):
    """What a Space build does: a clean venv from requirements.txt (no hfaug, no torch), then app.py."""
    python = space_venv(tmp_path)
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "h"),
           "HF_HUB_DISABLE_TELEMETRY": "1", "NO_PROXY": "127.0.0.1,localhost"}  # no PYTHONPATH: nothing of hfaug
    imports = "import importlib.util as u; print([m for m in ('hfaug', 'torch', 'transformers') if u.find_spec(m)])"
    assert subprocess.run([str(python), "-c", imports], capture_output=True, text=True, env=env,
                          cwd=tmp_path).stdout.strip() == "[]"
    space_dir = tmp_path / "space"
    shutil.copytree(ROOT / "spaces", space_dir, ignore=shutil.ignore_patterns("__pycache__", "models"))
    shutil.copytree(published_student["v2"], space_dir / "models" / "bundled")  # a model shipped with the Space
    upload_versions(hub, published_student, "org/student")
    port = free_port()
    env.update({"GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port), "GRADIO_ANALYTICS_ENABLED": "False"})
    log = tmp_path / "space.log"
    # no HFAUG_MODELS: the bundled models/ folder
    with server_process([str(python), "app.py"], log, cwd=space_dir, env=env) as proc:
        url = f"http://127.0.0.1:{port}/"
        wait_until_up(url, proc, log)
        bundled = client(url).predict(POSITIVE, "bundled", api_name="/predict")
    env["HFAUG_MODELS"] = "pinned=org/student@v1,fp32=org/student@v1:fp32"
    with server_process([str(python), "app.py"], log, cwd=space_dir, env=env) as proc:
        wait_until_up(url, proc, log)
        c = client(url)
        pinned = c.predict(POSITIVE, "pinned", api_name="/predict")
        fp32 = c.predict(POSITIVE, "fp32", api_name="/predict")
    from hfaug.serve import space

    def probs(result):
        return {item["label"]: item["confidence"] for item in result["confidences"]}

    for result, folder, file in ((bundled, "v2", "model_quantized.onnx"), (pinned, "v1", "model_quantized.onnx"),
                                 (fp32, "v1", "model.onnx")):
        clf = space.OnnxPredictor(published_student[folder] / "onnx" / file)
        assert probs(result) == pytest.approx(dict(zip(clf.labels, clf.predict_proba([POSITIVE])[0])), abs=1e-6)


# ---------------------------------------------------------------------------------------------
# what the Space shows about each student: examples in its languages, its metrics, its repos


def swahili_run(tmp_path: Path, nli_student: Path) -> Run:
    """An NLI run into Swahili up to its evaluate and publish stages (the stages' layouts, a real student)."""
    import json

    import datasets

    from hfaug.config import load_recipe

    recipe = {"name": "sw-run", "task": "nli", "output_dir": str(tmp_path / "runs"),
              "source": {"path": "hfaug://data/demo/nli_en.jsonl"}, "translate": {"languages": ["sw"]},
              "publish": {"repo_id": "org/sw-run", "retry_wait": 0.01, "retries": 1}}
    run = Run(load_recipe(recipe))
    sw = demo_rows("nli_sw")[3:8]  # rows the built-in examples do not have

    def select(ctx):
        return StageResult(datasets={"sw-divk-5": datasets.Dataset.from_dict(
            {"premise": [r["premise"] for r in sw], "hypothesis": [r["hypothesis"] for r in sw], "lang": ["sw"] * 5})})

    def distill(ctx):
        folder = ctx.out_dir / "students" / "sw-divk-5"
        shutil.copytree(nli_student, folder, ignore=shutil.ignore_patterns("*.onnx"))  # stands for the PyTorch student
        (folder / "metrics.json").write_text(json.dumps({"test": {"sw": {"accuracy": 0.5, "macro_f1": 0.4, "n": 9}},
                                                         "subset": {"name": "sw-divk-5", "lang": "sw"}}))
        return StageResult()

    def export(ctx):
        shutil.copytree(nli_student, ctx.out_dir / "onnx" / "sw-divk-5")
        return StageResult()

    def evaluate(ctx):  # evaluate's figures win over the ones distill saved
        (ctx.out_dir / "metrics.json").write_text(json.dumps({"results": {
            "onnx/sw-divk-5": {"sw": {"accuracy": 0.625, "macro_f1": 0.55, "n": 120}}}}))
        return StageResult()

    def publish(ctx):  # the dataset published by the publish stage
        return StageResult(metrics={"repo_id": "org/sw-run", "tag": "v1"})

    for name, fn in (("select", select), ("distill", distill), ("export", export), ("evaluate", evaluate),
                     ("publish", publish)):
        execute(run, name, fn, None, [], force=True)
    return run


def test_swahili_run_space_offers_swahili_examples_metrics_and_repo_links(onnx_models, tmp_path, hub):
    from hfaug import pipeline
    from hfaug.serve import space

    run = swahili_run(tmp_path, onnx_models["nli"])
    manifest, _ = pipeline.run_stage(run, "publish-model", force=True)
    entry = manifest["metrics"]["students"]["sw-divk-5"]
    assert "onnx/hfaug.json" in hub.files(entry["repo_id"], entry["tag"], repo_type="model")

    # the Space as deployed: the student served from its model repo on the Hub
    models = load_models({"swahili": entry["repo_id"]})
    assert models["swahili"].info["text_columns"] == ["premise", "hypothesis"]  # the Space's two boxes
    demo = build_demo(models)
    try:
        c = client(launch(demo, port=free_port()))
        examples = {comp["props"].get("label"): comp["props"]["samples"] for comp in c.config["components"]
                    if comp.get("type") == "dataset"}
        sw = demo_rows("nli_sw")[3:6]
        # the run's own Swahili pairs (premise, hypothesis), and no other language's
        assert examples == {"Swahili examples": [[r["premise"], r["hypothesis"]] for r in sw]}
        info = c.predict("swahili", api_name="/model_info")
        assert "**swahili** (Swahili)" in info and "| 62.5% | 55.0% | 120 |" in info and "onnx/sw-divk-5" in info
        assert f"{hub.url}/{entry['repo_id']}/tree/{entry['tag']}" in info  # the model repo at its tag
        assert f"{hub.url}/datasets/org/sw-run/tree/v1" in info  # the dataset it learned from
        table = next(comp["props"]["value"] for comp in c.config["components"]
                     if comp["props"].get("elem_id") == "students")  # every student at a glance
        assert "| swahili | Swahili | Swahili 62.5% / 55.0% |" in table and f"{entry['repo_id']}@{entry['tag']}" in table
    finally:
        demo.close()

    # `hfaug serve` on the run itself: the same examples, metrics and dataset link, read from the run
    from hfaug.serve import ServeConfig, serve

    demo = serve(run, ServeConfig(port=free_port()), block=False)
    try:
        c = client(demo.local_url)
        assert [comp["props"]["samples"] for comp in c.config["components"] if comp.get("type") == "dataset"] == [
            [[r["premise"], r["hypothesis"]] for r in sw]]
        info = c.predict("sw-divk-5", api_name="/model_info")
        assert "| 62.5% | 55.0% | 120 |" in info and f"{hub.url}/datasets/org/sw-run/tree/v1" in info
    finally:
        demo.close()

    # a student that has no rows in its language gets the built-in ones of that language code
    stub = type("Stub", (), {"info": {"languages": ["ur"]}, "labels": ["entailment", "neutral", "contradiction"]})()
    assert space.run_examples({"ur": stub}, "nli", 2) == {"Urdu": space.EXAMPLES["nli"]["ur"]}

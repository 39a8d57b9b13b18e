"""Publish: versioned Hub dataset and model repos, driven through the real huggingface_hub and
datasets clients against the Hub-compatible server in tests/hub_server.py."""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import TOKEN
from hub_server import validate_card

from hfaug import cli, pipeline
from hfaug.config import load_recipe
from hfaug.errors import HfaugError
from hfaug.runs import Run, StageResult, execute

REPO = "tester/hfaug-demo"
PLANTED = "sk-planted-secret-42"


@dataclass
class FakeGenerate:
    model: str = "tiny/chat-lm"
    backend: str = "transformers"
    temperature: float = 1.0
    top_p: float = 0.95
    max_new_tokens: int = 48
    api_key: str = PLANTED  # a secret slipped into a config: must never be published


@dataclass
class FakeTranslate:
    model: str = "tiny/nllb-mt"
    languages: tuple = ("hi", "mr")


@dataclass
class FakeSelect:
    strategies: tuple = ("div-k", "all")
    budgets: tuple = (4,)
    n_clusters: int = 2


# ---------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """No token anywhere (conftest already sets HF_HUB_OFFLINE=1)."""
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))


def tiny_png() -> bytes:
    """A valid 1x1 PNG, enough to stand for the select stage's data map."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00\x80")) + chunk(b"IEND", b""))


def recipe_dict(tmp_path: Path, **publish) -> dict:
    return {
        "name": "pub", "task": "sentiment", "seed": 7, "output_dir": str(tmp_path / "runs"),
        "description": "publish test run",
        "source": {"path": "hfaug://data/demo/sentiment_en.jsonl"},
        "publish": {"retry_wait": 0.01, **publish},
    }


def rows(version: str, lang: str, n: int, strategy: str | None = None, origin: str = "synthetic") -> dict:
    """Contract columns for n rows whose ids say which version and language they belong to."""
    out = {"id": [f"{version}-{lang}-{strategy or origin}-{i}" for i in range(n)],
           "task": ["sentiment"] * n,
           "text": [f"{version} text {i} in {lang}" for i in range(n)],
           "lang": [lang] * n, "origin": [origin] * n,
           "label": [i % 3 for i in range(n)],
           "soft_label": [[0.8 if j == i % 3 else 0.1 for j in range(3)] for i in range(n)],
           "confidence": [0.8] * n}
    if strategy:
        out.update({"source_id": [f"{version}-en-{i}" for i in range(n)], "strategy": [strategy] * n,
                    "rank": list(range(n))})
    return out


def write_inputs(run: Run, version: str, sizes: dict[str, int]) -> None:
    """Fake generate/label/translate-source/select outputs for one version of the data."""
    import datasets

    def stage(name, config, data: dict, figures: bool = False):
        def fn(ctx):
            if figures:
                (ctx.out_dir / "figures").mkdir()
                (ctx.out_dir / "figures" / "datamap-hi.png").write_bytes(tiny_png())
                (ctx.out_dir / "figures" / "labels-hi.png").write_bytes(tiny_png())
            return StageResult(datasets={k: datasets.Dataset.from_dict(v) for k, v in data.items()})
        execute(run, name, fn, config, [], force=True)

    en = rows(version, "en", sizes["en"])
    en["gen_model"] = ["tiny/chat-lm"] * sizes["en"]
    en["gen_params"] = [json.dumps({"temperature": 1.0, "top_p": 0.95})] * sizes["en"]
    stage("generate", FakeGenerate(), {"data": rows(version, "en", sizes["en"])})
    stage("label", None, {"data": en})
    train_mr = rows(version, "mr", sizes["src"], origin="source")
    del train_mr["lang"]  # publish adds it from the dataset name
    stage("translate-source", FakeTranslate(), {
        "train-hi": rows(version, "hi", sizes["src"], origin="source"),
        "dev-hi": rows(version, "hi", 2, origin="source-dev"),
        "train-mr": train_mr,
    })
    stage("select", FakeSelect(), {
        "hi-divk-4": rows(version, "hi", sizes["divk"], "div-k"),
        "hi-all": rows(version, "hi", sizes["all"], "all"),
    }, figures=True)


V1 = {"en": 9, "src": 6, "divk": 4, "all": 7}
V2 = {"en": 11, "src": 5, "divk": 3, "all": 8}


def expected(version: str, sizes: dict) -> dict[str, dict[str, set[str]]]:
    def ids(lang, n, tag):
        return {f"{version}-{lang}-{tag}-{i}" for i in range(n)}
    return {
        "hi-divk-4": {"train": ids("hi", sizes["divk"], "div-k")},
        "hi-all": {"train": ids("hi", sizes["all"], "all")},
        "en-candidates": {"train": ids("en", sizes["en"], "synthetic")},
        "source-translated": {"train": ids("hi", sizes["src"], "source") | ids("mr", sizes["src"], "source"),
                              "validation": ids("hi", 2, "source-dev")},
    }


def publish(tmp_path, version: str, sizes: dict, **publish_cfg) -> tuple[Run, dict]:
    recipe = load_recipe(recipe_dict(tmp_path, **publish_cfg))
    run = Run(recipe)
    write_inputs(run, version, sizes)
    manifest, _ = pipeline.run_stage(run, "publish", force=True)
    return run, manifest


def load_all(repo: str, revision: str | None, cache: Path) -> dict[str, dict[str, set[str]]]:
    import datasets

    out = {}
    for config in ("hi-divk-4", "hi-all", "en-candidates", "source-translated"):
        kwargs = {"revision": revision} if revision else {}
        loaded = datasets.load_dataset(repo, config, cache_dir=str(cache), **kwargs)
        out[config] = {split: set(ds["id"]) for split, ds in loaded.items()}
    return out


# ---------------------------------------------------------------------------------------------
# versions


def test_two_versions_each_load_their_own_rows(hub, tmp_path):
    import datasets

    _, m1 = publish(tmp_path, "v1", V1, repo_id=REPO)
    assert m1["metrics"]["tag"] == "v1" and m1["metrics"]["repo_id"] == REPO
    _, m2 = publish(tmp_path, "v2", V2, repo_id=REPO)
    assert m2["metrics"]["tag"] == "v2" and m2["metrics"]["commit"] != m1["metrics"]["commit"]

    repo = hub.repo(REPO)
    assert repo.tags == {"v1": m1["metrics"]["commit"], "v2": m2["metrics"]["commit"]}
    assert repo.branches["main"] == m2["metrics"]["commit"]
    cache = tmp_path / "ds-cache"
    assert load_all(REPO, "v1", cache) == expected("v1", V1)
    assert load_all(REPO, "v2", cache) == expected("v2", V2)
    assert load_all(REPO, None, cache) == expected("v2", V2)  # main is v2
    # a commit sha loads its own files too
    assert load_all(REPO, m1["metrics"]["commit"], cache)["hi-all"] == expected("v1", V1)["hi-all"]

    loaded = datasets.load_dataset(REPO, "hi-divk-4", revision="v1", cache_dir=str(cache))["train"]
    assert loaded.features["label"] == datasets.ClassLabel(names=["negative", "neutral", "positive"])
    assert loaded.features["soft_label"].feature == datasets.Value("float32")
    files = hub.files(REPO, "v1")
    assert {"README.md", "recipe.yaml", "reproduce.py", "figures/datamap-hi.png"} <= set(files)
    assert "data/hi-divk-4/train-00000-of-00001.parquet" in files
    # every version is exactly one commit on top of the previous one
    assert repo.commits[m2["metrics"]["commit"]].parent == m1["metrics"]["commit"]


def test_a_dropped_config_disappears_from_the_next_version(hub, tmp_path, monkeypatch):
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError

    publish(tmp_path, "v1", V1, repo_id=REPO, private=True)
    publish(tmp_path, "v2", V2, repo_id=REPO, configs=["hi-all"])
    assert any(p.startswith("data/hi-divk-4/") for p in hub.files(REPO, "v1"))
    assert not any(p.startswith("data/hi-divk-4/") for p in hub.files(REPO, "v2"))
    assert hub.repo(REPO).private
    assert HfApi(endpoint=hub.url).dataset_info(REPO, revision="v2").sha == hub.repo(REPO).tags["v2"]
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(RepositoryNotFoundError):  # private: invisible without the token
        HfApi(endpoint=hub.url, token=False).dataset_info(REPO)


def test_existing_tag_exits_2_and_changes_nothing(hub, tmp_path, capsys):
    import yaml

    publish(tmp_path, "v1", V1, repo_id=REPO)
    before = hub.snapshot(REPO)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe_dict(tmp_path, repo_id=REPO)))
    capsys.readouterr()
    code = cli.main(["publish", "--config", str(path), "--tag", "v1", "--force"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "tag 'v1' already exists" in err and "never moved" in err
    assert hub.snapshot(REPO) == before
    # an explicit new tag works
    assert cli.main(["publish", "--config", str(path), "--tag", "release-1", "--force"]) == 0
    assert set(hub.repo(REPO).tags) == {"v1", "release-1"}


def test_server_failure_is_retried(hub, tmp_path, caplog):
    hub.fail("POST", r"/commit/", times=2)
    _, manifest = publish(tmp_path, "v1", V1, repo_id=REPO)
    assert manifest["metrics"]["tag"] == "v1"
    commits = [r for r in hub.state.requests if r[0] == "POST" and "/commit/" in r[1]]
    assert [status for *_, status in commits] == [500, 500, 200]
    assert "retry 1/3" in caplog.text


def test_persistent_failure_creates_no_tag_and_keeps_v1(hub, tmp_path):
    _, m1 = publish(tmp_path, "v1", V1, repo_id=REPO)
    hub.fail("POST", r"/commit/", times=100)
    with pytest.raises(HfaugError, match="no tag was created"):
        publish(tmp_path, "v2", V2, repo_id=REPO, retries=2)
    hub.clear_failures()
    repo = hub.repo(REPO)
    assert set(repo.tags) == {"v1"} and repo.branches["main"] == m1["metrics"]["commit"]
    assert load_all(REPO, "v1", tmp_path / "ds-cache") == expected("v1", V1)
    # a failed tag creation is retried as well
    hub.fail("POST", r"/tag/", times=1)
    _, m2 = publish(tmp_path, "v2", V2, repo_id=REPO)
    assert hub.repo(REPO).tags["v2"] == m2["metrics"]["commit"]


# ---------------------------------------------------------------------------------------------
# card, recipe, secrets


def test_card_has_the_run_counts_and_valid_metadata(hub, tmp_path):
    from huggingface_hub import HfApi

    run, manifest = publish(tmp_path, "v1", V1, repo_id=REPO)
    card = hub.files(REPO, "v1")["README.md"].decode()
    assert card == (run.stage_dir("publish") / "hub-layout" / "README.md").read_text()
    errors, _ = validate_card(card, "dataset")
    assert errors == []
    HfApi(endpoint=hub.url)._validate_yaml(card, repo_type="dataset")  # through the endpoint, too
    # rows per config and label: hi-all has 7 rows, labels i % 3 -> 3 negative, 2 neutral, 2 positive
    assert "| `hi-all` | train | 7 | 3 | 2 | 2 | all | hi |" in card
    assert "| `source-translated` | train | 12 |" in card and "| `source-translated` | validation | 2 |" in card
    assert "| `en-candidates` | train | 9 |" in card
    for text in ("tiny/chat-lm", "generation `temperature` | `1.0`", "generation `top_p` | `0.95`",
                 "tiny/nllb-mt", "selection `strategies`", "| seed | 7 |", "![datamap-hi](figures/datamap-hi.png)",
                 f"load_dataset('{REPO}', 'hi-divk-4', revision='v1')", "fazili-etal-2024-boosting",
                 "cc-by-4.0", "hfaug reproduce tester/hfaug-demo --revision v1"):
        assert text in card, text
    assert card.index("datamap-hi.png") < card.index("labels-hi.png")  # the data map leads
    assert PLANTED not in card
    import yaml

    meta = yaml.safe_load(card.split("---")[1])
    assert meta["language"] == ["en", "hi", "mr"] and meta["task_ids"] == ["sentiment-classification"]
    assert [c["config_name"] for c in meta["configs"]] == ["hi-divk-4", "hi-all", "en-candidates", "source-translated"]
    label_feature = next(f for f in meta["dataset_info"][0]["features"] if f["name"] == "label")
    assert label_feature["dtype"]["class_label"]["names"] == {"0": "negative", "1": "neutral", "2": "positive"}
    soft = next(f for f in meta["dataset_info"][0]["features"] if f["name"] == "soft_label")
    assert soft["list"] == "float32"


def test_validate_yaml_rejects_bad_metadata(hub):
    from huggingface_hub import HfApi

    api = HfApi(endpoint=hub.url)
    bad = "---\nlicense: not-a-license\nlanguage: [Hindi!]\nconfigs:\n- config_name: a\n- config_name: a\n---\n# x\n"
    with pytest.raises(ValueError) as info:
        api._validate_yaml(bad, repo_type="dataset")
    message = str(info.value)
    assert "license" in message and "language" in message and "duplicate" in message
    with pytest.raises(ValueError, match="not valid YAML"):
        api._validate_yaml("---\nlicense: [mit\n---\n", repo_type="dataset")


def test_token_never_appears_in_outputs_logs_or_repo(hub, tmp_path, caplog, capsys):
    import logging

    caplog.set_level(logging.DEBUG)
    hub.fail("POST", r"/commit/", times=1)  # the retry path logs too
    run, _ = publish(tmp_path, "v1", V1, repo_id=REPO)
    assert cli.main(["reproduce", REPO, "--revision", "v1", "--output-dir", str(tmp_path / "repro")]) == 0
    assert TOKEN in hub.state.tokens  # the token was really used, from HF_TOKEN
    captured = capsys.readouterr()
    texts = {"log": caplog.text, "stdout": captured.out, "stderr": captured.err}
    for root in (run.root, tmp_path / "repro"):
        for path in root.rglob("*"):
            if path.is_file():
                texts[str(path)] = path.read_bytes().decode("utf-8", "replace")
    for path, data in hub.files(REPO, "v1").items():
        texts[f"hub:{path}"] = data.decode("utf-8", "replace")
    leaks = [where for where, text in texts.items() if TOKEN in text]
    assert leaks == []
    assert "manifest.json" in " ".join(texts) and "hub:recipe.yaml" in texts and "hub:README.md" in texts
    assert PLANTED not in texts["hub:README.md"]


def test_uploaded_recipe_has_no_secrets(tmp_path, offline):
    import yaml

    data = recipe_dict(tmp_path)
    data["source"]["api_key"] = "should-not-matter"  # not a SourceConfig key: rejected before anything
    with pytest.raises(HfaugError, match="unknown key"):
        load_recipe(data)
    from hfaug.hub import redact

    assert redact({"hf_token": "x", "generate": {"api_key": "k", "max_new_tokens": 5}, "t": "a-SECRET-b"},
                  ("SECRET",)) == {"hf_token": "<redacted>", "generate": {"api_key": "<redacted>", "max_new_tokens": 5},
                                   "t": "a-<redacted>-b"}
    run, _ = publish(tmp_path, "v1", V1)
    uploaded = yaml.safe_load((run.stage_dir("publish") / "hub-layout" / "recipe.yaml").read_text())
    assert uploaded["publish"]["retry_wait"] == 0.01 and uploaded["name"] == "pub"
    assert "output_dir" not in uploaded  # a path of this machine


# ---------------------------------------------------------------------------------------------
# offline / local folder


def test_local_only_without_token_loads_with_load_dataset(tmp_path, offline, caplog):
    import datasets

    run, manifest = publish(tmp_path, "v1", V1, repo_id=REPO)  # a repo id but no token: local only
    assert "no Hub token" in caplog.text and "tag" not in manifest["metrics"]
    layout = run.stage_dir("publish") / "hub-layout"
    assert manifest["metrics"]["local_dir"] == str(layout)
    want = expected("v1", V1)
    for config, splits in want.items():
        loaded = datasets.load_dataset(str(layout), config, cache_dir=str(tmp_path / "c"))
        assert {s: set(ds["id"]) for s, ds in loaded.items()} == splits
    assert "load_dataset(" in (layout / "README.md").read_text()
    errors, _ = validate_card((layout / "README.md").read_text(), "dataset")
    assert errors == []


def test_cli_local_dir_flag(tmp_path, offline, capsys):
    import datasets
    import yaml

    recipe = load_recipe(recipe_dict(tmp_path))
    write_inputs(Run(recipe), "v1", V1)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe_dict(tmp_path)))
    target = tmp_path / "out" / "my-dataset"
    assert cli.main(["publish", "--config", str(path), "--local-dir", str(target)]) == 0
    loaded = datasets.load_dataset(str(target), "hi-all", cache_dir=str(tmp_path / "c"))
    assert set(loaded["train"]["id"]) == expected("v1", V1)["hi-all"]["train"]
    assert "load_dataset(" in capsys.readouterr().out


def test_bad_config_is_a_one_line_error(tmp_path, offline, capsys):
    import yaml

    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe_dict(tmp_path, repo_id="no-namespace")))
    capsys.readouterr()
    assert cli.main(["publish", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "publish.repo_id" in err
    path.write_text(yaml.safe_dump(recipe_dict(tmp_path)))
    assert cli.main(["publish", "--config", str(path)]) == 2  # nothing has run: nothing to publish
    assert "nothing to publish" in capsys.readouterr().err


def test_next_tag():
    from hfaug.hub import next_tag

    assert next_tag([]) == "v1"
    assert next_tag(["v1", "v2", "release", "v10"]) == "v11"


# ---------------------------------------------------------------------------------------------
# reproduction


def test_reproduce_downloads_the_recipe_of_a_revision(hub, tmp_path):
    import yaml

    publish(tmp_path, "v1", V1, repo_id=REPO)
    data = recipe_dict(tmp_path, repo_id=REPO)
    data["description"] = "second version"
    run = Run(load_recipe(data))
    write_inputs(run, "v2", V2)
    pipeline.run_stage(run, "publish", force=True)

    out = tmp_path / "repro-v1"
    assert cli.main(["reproduce", REPO, "--revision", "v1", "--output-dir", str(out)]) == 0
    rerun = yaml.safe_load((out / "pub" / "recipe.yaml").read_text())
    assert rerun["description"] == "publish test run" and "publish" not in rerun
    assert json.loads((out / "pub" / "source" / "manifest.json").read_text())["rows_out"]["train"] > 0
    # the uploaded script does the same, standalone
    import runpy
    import sys

    script = tmp_path / "reproduce.py"
    script.write_bytes(hub.files(REPO, "v2")["reproduce.py"])
    module = runpy.run_path(str(script))
    assert module["main"]([REPO, "--revision", "v2", "--output-dir", str(tmp_path / "repro-v2")]) == 0
    assert yaml.safe_load((tmp_path / "repro-v2" / "pub" / "recipe.yaml").read_text())["description"] == "second version"
    assert sys.modules.get("hfaug") is not None
    # a clean folder is required, and a missing revision is a user error
    assert cli.main(["reproduce", REPO, "--revision", "v1", "--output-dir", str(out)]) == 2
    assert cli.main(["reproduce", REPO, "--revision", "v9", "--output-dir", str(tmp_path / "x")]) == 2


# ---------------------------------------------------------------------------------------------
# students


def student_folder(ctx, name: str, config: dict, metrics: dict) -> Path:
    """A student folder as distill leaves it (config, weights, metrics.json), without its card."""
    folder = ctx.out_dir / "students" / name
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "xlm-roberta", **config}))
    (folder / "model.safetensors").write_bytes(b"\0weights of " + name.encode())
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return folder


def fake_onnx_exports(ctx, names: list[str]) -> None:
    """export's layout for ``names``: onnx/<name>/ and int8/<name>/ with a model.onnx each."""
    for name in names:
        for kind in ("onnx", "int8"):
            (ctx.out_dir / kind / name).mkdir(parents=True)
            (ctx.out_dir / kind / name / "model.onnx").write_bytes(b"\0onnx " + kind.encode())


def write_students(run: Run, names: list[str], *, readme: bool, onnx: bool) -> None:
    def distill(ctx):
        for name in names:
            folder = student_folder(ctx, name, {"name": name}, {
                "dev_accuracy": 0.5, "test": {"hi": {"accuracy": 0.61, "macro_f1": 0.6, "n": 20}},
                "subset": {"strategy": "div-k", "budget_per_class": 4}})
            if readme:
                (folder / "README.md").write_text("---\nlicense: mit\n---\n# a student card from distill\n")
        return StageResult()

    def export(ctx):
        fake_onnx_exports(ctx, names)
        return StageResult()

    execute(run, "distill", distill, None, [], force=True)
    if onnx:
        execute(run, "export", export, None, [], force=True)


def test_students_publish_as_versioned_model_repos(hub, tmp_path):
    run, _ = publish(tmp_path, "v1", V1, repo_id=REPO)
    write_students(run, ["hi-divk-4"], readme=False, onnx=True)
    manifest, _ = pipeline.run_stage(run, "publish-model", force=True)
    entry = manifest["metrics"]["students"]["hi-divk-4"]
    model_repo = f"{REPO}-hi-divk-4"
    assert entry["repo_id"] == model_repo and entry["tag"] == "v1" and entry["onnx"]
    files = hub.files(model_repo, "v1", repo_type="model")
    assert {"config.json", "model.safetensors", "README.md", "onnx/model.onnx", "onnx/model_quantized.onnx"} <= set(files)
    card = files["README.md"].decode()
    assert validate_card(card, "model")[0] == []
    for text in (f'"{REPO}"', "0.6100", "div-k", f'model="{model_repo}", revision="v1"', 'subfolder="onnx"'):
        assert text in card, text

    write_students(run, ["hi-divk-4"], readme=True, onnx=False)
    import shutil

    shutil.rmtree(run.stage_dir("export"))  # this time there is no ONNX export: v2 drops onnx/
    manifest, _ = pipeline.run_stage(run, "publish-model", force=True)
    assert manifest["metrics"]["students"]["hi-divk-4"]["tag"] == "v2"
    v2 = hub.files(model_repo, "v2", repo_type="model")
    # a README without distill's card data is rendered again from the run, with publish.license
    # (the recipe's default here), this repo and tag, and no ONNX section now that there is no export
    v2_card = v2["README.md"].decode()
    assert "a student card from distill" not in v2_card and "license: \"cc-by-4.0\"" in v2_card
    assert f'model="{model_repo}", revision="v2"' in v2_card and 'subfolder="onnx"' not in v2_card
    assert "onnx/model.onnx" not in v2
    assert "onnx/model.onnx" in hub.files(model_repo, "v1", repo_type="model")  # v1 intact

    from huggingface_hub import hf_hub_download

    path = hf_hub_download(model_repo, "config.json", revision="v1", cache_dir=str(tmp_path / "mc"))
    assert json.loads(Path(path).read_text())["name"] == "hi-divk-4"


def test_model_card_renders_the_distill_context(tmp_path):
    """The card data the distill stage collects (hfaug.distill._card_data) renders a card the Hub accepts."""
    from hfaug.cards import ModelCardData, model_card

    data = ModelCardData(
        name="hi-divk-4", title="demo-hi-divk-4", base_model="FacebookAI/xlm-roberta-base", task="nli",
        labels=["entailment", "neutral", "contradiction"], languages=["en", "hi"],
        datasets=[{"name": "source (gold)", "path": "data.jsonl", "revision": None, "description": "gold rows"},
                  {"name": "hi-divk-4 (synthetic)", "path": REPO, "revision": "v1", "description": "select output",
                   "synthetic": True}],
        subset="hi-divk-4", strategy="div-k", budget=4, dev_accuracy=0.5,
        test_metrics={"hi": {"accuracy": 0.7, "macro_f1": float("nan"), "n": 9}},
        training={"num_train_epochs": 1, "learning_rate": 2e-5}, seed=42,
    )
    card = model_card(data)
    assert validate_card(card, "model")[0] == []
    import yaml

    meta = yaml.safe_load(card.split("---")[1])
    assert meta["base_model"] == "FacebookAI/xlm-roberta-base" and meta["datasets"] == [REPO]
    values = meta["model-index"][0]["results"][0]["metrics"]
    assert [(m["type"], m["value"]) for m in values] == [("accuracy", 0.7)]  # NaN and counts left out
    assert "| hi | 0.7000 |" in card and "classifier({\"text\": \"A premise.\"" in card


def test_publish_model_without_students(tmp_path, offline):
    run, _ = publish(tmp_path, "v1", V1)
    manifest, _ = pipeline.run_stage(run, "publish-model", force=True)  # no distill section: nothing to do
    assert manifest["metrics"] == {"students": {}}
    data = recipe_dict(tmp_path, models=False)
    assert [s.name for s in pipeline.planned(load_recipe(data))] == ["source", "publish"]


def test_offline_mode_with_a_token_is_a_clear_error(tmp_path, offline, monkeypatch):
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    with pytest.raises(HfaugError, match="HF_HUB_OFFLINE is set"):
        publish(tmp_path, "v1", V1, repo_id=REPO)


def test_server_also_speaks_datasets_push_to_hub(hub, tmp_path):
    """Other stages' tests may push with datasets' own push_to_hub (several configs, one repo)."""
    import datasets

    ds = datasets.Dataset.from_dict({"text": ["a", "b", "c"], "label": [0, 1, 0]})
    ds.push_to_hub("tester/pushed", config_name="one")
    ds.select([0]).push_to_hub("tester/pushed", config_name="two")
    cache = str(tmp_path / "c")
    assert datasets.load_dataset("tester/pushed", "one", cache_dir=cache)["train"]["text"] == ["a", "b", "c"]
    assert datasets.load_dataset("tester/pushed", "two", cache_dir=cache)["train"]["text"] == ["a"]


# ---------------------------------------------------------------------------------------------
# reproducibility: every cache key holds what changes the output


def test_a_second_version_with_another_seed_reproduces_byte_for_byte(tmp_path):
    """v2 (seed 2) shares v1's (seed 1) translation cache; a clean rerun of v2 must give v2's very bytes."""
    import datasets

    from hfaug.translate import TranslateConfig, translate

    data = datasets.Dataset.from_dict({"id": [f"r{i}" for i in range(6)], "task": ["sentiment"] * 6,
                                       "text": [f"The room {i} was clean and the staff kind." for i in range(6)],
                                       "label": [i % 3 for i in range(6)]})
    config = TranslateConfig(model="hfaug://tiny/mt", languages=["hi"], num_beams=1, do_sample=True,
                             max_new_tokens=12, min_new_tokens=4, min_script_ratio=0.0)  # seed: the run's

    def parquet(seed: int, cache: Path) -> bytes:
        out, _, _ = translate(data, config, cache_dir=cache, seed=seed, progress=False)
        path = tmp_path / f"out-{seed}-{cache.name}.parquet"
        out["hi"].to_parquet(str(path))
        return path.read_bytes()

    v1 = parquet(1, tmp_path / "run-cache")
    v2 = parquet(2, tmp_path / "run-cache")  # the same run folder, a new seed
    assert v2 != v1
    assert parquet(2, tmp_path / "clean-cache") == v2


# ---------------------------------------------------------------------------------------------
# a release: dataset and students as one unit


STUDENTS = ["hi-divk-4", "hi-all"]


def release_run(tmp_path, **publish_cfg) -> Run:
    """A run whose recipe trains students: publish defers the dataset to publish-model's release."""
    data = recipe_dict(tmp_path, repo_id=REPO, retries=1, **publish_cfg)
    data["distill"] = {}
    run = Run(load_recipe(data))
    write_inputs(run, "v1", V1)
    return run


def model_commits(hub, repo: str) -> int:
    return len(hub.repo(repo, "model").commits) if hub.repo(repo, "model") else 0


def test_a_release_pushes_nothing_before_every_gate_then_one_tag_everywhere(hub, tmp_path):
    run = release_run(tmp_path)
    pipeline.run_stage(run, "publish", force=True)
    assert hub.repo(REPO) is None  # the dataset waits for the students' gates (export parity)
    # a second dataset version already exists elsewhere: the release takes the next tag on every repo
    from huggingface_hub import HfApi

    api = HfApi(endpoint=hub.url, token=TOKEN)
    api.create_repo(REPO, repo_type="dataset")
    for tag in ("v1", "v2"):
        api.create_tag(REPO, tag=tag, repo_type="dataset")
    write_students(run, STUDENTS, readme=False, onnx=True)
    manifest, _ = pipeline.run_stage(run, "publish-model", force=True)
    repos = [REPO] + [f"{REPO}-{s}" for s in STUDENTS]
    assert manifest["metrics"]["dataset"]["tag"] == "v3"
    assert [manifest["metrics"]["students"][s]["tag"] for s in STUDENTS] == ["v3", "v3"]
    assert "v3" in hub.repo(REPO).tags and all("v3" in hub.repo(r, "model").tags for r in repos[1:])
    # each card names the other parts of the release at the same tag
    dataset_card = hub.files(REPO, "v3")["README.md"].decode()
    assert all(f"[`{r}`]({hub.url}/{r}/tree/v3)" in dataset_card for r in repos[1:])
    for student in repos[1:]:
        card = hub.files(student, "v3", repo_type="model")["README.md"].decode()
        assert f"datasets/{REPO}/tree/v3" in card and f'"{REPO}"' in card and "revision: v3" not in card
        assert all(f"{r}/tree/v3" in card for r in repos[1:] if r != student)
        assert validate_card(card, "model")[0] == []
    assert load_all(REPO, "v3", tmp_path / "c") == expected("v1", V1)


def test_a_half_done_release_is_finished_by_a_rerun_with_the_same_tag(hub, tmp_path, capsys):
    import yaml

    run = release_run(tmp_path)
    write_students(run, STUDENTS, readme=False, onnx=True)
    pipeline.run_stage(run, "publish", force=True)
    first, second = (f"{REPO}-{s}" for s in sorted(STUDENTS))  # the order publish-model pushes them in
    hub.fail("POST", rf"/api/models/{second}/commit/", times=100)  # the last repo cannot be committed
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(run.recipe.raw))
    capsys.readouterr()
    assert cli.main(["publish-model", "--config", str(path)]) == 3  # the Hub failed: not a bad recipe (2)
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("hfaug: error:")]
    assert len(errors) == 1 and second in errors[0] and TOKEN not in err and "Traceback" not in err
    assert hub.repo(REPO).tags.keys() == {"v1"} and hub.repo(first, "model").tags.keys() == {"v1"}
    commits_before = model_commits(hub, first)

    hub.clear_failures()
    # a failed tag: the commit is there, the message says how to finish
    hub.fail("POST", rf"/api/models/{second}/tag/", times=100)
    assert cli.main(["publish-model", "--config", str(path)]) == 3
    err = capsys.readouterr().err
    assert "pushed but not tagged 'v1'" in err and f"hfaug publish-model --config {path}" in err
    hub.clear_failures()
    # the plain rerun finishes v1: the missing tag only, nothing pushed twice, no v2 anywhere
    assert cli.main(["publish-model", "--config", str(path)]) == 0
    assert model_commits(hub, first) == commits_before and model_commits(hub, second) == 2  # creation + v1
    assert hub.repo(second, "model").tags.keys() == {"v1"} and hub.repo(first, "model").tags.keys() == {"v1"}
    assert hub.repo(REPO).tags.keys() == {"v1"}

    # a failed --force (v2 half pushed) is never "unchanged, skipped" on the next plain run
    hub.fail("POST", rf"/api/models/{second}/commit/", times=100)
    assert cli.main(["publish-model", "--config", str(path), "--force"]) == 3
    hub.clear_failures()
    assert cli.main(["publish-model", "--config", str(path)]) == 0
    assert "skipped" not in capsys.readouterr().err
    assert {r: set(hub.repo(r, t).tags) for r, t in ((REPO, "dataset"), (first, "model"), (second, "model"))} == {
        REPO: {"v1", "v2"}, first: {"v1", "v2"}, second: {"v1", "v2"}}


def test_unchanged_files_are_not_committed_again(hub, tmp_path):
    """The test Hub answers preupload with each file's oid (sha256 for LFS), as the Hub does."""
    from huggingface_hub import HfApi

    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "big.bin").write_bytes(b"\0" * 1000)
    (folder / "a.txt").write_text("one")
    api = HfApi(endpoint=hub.url, token=TOKEN)
    api.create_repo("tester/m")
    api.upload_folder(repo_id="tester/m", folder_path=str(folder))
    head = hub.repo("tester/m", "model").branches["main"]
    assert api.upload_folder(repo_id="tester/m", folder_path=str(folder)).oid == head  # nothing changed: no commit
    assert hub.repo("tester/m", "model").branches["main"] == head
    (folder / "a.txt").write_text("two")
    api.upload_folder(repo_id="tester/m", folder_path=str(folder))
    commit = hub.repo("tester/m", "model").branches["main"]
    assert commit != head and hub.files("tester/m", commit, repo_type="model")["a.txt"] == b"two"


def test_a_token_typed_into_free_text_is_redacted_everywhere(hub, tmp_path):
    """description, pretty_name and commit_message are blanked like recipe.yaml, in every card and commit."""
    run = release_run(tmp_path, pretty_name=f"demo {TOKEN}", commit_message=f"release with {TOKEN}")
    run.recipe.run.description = f"my token is {TOKEN} oops"
    write_students(run, ["hi-divk-4"], readme=False, onnx=False)
    pipeline.run_stage(run, "publish", force=True)
    pipeline.run_stage(run, "publish-model", force=True)
    texts = {f"{repo}:{path}": data for repo, kind in ((REPO, "dataset"), (f"{REPO}-hi-divk-4", "model"))
             for path, data in hub.files(repo, "v1", repo_type=kind).items()}
    texts.update({f"commit {c.sha}": (c.title + c.message).encode()
                  for repo, kind in ((REPO, "dataset"), (f"{REPO}-hi-divk-4", "model"))
                  for c in hub.repo(repo, kind).commits.values()})
    run.save_recipe()
    for path in run.root.rglob("*"):  # the run folder: the layouts as pushed, manifests, the recipe copy
        if path.is_file() and path.suffix in (".json", ".md", ".yaml", ".txt"):
            texts[str(path)] = path.read_bytes()
    assert any(p.endswith("publish/manifest.json") for p in texts) and any(p.endswith("recipe.yaml") for p in texts)
    assert [where for where, data in texts.items() if TOKEN.encode() in data] == []
    assert b"my token is <redacted> oops" in texts[f"{REPO}:README.md"]
    assert b"my token is <redacted> oops" in texts[f"{REPO}-hi-divk-4:README.md"]


def test_card_metadata_sizes_default_config_and_license(hub, tmp_path):
    import datasets

    from hfaug.cards import size_category

    assert [size_category(n) for n in (999, 10**7 - 1, 10**7, 2 * 10**8, 10**12 - 1, 10**12)] == [
        "n<1K", "1M<n<10M", "10M<n<100M", "100M<n<1B", "100B<n<1T", "n>1T"]
    _, manifest = publish(tmp_path, "v1", V1, repo_id=REPO, license="mit")
    card = hub.files(REPO, "v1")["README.md"].decode()
    assert validate_card(card, "dataset")[0] == [] and "license: mit" in card and "default: true" not in card
    # no default config: the loader names the choices instead of silently loading one subset
    with pytest.raises(ValueError, match="hi-divk-4") as e:
        datasets.load_dataset(REPO, revision="v1", cache_dir=str(tmp_path / "c"))
    assert "en-candidates" in str(e.value) and "Config name is missing" in str(e.value)
    assert "there is no default" in card


def test_the_offline_demo_models_make_no_request_even_with_a_token(tmp_path):
    """The offline demo's first steps (building the tiny models, loading the packaged data) with a token
    set and HF_HUB_OFFLINE unset: nothing may leave 127.0.0.1 (tests/netguard refuses and logs it)."""
    import os
    import shutil
    import subprocess
    import sys

    from hfaug.testing import tiny_model

    log = tmp_path / "guard.log"
    encoder = tiny_model("encoder")  # built once per session; the embedder is built afresh below
    shutil.copytree(encoder, tmp_path / "home" / encoder.parent.name / encoder.name)
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env.update({"HF_TOKEN": TOKEN, "HFAUG_HOME": str(tmp_path / "home"), "HFAUG_NETGUARD_LOG": str(log)})
    env["HF_HOME"] = str(tmp_path / "hf_home")  # a fresh one, as on a first run
    code = "from hfaug.testing import tiny_model; print(tiny_model('embedder'))"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert Path(proc.stdout.strip().splitlines()[-1], "modules.json").is_file()
    # the demo's first stage loads its packaged data with datasets (which pings a counter unless told not to)
    proc = subprocess.run([sys.executable, "-m", "hfaug", "source", "--config", "demo", "--output-dir",
                           str(tmp_path / "runs")], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not log.exists(), log.read_text()[-3000:]


def test_reproduce_exits_3_when_the_hub_fails(hub, tmp_path, capsys):
    publish(tmp_path, "v1", V1, repo_id=REPO)
    hub.fail("HEAD", r"/resolve/", times=100, status=500)
    hub.fail("GET", r"/resolve/", times=100, status=500)
    capsys.readouterr()
    assert cli.main(["reproduce", REPO, "--revision", "v1", "--output-dir", str(tmp_path / "r")]) == 3
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("hfaug: error:")]
    assert len(err) == 1 and "recipe.yaml" in err[0] and "try again later" in err[0]


def test_a_programming_error_in_a_hub_call_is_not_retried_nor_a_hub_error(hub):
    from hfaug.errors import HubError
    from hfaug.hub import HubRepo

    calls = []

    def broken():
        calls.append(1)
        raise TypeError("'NoneType' object is not iterable (injected)")

    publisher = HubRepo(REPO, "dataset", token="t", retries=3, retry_wait=0.01)
    with pytest.raises(TypeError, match="injected"):  # not HubError (exit 3, no traceback)
        publisher._call("commit", broken)
    assert calls == [1]
    failing = []

    def server_error():  # a server error still is retried, then reported as the Hub's failure
        import requests
        from huggingface_hub.errors import HfHubHTTPError

        failing.append(1)
        response = requests.Response()
        response.status_code = 503
        raise HfHubHTTPError("503 Service Unavailable", response=response)

    with pytest.raises(HubError, match="after 4 attempts"):
        publisher._call("commit", server_error)
    assert len(failing) == 4


def test_a_programming_error_in_reproduces_download_is_not_a_hub_error(hub, monkeypatch):
    from huggingface_hub import HfApi

    from hfaug.hub import download_recipe

    def broken(self, *args, **kwargs):
        raise TypeError("unexpected keyword argument (injected)")

    monkeypatch.setattr(HfApi, "hf_hub_download", broken)
    with pytest.raises(TypeError, match="injected"):  # before: HubError "try again later", exit 3
        download_recipe(REPO, "v1")

"""Run directories: manifests, skip-if-unchanged, --force cascades, atomic stage outputs."""

from __future__ import annotations

import json

import datasets
import pytest

from hfaug.cli import main
from hfaug.config import load_recipe
from hfaug.pipeline import run_pipeline, summary
from hfaug.runs import Run, StageResult, execute, stage_key


def _recipe(tmp_path, **source):
    return load_recipe({
        "name": "t", "output_dir": str(tmp_path / "runs"),
        "source": {"path": "hfaug://data/demo/sentiment_en.jsonl",
                   "dev": {"path": "hfaug://data/demo/sentiment_en_dev.jsonl"}, **source},
    })


def test_source_stage_writes_contract_columns_and_manifest(tmp_path):
    run = run_pipeline(_recipe(tmp_path))
    train = run.load("source", "train")
    assert len(train) == 120 and len(run.load("source", "dev")) == 30
    assert train.features["label"].names == ["negative", "neutral", "positive"]
    assert set(train.column_names) == {"id", "task", "text", "lang", "origin", "label"}
    assert len(set(train["id"])) == len(train)
    manifest = run.manifest("source")
    assert manifest["rows_out"] == {"train": 120, "dev": 30}
    assert manifest["config"]["path"] == "hfaug://data/demo/sentiment_en.jsonl"
    assert {"torch", "datasets", "hfaug"} <= set(manifest["versions"])
    assert (run.root / "recipe.yaml").read_text().startswith("name: t")
    assert "source" in summary(run)


def test_rerun_skips_unchanged_and_reruns_on_change(tmp_path):
    first = run_pipeline(_recipe(tmp_path))
    run_id = first.manifest("source")["run_id"]
    again = run_pipeline(_recipe(tmp_path))
    assert [status for _, status, _, _ in again.report] == ["skipped"]
    assert again.manifest("source")["run_id"] == run_id
    changed = run_pipeline(_recipe(tmp_path, limit=50))
    assert [status for _, status, _, _ in changed.report] == ["ran"]
    assert changed.manifest("source")["rows_out"]["train"] == 50
    assert changed.manifest("source")["dropped"] == {"over_limit": 70}
    forced = run_pipeline(_recipe(tmp_path, limit=50), force="source")
    assert [status for _, status, _, _ in forced.report] == ["ran"]


def _ds(n):
    return datasets.Dataset.from_dict({"x": list(range(n))})


def test_downstream_reruns_when_an_input_reran(tmp_path):
    run = Run(_recipe(tmp_path), tmp_path / "r")
    execute(run, "a", lambda ctx: StageResult(datasets={"data": _ds(3)}), {"k": 1}, [])
    key_before = stage_key(run, "b", {"k": 2}, ["a"])
    execute(run, "b", lambda ctx: StageResult(datasets={"data": ctx.input("a")}), {"k": 2}, ["a"])
    _, skipped = execute(run, "b", lambda ctx: StageResult(), {"k": 2}, ["a"])
    assert skipped
    execute(run, "a", lambda ctx: StageResult(datasets={"data": _ds(4)}), {"k": 1}, [], force=True)
    assert stage_key(run, "b", {"k": 2}, ["a"]) != key_before
    _, skipped = execute(run, "b", lambda ctx: StageResult(datasets={"data": ctx.input("a")}), {"k": 2}, ["a"])
    assert not skipped and len(run.load("b")) == 4


def test_a_failing_stage_leaves_the_previous_output_intact(tmp_path):
    run = Run(_recipe(tmp_path), tmp_path / "r")
    execute(run, "a", lambda ctx: StageResult(datasets={"data": _ds(3)}), {"k": 1}, [])

    def boom(ctx):
        (ctx.out_dir / "partial.txt").write_text("half")
        raise RuntimeError("killed mid-stage")

    with pytest.raises(RuntimeError):
        execute(run, "a", boom, {"k": 2}, [])
    assert len(run.load("a")) == 3
    assert not (run.stage_dir("a") / "partial.txt").exists()
    assert json.loads((run.stage_dir("a") / "manifest.json").read_text())["config"] == {"k": 1}
    # the next attempt clears the leftovers of the killed one
    execute(run, "a", lambda ctx: StageResult(datasets={"data": _ds(5)}), {"k": 2}, [])
    assert len(run.load("a")) == 5 and not (run.root / ".a.tmp").exists()


def test_stage_cli_needs_its_inputs(tmp_path, capsys):
    path = tmp_path / "r.yaml"
    path.write_text(f"name: t\noutput_dir: {tmp_path}\nsource:\n  path: hfaug://data/demo/sentiment_en.jsonl\n")
    assert main(["source", "--config", str(path)]) == 0
    assert "source" in capsys.readouterr().out
    assert main(["teacher", "--config", str(path)]) == 2
    assert "no 'teacher' section" in capsys.readouterr().err


def test_labels_outside_the_task_list_both_sets(tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    data.write_text('{"text": "fine", "label": "pos"}\n{"text": "bad", "label": "negative"}\n{"text": "", "label": "negative"}\n')
    path = tmp_path / "r.yaml"
    path.write_text(f"name: t\noutput_dir: {tmp_path}\nsource:\n  path: {data}\n")
    assert main(["source", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "labels ['pos']" in err and "['negative', 'neutral', 'positive']" in err
    path.write_text(f"name: t\noutput_dir: {tmp_path}\nsource:\n  path: {data}\n  dev_fraction: 0\n"
                    "  label_map: {pos: positive}\n")
    assert main(["source", "--config", str(path)]) == 0
    manifest = json.loads((tmp_path / "t" / "source" / "manifest.json").read_text())
    assert manifest["rows_out"]["train"] == 2 and manifest["dropped"] == {"empty_text": 1}


def test_source_loads_a_hub_dataset_id_with_mappings(hub, tmp_path):
    """The real load_dataset(repo_id) path, against the tests' Hub server."""
    from conftest import TOKEN

    names = ["neg", "neu", "pos"]
    texts = ["a dull and slow film", "the museum opens at nine", "a bright and funny show", "a cold room"]
    datasets.Dataset.from_dict(
        {"sentence": texts, "gold": [0, 1, 2, 0]},
        features=datasets.Features({"sentence": datasets.Value("string"), "gold": datasets.ClassLabel(names=names)}),
    ).push_to_hub("tester/source-data", token=TOKEN)
    recipe = load_recipe({
        "name": "hub", "output_dir": str(tmp_path / "runs"),
        "source": {"path": "tester/source-data", "columns": {"sentence": "text", "gold": "label"},
                   "label_map": {"neg": "negative", "neu": "neutral", "pos": "positive"}, "dev_fraction": 0},
    })
    train = run_pipeline(recipe).load("source", "train")
    got = {text: train.features["label"].int2str(label) for text, label in zip(train["text"], train["label"])}
    assert got == {texts[0]: "negative", texts[1]: "neutral", texts[2]: "positive", texts[3]: "negative"}

"""The evaluate stage: every model of the run on target test sets, per language, JSON + markdown."""

from __future__ import annotations

import json
import shutil

import datasets
import numpy as np
import pytest

from hfaug import pipeline, schema
from hfaug.config import load_recipe, resolve
from hfaug.errors import HfaugError
from hfaug.evaluate import markdown_table
from hfaug.inference import TorchClassifier, load_classifier, score
from hfaug.runs import Run, StageResult, execute
from hfaug.tasks import get_task

SENTIMENT = get_task("sentiment")
TEST_SETS = [{"path": "hfaug://data/demo/sentiment_hi.jsonl", "lang": "hi"},
             {"path": "hfaug://data/demo/sentiment_mr.jsonl", "lang": "mr"}]


def _recipe(tmp_path, test_sets=TEST_SETS, **evaluate) -> dict:
    return {
        "name": "e", "task": "sentiment", "output_dir": str(tmp_path / "runs"),
        "source": {"path": "hfaug://data/demo/sentiment_en.jsonl",
                   "dev": {"path": "hfaug://data/demo/sentiment_en_dev.jsonl"}},
        "teacher": {"model": "hfaug://tiny/encoder", "epochs": 4, "learning_rate": 5e-3, "batch_size": 8,
                    "gradient_accumulation_steps": 1, "eval_steps": None, "max_length": 32},
        "evaluate": {"test_sets": test_sets, **evaluate},
    }


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny):
    """A run with source + teacher done, and a distill stage holding one student (a perturbed
    copy of the teacher, so it scores differently)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    tmp = tmp_path_factory.mktemp("eval")
    run = Run(load_recipe(_recipe(tmp)))
    pipeline.run_stage(run, "source")
    pipeline.run_stage(run, "teacher")

    def fake_distill(ctx):
        student = ctx.out_dir / "students" / "rand-k"
        shutil.copytree(run.stage_dir("teacher") / "best", student)
        model = AutoModelForSequenceClassification.from_pretrained(student)
        with torch.no_grad():
            model.classifier.out_proj.bias += torch.tensor([0.0, 0.0, 3.0])  # leans to "positive"
        model.save_pretrained(student)
        return StageResult()

    execute(run, "distill", fake_distill, None, [])
    return tmp, run


def test_evaluate_scores_every_model_per_language(trained, capsys, caplog):
    import logging

    tmp, _ = trained
    run = Run(load_recipe(_recipe(tmp)))  # same run folder
    with caplog.at_level(logging.INFO, logger="hfaug.evaluate"):
        manifest, _ = pipeline.run_stage(run, "evaluate")
    folder = run.stage_dir("evaluate")
    report = json.loads((folder / "metrics.json").read_text())
    assert set(report["results"]) == {"teacher", "student/rand-k"}
    assert set(report["test_sets"]) == {"hi", "mr"} and report["test_sets"]["hi"]["rows"] == 30

    # the numbers are the independent accuracy / macro-F1 of each model's argmax
    from sklearn.metrics import f1_score

    # the teacher at its training length (from its stage config); the fake student has none: 128
    for name, path, length in (("teacher", run.stage_dir("teacher") / "best", 32),
                               ("student/rand-k", run.stage_dir("distill") / "students" / "rand-k", 128)):
        clf = TorchClassifier(path, max_length=length)
        for lang, file in (("hi", "sentiment_hi"), ("mr", "sentiment_mr")):
            rows = [json.loads(line) for line in open(resolve(f"hfaug://data/demo/{file}.jsonl"), encoding="utf-8")]
            gold = np.array([SENTIMENT.label2id[r["label"]] for r in rows])
            pred = clf.predict_proba([r["text"] for r in rows]).argmax(axis=1)
            got = report["results"][name][lang]
            assert got["accuracy"] == pytest.approx(float((pred == gold).mean()))
            assert got["macro_f1"] == pytest.approx(f1_score(gold, pred, average="macro"))
            assert got["n"] == 30
            assert manifest["metrics"][name][lang]["accuracy"] == got["accuracy"]
    assert report["results"]["teacher"] != report["results"]["student/rand-k"]

    table = (folder / "metrics.md").read_text()
    assert "| model | hi acc | hi F1 | mr acc | mr F1 |" in table
    teacher_hi = report["results"]["teacher"]["hi"]["accuracy"]
    assert f"| teacher | {100 * teacher_hi:.2f} |" in table
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "| model | hi acc | hi F1 | mr acc | mr F1 |" in logged and "student/rand-k" in logged

    summary = pipeline.summary(run, [("evaluate", "ran", manifest, 0.0)])
    assert "teacher.hi: accuracy=" in summary


def test_test_sets_with_column_and_label_maps_and_extra_models(trained, tmp_path):
    tmp, run = trained
    csv = tmp_path / "reviews.csv"
    rows = [json.loads(line) for line in open(resolve("hfaug://data/demo/sentiment_mr.jsonl"), encoding="utf-8")]
    ids = {"negative": 0, "neutral": 1, "positive": 2}
    csv.write_text("review,stars\n" + "\n".join(f"\"{r['text']}\",{ids[r['label']]}" for r in rows) + "\n,1\n",
                   encoding="utf-8")
    spec = {"path": str(csv), "lang": "mr", "columns": {"review": "text", "stars": "label"},
            "label_map": {0: "negative", 1: "neutral", 2: "positive"}}
    recipe = _recipe(tmp, [TEST_SETS[1], spec], models={"baseline": str(run.stage_dir("teacher") / "best")})
    run2 = Run(load_recipe(recipe))
    manifest, _ = pipeline.run_stage(run2, "evaluate", force=True)
    report = json.loads((run2.stage_dir("evaluate") / "metrics.json").read_text())
    keys = list(report["test_sets"])
    assert keys == ["mr:sentiment_mr", "mr:reviews"]  # two Marathi sets stay apart
    assert manifest["dropped"] == {"mr:reviews.empty_text": 1}
    # the same rows through a csv with mapped columns and numeric labels score the same (macro-F1
    # is left out: the tiny teacher's near-uniform probabilities make it sensitive to float noise)
    jsonl, csv_set = report["results"]["teacher"][keys[0]], report["results"]["teacher"][keys[1]]
    assert (jsonl["n"], jsonl["accuracy"]) == (csv_set["n"], csv_set["accuracy"]) == (30, jsonl["accuracy"])
    assert report["results"]["baseline"][keys[0]] == report["results"]["teacher"][keys[0]]


def test_onnx_students_are_evaluated_with_onnx_runtime(trained, tmp_path):
    export = pytest.importorskip("hfaug.export")
    pytest.importorskip("onnxruntime")
    tmp, run = trained
    student = run.stage_dir("distill") / "students" / "rand-k"

    def fake_export(ctx):
        export.export_onnx(student, ctx.out_dir / "onnx" / "rand-k")
        return StageResult()

    execute(run, "export", fake_export, None, [])
    onnx_dir = run.stage_dir("export") / "onnx" / "rand-k"
    clf = load_classifier(onnx_dir, max_length=32)
    assert type(clf).__name__ == "OnnxClassifier"
    manifest, _ = pipeline.run_stage(Run(load_recipe(_recipe(tmp))), "evaluate", force=True)
    results = manifest["metrics"]
    assert "onnx/rand-k" in results
    for lang in ("hi", "mr"):
        onnx, torch_student = results["onnx/rand-k"][lang], results["student/rand-k"][lang]
        assert onnx["accuracy"] == pytest.approx(torch_student["accuracy"])


def test_score_and_table_helpers():
    class Fixed:
        labels = ["positive", "negative", "neutral"]  # model order differs from the task's

        def predict_proba(self, texts, pairs=None):
            return np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8], [0.8, 0.1, 0.1]])

    data = datasets.Dataset.from_dict({"text": ["a", "b", "c", "d"], "label": [2, 0, 1, 0]},
                                      features=schema.features(SENTIMENT, ["text", "label"]))
    result = score(Fixed(), data, SENTIMENT)  # predictions in task order: 2, 0, 1, 2
    assert result == {"accuracy": 0.75, "macro_f1": pytest.approx((2 / 3 + 2 / 3 + 1) / 3), "n": 4}
    table = markdown_table({"m": {"hi": {"accuracy": 0.5, "macro_f1": 0.25}}}, ["hi", "mr"])
    assert table.splitlines()[2] == "| m | 50.00 | 25.00 | - | - |"


def test_user_errors(tmp_path, capsys, trained):
    import yaml

    from hfaug.cli import main

    with pytest.raises(HfaugError, match="evaluate.test_sets is empty"):
        load_recipe(_recipe(tmp_path, []))
    tmp, _ = trained
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "अच्छा", "label": "good"}\n{"text": "बुरा", "label": "bad"}\n', encoding="utf-8")
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(_recipe(tmp, [{"path": str(bad), "lang": "hi"}])))
    assert main(["evaluate", "--config", str(path)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1
    assert "['bad', 'good']" in errors[0] and "['negative', 'neutral', 'positive']" in errors[0]

    empty = Run(load_recipe(_recipe(tmp_path)))
    with pytest.raises(HfaugError, match="the run has no model yet"):
        from hfaug.evaluate import run as evaluate_run
        from hfaug.runs import StageContext

        evaluate_run(StageContext(run=empty, stage="evaluate", config=empty.recipe.evaluate, out_dir=tmp_path / "o"))

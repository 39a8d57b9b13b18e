"""Tasks of a recipe's own: a label set other than the paper's, end to end on the tiny models."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest
import yaml

from hfaug.config import load_recipe, resolve
from hfaug.errors import HfaugError
from hfaug.tasks import resolve_task

BINARY = {"name": "reviews2", "preset": "sentiment", "labels": ["negative", "positive"]}


def write_csv(path, rows, with_neutral=False):
    """A user's CSV: its own column names, its own label spellings (pos/neg)."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["review", "stars"])
        for row in rows:
            if row["label"] == "neutral" and not with_neutral:
                continue
            writer.writerow([row["text"], {"positive": "pos", "negative": "neg"}.get(row["label"], row["label"])])


def demo_rows(name):
    path = resolve(f"hfaug://data/demo/{name}")
    return [json.loads(line) for line in open(path, encoding="utf-8")]


def binary_recipe(tmp_path) -> dict:
    write_csv(tmp_path / "train.csv", demo_rows("sentiment_en.jsonl"))
    write_csv(tmp_path / "dev.csv", demo_rows("sentiment_en_dev.jsonl"))
    mapping = {"columns": {"review": "text", "stars": "label"}, "label_map": {"pos": "positive", "neg": "negative"}}
    return {
        "name": "binary", "task": BINARY, "seed": 42, "output_dir": str(tmp_path / "runs"),
        "setting": "english-teacher",
        "source": {"path": str(tmp_path / "train.csv"), **mapping, "dev": {"path": str(tmp_path / "dev.csv"), **mapping}},
        "generate": {"backend": "dummy", "n_per_class": 12},
        "teacher": {"model": "hfaug://tiny/encoder", "epochs": 2, "learning_rate": 5.0e-3, "batch_size": 16,
                    "eval_steps": None},
        "label": {},
        "select": {"strategies": ["top-k"], "budgets": [4], "min_words": 0, "figures": False},
        "publish": {"license": "cc-by-4.0", "models": False},
        "distill": {"model": "hfaug://tiny/encoder", "num_train_epochs": 1, "learning_rate": 3.0e-3,
                    "per_device_train_batch_size": 16, "subsets": ["en-topk-4"], "seeds": [42], "baseline": False},
        "evaluate": {"test_sets": [{"path": str(tmp_path / "dev.csv"), "lang": "en", **mapping}]},
    }


def test_binary_sentiment_csv_end_to_end(tmp_path):
    """A two-label CSV stays two-label everywhere: no neutral prompts, 2-wide soft labels, a
    2-class teacher and student, selection and evaluation over the two labels."""
    from hfaug.pipeline import run_pipeline

    run = run_pipeline(load_recipe(binary_recipe(tmp_path)))
    assert run.task.labels == ("negative", "positive")
    assert set(run.load("source", "train")["label"]) == {0, 1}
    generated = run.load("generate")
    # no budget spent on a neutral the data does not have
    assert generated.features["prompt_label"].names == ["negative", "positive"]
    assert sorted(set(generated["prompt_label"])) == [0, 1]
    assert len(generated) <= 24
    labelled = run.load("label")
    assert {len(v) for v in labelled["soft_label"]} == {2}
    teacher = json.loads((run.stage_dir("teacher") / "best" / "config.json").read_text())
    assert teacher["id2label"] == {"0": "negative", "1": "positive"}
    assert 0 < len(run.load("select", "en-topk-4")) <= 8
    student = run.stage_dir("distill") / "students" / "en-topk-4-seed42"
    assert json.loads((student / "config.json").read_text())["id2label"] == {"0": "negative", "1": "positive"}
    card = (run.stage_dir("publish") / "hub-layout" / "README.md").read_text()
    assert "neutral" not in card and "names `negative`, `positive`" in card
    assert "**reviews2** (sentiment into negative, positive)" in card
    metrics = json.loads((run.stage_dir("evaluate") / "metrics.json").read_text())
    assert metrics["labels"] == ["negative", "positive"]
    assert run.manifest("source")["task"] == BINARY | {"text": None, "description": ""}


def test_source_label_outside_the_task_is_one_line_exit_2(tmp_path):
    """A neutral row in binary data is an error, never a silent third class."""
    data = binary_recipe(tmp_path)
    write_csv(tmp_path / "train.csv", demo_rows("sentiment_en.jsonl"), with_neutral=True)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({k: data[k] for k in ("name", "task", "output_dir", "source")}))
    proc = subprocess.run([sys.executable, "-m", "hfaug", "source", "-c", str(recipe)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert "'neutral'" in lines[-1] and "['negative', 'positive']" in lines[-1]


def test_custom_task_needs_a_prompt_per_label_and_uses_its_own_order():
    from hfaug.plan import _prompt_lines as prompt_lines

    task = {"name": "tickets", "labels": ["billing", "bug", "other"]}
    base = {"task": task, "source": {"path": "x.csv"}, "generate": {"backend": "dummy"}}
    with pytest.raises(HfaugError, match="no prompt for label 'billing'"):
        load_recipe(base)
    templates = {"billing": "Write a support ticket about a wrong invoice.",
                 "bug": "Write a support ticket about a crash.", "other": "Write a support ticket."}
    recipe = load_recipe({**base, "generate": {"backend": "dummy", "templates": templates}})
    assert resolve_task(recipe.run.task).labels == ("billing", "bug", "other")
    text = "\n".join(prompt_lines(recipe))
    for prompt in templates.values():
        assert prompt in text
    with pytest.raises(HfaugError, match="'bugs' is neither a template key nor a label"):
        load_recipe({**base, "generate": {"backend": "dummy", "templates": {**templates, "bugs": "x"}}})


def test_paper_shortfall_order_only_for_the_paper_label_sets():
    import datasets
    import numpy as np

    from hfaug.select import SelectConfig, select

    def pool(labels, counts):
        rows = {"id": [], "text": [], "soft_label": [], "lang": [], "origin": []}
        for c, n in enumerate(counts):
            for i in range(n):
                p = np.full(len(labels), 0.1 / (len(labels) - 1))
                p[c] = 0.9
                rows["id"].append(f"{c}-{i}")
                rows["text"].append(f"text {c} {i}")
                rows["soft_label"].append(p.tolist())
                rows["lang"].append("en")
                rows["origin"].append("generated")
        return datasets.Dataset.from_dict(rows)

    def chosen_counts(task, counts):
        config = SelectConfig(strategies=["top-k"], budgets=[3], min_words=0, figures=False)
        chosen = next(iter(select(pool(task.labels, counts), config, task).datasets.values()))
        out = {label: 0 for label in task.labels}
        for p in chosen["soft_label"]:
            out[task.labels[int(np.argmax(p))]] += 1
        return out

    # a task of its own: the first label's shortfall cascades to the next in the task's order
    custom = resolve_task({"name": "t", "labels": ["a", "b", "c"]})
    assert chosen_counts(custom, [1, 9, 9]) == {"a": 1, "b": 5, "c": 3}
    # binary sentiment has no neutral to start the paper's order: its own order, negative first
    binary = resolve_task(BINARY)
    assert chosen_counts(binary, [1, 9]) == {"negative": 1, "positive": 5}
    # the paper's label set keeps the authors' order: neutral, positive, negative
    paper = resolve_task("sentiment")
    assert chosen_counts(paper, [9, 1, 9]) == {"negative": 3, "neutral": 1, "positive": 5}


def test_pair_task_and_label_errors_name_the_fix():
    pair = {"name": "para", "labels": ["same", "different"], "text": ["premise", "hypothesis"]}
    base = {"task": pair, "source": {"path": "x.csv"}}
    with pytest.raises(HfaugError, match=r"add generate.templates.hypothesis_system@same"):
        load_recipe({**base, "generate": {"backend": "dummy"}})
    recipe = load_recipe({**base, "generate": {"backend": "dummy", "templates": {
        "hypothesis_system@same": "Paraphrase it.", "hypothesis_system@different": "Say something else."}}})
    assert resolve_task(recipe.run.task).is_pair
    binary = {"task": BINARY, "source": {"path": "x.csv"}}
    with pytest.raises(HfaugError, match="has no neutral label"):
        load_recipe({**binary, "generate": {"backend": "dummy", "n_strict_neutral": 5}})
    with pytest.raises(HfaugError, match="did you mean 'labels'"):
        load_recipe({**binary, "task": {"name": "x", "lables": ["a", "b"]}})
    with pytest.raises(HfaugError, match="map your data's columns to them with source.columns"):
        load_recipe({**binary, "task": {"name": "x", "labels": ["a", "b"], "text": "review"}})
    with pytest.raises(HfaugError, match="listed twice"):
        load_recipe({**binary, "task": {"name": "x", "labels": ["a", "a"]}})


def test_few_shot_examples_of_a_task_of_its_own_are_texts_with_their_labels():
    from hfaug.fewshot import format_shots

    task = resolve_task({"name": "tickets", "labels": ["billing", "bug"]})
    block = format_shots([{"id": "1", "label": "bug", "text": "The app crashes."}], task)
    assert block.splitlines() == ["Here are examples of texts from the data, with their labels:",
                                  'Text (bug): "The app crashes."']

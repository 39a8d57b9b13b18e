"""The teacher stage on the tiny encoder: per-epoch checkpoints, best by dev accuracy, bad input."""

from __future__ import annotations

import json

import datasets
import pytest

from hfaug import pipeline
from hfaug.config import load_recipe
from hfaug.errors import HfaugError
from hfaug.runs import Run, StageResult, execute
from hfaug.schema import label_ids
from hfaug.tasks import get_task
from hfaug.teacher import TeacherConfig, train_teacher

SENTIMENT = get_task("sentiment")
FAST = {"model": "hfaug://tiny/encoder", "epochs": 3, "learning_rate": 5e-3, "batch_size": 8,
        "gradient_accumulation_steps": 1, "eval_steps": None}


def _recipe(tmp_path, teacher: dict, **extra) -> dict:
    return {
        "name": "t", "task": "sentiment", "output_dir": str(tmp_path / "runs"),
        "source": {"path": "hfaug://data/demo/sentiment_en.jsonl",
                   "dev": {"path": "hfaug://data/demo/sentiment_en_dev.jsonl"}},
        "teacher": teacher, **extra,
    }


def test_teacher_keeps_a_checkpoint_per_epoch_and_the_best_by_dev_accuracy(tmp_path, tiny):
    run = Run(load_recipe(_recipe(tmp_path, {**FAST, "eval_steps": 10})))
    pipeline.run_stage(run, "source")
    manifest, skipped = pipeline.run_stage(run, "teacher")
    assert not skipped
    out = run.stage_dir("teacher")
    info = json.loads((out / "teacher.json").read_text())

    assert [e["path"] for e in info["epochs"]] == [f"checkpoints/epoch-{n}" for n in (1, 2, 3)]
    for n in (1, 2, 3):
        ckpt = out / "checkpoints" / f"epoch-{n}"
        assert (ckpt / "model.safetensors").is_file() and (ckpt / "tokenizer.json").is_file()
    # weights only: no optimizer, scheduler or trainer state anywhere in the stage folder
    assert not [p for p in out.rglob("*") if p.name in ("optimizer.pt", "scheduler.pt", "trainer_state.json")]

    best_config = json.loads((out / "best" / "config.json").read_text())
    assert [best_config["id2label"][str(i)] for i in range(3)] == list(SENTIMENT.labels)
    # 120 rows / batch 8 = 15 updates per epoch: evaluations at steps 10, 15, 20, 30, 30, 40, 45
    assert len(info["evaluations"]) > 3
    assert all(e["dev_accuracy"] is not None for e in info["epochs"])
    best = max(info["evaluations"], key=lambda e: e["accuracy"])
    assert info["best_dev_accuracy"] == best["accuracy"]
    assert info["best_dev_accuracy"] >= max(e["dev_accuracy"] for e in info["epochs"])
    assert info["best_dev_accuracy"] > 0.5  # the tiny model learns the demo data (chance: 1/3)
    assert info["max_length"] == 128 and info["dev_rows"] == 30 and info["train_rows"] == 120
    assert manifest["metrics"]["best_dev_accuracy"] == info["best_dev_accuracy"]
    assert set(manifest["metrics"]["dev_accuracy"]) == {"epoch-1", "epoch-2", "epoch-3"}

    # unchanged config and inputs: skipped
    assert pipeline.run_stage(run, "teacher")[1] is True


def test_best_equals_the_epoch_with_the_highest_dev_accuracy(tmp_path, tiny):
    import numpy as np
    import torch
    from transformers import AutoModelForSequenceClassification

    run = Run(load_recipe(_recipe(tmp_path, FAST)))
    pipeline.run_stage(run, "source")
    pipeline.run_stage(run, "teacher")
    out = run.stage_dir("teacher")
    info = json.loads((out / "teacher.json").read_text())
    accs = [e["dev_accuracy"] for e in info["epochs"]]
    assert info["best_epoch"] == int(np.argmax(accs)) + 1  # first epoch on ties
    best = AutoModelForSequenceClassification.from_pretrained(out / "best").state_dict()
    same = AutoModelForSequenceClassification.from_pretrained(out / "checkpoints" / f"epoch-{info['best_epoch']}")
    for name, tensor in same.state_dict().items():
        assert torch.equal(tensor, best[name]), name


def test_translated_teacher_trains_on_the_chosen_languages(tmp_path, tiny):
    run = Run(load_recipe(_recipe(tmp_path, {**FAST, "epochs": 1, "train_on": "translated", "languages": ["hi"]})))
    pipeline.run_stage(run, "source")
    from hfaug.config import resolve

    rows = [json.loads(line) for line in open(resolve("hfaug://data/demo/sentiment_hi.jsonl"), encoding="utf-8")]
    feats = datasets.Features({"text": datasets.Value("string"),
                               "label": datasets.ClassLabel(names=list(SENTIMENT.labels))})
    hi_train = datasets.Dataset.from_dict({"text": [r["text"] for r in rows[:20]],
                                           "label": [r["label"] for r in rows[:20]]}).cast(feats)
    hi_dev = datasets.Dataset.from_dict({"text": [r["text"] for r in rows[20:]],
                                         "label": [r["label"] for r in rows[20:]]}).cast(feats)
    sw = hi_train.select(range(5))
    execute(run, "translate-source", lambda ctx: StageResult(
        datasets={"train-hi": hi_train, "dev-hi": hi_dev, "train-sw": sw, "dev-sw": sw}), None, [])
    pipeline.run_stage(run, "teacher")
    info = json.loads((run.stage_dir("teacher") / "teacher.json").read_text())
    assert info["train_rows"] == 20 and info["dev_rows"] == 10 and info["languages"] == ["hi"]

    bad = Run(load_recipe(_recipe(tmp_path, {**FAST, "train_on": "translated", "languages": ["mr"]})))
    with pytest.raises(HfaugError, match="no translated source for 'mr'"):
        pipeline.run_stage(bad, "teacher")


def test_label_names_that_do_not_match_the_task_are_one_line_listing_both_sets():
    ds = datasets.Dataset.from_dict({"text": ["a", "b"], "label": [0, 1]}).cast(
        datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["bad", "good"])}))
    with pytest.raises(HfaugError) as err:
        label_ids(ds, SENTIMENT, "teacher train data")
    message = str(err.value)
    assert "\n" not in message and "['bad', 'good']" in message and "['negative', 'neutral', 'positive']" in message

    strings = datasets.Dataset.from_dict({"text": ["a", "b"], "label": ["positive", "happy"]})
    with pytest.raises(HfaugError, match=r"\['happy', 'positive'\] do not match"):
        label_ids(strings, SENTIMENT, "teacher train data")
    # the same names in another order are remapped by name
    shuffled = ds.cast(datasets.Features({"text": datasets.Value("string"),
                                          "label": datasets.ClassLabel(names=["positive", "negative", "neutral"])}))
    assert label_ids(shuffled, SENTIMENT, "x") == [2, 0]


def test_a_tokenizer_that_does_not_fit_the_model_is_refused(tmp_path, tiny):
    from transformers import AutoTokenizer, XLMRobertaConfig, XLMRobertaForSequenceClassification

    from hfaug.inference import TorchClassifier

    tokenizer = AutoTokenizer.from_pretrained(tiny["encoder"])
    config = XLMRobertaConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                              intermediate_size=64, num_labels=3, id2label=SENTIMENT.id2label,
                              label2id=SENTIMENT.label2id)
    folder = tmp_path / "mismatch"
    XLMRobertaForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    ds = datasets.Dataset.from_dict({"text": ["good", "bad"], "label": ["positive", "negative"]})
    with pytest.raises(HfaugError, match=rf"tokenizer has {len(tokenizer)} tokens but the model has only 100"):
        train_teacher(ds, ds, TeacherConfig(model=str(folder), epochs=1), SENTIMENT, tmp_path / "out")
    with pytest.raises(HfaugError, match="does not belong to this model"):
        TorchClassifier(folder)


def test_empty_rows_are_counted_and_skipped(tmp_path, tiny):
    rows = {"text": ["great trip", "", "awful room", "   ", "the bus leaves at nine"],
            "label": ["positive", "neutral", "negative", "neutral", "neutral"]}
    ds = datasets.Dataset.from_dict(rows)
    config = TeacherConfig(**{**FAST, "epochs": 1})
    info = train_teacher(ds, ds.select([0, 1]), config, SENTIMENT, tmp_path / "out")
    assert info["dropped"] == {"train.empty_text": 2, "dev.empty_text": 1}
    assert info["train_rows"] == 3 and info["dev_rows"] == 1


def test_config_validation_and_cli_errors(tmp_path, capsys, tiny):
    import yaml

    from hfaug.cli import main

    with pytest.raises(HfaugError, match="teacher.languages applies only"):
        load_recipe(_recipe(tmp_path, {"languages": ["hi"]}))
    with pytest.raises(HfaugError, match="'teacher.train_on' must be one of"):
        load_recipe(_recipe(tmp_path, {"train_on": "english"}))

    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(_recipe(tmp_path, {**FAST, "training_args": {"warmup_ration": 0.1}})))
    assert main(["run", str(path)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and errors[0].startswith("hfaug: error: ")
    err = errors[0]
    assert "teacher.training_args: 'warmup_ration' is not a TrainingArguments option" in err
    assert "did you mean 'warmup_ratio'" in err


def test_nli_teacher_reads_sentence_pairs(tmp_path, tiny):
    import numpy as np
    from transformers import AutoTokenizer

    from hfaug.config import resolve
    from hfaug.label import LabelConfig, label

    nli = get_task("nli")

    def rows(name):
        return datasets.Dataset.from_list(
            [json.loads(line) for line in open(resolve(f"hfaug://data/demo/{name}.jsonl"), encoding="utf-8")])

    config = TeacherConfig(**{**FAST, "epochs": 1, "max_length": 64})
    info = train_teacher(rows("nli_en"), rows("nli_en_dev"), config, nli, tmp_path / "nli")
    assert info["labels"] == ["entailment", "neutral", "contradiction"] and info["train_rows"] == 90
    # pairs are encoded as <s> premise </s></s> hypothesis </s>
    tok = AutoTokenizer.from_pretrained(tmp_path / "nli" / "best")
    ids = tok("a b", "c d")["input_ids"]
    assert ids.count(tok.sep_token_id) == 3

    hi = rows("nli_hi")
    labelled = label(hi, LabelConfig(), nli, teacher_dir=tmp_path / "nli")
    out = labelled.data
    assert out["premise"] == hi["premise"] and out["hypothesis"] == hi["hypothesis"]
    np.testing.assert_allclose(np.array(out["soft_label"]).sum(axis=1), 1.0, atol=1e-5)
    # the hypothesis is read: the same premise with different hypotheses scores differently
    soft = np.array(out["soft_label"])
    assert np.abs(soft[0] - soft[1]).max() > 1e-6

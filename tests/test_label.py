"""The label stage: soft labels in the task's order, training dynamics, max length, resume,
empty rows, bad teachers, and the same output under `accelerate launch` with two processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import datasets
import numpy as np
import pytest
from conftest import free_port

from hfaug import pipeline, schema
from hfaug.config import load_recipe, resolve
from hfaug.errors import HfaugError
from hfaug.inference import TorchClassifier, reorder_to_task
from hfaug.label import LabelConfig, label
from hfaug.runs import Run, StageResult, execute
from hfaug.tasks import get_task
from hfaug.teacher import TeacherConfig, train_teacher

SENTIMENT = get_task("sentiment")
NLI = get_task("nli")
MAX_LENGTH = 24  # shorter than some demo texts, so the length the teacher used matters


def _rows(name: str) -> list[dict]:
    return [json.loads(line) for line in open(resolve(f"hfaug://data/demo/{name}.jsonl"), encoding="utf-8")]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, tiny) -> Path:
    """A 3-epoch tiny sentiment teacher trained at max_length 24."""
    out = tmp_path_factory.mktemp("teacher")
    train = datasets.Dataset.from_list(_rows("sentiment_en"))
    dev = datasets.Dataset.from_list(_rows("sentiment_en_dev"))
    config = TeacherConfig(model="hfaug://tiny/encoder", epochs=3, learning_rate=5e-3, batch_size=8,
                           gradient_accumulation_steps=1, eval_steps=None, max_length=MAX_LENGTH)
    train_teacher(train, dev, config, SENTIMENT, out, seed=42)
    return out


@pytest.fixture(scope="module")
def candidates() -> datasets.Dataset:
    rows = _rows("sentiment_hi") + _rows("sentiment_mr")
    return datasets.Dataset.from_dict({
        "id": [f"r{i}" for i in range(len(rows))],
        "text": [r["text"] for r in rows],
        "prompt_label": [r["label"] for r in rows],
    })


def test_soft_labels_sum_to_one_in_task_order_at_the_teachers_max_length(teacher, candidates, tmp_path):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    labelled = label(candidates, LabelConfig(batch_size=7), SENTIMENT, teacher_dir=teacher)
    out, dropped = labelled.data, labelled.dropped
    assert not dropped and len(out) == len(candidates)
    # order and the input columns are kept
    assert out["id"] == candidates["id"] and out["prompt_label"] == candidates["prompt_label"]
    soft = np.array(out[schema.SOFT_LABEL])
    assert soft.shape == (len(candidates), 3)
    np.testing.assert_allclose(soft.sum(axis=1), 1.0, atol=1e-5)
    assert out[schema.LABEL] == soft.argmax(axis=1).tolist()
    np.testing.assert_allclose(out[schema.CONFIDENCE], soft.max(axis=1), atol=1e-7)
    assert out.features[schema.LABEL].names == list(SENTIMENT.labels)

    # reference: the best checkpoint run by hand, one row at a time, truncated at the teacher's length
    tok = AutoTokenizer.from_pretrained(teacher / "best")
    model = AutoModelForSequenceClassification.from_pretrained(teacher / "best").eval()
    for i in (0, 5, 33):
        enc = tok(candidates[i]["text"], truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
        with torch.no_grad():
            ref = torch.softmax(model(**enc).logits, -1)[0].numpy()
        np.testing.assert_allclose(soft[i], ref, atol=1e-5)
    # and the length matters: at 128 tokens the long rows score differently
    wide = TorchClassifier(teacher / "best", max_length=128).predict_proba(list(candidates["text"]))
    assert np.abs(wide - soft).max() > 1e-4


def test_dynamics_follow_the_paper_formulas(teacher, candidates):
    labelled = label(candidates, LabelConfig(dynamics=True), SENTIMENT, teacher_dir=teacher)
    out = labelled.data
    probs = np.array(out[schema.CHECKPOINT_PROBS])
    assert probs.shape == (len(candidates), 3, 3)  # rows x epochs x labels
    for epoch in range(3):
        clf = TorchClassifier(teacher / "checkpoints" / f"epoch-{epoch + 1}", max_length=MAX_LENGTH)
        np.testing.assert_allclose(probs[:, epoch], clf.predict_proba(list(candidates["text"])), atol=1e-5)
    for i in range(len(candidates)):
        per_label = [[probs[i, e, k] for e in range(3)] for k in range(3)]
        std = [float(np.sqrt(np.mean((np.array(v) - np.mean(v)) ** 2))) for v in per_label]
        assert out[i][schema.VARIABILITY] == pytest.approx(max(std), abs=1e-6)
        assert out[i][schema.MEAN_CONFIDENCE] == pytest.approx(max(np.mean(v) for v in per_label), abs=1e-6)
    assert np.array(out[schema.VARIABILITY]).max() > 0  # the epochs do disagree


def test_finished_chunks_are_reused_from_the_cache(teacher, candidates, tmp_path):
    cache = tmp_path / "cache"
    config = LabelConfig(chunk_size=25)
    labelled = label(candidates, config, SENTIMENT, teacher_dir=teacher, cache_dir=cache)
    first = labelled.data
    chunks = sorted(cache.rglob("*.npy"))
    assert len(chunks) == 3  # 60 rows in chunks of 25
    # a resumed run reads finished chunks instead of recomputing them: plant a marker in one
    planted = np.tile(np.array([[0.7, 0.2, 0.1]], dtype=np.float32), (25, 1))
    np.save(next(c for c in chunks if c.name.startswith("0-")), planted)
    labelled = label(candidates, config, SENTIMENT, teacher_dir=teacher, cache_dir=cache)
    again = labelled.data
    np.testing.assert_allclose(np.array(again[schema.SOFT_LABEL])[:25], planted)
    np.testing.assert_allclose(np.array(again[schema.SOFT_LABEL])[25:], np.array(first[schema.SOFT_LABEL])[25:])


def test_label_stage_in_a_run_counts_empty_rows(teacher, candidates, tmp_path):
    recipe = load_recipe({"name": "l", "task": "sentiment", "output_dir": str(tmp_path / "runs"),
                          "source": {"path": "hfaug://data/demo/sentiment_en.jsonl"},
                          "label": {"teacher": str(teacher), "dynamics": True}})
    run = Run(recipe)
    pool = datasets.concatenate_datasets([candidates, datasets.Dataset.from_dict(
        {"id": ["e1", "e2"], "text": ["", "  "], "prompt_label": ["neutral", "neutral"]})])
    execute(run, "generate", lambda ctx: StageResult(datasets={"data": pool}), None, [])
    manifest, _ = pipeline.run_stage(run, "label")
    assert manifest["dropped"] == {"empty_text": 2}
    assert manifest["rows_in"] == len(pool) and manifest["rows_out"] == {"data": len(candidates)}
    saved = run.load("label")
    for col in (schema.SOFT_LABEL, schema.LABEL, schema.CONFIDENCE, schema.CHECKPOINT_PROBS,
                schema.VARIABILITY, schema.MEAN_CONFIDENCE):
        assert col in saved.column_names
    assert sum(manifest["metrics"]["labels"].values()) == len(candidates)


def test_bad_teachers_and_inputs_are_user_errors(teacher, candidates, tmp_path, tiny, capsys):
    import yaml

    from hfaug.cli import main

    with pytest.raises(HfaugError, match="not a teacher folder"):
        label(candidates, LabelConfig(teacher=str(teacher / "best"), dynamics=True), SENTIMENT)
    nli_labels = r"do not match the nli labels \['entailment', 'neutral', 'contradiction'\]"
    with pytest.raises(HfaugError, match=nli_labels):
        nli_rows = datasets.Dataset.from_dict({"premise": ["a b c"], "hypothesis": ["a b"]})
        label(nli_rows, LabelConfig(), NLI, teacher_dir=teacher)
    with pytest.raises(HfaugError, match="input has no 'text' column; it is written by the generate"):
        label(candidates.rename_column("text", "sentence"), LabelConfig(), SENTIMENT, teacher_dir=teacher)

    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({"name": "l", "output_dir": str(tmp_path / "runs"),
                                    "source": {"path": "hfaug://data/demo/sentiment_en.jsonl"},
                                    "label": {"teacher": str(teacher)}}))
    assert main(["label", "--config", str(path)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(errors) == 1 and "stage 'generate' has no output" in errors[0]


def test_reorder_to_task_by_name():
    probs = np.array([[0.1, 0.2, 0.7]])
    out = reorder_to_task(probs, ["positive", "negative", "neutral"], SENTIMENT)
    np.testing.assert_allclose(out, [[0.2, 0.7, 0.1]])
    with pytest.raises(HfaugError, match=r"\['LABEL_0', 'LABEL_1', 'LABEL_2'\] do not match"):
        reorder_to_task(probs, ["LABEL_0", "LABEL_1", "LABEL_2"], SENTIMENT)


SCRIPT = """
import json
import sys
import datasets
from hfaug.inference import process_state
from hfaug.label import LabelConfig, label
from hfaug.tasks import get_task

pool = datasets.load_from_disk(sys.argv[2])
labelled = label(pool, LabelConfig(dynamics=True, batch_size=4, chunk_size=16), get_task("sentiment"),
                 teacher_dir=sys.argv[1])
out, dropped = labelled.data, labelled.dropped
state = process_state()
out.save_to_disk(f"{sys.argv[3]}-{state.process_index}")
# a file per rank: two processes printing to one pipe can interleave their lines
with open(f"{sys.argv[3]}-{state.process_index}.json", "w") as f:
    json.dump({"rank": state.process_index, "world": state.num_processes, "rows": len(out)}, f)
"""


def test_two_processes_under_accelerate_give_the_same_rows_and_probabilities(teacher, candidates, tmp_path):
    """accelerate on CPU: `--multi_gpu --num_processes 2` starts torchrun with gloo. (`--cpu
    --num_processes 2` only starts several processes through mpirun, which is not installed.)"""
    script = tmp_path / "label_script.py"
    script.write_text(textwrap.dedent(SCRIPT))
    pool = datasets.concatenate_datasets([candidates, datasets.Dataset.from_dict(
        {"id": ["e"], "text": [""], "prompt_label": ["neutral"]})])
    pool.save_to_disk(str(tmp_path / "pool"))
    accelerate = Path(sys.executable).with_name("accelerate")
    port = str(free_port())  # a fixed rendezvous port may still be held by an earlier launch
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_PORT": port}
    proc = subprocess.run([str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", port,
                           str(script), str(teacher), str(tmp_path / "pool"), str(tmp_path / "multi")],
                          env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"multi-{rank}.json").read_text()) for rank in (0, 1)]
    assert ranks == [{"rank": rank, "world": 2, "rows": 60} for rank in (0, 1)]

    labelled = label(pool, LabelConfig(dynamics=True), SENTIMENT, teacher_dir=teacher)
    single, dropped = labelled.data, labelled.dropped
    assert dropped == {"empty_text": 1}
    for rank in (0, 1):
        multi = datasets.load_from_disk(str(tmp_path / f"multi-{rank}"))
        assert multi["id"] == single["id"] and multi[schema.LABEL] == single[schema.LABEL]
        for col in (schema.SOFT_LABEL, schema.CHECKPOINT_PROBS, schema.VARIABILITY, schema.MEAN_CONFIDENCE):
            np.testing.assert_allclose(np.array(multi[col]), np.array(single[col]), atol=1e-5)

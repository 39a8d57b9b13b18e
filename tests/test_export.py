"""Export: Optimum ONNX export, dynamic int8, the parity gate, the ONNX predictor, the stage and CLI.

Parity is judged on a student trained a few steps on the demo data: with random weights the
classifier's input barely depends on the text, so int8 noise flips near-tied labels.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from hfaug.config import load_recipe, resolve
from hfaug.errors import HfaugError
from hfaug.export import ExportConfig, ParityError, export, export_onnx, torch_proba
from hfaug.predict import OnnxClassifier
from hfaug.runs import Run, StageResult, execute
from hfaug.tasks import get_task
from hfaug.testing import tiny_model

pytestmark = pytest.mark.slow


def demo_rows(name: str) -> list[dict]:
    path = Path(resolve(f"hfaug://data/demo/{name}.jsonl"))
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def make_student(path: Path, encoder: Path, task_name: str = "sentiment", steps: int = 30) -> Path:
    """The tiny encoder with a classification head, trained ``steps`` full-batch steps on the demo data."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    task = get_task(task_name)
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(encoder)
    model = AutoModelForSequenceClassification.from_pretrained(
        encoder, num_labels=task.num_labels, id2label=task.id2label, label2id=task.label2id)
    if steps:
        rows = demo_rows(f"{task_name}_en")
        columns = [[r[c] for r in rows] for c in task.text_columns]
        enc = tokenizer(*columns, padding=True, truncation=True, max_length=64, return_tensors="pt")
        labels = torch.tensor([task.label2id[r["label"]] for r in rows])
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
        model.train()
        for _ in range(steps):
            model(**enc, labels=labels).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    model.eval()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    (path / "README.md").write_text("---\nlanguage: [en, hi, mr]\ntags: [hfaug]\n---\n\n# tiny student\n\nDistilled.\n")
    return path


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    return make_student(tmp_path_factory.mktemp("student") / "topk", tiny_model("encoder"))


@pytest.fixture(scope="module")
def held_out() -> list[str]:
    # English dev plus the target languages: the rows a served student will see
    return [r["text"] for name in ("sentiment_en_dev", "sentiment_hi", "sentiment_mr") for r in demo_rows(name)]


def test_export_passes_the_gate_and_the_onnx_predictor_matches_pytorch(student, held_out, tmp_path):
    figures = export(student, tmp_path, ExportConfig(), texts=held_out)

    assert set(figures) == {"fp32", "int8"}
    assert figures["fp32"]["rows"] == len(held_out) == 90
    assert figures["fp32"]["agreement"] == 1.0 and figures["fp32"]["max_prob_diff"] < 1e-4
    assert figures["int8"]["agreement"] >= 0.99
    assert 0 < figures["int8"]["max_prob_diff"] < 0.2  # int8 really is a different model, but a close one

    reference = torch_proba(student, held_out)
    assert len(set(reference.argmax(-1).tolist())) == 3  # trained: the student predicts every class
    for variant in ("onnx", "int8"):
        folder = tmp_path / variant / "topk"
        assert {"model.onnx", "config.json", "tokenizer.json", "README.md"} <= {p.name for p in folder.iterdir()}
        clf = OnnxClassifier(folder, batch_size=7)  # batches that cut across the length-sorted order
        assert clf.labels == ["negative", "neutral", "positive"]
        probs = clf.predict_proba(held_out)
        assert probs.shape == (90, 3) and probs.dtype == np.float32
        np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
        agree = (probs.argmax(-1) == reference.argmax(-1)).mean()
        assert agree == 1.0 if variant == "onnx" else agree >= 0.99
        # rows come back in input order whatever the batching
        one_by_one = np.concatenate([clf.predict_proba([t]) for t in held_out[:12]])
        if variant == "onnx":
            np.testing.assert_allclose(probs[:12], one_by_one, atol=1e-5)
        else:  # dynamic int8 scales activations per batch, so only the labels must not move
            assert (probs[:12].argmax(-1) == one_by_one.argmax(-1)).all()
        assert clf.predict(held_out[:3]) == [clf.labels[i] for i in probs[:3].argmax(-1)]
        assert clf.predict_proba([]).shape == (0, 3)

    card = (tmp_path / "int8" / "topk" / "README.md").read_text()
    front = yaml.safe_load(card.split("---\n")[1])
    assert front["language"] == ["en", "hi", "mr"] and front["tags"] == ["hfaug", "onnx", "int8"]
    assert "# tiny student" in card and "## ONNX export" in card and "**passed**" in card
    assert f"| int8 | {figures['int8']['agreement']:.2%} |" in card and "| fp32 | 100.00% |" in card
    assert "dynamically quantised to int8" in card
    assert "exported to ONNX (fp32)" in (tmp_path / "onnx" / "topk" / "README.md").read_text()


def test_an_export_that_fails_the_gate_fails_loudly(student, held_out, tmp_path):
    config = ExportConfig(int8_max_prob_diff=1e-9)  # int8 always moves probabilities more than that
    with pytest.raises(ParityError) as err:
        export(student, tmp_path, config, texts=held_out, name="topk")
    message = str(err.value)
    assert isinstance(err.value, HfaugError) and "\n" not in message
    assert "'topk' fails the parity gate on 90 held-out rows" in message
    assert "int8 max probability difference" in message and "fp32" not in message.split(":")[1]
    # written anyway, with the failure in the card, so the failed export can be inspected
    assert "**FAILED**" in (tmp_path / "int8" / "topk" / "README.md").read_text()


def test_nli_pairs_reach_the_model(tmp_path):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    student = make_student(tmp_path / "nli", tiny_model("encoder"), "nli", steps=20)
    export_onnx(student, tmp_path / "onnx")
    rows = demo_rows("nli_en_dev")[:9]
    premises, hypotheses = [r["premise"] for r in rows], [r["hypothesis"] for r in rows]
    clf = OnnxClassifier(tmp_path / "onnx")
    assert clf.labels == ["entailment", "neutral", "contradiction"]
    probs = clf.predict_proba(premises, hypotheses)

    # the reference is computed independently of hfaug's batching: one pair at a time
    tokenizer = AutoTokenizer.from_pretrained(student)
    model = AutoModelForSequenceClassification.from_pretrained(student).eval()
    with torch.inference_mode():
        for i, (p, h) in enumerate(zip(premises, hypotheses)):
            expected = torch.softmax(model(**tokenizer(p, h, return_tensors="pt")).logits, -1)[0].numpy()
            np.testing.assert_allclose(probs[i], expected, atol=1e-5)
    alone = clf.predict_proba(premises)
    assert np.abs(alone[0] - alone[1]).max() < 1e-6  # one premise, three hypotheses: ...
    assert np.abs(probs[0] - probs[1]).max() > 1e-3  # ... which change the prediction
    with pytest.raises(ValueError, match="one pair per text"):
        clf.predict_proba(premises, hypotheses[:2])


def test_config_is_validated():
    base = {"source": {"path": "hfaug://data/demo/sentiment_en.jsonl"}}
    with pytest.raises(HfaugError, match="min_agreement must be in"):
        load_recipe({**base, "export": {"min_agreement": 1.5}})
    with pytest.raises(HfaugError, match="did you mean 'min_agreement'"):
        load_recipe({**base, "export": {"min_agrement": 0.9}})
    with pytest.raises(HfaugError, match="must be one of"):
        load_recipe({**base, "export": {"quantization": "avx3"}})


# ---------------------------------------------------------------------------------------------
# the stage in a run, and the CLI


def write_recipe(tmp_path: Path, export_section: dict) -> Path:
    data = {"name": "exp", "task": "sentiment", "output_dir": str(tmp_path / "runs"),
            "source": {"path": "hfaug://data/demo/sentiment_en.jsonl",
                       "dev": {"path": "hfaug://data/demo/sentiment_en_dev.jsonl"}},
            "export": export_section}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def fake_distill(run: Run, students: dict[str, Path]) -> None:
    """The distill stage's output layout, with the students given."""
    def write(ctx):
        for name, folder in students.items():
            shutil.copytree(folder, ctx.out_dir / "students" / name)
        return StageResult(extra={"students": sorted(students)})

    execute(run, "distill", write, None, [], force=True)


def test_export_stage_in_a_run_and_its_cli_errors(student, tmp_path, capsys):
    from hfaug import pipeline
    from hfaug.cli import main

    recipe_path = write_recipe(tmp_path, {"parity_rows": 0})
    run = Run(load_recipe(str(recipe_path)))
    assert main(["export", "--config", str(recipe_path)]) == 2  # nothing to export yet
    assert "stage 'source' has no output" in capsys.readouterr().err
    pipeline.run_stage(run, "source")
    fake_distill(run, {})
    assert main(["export", "--config", str(recipe_path)]) == 2
    assert "export: no students in" in capsys.readouterr().err

    fake_distill(run, {"topk": student, "random": student})
    manifest, skipped = pipeline.run_stage(run, "export")
    assert not skipped and manifest["rows_in"] == 30  # the whole dev split
    for name in ("topk", "random"):
        assert manifest["metrics"][name]["fp32"]["agreement"] == 1.0
        assert manifest["metrics"][name]["int8"]["agreement"] >= 0.99
        assert (run.root / "export" / "int8" / name / "model.onnx").is_file()
    assert any("hfaug serve --config" in line for line in manifest["extra"]["next"])
    assert "export: topk.int8: rows=30, agreement=" in pipeline.summary(run, [("export", "ran", manifest, 0.0)])

    # a gate the int8 models cannot meet: exit code 2, one line, the previous export kept
    code = main(["export", "--config", str(recipe_path), "--force", "--export.int8_max_prob_diff", "1e-9"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("hfaug: error: export: student 'random' fails the parity gate")
    assert len(err.splitlines()) == 1
    assert (run.root / "export" / "int8" / "topk" / "model.onnx").is_file()

    assert main(["export", "--config", str(recipe_path), "--export.students", "[top-k]"]) == 2
    assert "no student named 'top-k'" in capsys.readouterr().err  # with a did-you-mean

"""Health checks: a run that finishes broken says so (warn) or stops (stop), naming cause and fix."""

from __future__ import annotations

import pytest

from hfaug import cli, health, pipeline
from hfaug.config import load_recipe
from hfaug.runs import Run
from hfaug.tasks import get_task

SENTIMENT = get_task("sentiment")
# the train labels rotated against the dev labels: a teacher that learns its training data well
# gets the dev set wrong (the "labels in another order" mistake on a user's own CSV)
ROTATED = {"negative": "neutral", "neutral": "positive", "positive": "negative"}


def _recipe(tmp_path, **extra) -> dict:
    return {
        "name": "broken", "task": "sentiment", "output_dir": str(tmp_path / "runs"),
        "source": {"path": "hfaug://data/demo/sentiment_en.jsonl", "label_map": ROTATED,
                   "dev": {"path": "hfaug://data/demo/sentiment_en_dev.jsonl"}},
        "teacher": {"model": "hfaug://tiny/encoder", "epochs": 3, "learning_rate": 5e-3, "batch_size": 8,
                    "gradient_accumulation_steps": 1, "eval_steps": None},
        **extra,
    }


def test_a_broken_teacher_triggers_the_health_check(tmp_path, tiny, caplog, capsys):
    import yaml

    run = Run(load_recipe(_recipe(tmp_path)))  # health: warn (the default)
    pipeline.run_stage(run, "source")
    with caplog.at_level("WARNING", logger="hfaug.health"):
        manifest, _ = pipeline.run_stage(run, "teacher")
    assert manifest["metrics"]["best_dev_accuracy"] <= 1 / 3
    warned = sorted({r.getMessage() for r in caplog.records if r.name == "hfaug.health"})
    assert len(warned) == 1 and "teacher: best dev accuracy" in warned[0]
    assert "source.label_map" in warned[0]  # the likely cause and its fix
    run.report.append(("teacher", "ran", manifest, 0.0))
    assert "health" in pipeline.summary(run) and "at or below chance" in pipeline.summary(run)

    # health: stop ends the run with one line and exit 2, keeping the teacher for inspection
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(_recipe(tmp_path)))
    code = cli.main(["teacher", "--config", str(path), "--health", "stop"])
    err = capsys.readouterr().err.strip()
    last = err.splitlines()[-1]  # (the lines above: the data loading's progress bars)
    assert code == 2 and "Traceback" not in err and last.startswith("hfaug: error: health check failed")
    assert "teacher: best dev accuracy" in last and "health: warn" in last
    assert run.manifest("teacher") is not None  # skipped (unchanged), output kept
    # health: off runs no check
    assert cli.main(["teacher", "--config", str(path), "--health", "off"]) == 0


def test_a_healthy_teacher_passes(tmp_path):
    manifest = {"metrics": {"best_dev_accuracy": 0.5}}
    source = {"metrics": {"labels": {"dev.negative": 10, "dev.neutral": 10, "dev.positive": 10}}}
    assert health.check_teacher(manifest, SENTIMENT, source) == []
    # chance is the most frequent dev label's share when it beats 1/K: 0.5 is no better than 'positive'
    skewed = {"metrics": {"labels": {"dev.negative": 2, "dev.neutral": 3, "dev.positive": 25}}}
    assert "always answering 'positive'" in health.check_teacher(manifest, SENTIMENT, skewed)[0]


def test_one_label_taking_nearly_all_argmaxes():
    collapsed = {"metrics": {"labels": {"negative": 1, "neutral": 2, "positive": 97}}}
    found = health.check_label(collapsed, SENTIMENT)
    assert len(found) == 1 and "'positive' to 97 of 100" in found[0] and "--dry-run" in found[0]
    assert health.check_label({"metrics": {"labels": {"negative": 30, "neutral": 30, "positive": 40}}},
                              SENTIMENT) == []


def test_a_subset_missing_a_class():
    manifest = {"metrics": {"pool": {"hi": {"rows": 50}},
                            "hi-topk-10": {"rows": 20, "labels": {"negative": 10, "neutral": 0, "positive": 10}},
                            "hi-divk-10": {"rows": 30, "labels": {"negative": 10, "neutral": 10, "positive": 10}}}}
    found = health.check_select(manifest, SENTIMENT)
    assert len(found) == 1 and "hi-topk-10 has no 'neutral' row" in found[0]


def test_students_at_chance_or_no_better_than_the_baseline(tmp_path):
    run = Run(load_recipe(_recipe(tmp_path)))
    manifest = {
        "metrics": {"baseline-en": {"hi": {"accuracy": 0.60}},
                    "student/hi-divk-10": {"hi": {"accuracy": 0.55}},
                    "int8/hi-divk-10": {"hi": {"accuracy": 0.34}},
                    "student/hi-topk-10": {"hi": {"accuracy": 0.70}}},
        "extra": {"labels": {"hi": {"negative": 34, "neutral": 33, "positive": 33}}},
    }
    found = health.check_evaluate(manifest, SENTIMENT, run)
    assert len(found) == 2
    assert "int8/hi-divk-10 on hi 0.340 (chance 0.340)" in found[0]
    assert "student/hi-divk-10 on hi 0.550 <= baseline-en 0.600" in found[1] and "hi-topk-10" not in found[1]


@pytest.mark.parametrize("mode", ["warn", "stop", "off", False])
def test_health_is_a_run_wide_recipe_key(tmp_path, mode):
    assert load_recipe(_recipe(tmp_path, health=mode)).run.health == (mode or "off")  # YAML: off is false

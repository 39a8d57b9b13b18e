"""The packaged NLI demo (`hfaug run demo-nli`) end to end on the tiny models, parity gate included."""

from __future__ import annotations

import json

import pytest

from hfaug import cli
from hfaug.config import load_recipe, packaged_recipes
from hfaug.pipeline import planned

pytestmark = pytest.mark.slow

# the packaged recipe, trimmed on the command line so the test stays short: one target language,
# one strategy, one student, a one-epoch teacher (the student keeps its 6: a one-epoch student
# scores every pair as a near-tie, which int8 rounding flips and the parity gate rightly refuses)
SMALL = ["--generate.n_premises", "6", "--teacher.epochs", "1", "--translate.languages", "[sw]",
         "--select.strategies", "[div-k]", "--distill.subsets", "[sw-divk-5]",
         "--evaluate.test_sets", '[{path: "hfaug://data/demo/nli_sw.jsonl", lang: sw}]']


def test_demo_nli_runs_every_stage_through_the_parity_gate(tmp_path, capsys, tiny):
    import datasets

    assert "demo-nli" in packaged_recipes()
    recipe = load_recipe("demo-nli")
    assert recipe.run.task == "nli" and recipe.export.quantize
    assert cli.main(["run", "demo-nli", "--output-dir", str(tmp_path), *SMALL]) == 0
    out = capsys.readouterr().out
    run_dir = tmp_path / "demo-nli"
    for stage in planned(recipe):
        assert (run_dir / stage.name / "manifest.json").is_file(), stage.name
        assert f"\n{stage.name:<17} ran" in out
    candidates = datasets.load_from_disk(str(run_dir / "label" / "data"))
    assert {"premise", "hypothesis", "soft_label"} <= set(candidates.column_names)
    # 6 premises x 3 hypotheses, less what cleaning dropped (each counted under its reason)
    generated = json.loads((run_dir / "generate" / "manifest.json").read_text())
    assert len(candidates) == generated["rows_out"]["data"] > 0
    assert 18 - len(candidates) <= sum(generated["dropped"].values())
    # the parity gate ran on both variants and passed (a failure exits 2)
    export = json.loads((run_dir / "export" / "manifest.json").read_text())
    for variant in ("fp32", "int8"):
        assert export["metrics"]["sw-divk-5"][variant]["agreement"] >= recipe.export.min_agreement
    assert (run_dir / "export" / "int8" / "sw-divk-5" / "model.onnx").is_file()
    metrics = json.loads((run_dir / "evaluate" / "metrics.json").read_text())
    assert metrics["labels"] == ["entailment", "neutral", "contradiction"]
    assert set(metrics["results"]["int8/sw-divk-5"]) == {"sw"}
    # what the Space shows, beside the ONNX model: the run's Swahili pairs and the student's test metrics
    info = json.loads((run_dir / "export" / "int8" / "sw-divk-5" / "hfaug.json").read_text(encoding="utf-8"))
    assert info["task"] == "nli" and info["languages"] == ["sw"] and set(info["metrics"]) == {"sw"}
    select = datasets.load_from_disk(str(run_dir / "select" / "sw-divk-5"))
    assert info["examples"]["sw"] == [[r["premise"], r["hypothesis"]] for r in select.select(range(3))]

"""The generate stage in a run: what it needs from earlier stages, and the metrics it reports."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tgi_server import TGIServer  # noqa: E402

from hfaug import cli  # noqa: E402
from hfaug.config import load_recipe  # noqa: E402
from hfaug.errors import HfaugError  # noqa: E402
from hfaug.pipeline import run_stage  # noqa: E402
from hfaug.runs import Run  # noqa: E402


def _recipe(tmp_path, url: str, **generate) -> dict:
    return {"name": "gen", "task": "sentiment", "seed": 7, "output_dir": str(tmp_path / "runs"),
            "source": {"path": "hfaug://data/demo/sentiment_en.jsonl"},
            "generate": {"backend": "tgi", "endpoints": [url], "n_per_class": 4, "concurrency": 4,
                         "progress": False, **generate}}


def test_zero_shot_generate_runs_without_the_source_stage(tmp_path, capsys):
    with TGIServer() as server:
        path = tmp_path / "recipe.yaml"
        path.write_text(yaml.safe_dump(_recipe(tmp_path, server.url)))
        assert cli.main(["-q", "generate", "--config", str(path)]) == 0
        run = Run(load_recipe(str(path)))
        assert run.manifest("source") is None and len(run.load("generate")) > 0
        assert run.manifest("generate")["inputs"] == {}
        # running the source stage afterwards does not make the zero-shot generations stale
        run_stage(run, "source")
        assert run_stage(run, "generate")[1] is True
        # few-shot prompts do read the source rows
        few = Run(load_recipe(_recipe(tmp_path / "few", server.url, few_shot=1)))
        with pytest.raises(HfaugError, match="stage 'source' has no output"):
            run_stage(few, "generate")


def test_request_phase_and_whole_stage_are_reported_separately(tmp_path):
    with TGIServer(latency=0.05) as server:
        run = Run(load_recipe(_recipe(tmp_path, server.url)))
        metrics = run_stage(run, "generate")[0]["metrics"]
    sent = metrics["requests"]["sent"]
    assert sent == 12
    # 12 requests, 4 at a time, 50 ms each: at least 3 rounds in the request phase
    assert metrics["request_phase_s"] >= 0.15
    assert metrics["stage_s"] >= metrics["request_phase_s"] + metrics["dedupe_s"]
    assert metrics["requests_per_s"] == pytest.approx(sent / metrics["request_phase_s"], rel=0.01)
    assert metrics["stage_requests_per_s"] == pytest.approx(sent / metrics["stage_s"], rel=0.01)
    assert metrics["stage_requests_per_s"] < metrics["requests_per_s"]

"""The scale benchmark's bookkeeping (scripts/bench/bench_scale.py): its table is written after
every stage, so an interrupted run keeps its figures, and a rerun resumes where it stopped.

The stage processes are stood in for (a real one takes minutes at the benchmark's sizes); what is
tested is the benchmark's own recording, resuming and --fresh."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "scripts" / "bench"


class _Server:
    def kill(self):
        pass

    def wait(self):
        pass


@pytest.fixture
def bench(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(BENCH))
    import bench_scale
    import run_all

    from hfaug.config import load_recipe
    from hfaug.runs import Run

    monkeypatch.setattr(bench_scale, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(run_all, "write_report", lambda: None)  # BENCHMARKS.md of the checkout stays
    monkeypatch.setattr(bench_scale, "start_server", lambda latency: (_Server(), "http://127.0.0.1:9"))
    calls: list[str] = []
    fail: set[str] = set()

    def run_stage(path: Path, stage: str) -> dict:
        """A stage process stood in for: its output folder with a manifest, or a failure."""
        if stage == "source":
            return {}
        calls.append(stage)
        if stage in fail:
            raise RuntimeError(f"hfaug {stage} failed (1):\nboom")
        out = Run(load_recipe(str(path))).stage_dir(stage)
        out.mkdir(parents=True, exist_ok=True)
        (out / "manifest.json").write_text(json.dumps({"stage": stage, "metrics": {}}))
        return {"seconds": 1.0, "cpu_s": 1.0, "peak_rss_mb": 100.0}

    monkeypatch.setattr(bench_scale, "run_stage", run_stage)
    bench_scale.calls, bench_scale.fail = calls, fail
    return bench_scale


def _argv(tmp_path: Path, *extra: str) -> list[str]:
    return ["--tasks", "sentiment", "--sizes", "1000", "--stages", "translate-source", "teacher", "label",
            "--work", str(tmp_path / "work"), *extra]


def test_partial_run_keeps_its_figures_and_a_rerun_resumes(bench, tmp_path):
    bench.fail.add("label")
    bench.main(_argv(tmp_path))
    # the planned order of the translated-teacher setting, stopped at the failing stage
    assert bench.calls == ["translate-source", "teacher", "label"]
    stored = json.loads((tmp_path / "results" / "scale.json").read_text())
    cells = stored["flow"]["sentiment"]["1000"]
    assert cells["teacher"]["cpu_s"] == 1.0 and "failed" in cells["label"]
    table = (tmp_path / "results" / "scale.md").read_text()
    assert "| teacher | 1 / 1 / 100 / 0 |" in table and "label at 1,000" in table

    bench.calls.clear()
    bench.fail.clear()
    bench.main(_argv(tmp_path))
    assert bench.calls == ["label"]  # the stages measured before are kept, the failed one runs
    cells = json.loads((tmp_path / "results" / "scale.json").read_text())["flow"]["sentiment"]["1000"]
    assert all("failed" not in cells[s] for s in ("translate-source", "teacher", "label"))

    bench.calls.clear()
    bench.main(_argv(tmp_path, "--fresh"))
    assert bench.calls == ["translate-source", "teacher", "label"]

    # --fresh on some stages measures those again and keeps the others
    bench.calls.clear()
    bench.main(["--tasks", "sentiment", "--sizes", "1000", "--stages", "teacher", "--work", str(tmp_path / "work"),
                "--fresh"])
    assert bench.calls == ["teacher"]
    bench.calls.clear()
    bench.main(_argv(tmp_path))
    assert bench.calls == []


def test_a_measured_stage_whose_output_is_gone_runs_again(bench, tmp_path):
    bench.main(_argv(tmp_path))
    import shutil

    shutil.rmtree(next((tmp_path / "work").glob("sentiment-1000/*/teacher")))
    bench.calls.clear()
    bench.main(_argv(tmp_path))
    assert bench.calls == ["teacher"]


@pytest.fixture(autouse=True)
def _forget_bench_modules():
    yield
    for name in ("bench_scale", "run_all", "_common", "bench_generate"):
        sys.modules.pop(name, None)

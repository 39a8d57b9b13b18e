"""End to end: the demo recipe through every stage, resume after a kill, reproduction via the Hub."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import free_port

from hfaug import cli
from hfaug.config import find_recipe, load_recipe
from hfaug.pipeline import planned, run_pipeline

pytestmark = pytest.mark.slow


def hfaug_cli(*args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hfaug", *args], capture_output=True, text=True, timeout=timeout)


def stage_lines(summary: str) -> dict[str, str]:
    """stage -> status, read from the run summary's table."""
    out = {}
    for line in summary.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[1] in ("ran", "skipped"):
            out[parts[0]] = parts[1]
    return out


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    return out, hfaug_cli("run", "demo", "--output-dir", str(out))


def test_demo_runs_every_stage(demo_run):
    import datasets

    out, proc = demo_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    stages = [s.name for s in planned(load_recipe("demo"))]
    assert stage_lines(proc.stdout) == {name: "ran" for name in stages}
    assert "load_dataset(" in proc.stdout and "hfaug serve" in proc.stdout  # the next commands
    run_dir = out / "demo"
    layout = run_dir / "publish" / "hub-layout"
    for config in ("hi-divk-10", "mr-ambk-10", "translated-candidates"):
        ds = datasets.load_dataset(str(layout), config, split="train")
        assert len(ds) > 0 and ds.features["label"].names == ["negative", "neutral", "positive"]
    # translated-teacher: the teacher labelled the translations, so the candidates are not English
    assert set(datasets.load_dataset(str(layout), "translated-candidates", split="train")["lang"]) == {"hi", "mr"}
    metrics = json.loads((run_dir / "evaluate" / "metrics.json").read_text())
    assert metrics, "evaluate wrote no metrics"
    text = (run_dir / "evaluate" / "metrics.md").read_text()
    for student in load_recipe("demo").distill.subsets:
        assert student in text
    assert (run_dir / "export" / "int8" / "hi-divk-10-seed42" / "model.onnx").is_file()
    # the experiment grid: 2 seeds x 2 budgets, its results table, and the figures the summary names
    results = datasets.load_from_disk(str(run_dir / "distill" / "results"))
    assert {(r["strategy"], r["budget"], r["n_seeds"]) for r in results if r["lang"] == "hi"} == {
        ("source-only", None, 2), ("random", 5, 2), ("random", 10, 2), ("div-k", 5, 2), ("div-k", 10, 2)}
    for figure in ("accuracy_vs_budget.png", "strategies.png"):
        path = run_dir / "distill" / "grid" / "figures" / figure
        assert str(path) in proc.stdout and path.stat().st_size > 1000


def test_second_demo_run_skips_every_stage(demo_run):
    out, first = demo_run
    assert first.returncode == 0
    again = hfaug_cli("run", "demo", "--output-dir", str(out))
    assert again.returncode == 0, again.stderr[-3000:]
    statuses = stage_lines(again.stdout)
    assert statuses and set(statuses.values()) == {"skipped"}


# ---------------------------------------------------------------------------------------------
# a small recipe for resume and reproduction


def small_recipe(out: Path, **publish) -> dict:
    data = yaml.safe_load(find_recipe("demo").read_text())
    data.update(name="small", output_dir=str(out))
    data["source"].update(limit=48)  # the translated-teacher setting translates the source too
    data["source"]["dev"].update(limit=12)
    data["generate"].update(n_per_class=8, llm_labels=False)
    data["teacher"].update(epochs=3)
    data["translate"].update(languages=["hi"])
    data["select"].update(strategies=["top-k", "div-k"], budgets=[4])
    data["distill"].update(subsets=["hi-topk-4"], num_train_epochs=2)
    data["distill"].pop("seeds")  # one student, no grid
    data["publish"] = {"license": "cc-by-4.0", "models": False, **publish}
    for section in ("export", "evaluate"):
        data.pop(section)
    return data


def snapshot(run_dir: Path) -> dict:
    """What a run produced, in comparable form: rows of every dataset, and the student's metrics."""
    import datasets

    out = {}
    for stage in ("generate", "label", "translate", "select"):
        for folder in sorted((run_dir / stage).iterdir()):
            if (folder / "dataset_info.json").is_file():
                ds = datasets.load_from_disk(str(folder))
                cols = [c for c in ("id", "text", "label", "soft_label", "rank") if c in ds.column_names]
                out[f"{stage}/{folder.name}"] = sorted(
                    tuple(round(v, 5) if isinstance(v, float) else tuple(round(x, 5) for x in v)
                          if isinstance(v, list) else v for v in row)
                    for row in zip(*(ds[c] for c in cols)))
    manifest = json.loads((run_dir / "distill" / "manifest.json").read_text())
    out["distill"] = manifest["metrics"]
    return out


def test_killed_run_resumes_to_the_same_outputs(tmp_path):
    reference = tmp_path / "reference.yaml"
    reference.write_text(yaml.safe_dump(small_recipe(tmp_path / "a")))
    done = hfaug_cli("run", str(reference))
    assert done.returncode == 0, done.stderr[-3000:]

    killed = tmp_path / "killed.yaml"
    killed.write_text(yaml.safe_dump(small_recipe(tmp_path / "b")))
    run_dir = tmp_path / "b" / "small"
    proc = subprocess.Popen([sys.executable, "-m", "hfaug", "run", str(killed)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    # kill -9 in the middle of a stage: as soon as the translate stage has cached work
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        cache = run_dir / "cache" / "translate"
        if cache.is_dir() and any(cache.iterdir()):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "distill").exists()

    resumed = hfaug_cli("run", str(killed))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    statuses = stage_lines(resumed.stdout)
    assert statuses["generate"] == "skipped" and statuses["distill"] == "ran"
    assert snapshot(run_dir) == snapshot(tmp_path / "a" / "small")
    assert not list(run_dir.glob(".*.tmp*"))  # nothing half-written left behind


def test_reproduce_from_the_hub_yields_the_published_data(hub, tmp_path):
    import datasets

    repo = "tester/hfaug-small"
    run = run_pipeline(load_recipe(small_recipe(tmp_path / "orig", repo_id=repo)))
    assert run.manifest("publish")["extra"]
    clean = tmp_path / "clean"
    assert cli.main(["reproduce", repo, "--revision", "v1", "--output-dir", str(clean)]) == 0
    layout = clean / "small" / "publish" / "hub-layout"
    configs = datasets.get_dataset_config_names(repo, revision="v1")
    assert {"hi-topk-4", "hi-divk-4", "translated-candidates"} <= set(configs)
    for config in configs:
        published = datasets.load_dataset(repo, config, revision="v1", split="train")
        rebuilt = datasets.load_dataset(str(layout), config, split="train")
        # source-translated (the translated-teacher setting translates the source) has no soft labels
        cols = [c for c in ("id", "label", "soft_label") if c in published.column_names]
        assert sorted(zip(*(published[c] for c in cols))) == sorted(zip(*(rebuilt[c] for c in cols))), config


def test_label_under_accelerate_launch_matches_one_process(tmp_path):
    """`accelerate launch -m hfaug label` (2 CPU processes) writes the rows one process writes."""
    import numpy as np

    from hfaug.runs import Run

    data = small_recipe(tmp_path)
    data["setting"] = "english-teacher"  # the teacher labels the English generations
    for section in ("translate", "select", "publish", "distill"):
        data.pop(section)
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(data))
    run = run_pipeline(load_recipe(str(path)))
    single = run.load("label")
    shutil.rmtree(run.cache_dir("label"))  # the two processes must compute, not read the cache
    port = str(free_port())  # a fixed rendezvous port may still be held by an earlier launch
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_PORT": port}
    proc = subprocess.run([str(Path(sys.executable).with_name("accelerate")), "launch", "--multi_gpu",
                           "--num_processes", "2", "--main_process_port", port, "-m", "hfaug", "label",
                           "--config", str(path), "--force"], capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # one summary, from rank 0: one row for the label stage in one stage table
    assert sum(line.startswith("label ") for line in proc.stdout.splitlines()) == 1
    assert proc.stdout.count("hfaug run ") <= 1
    both = Run(load_recipe(str(path))).load("label")
    assert both["id"] == single["id"]
    assert np.abs(np.array(both["soft_label"]) - np.array(single["soft_label"])).max() < 1e-5
    assert not list((tmp_path / "small").glob(".label.tmp*"))

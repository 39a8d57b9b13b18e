"""The experiment grid: students per subset x seed plus the source-only baseline, the aggregated
results (recomputed here from the per-student metrics), the figures, adding a seed, shards in
separate processes, and the dry-run's count and cost."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import yaml

from hfaug import grid as G
from hfaug import results as R
from hfaug.config import load_recipe
from hfaug.errors import HfaugError
from hfaug.runs import Run, StageResult, execute

datasets = pytest.importorskip("datasets")
torch = pytest.importorskip("torch")

SOURCE = {"path": "hfaug://data/demo/sentiment_en.jsonl", "dev": {"path": "hfaug://data/demo/sentiment_en_dev.jsonl"}}
TEST_SETS = [{"path": "hfaug://data/demo/sentiment_hi.jsonl", "lang": "hi"}]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---------------------------------------------------------------------------------------------
# the plan and the shards (pure)


class _Config:
    def __init__(self, seeds=None, baseline=None, seed=None):
        self.seeds, self.baseline, self.seed = seeds, baseline, seed


def test_plan_names_students_by_subset_and_seed_with_the_baseline():
    plain = G.plan(["hi-divk-10", "hi-all"], _Config(), run_seed=7)
    assert [(s.name, s.subset, s.seed) for s in plain] == [("hi-divk-10", "hi-divk-10", 7), ("hi-all", "hi-all", 7)]
    grid = G.plan(["hi-divk-10"], _Config(seeds=[42, 12]), run_seed=7)
    assert [(s.name, s.subset, s.seed) for s in grid] == [
        ("source-only-seed42", None, 42), ("source-only-seed12", None, 12),
        ("hi-divk-10-seed42", "hi-divk-10", 42), ("hi-divk-10-seed12", "hi-divk-10", 12)]
    assert G.plan(["a"], _Config(baseline=True, seed=3), run_seed=7)[0] == G.Student("source-only", None, 3)
    assert not any(s.is_baseline for s in G.plan(["a"], _Config(seeds=[1, 2], baseline=False), run_seed=7))
    students = G.plan([f"hi-x-{k}" for k in range(5)], _Config(seeds=[1, 2, 3]), run_seed=7)
    shares = [G.shard(students, i, 4) for i in range(4)]
    assert sorted(s.name for share in shares for s in share) == sorted(s.name for s in students)
    assert max(map(len, shares)) - min(map(len, shares)) <= 1
    assert G.parse_shard(" 1/4") == (1, 4)
    for bad in ("4/4", "1-4", "0/0", "a/b"):
        with pytest.raises(HfaugError, match="--shard"):
            G.parse_shard(bad)


# ---------------------------------------------------------------------------------------------
# the aggregation against numbers worked out by hand


def _rec(strategy, budget, seed, acc, f1, lang="hi", student=None):
    return {"student": student or f"{strategy}-{budget}-{seed}", "setting": "", "lang": lang, "strategy": strategy,
            "budget": budget, "seed": seed, "accuracy": acc, "macro_f1": f1}


def test_aggregate_means_stds_gains_and_the_comparison_with_random():
    records = [
        _rec("source-only", None, 42, 0.50, 0.40), _rec("source-only", None, 12, 0.54, 0.44),
        _rec("all", None, 42, 0.60, 0.50), _rec("all", None, 12, 0.62, 0.52),
        _rec("random", 10, 42, 0.60, 0.55), _rec("random", 10, 12, 0.64, 0.57),
        _rec("div-k", 10, 42, 0.70, 0.65), _rec("div-k", 10, 12, 0.62, 0.61),
    ]
    gold = {"hi": [0, 1, 2, 0, 1, 2, 0, 1]}
    # div-k right on every row with both seeds, random right on half: div-k ahead in every resample
    predictions = {("div-k-10-42", "hi"): gold["hi"], ("div-k-10-12", "hi"): gold["hi"],
                   ("random-10-42", "hi"): [0, 1, 2, 0, 2, 0, 1, 2], ("random-10-12", "hi"): [0, 1, 2, 0, 2, 0, 1, 2]}
    rows = {(r["strategy"], r["budget"]): r for r in R.aggregate(records, predictions=predictions, gold=gold)}
    assert list(rows) == [("source-only", None), ("all", None), ("random", 10), ("div-k", 10)]
    divk = rows[("div-k", 10)]
    assert divk["seeds"] == [12, 42] and divk["n_seeds"] == 2
    assert divk["accuracy_mean"] == pytest.approx(0.66)
    assert divk["accuracy_std"] == pytest.approx(math.sqrt(2 * 0.04**2))  # sample std of 0.70 and 0.62
    assert divk["macro_f1_mean"] == pytest.approx(0.63)
    assert divk["gain_vs_source_only"] == pytest.approx(0.66 - 0.52)
    assert divk["gain_vs_all"] == pytest.approx(0.66 - 0.61)
    assert divk["vs_random_gain"] == pytest.approx(((0.70 - 0.60) + (0.62 - 0.64)) / 2)
    assert (divk["vs_random_wins"], divk["vs_random_seeds"]) == (1, 2)
    assert divk["vs_random_p"] == pytest.approx(0.5**8, abs=0.005) and divk["beats_random"] is True
    assert rows[("random", 10)]["vs_random_p"] is None and rows[("source-only", None)]["gain_vs_source_only"] == 0
    # the same predictions on both sides: never ahead, p = 1
    assert R.paired_bootstrap([1, 0, 1], [1, 0, 1]) == 1.0
    table = R.to_dataset(list(rows.values()))
    assert table.num_rows == 4 and table.features["budget"].dtype == "int64"
    text = R.markdown(list(rows.values()))
    assert "66.00 ± 5.66" in text and "**beats random**" in text and "+14.00" in text


# ---------------------------------------------------------------------------------------------
# the grid in a run


def _synthetic(texts, lang="hi", strategy="top-k", shift=0):
    import numpy as np

    soft = []
    for i, text in enumerate(texts):
        p = np.full(3, 0.1)
        p[(len(text) + shift + i) % 3] = 0.8
        soft.append(p.tolist())
    rows = {"text": list(texts), "lang": [lang] * len(texts), "strategy": [strategy] * len(texts),
            "soft_label": soft, "label": [int(np.argmax(p)) for p in soft]}
    features = datasets.Features({"text": datasets.Value("string"), "lang": datasets.Value("string"),
                                  "strategy": datasets.Value("string"),
                                  "soft_label": datasets.Sequence(datasets.Value("float32")),
                                  "label": datasets.ClassLabel(names=["negative", "neutral", "positive"])})
    return datasets.Dataset.from_dict(rows, features=features)


def _hi_texts() -> list[str]:
    from hfaug.config import resolve

    return [json.loads(line)["text"] for line in open(resolve("hfaug://data/demo/sentiment_hi.jsonl"), encoding="utf-8")]


SUBSETS = {"hi-randk-5": ("random", 0, slice(0, 15)), "hi-topk-5": ("top-k", 1, slice(10, 25)),
           "hi-all": ("all", 2, slice(0, 30))}


def _recipe(root, seeds, subsets=tuple(SUBSETS)) -> dict:
    return {"name": "g", "task": "sentiment", "seed": 3, "output_dir": str(root), "source": SOURCE,
            "select": {"budgets": [5]}, "evaluate": {"test_sets": TEST_SETS},
            "distill": {"model": "hfaug://tiny/encoder", "num_train_epochs": 1, "learning_rate": 2e-3,
                        "per_device_train_batch_size": 16, "use_cpu": True, "disable_tqdm": True,
                        "seeds": seeds, "subsets": list(subsets)}}


def _prepare(data: dict) -> Run:
    from hfaug.pipeline import run_stage

    run = Run(load_recipe(data))
    run_stage(run, "source")
    texts = _hi_texts()
    subsets = {name: _synthetic(texts[rows], strategy=strategy, shift=shift)
               for name, (strategy, shift, rows) in SUBSETS.items()}
    execute(run, "select", lambda ctx: StageResult(datasets=subsets), None, [])
    return run


def _from_students(folder) -> list[dict]:
    """The results recomputed from nothing but the students' metrics.json files."""
    groups: dict[tuple, list[dict]] = {}
    for path in sorted(folder.glob("*/metrics.json")):
        m = json.loads(path.read_text())
        strategy = m["subset"]["strategy"]
        groups.setdefault((strategy, m["subset"]["budget_per_class"]), []).append(m)
    out = {}
    for key, members in groups.items():
        acc = [m["test"]["hi"]["accuracy"] for m in members]
        f1 = [m["test"]["hi"]["macro_f1"] for m in members]
        mean = sum(acc) / len(acc)
        out[key] = {"n": len(acc), "acc": mean, "f1": sum(f1) / len(f1),
                    "acc_std": math.sqrt(sum((a - mean) ** 2 for a in acc) / (len(acc) - 1)),
                    "by_seed": {m["seed"]: m["test"]["hi"]["accuracy"] for m in members}}
    return out


@pytest.mark.slow
def test_grid_trains_every_seed_aggregates_draws_and_a_new_seed_trains_only_its_students(tmp_path):
    from PIL import Image

    from hfaug.pipeline import run_stage

    run = _prepare(_recipe(tmp_path / "runs", [1]))
    first, _ = run_stage(run, "distill")
    assert first["extra"]["trained"] == 4 and first["extra"]["reused"] == 0
    # a second seed: the stage reruns and trains only the four new students
    manifest, skipped = run_stage(Run(load_recipe(_recipe(tmp_path / "runs", [1, 2]))), "distill")
    assert not skipped and manifest["extra"]["trained"] == 4 and manifest["extra"]["reused"] == 4
    for name in ("source-only-seed1", "hi-topk-5-seed1"):
        assert manifest["metrics"][name] == first["metrics"][name]
    folder = run.stage_dir("distill") / "students"
    names = {p.name for p in folder.iterdir()}
    assert names == {f"{s}-seed{n}" for s in ("source-only", *SUBSETS) for n in (1, 2)}
    baseline = json.loads((folder / "source-only-seed2" / "metrics.json").read_text())
    assert baseline["synthetic_rows"] == 0 and baseline["seed"] == 2

    # every number of the results table, recomputed from the per-student metrics
    expected = _from_students(folder)
    table = run.load("distill", "results")
    assert table.num_rows == len(expected) == 4
    for row in table:
        e = expected[(row["strategy"], row["budget"])]
        assert row["n_seeds"] == e["n"] == 2 and row["lang"] == "hi"
        assert row["accuracy_mean"] == pytest.approx(e["acc"]) and row["macro_f1_mean"] == pytest.approx(e["f1"])
        assert row["accuracy_std"] == pytest.approx(e["acc_std"])
        assert row["gain_vs_source_only"] == pytest.approx(e["acc"] - expected[("source-only", None)]["acc"])
        assert row["gain_vs_all"] == pytest.approx(e["acc"] - expected[("all", None)]["acc"])
    topk = next(r for r in table if r["strategy"] == "top-k")
    random = expected[("random", 5)]["by_seed"]
    assert topk["vs_random_gain"] == pytest.approx(
        sum(a - random[s] for s, a in expected[("top-k", 5)]["by_seed"].items()) / 2)
    assert 0.0 <= topk["vs_random_p"] <= 1.0 and topk["beats_random"] == (topk["vs_random_p"] < 0.05)

    # the figures open as images; the markdown, the model cards embed them; the cards' model-index
    grid_dir = run.stage_dir("distill") / "grid"
    for name in (R.FIGURE_BUDGETS, R.FIGURE_STRATEGIES):
        with Image.open(grid_dir / "figures" / name) as image:
            assert image.format == "PNG" and image.size[0] > 300 and image.size[1] > 200
        assert f"figures/{name}" in (grid_dir / "results.md").read_text()
        assert str(grid_dir / "figures" / name) in manifest["extra"]["figures"]
    card = (folder / "hi-topk-5-seed1" / "README.md").read_text()
    assert "![figures/accuracy_vs_budget.png](figures/accuracy_vs_budget.png)" in card
    assert (folder / "hi-topk-5-seed1" / "figures" / R.FIGURE_STRATEGIES).is_file()
    front = yaml.safe_load(card.split("---")[1])
    metric = front["model-index"][0]["results"][0]["metrics"][0]
    assert metric["type"] == "accuracy" and metric["value"] == pytest.approx(
        json.loads((folder / "hi-topk-5-seed1" / "metrics.json").read_text())["test"]["hi"]["accuracy"])


@pytest.mark.slow
def test_two_shards_at_once_give_what_one_process_gives(tmp_path):
    from hfaug.pipeline import run_stage

    runs = {}
    for name in ("one", "sharded"):
        data = _recipe(tmp_path / name, [1, 2], subsets=("hi-topk-5",))
        runs[name] = _prepare(data)
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(data))
    # two processes on the same run directory at once, one thread each like this one
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    shards = [subprocess.Popen([sys.executable, "-m", "hfaug", "distill", "--config", str(tmp_path / "sharded.yaml"),
                                "--shard", f"{i}/2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=env) for i in (0, 1)]
    one, _ = run_stage(runs["one"], "distill")  # meanwhile, the same grid in one process
    for i, proc in enumerate(shards):
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err[-3000:]
        assert f"distill shard {i}/2: 2 of 4 students (2 trained" in out
    assert not runs["sharded"].stage_dir("distill").exists()  # shards only fill the cache
    collected, _ = run_stage(runs["sharded"], "distill")  # the one aggregation: trains nothing
    assert collected["extra"]["trained"] == 0 and collected["extra"]["reused"] == 4
    assert collected["metrics"] == one["metrics"]
    table = runs["sharded"].load("distill", "results").to_list()
    assert table == runs["one"].load("distill", "results").to_list() and len(table) == 2
    assert not list(runs["sharded"].root.glob(".distill*"))


def test_shard_errors_are_one_line(tmp_path, capsys):
    from hfaug.cli import main

    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(_recipe(tmp_path / "runs", [1, 2])))
    assert main(["distill", "--config", str(path), "--shard", "2/2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "numbered from 0" in err[0]
    assert main(["distill", "--config", str(path), "--shard", "0/2"]) == 2  # the source has not run
    assert "hfaug source" in capsys.readouterr().err


def test_dry_run_counts_the_paper_grid_and_its_gpu_hours(tmp_path, capsys, monkeypatch):
    from hfaug.cli import main

    monkeypatch.chdir(tmp_path)
    recipe = load_recipe("paper/sentiment-mr")
    assert recipe.distill.seeds == [42, 12, 100]
    assert main(["run", "paper/sentiment-mr", "--dry-run"]) == 0
    out = capsys.readouterr().out
    budgets, strategies = recipe.select.budgets, recipe.select.strategies
    subsets = len(budgets) * (len(strategies) - ("all" in strategies)) + ("all" in strategies)
    students = (subsets + 1) * 3
    assert f"= {students} student(s)" in out and "GPU hours" in out
    e = G.estimate(recipe)
    assert e["students"] == students and e["gpu_hours"] > 0
    assert not (tmp_path / "runs").exists()  # nothing created


def test_dataset_card_embeds_the_grid_figures(tmp_path, monkeypatch):
    import huggingface_hub.constants as hf_constants
    from PIL import Image
    from test_publish import V1, publish, recipe_dict

    monkeypatch.setattr(hf_constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    rows = R.aggregate([_rec("source-only", None, 1, 0.5, 0.4), _rec("random", 5, 1, 0.6, 0.5),
                        _rec("random", 10, 1, 0.7, 0.6), _rec("div-k", 5, 1, 0.65, 0.6)])
    figures = Run(load_recipe(recipe_dict(tmp_path))).stage_dir("distill") / "grid"
    R.write(rows, figures, default_budget=10)
    run, _ = publish(tmp_path, "v1", V1)
    layout = run.stage_dir("publish") / "hub-layout"
    card = (layout / "README.md").read_text()
    for name in (R.FIGURE_BUDGETS, R.FIGURE_STRATEGIES):
        assert f"](figures/{name})" in card
        with Image.open(layout / "figures" / name) as image:
            assert image.format == "PNG"


def test_dry_run_reads_the_gold_rows_from_the_hub_card_in_one_request(hub):
    from huggingface_hub import HfApi

    from hfaug.hub import split_rows

    api = HfApi()
    api.create_repo("org/sst", repo_type="dataset")
    card = ("---\ndataset_info:\n  config_name: default\n  splits:\n  - name: train\n    num_examples: 8544\n"
            "  - name: validation\n    num_examples: 1101\n---\n# sst\n")
    api.upload_file(path_or_fileobj=card.encode(), path_in_repo="README.md", repo_id="org/sst", repo_type="dataset")
    assert split_rows("org/sst", None, None, "train") == 8544
    assert split_rows("org/sst", None, None, "validation") == 1101
    assert split_rows("org/none", None, None, "train") is None

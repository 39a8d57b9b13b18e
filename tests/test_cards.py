"""Cards: every card hfaug writes, rendered from a small fixed run and compared with the golden files
in tests/golden/ (``HFAUG_UPDATE_GOLDEN=1`` rewrites them), so a change to a card shows as a diff.

Machine-specific parts (the temp folder, the test Hub's port, hfaug's version) are replaced by
placeholders before the comparison; everything else is byte for byte.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hub_server import validate_card
from test_publish import (  # noqa: F401 (offline: a fixture)
    REPO,
    V1,
    fake_onnx_exports,
    offline,
    publish,
    recipe_dict,
    student_folder,
    write_inputs,
)

from hfaug import pipeline
from hfaug.config import load_recipe
from hfaug.runs import Run, StageContext, StageResult, execute

GOLDEN = Path(__file__).resolve().parent / "golden"
UPDATE = os.environ.get("HFAUG_UPDATE_GOLDEN") == "1"

SUBSET = {"name": "hi-divk-4", "rows": 4, "lang": "hi", "strategy": "div-k", "budget_per_class": 4}
SAVED = {"dev_accuracy": 0.5, "seed": 7, "subset": SUBSET,
         "test": {"hi": {"accuracy": 0.61, "macro_f1": 0.6, "n": 20}, "mr": {"accuracy": 0.55, "macro_f1": 0.5, "n": 20}}}
ID2LABEL = {"0": "negative", "1": "neutral", "2": "positive"}


def normalized(text: str, *, tmp_path: Path, hub_url: str | None = None) -> str:
    from hfaug import __version__

    text = text.replace(str(tmp_path), "<tmp>")
    if hub_url:
        text = text.replace(hub_url, "<hub>")
    return text.replace(f"hfaug {__version__}", "hfaug <version>")


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if UPDATE or not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        if not UPDATE:
            pytest.fail(f"{path} did not exist and was written; check it and commit it")
    assert text == path.read_text(encoding="utf-8"), (
        f"{name} differs from tests/golden/{name}; if the change is meant, rerun with HFAUG_UPDATE_GOLDEN=1 "
        "and commit the new golden file")


# ---------------------------------------------------------------------------------------------
# the run's parts that write cards


def distill_context(run: Run) -> StageContext:
    return StageContext(run, "distill", run.recipe.sections["distill"], run.stage_dir("distill"))


def card_data(run: Run, grid: dict | None = None, name: str = SUBSET["name"]):
    """What the distill stage knows of a student's card (students/<name>/card.json)."""
    from hfaug import distill as D

    return D._card_data(distill_context(run), {**SUBSET, "name": name}, SAVED, None,
                        "source train rows (en), gold labels", grid=grid, name=name)


def student_card(run: Run, grid: dict | None = None) -> str:
    """The card the distill stage writes beside a student (students/<name>/README.md)."""
    from hfaug.cards import model_card

    return model_card(card_data(run, grid))


def write_distilled(run: Run, names: list[str], *, cards: tuple[str, ...] | None = None) -> None:
    """A distill stage's students/ as the real stage leaves them: model files, metrics.json, the card."""
    from hfaug.cards import CARD_DATA, model_card

    def distill(ctx):
        for name in names:
            folder = student_folder(ctx, name, {"id2label": ID2LABEL}, {**SAVED, "subset": {**SUBSET, "name": name}})
            if cards is None or name in cards:
                data = card_data(run, name=name)
                (folder / "README.md").write_text(model_card(data), encoding="utf-8")
                (folder / CARD_DATA).write_text(data.to_json(), encoding="utf-8")
        return StageResult()

    def export(ctx):
        fake_onnx_exports(ctx, names)
        return StageResult(metrics={name: FIGURES for name in names})

    execute(run, "distill", distill, run.recipe.sections["distill"], [], force=True)
    execute(run, "export", export, None, [], force=True)


FIGURES = {"fp32": {"agreement": 1.0, "disagreements": 0, "rows": 40, "max_prob_diff": 2.1e-7, "mean_prob_diff": 3.4e-8},
           "int8": {"agreement": 0.975, "disagreements": 1, "rows": 40, "max_prob_diff": 0.031, "mean_prob_diff": 0.0042}}


def distill_run(tmp_path: Path, **publish_cfg) -> Run:
    data = recipe_dict(tmp_path, **publish_cfg)
    data["distill"] = {"model": "FacebookAI/xlm-roberta-base", "num_train_epochs": 2}
    return Run(load_recipe(data))


# ---------------------------------------------------------------------------------------------
# dataset cards


@pytest.mark.usefixtures("offline")
def test_dataset_card_local_golden(tmp_path):
    run, _ = publish(tmp_path, "v1", V1)
    card = (run.stage_dir("publish") / "hub-layout" / "README.md").read_text(encoding="utf-8")
    check_golden("dataset_card_local.md", normalized(card, tmp_path=tmp_path))


def test_dataset_card_pushed_golden(hub, tmp_path):
    publish(tmp_path, "v1", V1, repo_id=REPO)
    card = hub.files(REPO, "v1")["README.md"].decode()
    assert validate_card(card, "dataset")[0] == []
    check_golden("dataset_card_pushed.md", normalized(card, tmp_path=tmp_path, hub_url=hub.url))


# ---------------------------------------------------------------------------------------------
# model cards


def test_student_card_golden(tmp_path):
    run = distill_run(tmp_path)
    card = student_card(run)
    assert validate_card(card, "model")[0] == []
    check_golden("model_card_distill.md", normalized(card, tmp_path=tmp_path))
    grid = {"figures": ["figures/budgets.png", "figures/strategies.png"], "students": 5, "seed": 7,
            "table": "| strategy | budget | hi |\n|---|---:|---:|\n| div-k | 4 | 0.61 ± 0.02 |"}
    check_golden("model_card_distill_grid.md", normalized(student_card(run, grid), tmp_path=tmp_path))


def test_export_card_golden(tmp_path):
    from hfaug.cards import write_onnx_card
    from hfaug.export import ExportConfig

    run = distill_run(tmp_path)
    student = tmp_path / "student"
    student.mkdir()
    (student / "README.md").write_text(student_card(run), encoding="utf-8")
    for variant in ("fp32", "int8"):
        folder = tmp_path / variant / "hi-divk-4"
        folder.mkdir(parents=True)
        (folder / "config.json").write_text(json.dumps({"id2label": ID2LABEL}))
        path = write_onnx_card(student, folder, name="hi-divk-4", variant=variant, figures=FIGURES, config=ExportConfig(),
                          rows_from="source dev rows", passed=True)
        check_golden(f"model_card_export_{variant}.md", normalized(path.read_text(encoding="utf-8"), tmp_path=tmp_path))


def test_adapter_card_golden():
    from hfaug.cards import adapter_card
    from hfaug.tasks import get_task

    card = adapter_card(base_model="Qwen/Qwen2.5-0.5B-Instruct", task=get_task("sentiment"),
                      lora={"r": 8, "alpha": 16, "dropout": 0.05, "target_modules": ["q_proj", "v_proj"]},
                      metrics={"steps": 12, "loss_first": 2.5, "loss_first_step": 1, "loss_last": 1.25,
                               "loss_last_step": 12}, rows=40, data="the source train split")
    check_golden("model_card_adapter.md", card)


def test_publish_model_cards_of_a_release_golden(hub, tmp_path):
    """A release: the dataset and two students, one with distill's card (every student of a real run
    has one), one without (publish-model renders it from the run)."""
    run = distill_run(tmp_path, repo_id=REPO, retries=1)
    write_inputs(run, "v1", V1)
    pipeline.run_stage(run, "publish", force=True)
    write_distilled(run, ["hi-divk-4", "hi-all"], cards=("hi-divk-4",))
    pipeline.run_stage(run, "publish-model", force=True)
    dataset = hub.files(REPO, "v1")["README.md"].decode()
    check_golden("release_dataset_card.md", normalized(dataset, tmp_path=tmp_path, hub_url=hub.url))
    for name in ("hi-divk-4", "hi-all"):
        card = hub.files(f"{REPO}-{name}", "v1", repo_type="model")["README.md"].decode()
        assert validate_card(card, "model")[0] == []
        check_golden(f"release_model_card_{name}.md", normalized(card, tmp_path=tmp_path, hub_url=hub.url))


# ---------------------------------------------------------------------------------------------
# the card a real publish-model pushes


@pytest.mark.usefixtures("one_torch_thread")
def test_pushed_student_card_names_its_repo_and_its_onnx_files(hub, tmp_path):
    """distill writes a student's card before the repo id is known; publish-model must render it
    again with the repo id, the tag and the ONNX files (it used to push distill's card as it was)."""
    import datasets
    from huggingface_hub import HfApi, hf_hub_download
    from test_distill import _hi_texts, _recipe, _synthetic

    data = _recipe(tmp_path, num_train_epochs=1)
    data["publish"] = {"repo_id": REPO, "retry_wait": 0.01, "retries": 1}
    run = Run(load_recipe(data), tmp_path / "runs" / "t")
    pipeline.run_stage(run, "source")
    texts = _hi_texts()[:12]
    subset = _synthetic(texts).add_column("id", [f"s{i}" for i in range(len(texts))]).add_column(
        "task", ["sentiment"] * len(texts))
    execute(run, "select", lambda ctx: StageResult(datasets={"hi-topk-4": subset}), None, [])
    pipeline.run_stage(run, "publish")
    pipeline.run_stage(run, "distill")  # the real stage: trains the student, writes its local card
    local = (run.stage_dir("distill") / "students" / "hi-topk-4" / "README.md").read_text()
    assert "t-hi-topk-4" in local and REPO not in local  # no repo yet, and none invented

    def export(ctx):  # the ONNX files as the export stage lays them out (the real export is slow)
        for kind in ("onnx", "int8"):
            (ctx.out_dir / kind / "hi-topk-4").mkdir(parents=True)
            (ctx.out_dir / kind / "hi-topk-4" / "model.onnx").write_bytes(b"\0onnx " + kind.encode())
        return StageResult(metrics={"hi-topk-4": FIGURES})

    execute(run, "export", export, None, [])
    pipeline.run_stage(run, "publish-model")
    model_repo = f"{REPO}-hi-topk-4"
    card = Path(hf_hub_download(model_repo, "README.md", revision="v1", cache_dir=str(tmp_path / "dl"))).read_text()
    assert validate_card(card, "model")[0] == []
    assert f'pipeline("text-classification", model="{model_repo}", revision="v1")' in card
    for file_name in ("model.onnx", "model_quantized.onnx"):
        assert (f'ORTModelForSequenceClassification.from_pretrained("{model_repo}", subfolder="onnx", '
                f'file_name="{file_name}", revision="v1")') in card
    assert "| int8 | 97.50% | 1 / 40 |" in card  # export's parity figures
    assert "path/to/" not in card and "t-hi-topk-4" not in card and "before it had a Hub repo" not in card
    import yaml

    meta = yaml.safe_load(card.split("---")[1])
    assert f"\n# {model_repo}\n" in card and "onnx" in meta["tags"]
    assert meta["datasets"] == [REPO] and meta["license"] == "cc-by-4.0"
    files = HfApi(endpoint=hub.url).list_repo_files(model_repo, revision="v1")
    assert {"onnx/model.onnx", "onnx/model_quantized.onnx"} <= set(files) and "card.json" not in files
    assert datasets.load_dataset(REPO, "hi-topk-4", revision="v1", cache_dir=str(tmp_path / "c"))["train"].num_rows == 12

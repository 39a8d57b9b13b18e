"""The run folder: where each stage writes its outputs and where every later stage, ``hfaug serve``
and the Space find them. The one place that names these paths; stages read each other's outputs
through here instead of importing each other.

A run lives in ``<output_dir>/<name>/``::

    recipe.yaml                      the resolved recipe of the last run            RECIPE_FILE
    .lock                            one process per run folder (runs.run_lock)     LOCK
    cache/<stage>/                   work kept while a stage runs, for resume       stage_cache_dir()
        generate/requests.sqlite     every LLM request and its answer               REQUESTS_DB
        teacher/trainer/, adapt/<key>/checkpoints/, distill/<student>/<key>/checkpoints/
                                     Trainer checkpoints, removed once the model is saved
        publish-model/release.json   how far a release got (commits, tags)          RELEASE_FILE
    <stage>/                         one folder per stage, swapped in when it finished
        manifest.json                config, hash, rows in/out, dropped by reason   MANIFEST
        <dataset>/                   each output dataset (datasets.save_to_disk)
    adapt/
        adapter/                     the LoRA adapter (peft)                        ADAPTER_DIR
        adapt.json                   base model, adapter folder, training figures   ADAPT_JSON, read_adapt()
    teacher/
        checkpoints/epoch-<n>/       model + tokenizer after each epoch             checkpoint_path()
        best/                        the best dev accuracy                          BEST_DIR
        teacher.json                 epochs, best epoch, dev accuracy, max_length   TEACHER_JSON, read_teacher()
    select/
        <lang>-<strategy>-<k>/       each selected subset (strategies.subset_name)
        figures/*.png                data maps and label histograms                 FIGURES_DIR
    distill/
        students/<name>/             model, tokenizer, README.md, metrics.json,     STUDENTS_DIR, student_dirs()
                                     card.json (the card's data), figures/ (a      METRICS_JSON, CARD_DATA
                                     grid's figures, for its card)
        grid/                        results.md, results.json, figures/*.png        GRID_DIR
        results/                     the aggregated results as a dataset            RESULTS_DATASET
    export/
        onnx/<name>/                 fp32 ONNX: model.onnx, config, tokenizer,      ONNX_DIR, export_dirs()
                                     README.md, hfaug.json (what the Space shows)   ONNX_FILE, INFO_FILE
        int8/<name>/                 dynamic int8, the same files                   INT8_DIR
    evaluate/
        metrics.json, metrics.md     every model on every test set                  EVAL_JSON, EVAL_MD
    publish/
        hub-layout/                  the dataset repo as pushed                     HUB_LAYOUT_DIR
    publish-model/
        hub-layout/<name>/           a student's model repo: the PyTorch model and
            onnx/model.onnx          fp32 (Optimum's names, read by the Space)      REPO_ONNX_DIR
            onnx/model_quantized.onnx   int8                                        REPO_INT8_FILE
        dataset/                     a release's dataset repo (same tag)            RELEASE_DATASET_DIR

The Space (spaces/hfaug_space.py) runs without hfaug, so it keeps its own copies of the model
repo names; tests/test_layout.py checks that they equal these.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import HfaugError

# --- the run folder
RECIPE_FILE = "recipe.yaml"
LOCK = ".lock"
MANIFEST = "manifest.json"
CACHE_DIR = "cache"
REQUESTS_DB = "requests.sqlite"  # in cache/generate/
RELEASE_FILE = "release.json"  # in cache/publish-model/
FIGURES_DIR = "figures"  # a stage's (select) or a grid's figures
CARD = "README.md"  # a model's or a dataset's card, beside it

# --- inside cache/<stage>/: a Trainer's working folders (kept for resume, removed when done)
TRAINER_DIR = "trainer"  # teacher: the Trainer's output_dir
WORK_CHECKPOINTS = "checkpoints"  # adapt, distill: the Trainer's output_dir under a keyed folder
WORK_LOGS = "logs"

# --- adapt
ADAPTER_DIR = "adapter"
ADAPT_JSON = "adapt.json"

# --- teacher
CHECKPOINTS_DIR = "checkpoints"
BEST_DIR = "best"
TEACHER_JSON = "teacher.json"

# --- distill
STUDENTS_DIR = "students"
METRICS_JSON = "metrics.json"  # a student's training and test figures
CARD_DATA = "card.json"  # what a student's card says (cards.ModelCardData), rendered again by publish-model
GRID_DIR = "grid"  # the experiment grid's results.md, results.json and figures/
GRID_MD = "results.md"
GRID_JSON = "results.json"
RESULTS_DATASET = "results"  # the aggregated results as a dataset

# --- export
ONNX_DIR = "onnx"  # fp32 exports, one folder per student
INT8_DIR = "int8"  # dynamically quantised exports
EXPORT_DIRS = (ONNX_DIR, INT8_DIR)  # also the model keys' prefixes in evaluate's results ("int8/<name>")
ONNX_FILE = "model.onnx"  # the graph in every export folder (int8 too: Optimum's default name)
INFO_FILE = "hfaug.json"  # the Space's view of a student (space_info.py)
MODEL_CONFIG = "config.json"  # transformers' config: marks a model folder

# --- evaluate
EVAL_JSON = "metrics.json"
EVAL_MD = "metrics.md"

# --- publish
HUB_LAYOUT_DIR = "hub-layout"
RELEASE_DATASET_DIR = "dataset"  # a release's dataset repo, built beside the students' (publish-model)
REPO_ONNX_DIR = "onnx"  # in a model repo: the ONNX files, where Optimum and the Space look
REPO_INT8_FILE = "model_quantized.onnx"  # in a model repo's onnx/: the int8 graph, Optimum's name
REPO_FP32_FILE = ONNX_FILE


def stage_cache_dir(root: str | Path, stage: str) -> Path:
    """``<run>/cache/<stage>/`` (not created)."""
    return Path(root) / CACHE_DIR / stage


def checkpoint_path(epoch: int) -> str:
    """A teacher epoch checkpoint's path relative to the teacher folder (teacher.json stores it)."""
    return f"{CHECKPOINTS_DIR}/epoch-{epoch}"


def read_teacher(folder: str | Path) -> dict[str, Any]:
    """teacher.json of a teacher folder; a user error when the folder is not one."""
    path = Path(folder) / TEACHER_JSON
    if not path.is_file():
        raise HfaugError(f"'{folder}' is not a teacher folder (no {TEACHER_JSON}); run `hfaug teacher` first")
    return json.loads(path.read_text(encoding="utf-8"))


def checkpoint_dirs(folder: str | Path) -> list[Path]:
    """The per-epoch checkpoints of a teacher folder, in epoch order."""
    return [Path(folder) / e["path"] for e in read_teacher(folder)["epochs"]]


def read_adapt(folder: str | Path) -> dict[str, Any]:
    """adapt.json of an adapt stage folder ({} when absent), with ``adapter`` the adapter's full path."""
    path = Path(folder) / ADAPT_JSON
    info = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    return {**info, "adapter": str(Path(folder) / info.get("adapter", ADAPTER_DIR))}


def student_dirs(distill_dir: str | Path) -> dict[str, Path]:
    """The students of a distill folder (``students/<name>/`` with a model config), by name, sorted."""
    root = Path(distill_dir) / STUDENTS_DIR
    return {p.parent.name: p.parent for p in sorted(root.glob(f"*/{MODEL_CONFIG}"))}


def export_dirs(export_dir: str | Path, kind: str = ONNX_DIR) -> dict[str, Path]:
    """The ONNX exports of one kind (``onnx`` or ``int8``) of an export folder, by student name, sorted."""
    return {p.parent.name: p.parent for p in sorted((Path(export_dir) / kind).glob(f"*/{ONNX_FILE}"))}


def student_metrics_path(distill_dir: str | Path, name: str) -> Path:
    """``students/<name>/metrics.json`` of a distill folder."""
    return Path(distill_dir) / STUDENTS_DIR / name / METRICS_JSON

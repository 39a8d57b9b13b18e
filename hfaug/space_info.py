"""What the Space shows about a student: its languages, example texts in them, its metrics, its repos.

Written as ``hfaug.json`` beside the ONNX files (``export/onnx/<name>/``, ``export/int8/<name>/``,
``onnx/`` of a model repo written by ``publish-model``), read by spaces/hfaug_space.py, which needs
nothing of hfaug to do so::

    {"name": "sw-divk-5", "task": "nli", "labels": [...], "text_columns": ["premise", "hypothesis"],
     "languages": ["sw"],
     "examples": {"sw": [["<premise>", "<hypothesis>"], ...]},
     "metrics": {"sw": {"accuracy": 0.61, "macro_f1": 0.58, "n": 120}}, "metrics_of": "int8/sw-divk-5",
     "model_repo": "org/run-sw-divk-5", "dataset_repo": "org/run", "revision": "v2"}

The examples are rows of the student's own selected subset (translated, in its target language);
a language without rows falls back to the Space's built-in examples for that language code.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .layout import EVAL_JSON, INFO_FILE, INT8_DIR, ONNX_DIR, student_metrics_path

if TYPE_CHECKING:
    from .runs import Run

logger = logging.getLogger(__name__)

N_EXAMPLES = 3  # per language: enough to try, few enough to scan
MAX_EXAMPLE_CHARS = 300  # a long row is cut, so the examples table stays readable


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def student_metrics(run: "Run", name: str) -> tuple[dict[str, dict], str | None]:
    """Per-language test metrics of a student and which model they were measured on.

    The evaluate stage's figures for the served model come first (int8, then fp32 ONNX, then the
    PyTorch student); without an evaluate stage, the test figures distill saved with the student.
    """
    results = _read_json(run.stage_dir("evaluate") / EVAL_JSON).get("results") or {}
    for key in (f"{INT8_DIR}/{name}", f"{ONNX_DIR}/{name}", f"student/{name}"):
        if results.get(key):
            return {k: {m: v for m, v in r.items() if m in ("accuracy", "macro_f1", "n")}
                    for k, r in results[key].items() if isinstance(r, dict)}, key
    test = _read_json(student_metrics_path(run.stage_dir("distill"), name)).get("test") or {}
    return ({k: {m: v for m, v in r.items() if m in ("accuracy", "macro_f1", "n")}
             for k, r in test.items() if isinstance(r, dict)}, f"student/{name}" if test else None)


def _examples(run: "Run", subset: str | None, languages: list[str], columns: tuple[str, ...]) -> dict[str, list]:
    """Up to N_EXAMPLES rows per language from the student's selected subset (the select stage's output)."""
    if not subset or run.manifest("select") is None or not (run.stage_dir("select") / subset).exists():
        return {}
    try:
        data = run.load("select", subset)
    except Exception as e:  # an unreadable subset costs the examples, never the export or publish
        logger.warning("no example texts for the Space from select/%s: %s", subset, e)
        return {}
    if not set(columns) <= set(data.column_names):
        return {}
    langs = data["lang"] if "lang" in data.column_names else [languages[0] if languages else ""] * len(data)
    out: dict[str, list] = {}
    for i, lang in enumerate(langs):
        rows = out.setdefault(lang, [])
        if len(rows) < N_EXAMPLES:
            rows.append([str(data[i][c])[:MAX_EXAMPLE_CHARS] for c in columns])
        if len(out) >= len(languages) and all(len(r) >= N_EXAMPLES for r in out.values()):
            break
    return {lang: rows for lang, rows in out.items() if lang and rows}


def student_info(run: "Run", name: str, *, model_repo: str | None = None, dataset_repo: str | None = None,
                 revision: str | None = None) -> dict[str, Any]:
    """The Space's view of student ``name`` of ``run`` (see the module docstring)."""
    saved = _read_json(student_metrics_path(run.stage_dir("distill"), name))
    subset = saved.get("subset") if isinstance(saved.get("subset"), dict) else {}
    metrics, measured_on = student_metrics(run, name)
    languages = [s.strip() for s in str(subset.get("lang") or "").split(",") if s.strip()]
    languages += [k.split(":")[0] for k in metrics if k.split(":")[0] not in languages]
    if not languages and run.recipe.has("translate"):
        languages = list(run.recipe.translate.languages)  # a baseline student: the run's target languages
    if dataset_repo is None:  # the dataset published by the publish stage, if any
        published = (run.manifest("publish") or {}).get("metrics") or {}
        dataset_repo = published.get("repo_id")
        revision = revision or published.get("tag")
    task = run.task
    info: dict[str, Any] = {"name": name, "task": task.name, "labels": list(task.labels),
                            "text_columns": list(task.text_columns), "languages": languages,
                            "examples": _examples(run, subset.get("name"), languages, tuple(task.text_columns)),
                            "metrics": metrics, "metrics_of": measured_on}
    info.update({k: v for k, v in (("model_repo", model_repo), ("dataset_repo", dataset_repo),
                                   ("revision", revision)) if v})
    return info


def write_info(folder: Path, info: dict[str, Any]) -> Path:
    """``folder/hfaug.json``, UTF-8 as it is (the examples are in the target language's script)."""
    path = Path(folder) / INFO_FILE
    path.write_text(json.dumps(info, ensure_ascii=False, indent=1), encoding="utf-8")
    return path

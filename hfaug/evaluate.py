"""Evaluate stage: zero-shot accuracy and macro-F1 of every model of the run on target test sets.

Models evaluated (those that exist; absent stages are skipped):
    teacher            <run>/teacher/best/
    student/<name>     <run>/distill/students/<name>/
    onnx/<name>        <run>/export/onnx/<name>/   (ONNX Runtime)
    int8/<name>        <run>/export/int8/<name>/
plus any model named in ``evaluate.models``.

Input: test sets given as Hub ids or local files with a column mapping (``hfaug.loading.DataSpec``
plus a language); Input columns after mapping: text (or premise + hypothesis), label.
Output (no dataset): ``metrics.json`` and ``metrics.md`` (model x language: accuracy, macro-F1).

This stage only reports: model selection (teacher, students) happened on the source or translated
source dev set, and nothing here feeds back into it.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import HfaugError
from .layout import BEST_DIR, EVAL_JSON, EVAL_MD, EXPORT_DIRS, MODEL_CONFIG, export_dirs, student_dirs
from .loading import DataSpec
from .runs import Run, StageContext, StageResult, write_json_atomic

if TYPE_CHECKING:
    import datasets

    from .tasks import Task

logger = logging.getLogger(__name__)

DEFAULT_MAX_LENGTH = 128


@dataclass
class TestSet(DataSpec):
    """A labelled target-language test set: where it is, how its columns map, its language."""

    __test__ = False  # not a pytest test class despite the name

    split: str = field(default="test", metadata={"help": "Split to read (Hub datasets; files have one)."})


@dataclass
class EvaluateConfig:
    """Target-language test sets, and extra models to score next to the run's own."""

    test_sets: list[TestSet] = field(default_factory=list, metadata={
        "help": "Test sets: [{path: ..., lang: hi, split: test, columns: {...}, label_map: {...}}, ...]."})
    models: dict[str, str] = field(default_factory=dict, metadata={
        "help": "Extra models to evaluate, name -> folder or Hub id (e.g. a published baseline)."})
    max_length: int | None = field(default=None, metadata={
        "help": "Max tokens per row. Default: each model's training max length (from its stage's config)."})
    batch_size: int = field(default=64, metadata={"help": "Rows per forward pass."})

    def __post_init__(self):
        if not self.test_sets:
            raise ValueError("evaluate.test_sets is empty: list at least one test set, e.g. "
                             "[{path: hfaug://data/demo/sentiment_hi.jsonl, lang: hi}]")
        if self.batch_size < 1:
            raise ValueError(f"evaluate.batch_size must be at least 1, got {self.batch_size}")
        if self.max_length is not None and self.max_length < 1:
            raise ValueError(f"evaluate.max_length must be at least 1, got {self.max_length}")


def table_keys(test_sets: list[DataSpec]) -> list[str]:
    """Column names of the results table: the language, made unique when two sets share one."""
    counts = Counter(t.lang for t in test_sets)
    return [t.lang if counts[t.lang] == 1 else f"{t.lang}:{t.name or Path(t.path).stem}" for t in test_sets]


def _stage_max_length(run: Run, stage: str) -> int | None:
    config = (run.manifest(stage) or {}).get("config") or {}
    value = config.get("max_length")
    return int(value) if isinstance(value, int) else None


def discover_models(run: Run) -> dict[str, tuple[Path, int | None]]:
    """name -> (folder, training max length) of every model the run has produced so far."""
    found: dict[str, tuple[Path, int | None]] = {}
    if run.manifest("teacher") is not None:
        best = run.stage_dir("teacher") / BEST_DIR
        if (best / MODEL_CONFIG).is_file():
            found["teacher"] = (best, _stage_max_length(run, "teacher"))
    if run.manifest("distill") is not None:
        length = _stage_max_length(run, "distill")
        for name, folder in student_dirs(run.stage_dir("distill")).items():
            found[f"student/{name}"] = (folder, length)
    if run.manifest("export") is not None:
        length = _stage_max_length(run, "export")
        for kind in EXPORT_DIRS:
            for name, folder in export_dirs(run.stage_dir("export"), kind).items():
                found[f"{kind}/{name}"] = (folder, length)
    return found


def evaluate(models: dict[str, tuple[str | Path, int | None]], test_sets: dict[str, "datasets.Dataset"],
             task: "Task", *, batch_size: int = 64,
             max_length: int | None = None) -> dict[str, dict[str, dict[str, Any]]]:
    """results[model][test set] = {"accuracy", "macro_f1", "n"} for every model and test set.

    ``models`` maps a name to (folder or Hub id, max length or None); ``test_sets`` maps a name
    (usually the language) to a labelled dataset in contract form.
    """
    from .inference import load_classifier, score

    results: dict[str, dict[str, dict[str, Any]]] = {}
    for name, (path, length) in models.items():
        length = max_length or length or DEFAULT_MAX_LENGTH
        logger.info("evaluate: %s (%s, max_length %d)", name, path, length)
        classifier = load_classifier(str(path), max_length=length, batch_size=batch_size)
        results[name] = {key: score(classifier, data, task) for key, data in test_sets.items()}
    return results


def _pct(value: float) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f}"


def markdown_table(results: dict[str, dict[str, dict[str, Any]]], keys: list[str]) -> str:
    """model x test set table: accuracy and macro-F1 in percent."""
    header = ["model"] + [f"{k} {m}" for k in keys for m in ("acc", "F1")]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (2 * len(keys))) + "|"]
    for model, per_set in results.items():
        cells = [model]
        for key in keys:
            cell = per_set.get(key, {})
            cells += [_pct(cell.get("accuracy")), _pct(cell.get("macro_f1"))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def run(ctx: StageContext) -> StageResult:
    from .loading import load_labelled

    config: EvaluateConfig = ctx.config
    task = ctx.task
    models = discover_models(ctx.run)
    for name, ref in config.models.items():
        models[name] = (ref, None)
    if not models:
        raise HfaugError("evaluate: the run has no model yet (teacher, distill or export) and evaluate.models is "
                         "empty; run those stages first or name a model in evaluate.models")
    keys = table_keys(config.test_sets)
    dropped: Counter = Counter()
    test_sets = {}
    for i, (key, spec) in enumerate(zip(keys, config.test_sets)):
        data, lost = load_labelled(spec, task, seed=ctx.seed, where=f"evaluate.test_sets[{i}]")
        dropped.update({f"{key}.{reason}": n for reason, n in lost.items()})
        test_sets[key] = data
    results = evaluate(models, test_sets, task, batch_size=config.batch_size, max_length=config.max_length)

    table = markdown_table(results, keys)
    report = {
        "task": task.name,
        "labels": list(task.labels),
        "test_sets": {key: {"path": spec.path, "lang": spec.lang, "split": spec.split, "rows": len(test_sets[key])}
                      for key, spec in zip(keys, config.test_sets)},
        "models": {name: str(path) for name, (path, _) in models.items()},
        "results": results,
    }
    write_json_atomic(ctx.out_dir / EVAL_JSON, report)
    (ctx.out_dir / EVAL_MD).write_text(f"# Zero-shot results ({task.name})\n\n" + table, encoding="utf-8")
    for line in table.splitlines():
        logger.info("evaluate: %s", line)
    metrics = {model: {key: {"accuracy": r["accuracy"], "macro_f1": r["macro_f1"]} for key, r in per_set.items()}
               for model, per_set in results.items()}
    return StageResult(dropped=dropped, rows_in=sum(len(d) for d in test_sets.values()) + sum(dropped.values()),
                       metrics=metrics,
                       extra={"next": [f"results: {ctx.run.stage_dir(ctx.stage) / EVAL_MD}"],
                              # each test set's label counts: the chance level of the health checks
                              "labels": {key: dict(Counter(task.labels[i] for i in data["label"]))
                                         for key, data in test_sets.items()}})

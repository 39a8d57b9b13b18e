"""Run health checks: a run that finishes broken says so, names the likely cause and the fix.

Each check reads only finished manifests (and the figures a stage writes into them), so it runs
the same whether its stage just ran or was skipped, and it never changes a stage's output:

    teacher    best dev accuracy at or below chance (1 / number of labels, or the dev set's most
               frequent label share when that is higher: what always answering one label scores)
    label      one label taking nearly all (>= DOMINANT_SHARE) of the teacher's argmaxes
    select     a selected subset with no row of some class
    evaluate   a student (PyTorch, ONNX or int8) no better than chance or than the source-only
               baseline: an ``evaluate.models`` entry named ``baseline...``, else the run's teacher
               when it is the same encoder trained on the source alone (the paper's baseline)

The run-wide recipe key ``health`` says what a finding does: ``warn`` (the default) logs it and
lists it under the run summary; ``stop`` ends the run after the stage with a one-line error
(exit 2), keeping that stage's output for inspection; ``off`` skips the checks. ``warn`` is the
default because the checks are heuristics that small or unusual runs can trip (a 30-row dev set,
a deliberately one-sided pool); unattended pipelines should set ``stop``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from .errors import HfaugError
from .layout import EXPORT_DIRS

if TYPE_CHECKING:
    from .runs import Run
    from .tasks import Task

logger = logging.getLogger(__name__)

#: share of the teacher's argmaxes above which one label is said to take "nearly all" of them
DOMINANT_SHARE = 0.9
#: fewer labelled candidates than this are too few to judge the label spread
MIN_ROWS = 20


class HealthError(HfaugError):
    """A health check failed under ``health: stop``; the stage's output is kept for inspection."""


def _chance(counts: dict[str, int], num_labels: int) -> tuple[float, str]:
    """What a model answering one label always scores: max(1/K, the most frequent label's share)."""
    floor = 1.0 / num_labels
    total = sum(counts.values())
    if total:
        label, top = max(counts.items(), key=lambda kv: kv[1])
        if top / total > floor:
            return top / total, f"always answering '{label}'"
    return floor, f"1/{num_labels} labels"


def check_teacher(manifest: dict, task: "Task", source_manifest: dict | None = None) -> list[str]:
    accuracy = (manifest.get("metrics") or {}).get("best_dev_accuracy")
    if accuracy is None:
        return []  # no dev rows: nothing to judge
    labels = ((source_manifest or {}).get("metrics") or {}).get("labels") or {}
    dev = {key.split(".", 1)[1]: n for key, n in labels.items() if key.startswith("dev.")}
    chance, what = _chance(dev, task.num_labels)
    if accuracy > chance + 1e-9:
        return []
    return [f"teacher: best dev accuracy {accuracy:.3f} is at or below chance ({chance:.3f}, {what}). "
            "Likely cause: the source labels do not mean what the task's labels mean (a label column in "
            f"another order or naming, the task's order is {list(task.labels)}), or training that did not "
            "converge. Fix: check source.label_map/source.columns against a few rows, then teacher.learning_rate "
            "and teacher.epochs; rerun with --force teacher"]


def check_label(manifest: dict, task: "Task") -> list[str]:
    counts = (manifest.get("metrics") or {}).get("labels") or {}
    total = sum(counts.values())
    if total < MIN_ROWS or task.num_labels < 2:
        return []
    label, top = max(counts.items(), key=lambda kv: kv[1])
    if top / total < DOMINANT_SHARE:
        return []
    return [f"label: the teacher gives '{label}' to {top} of {total} candidates ({top / total:.0%}). "
            "Likely cause: a teacher that learned one class (see its dev accuracy in the teacher stage) or "
            f"candidates that all read as '{label}'. Fix: check the teacher first; then the generate prompts "
            "per label (`hfaug generate --dry-run`)"]


def check_select(manifest: dict, task: "Task") -> list[str]:
    missing: dict[str, list[str]] = {}
    for name, figures in ((manifest.get("metrics") or {}).items()):
        if name == "pool" or not isinstance(figures, dict) or not figures.get("rows"):
            continue
        counts = figures.get("labels") or {}
        for label in task.labels:
            if not counts.get(label):
                missing.setdefault(label, []).append(name)
    out = []
    for label, names in missing.items():
        shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
        out.append(f"select: subset{'s' if len(names) > 1 else ''} {shown} ha{'ve' if len(names) > 1 else 's'} no "
                   f"'{label}' row. Likely cause: the teacher labelled no kept candidate '{label}' (see the label "
                   f"stage's counts) or the select filters dropped them. Fix: check the teacher and the "
                   f"'{label}' generate prompt, raise generate.n_per_class, or relax select.min_words/select.dedup")
    return out


def _baselines(run: "Run", results: dict) -> dict[str, str]:
    """name -> why it is a source-only baseline, among the evaluated models."""
    named = {m: "evaluate.models" for m in results if m.split("/")[-1].startswith("baseline")}
    if named:
        return named
    teacher = (run.manifest("teacher") or {}).get("config") or {}
    distill = (run.manifest("distill") or {}).get("config") or {}
    if ("teacher" in results and teacher.get("train_on", "source") == "source"
            and teacher.get("model") and teacher.get("model") == distill.get("model")):
        return {"teacher": f"the same encoder ({teacher['model']}) trained on the source alone"}
    return {}


def check_evaluate(manifest: dict, task: "Task", run: "Run") -> list[str]:
    results = manifest.get("metrics") or {}
    counts = (manifest.get("extra") or {}).get("labels") or {}
    students = [m for m in results if m.split("/")[0] in ("student", *EXPORT_DIRS)]
    baselines = _baselines(run, results)
    at_chance, below = [], []
    for model in students:
        for key, figures in results[model].items():
            accuracy = figures.get("accuracy")
            if accuracy is None:
                continue
            chance, _ = _chance(counts.get(key) or {}, task.num_labels)
            if accuracy <= chance + 1e-9:
                at_chance.append(f"{model} on {key} {accuracy:.3f} (chance {chance:.3f})")
                continue
            for base in baselines:
                reference = (results.get(base, {}).get(key) or {}).get("accuracy")
                if reference is not None and accuracy <= reference + 1e-9:
                    below.append(f"{model} on {key} {accuracy:.3f} <= {base} {reference:.3f}")
    out = []
    if at_chance:
        out.append("evaluate: no better than chance: " + "; ".join(at_chance) + ". Likely cause: the synthetic "
                   "labels (see the label and select checks) or a student that did not train. Fix: check the "
                   "teacher and label stages first, then distill.num_train_epochs and distill.learning_rate")
    if below:
        why = "; ".join(f"{b}: {w}" for b, w in baselines.items())
        out.append("evaluate: no better than the source-only baseline: " + "; ".join(below) + f" ({why}). "
                   "Likely cause: synthetic rows that add noise (wrong soft labels, poor translations) or "
                   "too small a budget. Fix: compare the selection strategies (div-k, top-k), raise select.budgets, "
                   "check translate quality (translate.min_script_ratio drops)")
    return out


def findings(run: "Run", stage: str, manifest: dict | None) -> list[str]:
    """Every health finding on the finished ``stage`` of ``run`` (empty when healthy or unchecked)."""
    if not manifest or manifest.get("rank"):
        return []
    task = run.task
    checks: dict[str, Callable[[], list[str]]] = {
        "teacher": lambda: check_teacher(manifest, task, run.manifest("source")),
        "label": lambda: check_label(manifest, task),
        "select": lambda: check_select(manifest, task),
        "evaluate": lambda: check_evaluate(manifest, task, run),
    }
    return checks[stage]() if stage in checks else []


def enforce(run: "Run", stage: str, manifest: dict | None) -> list[str]:
    """Apply the recipe's ``health`` mode to ``stage``'s findings: log them, or stop the run."""
    mode = getattr(run.recipe.run, "health", "warn")
    if mode == "off":
        return []
    found = findings(run, stage, manifest)
    for message in found:
        logger.warning("health: %s", message)
    if found and mode == "stop":
        raise HealthError(f"health check failed (health: stop; its output is kept in {run.stage_dir(stage)}): "
                          + " | ".join(found) + " | set health: warn to continue anyway")
    return found

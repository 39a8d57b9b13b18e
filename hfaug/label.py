"""Label stage: teacher soft labels (and optionally training dynamics) on the candidate rows.

Input: the generate stage's ``data`` (English), or in the recipe's ``translated-teacher`` setting
every language the translate stage wrote, concatenated (their ``lang`` column tells them apart).
Input columns: text (or premise + hypothesis); every other column is kept.
Output columns: soft_label (teacher probabilities, in the task's label order), label (argmax),
confidence (max of soft_label); with ``dynamics: true`` also checkpoint_probs ([epoch][label],
one vector per saved epoch checkpoint), variability and mean_confidence (arXiv 2407.10582, "Selection"):

    variability     = max over labels of the std over epochs of P[row, epoch, label]
    mean_confidence = max over labels of the mean over epochs of P[row, epoch, label]

Rows are scored at the teacher's training max length (read from its teacher.json), sorted by
length with dynamic padding, on the GPU when present. Under ``accelerate launch`` the rows are
split across processes and merged back in the original order. Finished chunks are cached in the
stage's cache folder, so a killed run resumes where it stopped. Rows with an empty text are
skipped and counted (``empty_text``).
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from . import schema
from .atomic import save_npy
from .errors import HfaugError
from .layout import BEST_DIR, TEACHER_JSON, checkpoint_dirs, read_teacher
from .runs import StageContext, StageResult, stable_hash
from .schema import DataResult

if TYPE_CHECKING:
    import datasets
    import numpy as np

    from .tasks import Task

logger = logging.getLogger(__name__)

DEFAULT_MAX_LENGTH = 128


@dataclass
class LabelConfig:
    """Which teacher labels the candidates, and whether to record its training dynamics."""

    teacher: str | None = field(default=None, metadata={
        "help": "A teacher folder (written by `hfaug teacher`), a model folder or a Hub id. "
                "Default: this run's teacher."})
    dynamics: bool = field(default=False, metadata={
        "help": "Also score with every epoch checkpoint: checkpoint_probs, variability, mean_confidence "
                "(for amb-k / easy-k)."})
    checkpoints: list[str] = field(default_factory=list, metadata={
        "help": "Epoch checkpoints for dynamics when 'teacher' is a plain model rather than a teacher folder."})
    max_length: int | None = field(default=None, metadata={
        "help": "Max tokens per row. Default: the teacher's training max length (never a different one silently)."})
    batch_size: int = field(default=64, metadata={"help": "Rows per forward pass (rows sorted by length first)."})
    chunk_size: int = field(default=4096, metadata={"help": "Rows per cached chunk (the unit of resume)."})

    def __post_init__(self):
        if self.batch_size < 1 or self.chunk_size < 1:
            raise ValueError("label.batch_size and label.chunk_size must be at least 1")
        if self.max_length is not None and self.max_length < 1:
            raise ValueError(f"label.max_length must be at least 1, got {self.max_length}")


@dataclass
class TeacherModels:
    """The model that gives the soft labels, the epoch checkpoints for dynamics, the max length."""

    best: str
    checkpoints: list[str]
    max_length: int


def find_teacher(config: LabelConfig, run_teacher: str | Path | None = None) -> TeacherModels:
    """Resolve ``config.teacher`` (or the run's teacher folder) into models and a max length."""
    from .config import resolve

    ref = config.teacher if config.teacher else (str(run_teacher) if run_teacher else None)
    if ref is None:
        raise HfaugError("label: no teacher; add a teacher section to the recipe or set label.teacher "
                         "(a teacher folder, a model folder or a Hub id)")
    path = resolve(ref)
    if (Path(path) / TEACHER_JSON).is_file():
        info = read_teacher(path)
        checkpoints = [str(p) for p in checkpoint_dirs(path)] if config.dynamics else []
        max_length = config.max_length or int(info["max_length"])
        if config.max_length and config.max_length != info["max_length"]:
            logger.warning("label: max_length %d differs from the teacher's training length %d",
                           config.max_length, info["max_length"])
        if config.checkpoints:
            checkpoints = [resolve(c) for c in config.checkpoints]
        return TeacherModels(str(Path(path) / BEST_DIR), checkpoints, max_length)
    if config.dynamics and not config.checkpoints:
        raise HfaugError(f"label.dynamics needs the teacher's epoch checkpoints: '{ref}' is not a teacher folder "
                         "(no teacher.json); point label.teacher at one or list label.checkpoints")
    if config.max_length is None:
        logger.warning("label: '%s' has no teacher.json; scoring at max_length %d (set label.max_length to the "
                       "length it was trained with)", ref, DEFAULT_MAX_LENGTH)
    return TeacherModels(path, [resolve(c) for c in config.checkpoints] if config.dynamics else [],
                         config.max_length or DEFAULT_MAX_LENGTH)


def _model_key(path: str, max_length: int) -> str:
    """Identity of a model's outputs for the cache: path, weights' size and time, max length."""
    p = Path(path)
    stamp = []
    if p.is_dir():
        for f in sorted(p.iterdir()):
            if f.suffix in (".safetensors", ".bin", ".json"):
                st = f.stat()
                stamp.append((f.name, st.st_size, st.st_mtime_ns))
    return stable_hash({"path": str(p.resolve()) if p.exists() else path, "files": stamp, "max_length": max_length})


def score_rows(model_path: str, texts: list[str], pairs: list[str] | None, ids: list[str], task: "Task", *,
               max_length: int, batch_size: int, chunk_size: int, cache_dir: Path | None = None,
               desc: str = "label") -> "np.ndarray":
    """Task-ordered probabilities of one model on every row, chunk by chunk, split across
    processes under accelerate, with finished chunks cached (``cache_dir``) for resume."""
    import numpy as np
    from tqdm.auto import tqdm

    from .inference import TorchClassifier, predict_proba_distributed, process_state, reorder_to_task

    state = process_state()
    folder = cache_dir / _model_key(model_path, max_length) if cache_dir is not None else None
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    classifier = None
    parts = []
    starts = range(0, len(texts), chunk_size)
    for start in tqdm(starts, desc=desc, unit="chunk", disable=len(starts) < 2 or not state.is_main_process):
        end = min(start + chunk_size, len(texts))
        digest = hashlib.sha256("\n".join(ids[start:end]).encode()).hexdigest()[:16]
        cached = folder / f"{start}-{digest}.npy" if folder is not None else None
        if cached is not None and cached.is_file():
            parts.append(np.load(cached))
            continue
        if classifier is None:
            classifier = TorchClassifier(model_path, max_length=max_length, batch_size=batch_size)
        probs = predict_proba_distributed(classifier, texts[start:end], pairs[start:end] if pairs else None)
        probs = reorder_to_task(probs, classifier.labels, task).astype(np.float32)
        if cached is not None and state.is_main_process:
            save_npy(cached, probs)
        parts.append(probs)
    state.wait_for_everyone()
    if not parts:
        return np.zeros((0, task.num_labels), dtype=np.float32)
    return np.concatenate(parts, axis=0)


def label(dataset: "datasets.Dataset", config: LabelConfig, task: "Task", *, teacher_dir: str | Path | None = None,
          cache_dir: str | Path | None = None) -> DataResult:
    """Soft-label ``dataset`` with the teacher: a :class:`~hfaug.schema.DataResult` whose ``data``
    holds the labelled rows, with the rows dropped by reason.

    ``teacher_dir`` is the run's teacher folder, used when ``config.teacher`` is not set.
    Every process of an ``accelerate launch`` returns the same, complete dataset.
    """
    import datasets
    import numpy as np

    from .datamaps import dynamics
    from .inference import task_inputs

    schema.require_columns(dataset, task.text_columns, "label")
    models = find_teacher(config, teacher_dir)
    dropped: Counter = Counter()
    kept, n_empty = schema.drop_empty(dataset, task)
    if n_empty:
        dropped["empty_text"] = n_empty
        kept = kept.flatten_indices()
    texts, pairs = task_inputs(kept, task)
    ids = schema.column_values(kept, schema.ID) if schema.ID in kept.column_names else \
        [schema.make_id(task.name, *row) for row in zip(texts, *([pairs] if pairs else []))]
    cache = Path(cache_dir) if cache_dir is not None else None
    common = dict(max_length=models.max_length, batch_size=config.batch_size, chunk_size=config.chunk_size,
                  cache_dir=cache)
    logger.info("label: %d rows, teacher %s, max_length %d", len(texts), models.best, models.max_length)
    soft = score_rows(models.best, texts, pairs, ids, task, desc="label (best)", **common)
    columns: dict[str, object] = {
        schema.SOFT_LABEL: soft.tolist(),
        schema.LABEL: soft.argmax(axis=1).tolist() if len(soft) else [],
        schema.CONFIDENCE: soft.max(axis=1).tolist() if len(soft) else [],
    }
    if config.dynamics:
        per_epoch = [score_rows(path, texts, pairs, ids, task, desc=f"label ({Path(path).name})", **common)
                     for path in models.checkpoints]
        stacked = (np.stack(per_epoch, axis=1) if per_epoch
                   else np.zeros((len(texts), 0, task.num_labels), np.float32))
        # the paper: variability = max over labels of the std over epochs, confidence = max of the mean
        stats = dynamics(stacked)
        columns[schema.CHECKPOINT_PROBS] = stacked.tolist()
        columns[schema.VARIABILITY] = stats.variability.astype("float32").tolist()
        columns[schema.MEAN_CONFIDENCE] = stats.mean_confidence.astype("float32").tolist()
    new = datasets.Dataset.from_dict(columns, features=schema.features(task, columns))
    base = kept.remove_columns([c for c in columns if c in kept.column_names])
    return DataResult({"data": datasets.concatenate_datasets([base, new], axis=1)}, dropped)


def _candidates(ctx: StageContext) -> "datasets.Dataset":
    """The rows the teacher labels: the English generations, or in the translated-teacher setting
    their translations, every language in one dataset (``lang`` tells them apart), so the soft
    labels and the per-epoch dynamics are the teacher's on the target-language text (the authors'
    pseudo_label_xnli_cartography.py scores the translated file)."""
    import datasets

    from .config import TRANSLATED_TEACHER

    if ctx.recipe.setting != TRANSLATED_TEACHER:
        return ctx.input("generate")
    names = ctx.run.outputs("translate")
    if not names:
        raise HfaugError("label: the translated-teacher setting labels the translated generations, but the "
                         "translate stage wrote none; check translate.languages")
    return datasets.concatenate_datasets([ctx.input("translate", name) for name in names])


def run(ctx: StageContext) -> StageResult:
    config: LabelConfig = ctx.config
    candidates = _candidates(ctx)
    teacher_dir = ctx.input_dir("teacher") if config.teacher is None and ctx.run.manifest("teacher") else None
    result = label(candidates, config, ctx.task, teacher_dir=teacher_dir, cache_dir=ctx.cache_dir)
    labelled, dropped = result.data, result.dropped
    counts = Counter(ctx.task.labels[i] for i in schema.column_values(labelled, schema.LABEL))
    metrics = {"labels": {name: counts.get(name, 0) for name in ctx.task.labels}}
    if len(labelled):
        metrics["mean_confidence"] = float(sum(schema.column_values(labelled, schema.CONFIDENCE)) / len(labelled))
    return StageResult(datasets={"data": labelled}, dropped=dropped, rows_in=len(candidates), metrics=metrics)

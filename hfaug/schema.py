"""The column contract between stages: names, types, and which stage writes each.

Every stage checks the columns it needs on entry with :func:`require_columns`, so a dataset from
the wrong place fails with one line naming the missing column and the stage that writes it.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import HfaugError

if TYPE_CHECKING:  # datasets is imported lazily to keep `hfaug --help` fast
    import datasets

    from .tasks import Task

@dataclass
class DataResult:
    """What every data stage function returns (source, generate, label, translate, select).

    ``datasets`` by name (``data`` is a stage's main output: label's labelled rows), ``dropped``
    the rows it left out by reason (nothing is dropped silently), ``metrics`` what it measured,
    ``figures`` the files it drew. It unpacks as ``datasets, dropped, metrics``.
    """

    datasets: dict[str, "datasets.Dataset"]
    dropped: Counter = field(default_factory=Counter)
    metrics: dict[str, Any] = field(default_factory=dict)
    figures: list[Path] = field(default_factory=list)

    @property
    def data(self) -> "datasets.Dataset":
        """The main output (``datasets["data"]``)."""
        return self.datasets["data"]

    def __iter__(self) -> Iterator[Any]:
        return iter((self.datasets, self.dropped, self.metrics))


ID = "id"
TASK = "task"
TEXT = "text"
PREMISE = "premise"
HYPOTHESIS = "hypothesis"
LANG = "lang"
SOURCE_ID = "source_id"
ORIGIN = "origin"
PROMPT_LABEL = "prompt_label"
LABEL = "label"
SOFT_LABEL = "soft_label"
CONFIDENCE = "confidence"
VARIABILITY = "variability"
MEAN_CONFIDENCE = "mean_confidence"
CHECKPOINT_PROBS = "checkpoint_probs"
STRATEGY = "strategy"
RANK = "rank"
GEN_MODEL = "gen_model"
GEN_PARAMS = "gen_params"

#: characters that draw nothing: a text made only of these (and whitespace) is empty
INVISIBLE = "\u200b\u200c\u200d\u2060\ufeff\u00ad\u180e"


def is_blank(text: str | None) -> bool:
    """True for None, "" and texts of whitespace and invisible characters (zero-width space, BOM)."""
    return not text or not text.strip().strip(INVISIBLE).strip()


ORIGIN_SOURCE = "source"
ORIGIN_SYNTHETIC = "synthetic"

#: which stage writes a column: named in the error when a stage finds it missing
WRITTEN_BY: dict[str, str] = {
    ID: "generate (or source)",
    TASK: "generate (or source)",
    TEXT: "generate (or source)",
    PREMISE: "generate (or source)",
    HYPOTHESIS: "generate (or source)",
    LANG: "generate / translate",
    SOURCE_ID: "translate",
    ORIGIN: "generate (or source)",
    PROMPT_LABEL: "generate",
    LABEL: "label (or source)",
    SOFT_LABEL: "label",
    CONFIDENCE: "label",
    VARIABILITY: "label (with dynamics: true)",
    MEAN_CONFIDENCE: "label (with dynamics: true)",
    CHECKPOINT_PROBS: "label (with dynamics: true)",
    STRATEGY: "select",
    RANK: "select",
    GEN_MODEL: "generate",
    GEN_PARAMS: "generate",
}


def make_id(task: str, *texts: str) -> str:
    """A stable content hash: the same text always gets the same id, other text never does."""
    payload = json.dumps([task, *texts], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:20]


def require_columns(dataset: "datasets.Dataset", columns, stage: str) -> None:
    """Raise a user error naming the first missing column and the stage that writes it."""
    missing = [c for c in columns if c not in dataset.column_names]
    if missing:
        col = missing[0]
        writer = WRITTEN_BY.get(col, "an earlier stage")
        raise HfaugError(
            f"{stage}: input has no '{col}' column; it is written by the {writer} stage "
            f"(columns present: {', '.join(dataset.column_names)})"
        )


def column_values(dataset: "datasets.Dataset", column: str) -> list:
    """A column's values as a plain list, read in one slice: iterating a dataset's column (or
    indexing it row by row) formats one row at a time, ~35x slower, a few seconds per pass over
    the paper's 130,000-row pool."""
    return dataset[column][:]


def label_ids(dataset: "datasets.Dataset", task: "Task", where: str, column: str = LABEL) -> list[int]:
    """A label column as the task's label ids: a ClassLabel with the task's names in any order,
    label names, or ids. Anything else is a one-line user error listing both label sets."""
    import datasets

    feature = dataset.features[column]
    values = column_values(dataset, column)
    what = "labels" if column == LABEL else f"'{column}' labels"
    if any(v is None for v in values):
        raise HfaugError(f"{where}: {values.count(None)} rows have no '{column}'; it is written by the "
                         f"{WRITTEN_BY.get(column, 'an earlier')} stage")
    if isinstance(feature, datasets.ClassLabel):
        names = list(feature.names)
        if sorted(names) != sorted(task.labels):
            raise HfaugError(f"{where}: {what} {names} do not match the {task.name} labels {list(task.labels)}")
        return [task.label2id[names[v]] for v in values]
    if all(isinstance(v, str) for v in values):
        found = sorted(set(values))
        if not set(found) <= set(task.labels):
            raise HfaugError(f"{where}: {what} {found} do not match the {task.name} labels {list(task.labels)}")
        return [task.label2id[v] for v in values]
    bad = sorted({v for v in values if not isinstance(v, int) or not 0 <= v < task.num_labels}, key=str)
    if bad:
        raise HfaugError(f"{where}: {what} values {bad} are not ids of the {task.name} labels {list(task.labels)}")
    return values


def drop_empty(dataset: "datasets.Dataset", task: "Task") -> tuple["datasets.Dataset", int]:
    """Rows whose text (or premise/hypothesis) is empty are skipped; returns (kept, count)."""
    keep = [i for i, row in enumerate(zip(*(column_values(dataset, c) for c in task.text_columns)))
            if all(isinstance(t, str) and t.strip() for t in row)]
    if len(keep) == len(dataset):
        return dataset, 0
    return dataset.select(keep), len(dataset) - len(keep)


def features(task: "Task", columns) -> "datasets.Features":
    """Typed features for the given contract columns: ClassLabel labels with the task's names,
    Sequence(float32) soft labels. Unknown columns are left out (the caller adds them)."""
    import datasets

    label = datasets.ClassLabel(names=list(task.labels))
    types = {
        ID: datasets.Value("string"),
        TASK: datasets.Value("string"),
        TEXT: datasets.Value("string"),
        PREMISE: datasets.Value("string"),
        HYPOTHESIS: datasets.Value("string"),
        LANG: datasets.Value("string"),
        SOURCE_ID: datasets.Value("string"),
        ORIGIN: datasets.Value("string"),
        PROMPT_LABEL: label,
        LABEL: label,
        SOFT_LABEL: datasets.Sequence(datasets.Value("float32")),
        CONFIDENCE: datasets.Value("float32"),
        VARIABILITY: datasets.Value("float32"),
        MEAN_CONFIDENCE: datasets.Value("float32"),
        CHECKPOINT_PROBS: datasets.Sequence(datasets.Sequence(datasets.Value("float32"))),
        STRATEGY: datasets.Value("string"),
        RANK: datasets.Value("int32"),
        GEN_MODEL: datasets.Value("string"),
        GEN_PARAMS: datasets.Value("string"),
    }
    return datasets.Features({c: types[c] for c in columns if c in types})


def cast_contract(dataset: "datasets.Dataset", task: "Task") -> "datasets.Dataset":
    """Cast every contract column present to its contract type (labels become ClassLabel)."""
    target = dataset.features.copy()
    target.update(features(task, dataset.column_names))
    return dataset if target == dataset.features else dataset.cast(target)

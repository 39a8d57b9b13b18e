"""Labelled examples from a Hub dataset id or local files, mapped onto the column contract.

Used for the source data (``source`` stage) and the target test sets (``evaluate``). The real
``datasets.load_dataset`` does the reading, so a Hub id, a local csv/json/jsonl/parquet file or
a folder all work the same way.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import schema
from .config import resolve
from .errors import HfaugError

if TYPE_CHECKING:
    import datasets

    from .tasks import Task

LOCAL_BUILDERS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}


@dataclass
class DataSpec:
    """Where labelled data lives and how its columns map onto hfaug's."""

    path: str = field(metadata={"help": "Hub dataset id, local file (csv/json/jsonl/parquet) or hfaug://data/..."})
    name: str | None = field(default=None, metadata={"help": "Hub dataset config name."})
    split: str = field(default="train", metadata={"help": "Split to read."})
    revision: str | None = field(default=None, metadata={"help": "Hub revision (tag, branch or commit)."})
    columns: dict[str, str] = field(default_factory=dict, metadata={
        "help": "Map from the data's column names to hfaug's, e.g. {sentence: text, gold: label}."})
    label_map: dict[Any, str] = field(default_factory=dict, metadata={
        "help": "Map from the data's label values to the task's label names, e.g. {0: negative}."})
    lang: str = field(default="en", metadata={"help": "Language code of the texts."})
    limit: int | None = field(default=None, metadata={"help": "Keep at most this many rows (after shuffling)."})


def read_table(spec: DataSpec) -> "datasets.Dataset":
    """Read the raw rows of ``spec`` with datasets.load_dataset (Hub id or local files)."""
    import datasets

    path = resolve(spec.path)
    local = Path(path)
    try:
        if local.is_file():
            builder = LOCAL_BUILDERS.get(local.suffix.lower())
            if builder is None:
                raise HfaugError(f"{spec.path}: unsupported file type '{local.suffix}'; use one of {sorted(LOCAL_BUILDERS)}")
            kwargs = {"delimiter": "\t"} if local.suffix.lower() == ".tsv" else {}
            return datasets.load_dataset(builder, data_files={"data": str(local)}, split="data", **kwargs)
        if local.is_dir():
            return datasets.load_dataset(str(local), spec.name, split=spec.split)
        return datasets.load_dataset(path, spec.name, split=spec.split, revision=spec.revision)
    except HfaugError:
        raise
    except (FileNotFoundError, ValueError, datasets.exceptions.DatasetNotFoundError) as e:
        raise HfaugError(f"cannot load data '{spec.path}' (split '{spec.split}'): {str(e).splitlines()[0]}") from None


def load_labelled(spec: DataSpec, task: "Task", *, seed: int = 42, origin: str = schema.ORIGIN_SOURCE,
                  where: str = "source") -> tuple["datasets.Dataset", Counter]:
    """Labelled rows in contract form: id, task, text column(s), lang, origin, label.

    Rows with an empty text are dropped and counted (``empty_text``), as are exact duplicates
    (``duplicate``). A label outside the task's set is a user error listing both sets.
    """
    import datasets

    raw = read_table(spec)
    rename = {k: v for k, v in spec.columns.items() if k in raw.column_names and k != v}
    if rename:
        raw = raw.rename_columns(rename)
    needed = [*task.text_columns, schema.LABEL]
    missing = [c for c in needed if c not in raw.column_names]
    if missing:
        raise HfaugError(
            f"{where}: data '{spec.path}' has no '{missing[0]}' column (columns: {', '.join(raw.column_names)}); "
            f"map one with {where}.columns, e.g. {{your_column: {missing[0]}}}"
        )
    names = raw.features[schema.LABEL].names if isinstance(raw.features[schema.LABEL], datasets.ClassLabel) else None
    label_map = {str(k): v for k, v in spec.label_map.items()}

    def to_label(value) -> int:
        if names is not None and isinstance(value, int):
            value = names[value]
        value = label_map.get(str(value), value)
        if not isinstance(value, str):
            raise HfaugError(
                f"{where}: label value {value!r} in '{spec.path}' is not a label name; map values to "
                f"{list(task.labels)} with {where}.label_map"
            )
        return task.label_id(value, where=f"'{spec.path}'")

    dropped: Counter = Counter()
    rows = {c: [] for c in (schema.ID, schema.TASK, *task.text_columns, schema.LANG, schema.ORIGIN, schema.LABEL)}
    seen = set()
    found_labels = set()
    for row in raw:
        texts = [(row[c] or "").strip() if isinstance(row[c], str) or row[c] is None else str(row[c])
                 for c in task.text_columns]
        if any(not t for t in texts):
            dropped["empty_text"] += 1
            continue
        try:
            label = to_label(row[schema.LABEL])
        except HfaugError:
            found_labels.update(str(r) for r in raw[schema.LABEL])
            bad = sorted(found_labels - set(task.labels) - set(label_map))
            raise HfaugError(
                f"{where}: labels {bad} in '{spec.path}' do not match the {task.name} labels "
                f"{list(task.labels)}; map them with {where}.label_map"
            ) from None
        row_id = schema.make_id(task.name, spec.lang, *texts)
        if row_id in seen:
            dropped["duplicate"] += 1
            continue
        seen.add(row_id)
        rows[schema.ID].append(row_id)
        rows[schema.TASK].append(task.name)
        for c, t in zip(task.text_columns, texts):
            rows[c].append(t)
        rows[schema.LANG].append(spec.lang)
        rows[schema.ORIGIN].append(origin)
        rows[schema.LABEL].append(label)
    dataset = datasets.Dataset.from_dict(rows, features=schema.features(task, rows.keys()))
    if spec.limit is not None and len(dataset) > spec.limit:
        dropped["over_limit"] += len(dataset) - spec.limit
        dataset = dataset.shuffle(seed=seed).select(range(spec.limit))
    return dataset, dropped

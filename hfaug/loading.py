"""Labelled examples from a Hub dataset id or local files, mapped onto the column contract.

Used for the source data (``source`` stage) and the target test sets (``evaluate``). The real
``datasets.load_dataset`` does the reading, so a Hub id, a local csv/json/jsonl/parquet file or
a folder all work the same way.
"""

from __future__ import annotations

from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import schema
from .config import resolve
from .errors import HfaugError, storage_problem

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


def read_table(spec: DataSpec, where: str = "source") -> "datasets.Dataset":
    """Read the raw rows of ``spec`` with datasets.load_dataset (Hub id or local files).

    A mistake in a local file is one line naming the file and where in it: missing (never sent
    to the Hub when the reference looks like a path), empty, a corrupt jsonl line, bytes that
    are not UTF-8.
    """
    path = resolve(spec.path)
    local = Path(path)
    if not local.exists() and looks_like_path(spec.path):  # before any Hub lookup, and at once
        raise HfaugError(f"{where}: data file '{spec.path}' not found (looked for {local.absolute()}); "
                         f"fix {where}.path")
    import datasets

    try:
        if local.is_file():
            builder = LOCAL_BUILDERS.get(local.suffix.lower())
            if builder is None:
                raise HfaugError(f"{spec.path}: unsupported file type '{local.suffix}'; use one of {sorted(LOCAL_BUILDERS)}")
            if builder != "parquet":
                check_text_file(local, where)
            kwargs = {"delimiter": "\t"} if local.suffix.lower() == ".tsv" else {}
            try:
                with _quiet_readers():
                    table = datasets.load_dataset(builder, data_files={"data": str(local)}, split="data", **kwargs)
            except Exception as e:  # name the line or byte the reader choked on, else the reader's words
                if isinstance(e, HfaugError) or storage_problem(e) is not None:
                    raise  # a full disk while datasets writes its cache is the CLI's one line
                raise HfaugError(_local_file_problem(local, builder, where) or
                                 f"{where}: cannot read '{spec.path}': {_first_line(e)}") from None
            if len(table) == 0:
                raise HfaugError(f"{where}: data file '{spec.path}' has no rows; point {where}.path at labelled data")
            return table
        if local.is_dir():
            return datasets.load_dataset(str(local), spec.name, split=spec.split)
        return datasets.load_dataset(path, spec.name, split=spec.split, revision=spec.revision)
    except HfaugError:
        raise
    except (FileNotFoundError, ValueError, datasets.exceptions.DatasetNotFoundError) as e:
        raise HfaugError(f"cannot load data '{spec.path}' (split '{spec.split}'): {str(e).splitlines()[0]}") from None


#: what a local data file's name ends with (a Hub dataset id never does)
DATA_SUFFIXES = (*LOCAL_BUILDERS, ".txt", ".arrow", ".gz", ".zip")


def looks_like_path(ref: str) -> bool:
    """A reference that can only mean a local file: it starts like a path (/, ./, ../, ~), has a
    backslash or more than one slash, or ends with a data-file suffix. ``user/name`` and ``name``
    stay Hub ids."""
    ref = str(ref)
    if ref.startswith(("/", "./", "../", "~", ".\\")) or "\\" in ref or ref.count("/") > 1:
        return True
    return ref.lower().endswith(DATA_SUFFIXES)


def check_text_file(path: Path, where: str) -> None:
    """Empty files and bytes that are not UTF-8 fail here, before a reader says something obscure
    about them (pyarrow's json reader even lets bad bytes through, to fail later on a row)."""
    size = path.stat().st_size
    if size == 0 or (size < 4096 and not path.read_bytes().strip()):
        raise HfaugError(f"{where}: data file '{path}' is empty; point {where}.path at labelled data")
    bad = first_non_utf8(path)
    if bad is not None:
        offset, byte = bad
        raise HfaugError(f"{where}: '{path}' is not UTF-8 text (byte 0x{byte:02x} at byte offset {offset}); "
                         f"save it as UTF-8")


@contextmanager
def _quiet_readers():
    """datasets logs a reader's failure at ERROR before raising it; the raise is reported (as one
    line) by the caller, so the log line would only say it twice, with a traceback's words."""
    import logging

    log = logging.getLogger("datasets.packaged_modules")
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(level)


def _local_file_problem(path: Path, builder: str, where: str) -> str | None:
    """Why a csv/json/jsonl file did not load, as one line, when it is one of the usual mistakes."""
    if builder == "csv" and sum(1 for line in path.open(encoding="utf-8") if line.strip()) <= 1:
        return f"{where}: data file '{path}' has a header but no rows; point {where}.path at labelled data"
    if builder == "json":
        line = first_bad_json_line(path)
        if line is not None:
            number, message = line
            return f"{where}: '{path}' line {number} is not valid JSON ({message}); fix or remove that line"
    return None


def first_non_utf8(path: Path, chunk: int = 1 << 20) -> tuple[int, int] | None:
    """(byte offset, byte) of the first byte that is not UTF-8, or None."""
    import codecs

    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with open(path, "rb") as f:
        while True:
            data = f.read(chunk)
            pending = len(decoder.getstate()[0])  # bytes of a character split across two chunks
            try:
                decoder.decode(data, final=not data)
            except UnicodeDecodeError as e:
                return offset - pending + e.start, e.object[e.start]
            if not data:
                return None
            offset += len(data)


def first_bad_json_line(path: Path) -> tuple[int, str] | None:
    """(line number, error) of the first jsonl line that is not a JSON object, or None (also for a
    .json file holding one whole document)."""
    import json

    text = path.read_text(encoding="utf-8")
    try:
        json.loads(text)
        return None  # one JSON document (a list of rows): not a jsonl problem
    except ValueError:
        pass
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except ValueError as e:
            return number, getattr(e, "msg", str(e))
        if not isinstance(value, dict):
            return number, f"a {type(value).__name__}, not an object"
    return None


def _first_line(e: BaseException) -> str:
    node: BaseException | None = e
    while node.__cause__ is not None:  # datasets wraps the reader's error in DatasetGenerationError
        node = node.__cause__
    return (str(node).strip().splitlines() or [type(node).__name__])[0]


def load_labelled(spec: DataSpec, task: "Task", *, seed: int = 42, origin: str = schema.ORIGIN_SOURCE,
                  where: str = "source") -> tuple["datasets.Dataset", Counter]:
    """Labelled rows in contract form: id, task, text column(s), lang, origin, label.

    Rows with an empty text are dropped and counted (``empty_text``), as are exact duplicates
    (``duplicate``). A label outside the task's set is a user error listing both sets.
    """
    import datasets

    raw = read_table(spec, where)
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
        if any(schema.is_blank(t) for t in texts):  # also texts of zero-width spaces only
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

"""The task registry: label names (in the order of every probability vector) and text columns.

``sentiment`` and ``nli`` are the paper's tasks, packaged as presets. A recipe may define its own
task instead (``task: {name: reviews2, preset: sentiment, labels: [negative, positive]}``): its
labels, in order, are the classes everything downstream uses (generation prompts, the teacher's
head, selection's shortfall order, cards, evaluation, the Space).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .errors import HfaugError, did_you_mean


@dataclass(frozen=True)
class Task:
    """A classification task hfaug can augment.

    ``labels`` fixes the order of ``soft_label`` vectors and of the ClassLabel feature, so a
    probability at position i always means ``labels[i]``.
    """

    name: str
    labels: tuple[str, ...]
    text_columns: tuple[str, ...]
    description: str = ""
    #: the packaged task this one starts from (its prompts); None for a task of its own
    preset: str | None = None

    @property
    def family(self) -> str:
        """How generation asks for examples: one text per label (``sentiment``), or premises
        followed by one hypothesis per label (``nli``)."""
        return "nli" if self.is_pair else "sentiment"

    @property
    def is_paper(self) -> bool:
        """A paper task: a preset with exactly the preset's labels, in its order. Only then do the
        paper's label-specific defaults (selection's shortfall order) apply."""
        base = TASKS.get(self.preset or "")
        return base is not None and base.labels == self.labels and base.text_columns == self.text_columns

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    @property
    def is_pair(self) -> bool:
        """Sentence-pair tasks (NLI) feed two texts to the tokenizer."""
        return len(self.text_columns) == 2

    @property
    def label2id(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.labels)}

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.labels))

    def label_id(self, name: str, where: str = "") -> int:
        """The index of a label name; an unknown name is a user error listing both sets."""
        try:
            return self.label2id[name]
        except KeyError:
            at = f" in {where}" if where else ""
            raise HfaugError(
                f"label '{name}'{at} is not a {self.name} label; the task's labels are "
                f"{list(self.labels)} (map other names with source.label_map)"
            ) from None

    def texts(self, row: dict) -> tuple[str, ...]:
        return tuple(row[c] for c in self.text_columns)


TASKS: dict[str, Task] = {
    "sentiment": Task(
        name="sentiment",
        labels=("negative", "neutral", "positive"),
        text_columns=("text",),
        description="3-way sentiment of a short review or statement",
        preset="sentiment",
    ),
    "nli": Task(
        name="nli",
        labels=("entailment", "neutral", "contradiction"),
        text_columns=("premise", "hypothesis"),
        description="natural language inference over a premise and a hypothesis",
        preset="nli",
    ),
}

#: hfaug's text columns: one text, or a premise and a hypothesis (other column names in the data
#: are mapped to these with source.columns)
TEXT_FORMS = {("text",): "text", ("premise", "hypothesis"): "pair"}


@dataclass
class TaskSpec:
    """A recipe's own task (``task: {name: ..., labels: [...]}``): labels in order, text columns, and
    optionally a packaged preset whose prompts it starts from."""

    name: str = field(metadata={"help": "The task's name (cards, ids)."})
    labels: list[str] | None = field(default=None, metadata={
        "help": "The labels, in order (the order of every probability vector). Default: the preset's."})
    preset: str | None = field(default=None, metadata={
        "help": "A packaged task to start from ('sentiment' or 'nli'): its text columns and prompts."})
    text: str | list[str] | None = field(default=None, metadata={
        "help": "'text' (one text) or [premise, hypothesis] (a pair). Default: the preset's, else 'text'."})
    description: str = field(default="", metadata={"help": "What is classified (cards)."})

    def __post_init__(self):
        self.task = build_task(self)


def build_task(spec: TaskSpec) -> Task:
    """The :class:`Task` a recipe's task mapping defines; a bad value is a user error naming the key."""
    base = None
    if spec.preset is not None:
        if spec.preset not in TASKS:
            raise HfaugError(f"task.preset: unknown preset '{spec.preset}'{did_you_mean(spec.preset, TASKS)}; "
                             f"presets: {', '.join(TASKS)}")
        base = TASKS[spec.preset]
    if not str(spec.name).strip():
        raise HfaugError("task.name must not be empty")
    labels = tuple(str(x) for x in spec.labels) if spec.labels is not None else (base.labels if base else ())
    if len(labels) < 2:
        raise HfaugError(f"task.labels: a task needs at least two labels, got {list(labels)}; "
                         "e.g. labels: [negative, positive]")
    if len(set(labels)) != len(labels):
        repeated = sorted({x for x in labels if labels.count(x) > 1})
        raise HfaugError(f"task.labels: label '{repeated[0]}' is listed twice")
    if any("@" in x or not x.strip() for x in labels):
        raise HfaugError(f"task.labels: labels must be non-empty names without '@', got {list(labels)}")
    if spec.text is None:
        columns = base.text_columns if base else ("text",)
    else:
        columns = (spec.text,) if isinstance(spec.text, str) else tuple(spec.text)
        if columns not in TEXT_FORMS:
            raise HfaugError(f"task.text: {spec.text!r} is not one of hfaug's text columns: 'text' (one text) or "
                             "[premise, hypothesis] (a pair); map your data's columns to them with source.columns, "
                             "e.g. {review: text}")
    if base is not None and columns != base.text_columns:
        raise HfaugError(f"task.text: the {base.name} preset uses {list(base.text_columns)}; drop task.text or "
                         "the preset")
    description = spec.description or (base.description if base and labels == base.labels else
                                       f"{base.name if base else 'classification'} into {', '.join(labels)}")
    return Task(name=str(spec.name), labels=labels, text_columns=columns, description=description,
                preset=base.name if base else None)


def resolve_task(value: Any) -> Task:
    """The task of a recipe's ``task`` key: a preset name, a :class:`TaskSpec`, a mapping or a Task."""
    if isinstance(value, Task):
        return value
    if isinstance(value, TaskSpec):
        return value.task
    if isinstance(value, dict):
        from .typed import from_dict

        return from_dict(TaskSpec, value, "task").task
    return get_task(value)


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise HfaugError(f"unknown task '{name}'{did_you_mean(name, TASKS)}") from None

"""The task registry: label names (in the order of every probability vector) and text columns."""

from __future__ import annotations

from dataclasses import dataclass

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
    ),
    "nli": Task(
        name="nli",
        labels=("entailment", "neutral", "contradiction"),
        text_columns=("premise", "hypothesis"),
        description="natural language inference over a premise and a hypothesis",
    ),
}


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise HfaugError(f"unknown task '{name}'{did_you_mean(name, TASKS)}") from None

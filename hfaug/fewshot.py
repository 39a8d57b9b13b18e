"""Few-shot examples for generation prompts: k labelled source rows per class, seeded and rotated.

The paper's headline prompts are zero-shot; with a little labelled data, showing the LLM a few
real examples pulls its generations towards the user's domain. To keep the generations from
copying one fixed set, every request gets its own examples: each class's rows are shuffled
(seeded) and cut into disjoint blocks of k, request i takes block i, and when the blocks run out
the rows are reshuffled for the next round. A request's examples depend only on (seed,
request index), never on how many requests there are, so a rerun or a larger ``n`` finds the same
prompts in the generation cache.

Input columns (the source stage's ``train``): text (or premise + hypothesis), label; id is used
for provenance when present.

Usage (in a prompt builder)::

    sampler = ShotSampler(source_train, task, k_per_class=2, seed=run_seed)   # checks k once
    shots = sampler.shots(request_index)               # list of {"id", "label", <text columns>}
    user = format_shots(shots, task) + "\\n\\n" + instruction
    provenance = [s["id"] for s in shots]
"""

from __future__ import annotations

import hashlib
import random
from typing import TYPE_CHECKING, Any

from . import schema
from .errors import HfaugError

if TYPE_CHECKING:
    import datasets

    from .tasks import Task

#: headers above the examples; ``format_shots(header=...)`` replaces them
HEADERS = {
    "sentiment": "Here are examples of reviews from the data, with their sentiment:",
    "nli": "Here are examples of sentence pairs from the data, with how the second sentence relates to the first:",
    "premise": "Here are examples of sentences from the data:",
    "labelled": "Here are examples of texts from the data, with their labels:",
}


def _task(task: "Task | str") -> "Task":
    from .tasks import get_task

    return get_task(task) if isinstance(task, str) else task


def _seed(*parts: Any) -> int:
    # hashlib, not hash(): str hashes change between processes
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:8], "big")


def _label_names(dataset: "datasets.Dataset", task: "Task", where: str) -> list[str]:
    return [task.labels[i] for i in schema.label_ids(dataset, task, where)]


class ShotSampler:
    """Draws ``k_per_class`` labelled examples per class for each request (see the module doc).

    Building one checks the request against the data: asking for more examples of a class than
    the source data has is a one-line :class:`HfaugError`, raised before any request is sent.
    """

    def __init__(self, source: "datasets.Dataset", task: "Task | str", k_per_class: int, seed: int = 42, *,
                 where: str = "generate.few_shot"):
        self.task = _task(task)
        self.k = k_per_class
        self.seed = seed
        self.where = where
        if isinstance(k_per_class, bool) or not isinstance(k_per_class, int) or k_per_class < 0:
            raise HfaugError(f"{where} must be a whole number of examples per class (0 or more), got {k_per_class!r}")
        schema.require_columns(source, [*self.task.text_columns, schema.LABEL], f"{where} (source train data)")
        columns = list(self.task.text_columns)
        texts = {c: list(source[c]) for c in columns}
        ids = list(source[schema.ID]) if schema.ID in source.column_names else None
        self.rows: dict[str, list[dict]] = {label: [] for label in self.task.labels}
        for i, label in enumerate(_label_names(source, self.task, where)):
            values = [texts[c][i] for c in columns]
            if not all(isinstance(v, str) and v.strip() for v in values):
                continue  # an empty example teaches the LLM nothing
            row = {"id": ids[i] if ids else schema.make_id(self.task.name, *values), "label": label}
            row.update(zip(columns, values))
            self.rows[label].append(row)
        if k_per_class > 0:
            for label in self.task.labels:
                have = len(self.rows[label])
                if k_per_class > have:
                    fewest = min(len(r) for r in self.rows.values())
                    raise HfaugError(
                        f"{where}: {k_per_class} examples per class asked for, but the source train data has only "
                        f"{have} '{label}' rows; set {where} to at most {fewest} or add source data")
        self._perms: dict[tuple[str, int], list[int]] = {}

    def _perm(self, label: str, round_: int) -> list[int]:
        key = (label, round_)
        if key not in self._perms:
            order = list(range(len(self.rows[label])))
            random.Random(_seed(self.seed, "few-shot", label, round_)).shuffle(order)
            if len(self._perms) > 256:  # requests go in order: old rounds are not asked again
                self._perms.clear()
            self._perms[key] = order
        return self._perms[key]

    def shots(self, request_index: int) -> list[dict]:
        """The examples of request ``request_index``: k per class, in a seeded mixed order.

        Within a round, requests get disjoint examples; each round reshuffles, so over many
        requests every row is shown about equally often.
        """
        if self.k == 0:
            return []
        out = []
        for label in self.task.labels:
            blocks = len(self.rows[label]) // self.k  # >= 1: checked in __init__
            round_, block = divmod(request_index, blocks)
            perm = self._perm(label, round_)
            out += [dict(self.rows[label][j]) for j in perm[block * self.k:(block + 1) * self.k]]
        # mixed order, so the last example (the one an LLM leans on most) is not always one class
        random.Random(_seed(self.seed, "few-shot-order", request_index)).shuffle(out)
        return out


def sample_shots(source_dataset: "datasets.Dataset", task: "Task | str", k_per_class: int, seed: int,
                 request_index: int, *, where: str = "generate.few_shot") -> list[dict]:
    """k labelled source examples per class for one request: ``[{"id", "label", <text columns>}]``.

    Builds a :class:`ShotSampler` each call; for many requests build one sampler and call its
    ``shots(i)`` (same result, without regrouping the data every time).
    """
    return ShotSampler(source_dataset, task, k_per_class, seed, where=where).shots(request_index)


def format_shots(shots: list[dict], task: "Task | str", *, kind: str | None = None, header: str | None = None) -> str:
    """Render examples as a prompt block (no trailing newline); "" when there are none.

    ``kind="premise"`` (NLI premise requests) lists only the premises, once each; otherwise NLI
    examples show premise, hypothesis and relation, sentiment examples the review and its label.
    """
    task = _task(task)
    if not shots:
        return ""
    lines: list[str] = []
    if task.is_pair and kind == "premise":
        lines.append(header or HEADERS["premise"])
        seen = set()
        for shot in shots:
            if shot["premise"] not in seen:
                seen.add(shot["premise"])
                lines.append(f'Sentence: "{shot["premise"]}"')
    elif task.is_pair:
        lines.append(header or HEADERS["nli"])
        for shot in shots:
            lines += ["", f'Sentence: "{shot["premise"]}"', f'Second sentence ({shot["label"]}): "{shot["hypothesis"]}"']
    else:
        # a task without a preset classifies texts, not necessarily reviews
        own = task.preset is None
        lines.append(header or (HEADERS["labelled"] if own else HEADERS.get(task.preset, HEADERS["sentiment"])))
        for shot in shots:
            lines.append(f'{"Text" if own else "Review"} ({shot["label"]}): "{shot[task.text_columns[0]]}"')
    return "\n".join(lines)

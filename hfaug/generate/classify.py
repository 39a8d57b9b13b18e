"""LLM labels: ask an LLM which label a text has, answer constrained to the label names.

Where the server supports it, the answer is held to the label names (TGI: a regex grammar or
``response_format``; vLLM: ``structured_outputs.choice``; SGLang: ``regex``, see
:class:`.backends.OpenAIBackend`); elsewhere the answer is parsed (the first label name it starts
with). An answer that names no label is not kept in the request cache: the next run asks again. Soft labels come from the
token log-probabilities of the first answer step when the backend returns them (TGI
``top_n_tokens``, OpenAI ``top_logprobs``, the in-process model's scores): each label takes the
probability of the most likely listed token that begins its name, renormalised over the labels.
Without log-probabilities the soft label is the one-hot of the parsed answer.

This is the paper's alternative to teacher labels for any text (generated or not); the prompt's
label (``prompt_label``) stays on every generated row regardless.

Input columns: text (sentiment) or premise + hypothesis (nli); id when present.
Output columns: id, llm_label (ClassLabel, -1 when the answer named no label), llm_soft_label
(Sequence(float32), the task's label order), llm_answer (the raw answer).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from .. import schema
from ..errors import HfaugError
from ..prompts import Request, request_seed

if TYPE_CHECKING:
    import datasets

    from ..tasks import Task
    from .backends import Backend

LLM_LABEL = "llm_label"
LLM_SOFT_LABEL = "llm_soft_label"
LLM_ANSWER = "llm_answer"

SYSTEM = "You are a careful annotator. Answer with exactly one word from the list you are given."
QUESTIONS = {
    "sentiment": 'Text: "{text}"\nWhat is the sentiment of the text? Answer with one word: {labels}.',
    "nli": ('Premise: "{premise}"\nHypothesis: "{hypothesis}"\nIs the hypothesis implied by the premise '
            "(entailment), contradicted by it (contradiction), or neither (neutral)? Answer with one word: {labels}."),
}

#: a task of the recipe's own (or the NLI preset with other labels): the labels alone say what to answer
GENERIC_QUESTIONS = {
    "sentiment": 'Text: "{text}"\nWhich label fits the text? Answer with one word: {labels}.',
    "nli": 'Premise: "{premise}"\nHypothesis: "{hypothesis}"\nHow does the hypothesis relate to the premise? '
           "Answer with one word: {labels}.",
}


def _question(task: "Task") -> str:
    if task.is_paper or task.preset == "sentiment":  # the sentiment question fits any sentiment labels
        return QUESTIONS[task.preset]
    return GENERIC_QUESTIONS[task.family]


def classification_requests(dataset: "datasets.Dataset", task: "Task", seed: int = 0,
                            template: str | None = None) -> list[Request]:
    question = template or _question(task)
    labels = ", ".join(task.labels)
    requests = []
    columns = {c: schema.column_values(dataset, c) for c in task.text_columns}
    for i in range(len(dataset)):
        values = {c: columns[c][i] for c in task.text_columns}
        user = question.format(labels=labels, **values)
        requests.append(Request("classify", None, i, (("system", SYSTEM), ("user", user)),
                                request_seed(seed, "classify", *values.values())))
    return requests


def classification_params(task: "Task", top_n: int = 5) -> dict[str, Any]:
    # a regex grammar keeps TGI's answer to a label name; other backends ignore it
    # label_names lets the in-process model score the labels exactly; servers ignore it
    return {"greedy": True, "max_new_tokens": 4, "top_n_tokens": top_n, "label_names": list(task.labels),
            "grammar": {"type": "regex", "value": "(" + "|".join(task.labels) + ")"}}


def parse_answer(text: str, labels) -> int:
    """The label an answer names (its first word, or the first label named anywhere), else -1."""
    words = "".join(ch if ch.isalpha() else " " for ch in (text or "").lower()).split()
    for word in words[:1]:
        for i, label in enumerate(labels):
            if word == label or (len(word) >= 3 and label.startswith(word)):
                return i
    for i, label in enumerate(labels):
        if label in words:
            return i
    return -1


def soft_label(logprobs: list | None, labels) -> list[float] | None:
    """Label probabilities from the first non-blank answer step's top tokens, or None."""
    if not logprobs:
        return None
    for step in logprobs:
        if not step or not any(t["text"].strip() for t in step):
            continue
        best = [-math.inf] * len(labels)
        for token in step:
            piece = token["text"].strip().lower()
            if not piece:
                continue
            for i, label in enumerate(labels):
                if label.startswith(piece) and token["logprob"] > best[i]:
                    best[i] = token["logprob"]
        if all(b == -math.inf for b in best):
            return None
        top = max(best)
        weights = [math.exp(b - top) if b > -math.inf else 0.0 for b in best]
        total = sum(weights)
        return [w / total for w in weights]
    return None


async def aclassify(dataset: "datasets.Dataset", task: "Task", backend: "Backend", *, cache=None,
                    concurrency: int = 32, retry=None, seed: int = 0, top_n: int = 5, progress: bool = True,
                    cache_model: str | None = None):
    """(llm label dataset, stats) for the rows of ``dataset``; the backend must be started."""
    import datasets

    from .engine import run_requests

    schema.require_columns(dataset, list(task.text_columns), "llm labels")
    requests = classification_requests(dataset, task, seed)
    params = classification_params(task, top_n)
    outcome = await run_requests(backend, requests, params, cache=cache, concurrency=concurrency, retry=retry,
                                 progress=progress, desc="llm labels", cache_model=cache_model)
    if outcome.fatal is not None:
        raise HfaugError(f"llm labels: the server rejected a request ({outcome.fatal.message}); "
                         f"{len(outcome.results)} finished requests are kept in the cache; fix it and rerun")
    ids = schema.column_values(dataset, schema.ID) if schema.ID in dataset.column_names else [
        schema.make_id(task.name, *values) for values in zip(*(schema.column_values(dataset, c)
                                                                for c in task.text_columns))]
    rows = {schema.ID: [], LLM_LABEL: [], LLM_SOFT_LABEL: [], LLM_ANSWER: []}
    stats = {"unparsed": 0, "from_logprobs": 0, "failed": 0}
    unusable: list[str] = []
    for i, key in enumerate(outcome.keys):
        result = outcome.results.get(key)
        if result is None:
            stats["failed"] += 1
            continue
        answer = result.get("text", "")
        probs = soft_label(result.get("logprobs"), task.labels)
        label = parse_answer(answer, task.labels)
        if probs is not None:
            stats["from_logprobs"] += 1
            if label < 0:
                label = max(range(len(probs)), key=probs.__getitem__)
        elif label >= 0:
            probs = [1.0 if j == label else 0.0 for j in range(task.num_labels)]
        else:
            stats["unparsed"] += 1
            unusable.append(key)
            probs = [1.0 / task.num_labels] * task.num_labels
        rows[schema.ID].append(ids[i])
        rows[LLM_LABEL].append(label)
        rows[LLM_SOFT_LABEL].append(probs)
        rows[LLM_ANSWER].append(answer)
    if unusable and cache is not None:
        cache.discard(unusable)  # an answer naming no label is not a success: asked again next run
    features = datasets.Features({
        schema.ID: datasets.Value("string"),
        LLM_LABEL: datasets.ClassLabel(names=list(task.labels)),
        LLM_SOFT_LABEL: datasets.Sequence(datasets.Value("float32")),
        LLM_ANSWER: datasets.Value("string"),
    })
    # ClassLabel rejects -1 on encode; store unparsed answers as -1 through a plain int column first
    if any(v < 0 for v in rows[LLM_LABEL]):
        features[LLM_LABEL] = datasets.Value("int64")
    return datasets.Dataset.from_dict(rows, features=features), stats


def classify(dataset: "datasets.Dataset", task: "Task", backend: "Backend", **kwargs):
    """LLM labels for any text, synchronously: see :func:`aclassify`."""
    from .engine import run_sync

    async def go():
        await backend.start()
        try:
            return await aclassify(dataset, task, backend, **kwargs)
        finally:
            await backend.close()

    return run_sync(go())

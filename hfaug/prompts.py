"""The paper's prompts (arXiv 2407.10582, "Generation") as package defaults, and the requests built from them.

The generate stage sends these requests; the adapt stage trains the generator's LoRA adapter on
the same instructions (:func:`instruction`), so the adapter learns to answer exactly what it is
asked.

A prompt is a list of chat messages (``[{"role": "system", ...}, {"role": "user", ...}]``); each
backend turns it into what its server expects (a chat template, a TGI prompt string, or OpenAI
messages). Recipes override any template by key (``generate.templates``); placeholders are
``{domains}`` (sentiment system turn), ``{domain}`` (NLI premise) and ``{premise}`` (hypotheses).

Every request gets a seed derived from the run seed and its position (kind, label, index), never
from the number of requests, so raising ``n`` only adds requests and a rerun finds the old ones
in the cache.
"""

from __future__ import annotations

import hashlib
import string
from collections.abc import Callable
from dataclasses import dataclass, field

#: sentiment: one prompt per class; the system turn casts the model as a reviewer
SENTIMENT_TEMPLATES: dict[str, str] = {
    "system": (
        "You are a user who writes reviews of {domains}. Write only the review, nothing before or "
        "after it."
    ),
    "positive": "Write a single review of at most two short sentences indicating positive sentiment.",
    "negative": "Write a single review of at most two short sentences indicating negative sentiment.",
    "neutral": (
        "Write a fact-based, non-opinionated, very short general sentence. Use no emotional language."
    ),
}

#: the stricter neutral variant of the authors' code (neutral is scarce after labelling)
STRICT_NEUTRAL = (
    "Write a fact-based, non-opinionated, very short general sentence. Use no emotional language "
    "and no positive words."
)

#: the paper's second sentiment variant: news on several topics
NEWS_DOMAINS = ["politics", "sports", "food", "education", "travel"]

#: NLI: premises first (one short sentence per domain draw), then one hypothesis per label
NLI_TEMPLATES: dict[str, str] = {
    "premise_system": "You write single short sentences. Write only the sentence, nothing before or after it.",
    "premise": "Write one short single sentence about {domain}.",
    "hypothesis_system": (
        "You write single short sentences. Write only the sentence, nothing before or after it."
    ),
    "entailment": 'Sentence: "{premise}"\nWrite one short sentence that is implied by the sentence above.',
    "neutral": (
        'Sentence: "{premise}"\nWrite one short sentence that is related to the sentence above but is '
        "neither implied nor contradicted by it."
    ),
    "contradiction": (
        'Sentence: "{premise}"\nWrite one short sentence that logically contradicts the sentence above.'
    ),
}

DEFAULT_SENTIMENT_DOMAINS = ["travels", "movies", "electronic gadgets"]
#: MNLI genres in the paper's mix
DEFAULT_DOMAIN_MIX = {"travel": 0.4, "government": 0.4, "fiction": 0.2}

TEMPLATES = {"sentiment": SENTIMENT_TEMPLATES, "nli": NLI_TEMPLATES}
#: the placeholders each template key may use
ALLOWED_FIELDS = {"system": {"domains"}, "premise": {"domain"}, "premise_system": set(),
                  "hypothesis_system": set(), "entailment": {"premise"}, "neutral": {"premise"},
                  "contradiction": {"premise"}, "positive": set(), "negative": set()}


def templates_for(task: str, overrides: dict[str, str] | None = None) -> dict[str, str]:
    """The task's default templates with the recipe's overrides applied (unknown keys were
    rejected by the config)."""
    out = dict(TEMPLATES[task])
    out.update(overrides or {})
    return out


def template_fields(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


def check_templates(templates: dict[str, str]) -> None:
    """Raise ValueError for a template key no task has, or a placeholder its key may not use."""
    from .errors import did_you_mean

    known = set(SENTIMENT_TEMPLATES) | set(NLI_TEMPLATES)
    for key, text in templates.items():
        if key not in known:
            raise ValueError(f"unknown template key '{key}'{did_you_mean(key, known)}")
        extra = template_fields(text) - ALLOWED_FIELDS.get(key, set())
        if extra:
            raise ValueError(f"template '{key}' uses {{{sorted(extra)[0]}}}; it may use only "
                             f"{sorted(ALLOWED_FIELDS.get(key, set())) or 'no placeholders'}")


def instruction(task: str, label: str, templates: dict[str, str], *, domains: list[str] | None = None,
                premise: str | None = None) -> tuple[str, str]:
    """(system turn, user turn) that asks for one example of ``label``: a sentiment review (the
    system turn names ``domains``) or an NLI hypothesis for ``premise``."""
    if task == "nli":
        return templates["hypothesis_system"], templates[label].format(premise=premise)
    return templates["system"].format(domains=join_domains(domains or DEFAULT_SENTIMENT_DOMAINS)), templates[label]


@dataclass(frozen=True)
class Request:
    """One generation request: what is sent, and what the row will record."""

    kind: str  # "review", "premise" or "hypothesis"
    label: str | None  # the prompt's label (None for premises)
    index: int  # position within (kind, label): stable when n grows
    messages: tuple  # ((role, content), ...) hashable
    seed: int
    meta: dict = field(default_factory=dict, compare=False, hash=False)  # domain, premise

    @property
    def chat(self) -> list[dict]:
        return [{"role": role, "content": content} for role, content in self.messages]


def request_seed(run_seed: int, *parts) -> int:
    """A per-request seed from the run seed and the request's position."""
    digest = hashlib.sha256(":".join(map(str, (run_seed, *parts))).encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def domain_for(index: int, mix: dict[str, float]) -> str:
    """The domain of premise ``index``: a golden-ratio sequence through the cumulative mix, so any
    prefix of the premises follows the mix closely and index i never changes domain as n grows."""
    total = sum(mix.values())
    u = (index * 0.6180339887498949 + 0.5) % 1.0
    acc = 0.0
    names = list(mix)
    for name in names:
        acc += mix[name] / total
        if u < acc:
            return name
    return names[-1]


def _messages(system: str, user: str) -> tuple:
    return (("system", system), ("user", user)) if system else (("user", user),)


def join_domains(domains: list[str]) -> str:
    if len(domains) <= 1:
        return "".join(domains)
    return ", ".join(domains[:-1]) + " and " + domains[-1]


#: few-shot examples for a request: (request number within its kind) -> (prompt block, source ids)
Shots = Callable[[int], tuple[str, list[str]]]


def _with_shots(user: str, shots: Shots | None, number: int, meta: dict) -> str:
    if shots is None:
        return user
    block, ids = shots(number)
    if not block:
        return user
    meta["few_shot_ids"] = ids
    return f"{block}\n\n{user}"


def sentiment_requests(labels, n_per_class: int | dict[str, int], templates: dict[str, str], domains: list[str],
                       seed: int, shots: Shots | None = None) -> list[Request]:
    """One prompt per class, ``n_per_class`` requests each (or a count per label), cycling
    through the classes as the authors did (so a crash mid-run leaves the classes balanced)."""
    turns = {label: instruction("sentiment", label, templates, domains=domains) for label in labels}
    counts = n_per_class if isinstance(n_per_class, dict) else {label: n_per_class for label in labels}
    out = []
    for i in range(max(counts.values(), default=0)):
        for j, label in enumerate(labels):
            if i >= counts.get(label, 0):
                continue
            meta: dict = {}
            system, user = turns[label]
            user = _with_shots(user, shots, i * len(labels) + j, meta)
            out.append(Request("review", label, i, _messages(system, user), request_seed(seed, "review", label, i),
                               meta))
    return out


def premise_requests(n: int, templates: dict[str, str], mix: dict[str, float], seed: int,
                     shots: Shots | None = None) -> list[Request]:
    out = []
    for i in range(n):
        domain = domain_for(i, mix)
        meta = {"domain": domain}
        user = _with_shots(templates["premise"].format(domain=domain), shots, i, meta)
        out.append(Request("premise", None, i, _messages(templates["premise_system"], user),
                           request_seed(seed, "premise", i), meta))
    return out


def hypothesis_requests(premises: list[tuple[int, str, str]], labels, templates: dict[str, str],
                        seed: int, shots: Shots | None = None) -> list[Request]:
    """``premises`` are (premise index, domain, clean premise); one request per label each."""
    out = []
    for index, domain, premise in premises:
        for j, label in enumerate(labels):
            meta = {"domain": domain, "premise": premise}
            system, user = instruction("nli", label, templates, premise=premise)
            user = _with_shots(user, shots, index * len(labels) + j, meta)
            out.append(Request("hypothesis", label, index, _messages(system, user),
                               request_seed(seed, "hypothesis", label, index), meta))
    return out

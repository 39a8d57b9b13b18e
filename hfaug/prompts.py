"""The paper's prompts (arXiv 2407.10582, "Generation") as package defaults, and the requests built from them.

The generate stage sends these requests; the adapt stage trains the generator's LoRA adapter on
the same instructions (:func:`instruction`), so the adapter learns to answer exactly what it is
asked.

A prompt is a list of chat messages (``[{"role": "system", ...}, {"role": "user", ...}]``); each
backend turns it into what its server expects (a chat template, a TGI prompt string, or OpenAI
messages). Recipes override any template by key (``generate.templates``); placeholders are
``{domains}`` (sentiment system turn), ``{domain}`` (NLI premise) and ``{premise}`` (hypotheses).
A key ``<key>@<qualifier>`` is that template for one label (``system@neutral``,
``hypothesis_system@entailment``), one premise domain (``premise@travel``,
``premise_system@travel``) or one variant (``neutral@strict``).

Every request gets a seed derived from the run seed and its position (kind, label, index), never
from the number of requests, so raising ``n`` only adds requests and a rerun finds the old ones
in the cache.
"""

from __future__ import annotations

import hashlib
import string
from collections.abc import Callable
from dataclasses import dataclass, field

# The authors' prompts, verbatim (train_llama2/generate_hiproduct_zeroshot.py and
# generate_hiproduct_zeroshotneutral.py for sentiment, generate_bnsentiment_zeroshot.py for the news
# variant, generate_xnlipremises_zeroshot.py and generate_xnlihypos_zeroshot.py for NLI). Only the
# line indentation of their triple-quoted strings and the Llama-2 tags are left out: each backend
# adds its own chat format. A key ``<key>@<qualifier>`` overrides ``<key>`` for one label (system
# turns), one domain (premise prompts) or one variant (``neutral@strict``).

#: sentiment: one user turn per class; the system turn casts the model as a reviewer, and neutral
#: has its own fact-based system turn
SENTIMENT_TEMPLATES: dict[str, str] = {
    "system": (
        "You are a user providing reviews on {domains}. Please only generate the review without any "
        "additional content before or after."
    ),
    "system@neutral": (
        "You are a user who talks about {domains} in a fact-based, and non-opinionated manner. Please don't "
        "involve emotional language or bias. Please only generate the description without any additional "
        "content before or after."
    ),
    "positive": (
        "Please generate a single review in not more than two short sentences on one of the system specified "
        "products/movies/travels indicating a positive sentiment."
    ),
    "negative": (
        "Please generate a single review in not more than two short sentences on one of the system specified "
        "products/movies/travels indicating a negative sentiment."
    ),
    "neutral": (
        "Please generate a single and very short sentence on one of the system specified products/movies/travels. "
        "It should provide very general information."
    ),
    # the stricter neutral of the extra neutral-only run (generate.n_strict_neutral)
    "neutral@strict": (
        "Please generate a single and very short sentence on one of the system specified products/movies/travels. "
        "It should provide very general information, strictly do not use positive words or adjectives."
    ),
}

#: the paper's second sentiment variant: reviews of news (generate.prompts: news)
NEWS_TEMPLATES: dict[str, str] = {
    "system": (
        "You are a user providing reviews on news across a range of subjects, including politics, sports, food, "
        "entertainment, education, lifestyle, travel, fashion, agriculture etc. Please only generate the review "
        "without any additional content before or after."
    ),
    **{label: ("Please generate a single review in not more than two short sentences on news in one of the "
               f"system specified subjects, indicating {what} sentiment.")
       for label, what in (("positive", "a positive"), ("negative", "a negative"),
                           ("neutral", "neither negative nor positive"))},
}

_HYPOTHESIS_TAIL = ("Please ensure the generations are grammatically correct. Please only share the generation "
                    "without any additional content before or after.")

#: NLI: premises first (one short sentence per domain draw; travel has its own prompts), then one
#: hypothesis per label: the instruction is the system turn, the premise the user turn
NLI_TEMPLATES: dict[str, str] = {
    "premise_system": (
        "Your job is to generate a diverse sentence in the domain provided by the user. Please only generate the "
        "sentence without any additional content before or after."
    ),
    "premise": "Please generate a single and short sentence belonging to the {domain} domain.",
    "premise_system@travel": (
        "You are a user who talks about other people's traveling experiences. Please only generate the traveling "
        "experience in a single sentence without any additional content before or after."
    ),
    "premise@travel": "Please generate a single and short sentence.",
    # the fallback for a label without its own system turn (each of the paper's labels has one)
    "hypothesis_system": _HYPOTHESIS_TAIL,
    "hypothesis_system@entailment": (
        "Please generate a single sentence that is implied from the sentence provided by the user. The sentence "
        "generated could encompass either a portion or the entirety of the information contained in the given "
        "sentence. " + _HYPOTHESIS_TAIL
    ),
    "hypothesis_system@neutral": (
        "Please generate a single sentence related to the user provided sentence that is neither entailed nor "
        "contradicts the user provided sentence. " + _HYPOTHESIS_TAIL
    ),
    "hypothesis_system@contradiction": (
        "Please generate a single sentence that logically contradicts the information provided in the sentence "
        "given by the user. " + _HYPOTHESIS_TAIL
    ),
    "entailment": "Sentence: {premise}",
    "neutral": "Sentence: {premise}",
    "contradiction": "Sentence: {premise}",
}

#: joined into the system turn's {domains}: "travels, movies and various electronic gadgets", verbatim
DEFAULT_SENTIMENT_DOMAINS = ["travels", "movies", "various electronic gadgets"]
#: MNLI genres in the paper's mix
DEFAULT_DOMAIN_MIX = {"travel": 0.4, "government": 0.4, "fiction": 0.2}

TEMPLATES = {"sentiment": SENTIMENT_TEMPLATES, "nli": NLI_TEMPLATES}

#: a task of the recipe's own (no preset): the label prompts come from the recipe
#: (generate.templates.<label>); these are the turns around them. One text per label, or the
#: paper's NLI premises followed by one hypothesis per label.
GENERIC_TEMPLATES: dict[str, dict[str, str]] = {
    "sentiment": {"system": "Please only generate the text without any additional content before or after."},
    "nli": {k: v for k, v in NLI_TEMPLATES.items() if k.startswith(("premise", "hypothesis_system"))
            and not k.startswith("hypothesis_system@")},
}
#: a pair task's user turn when the recipe gives only the label's system turn (hypothesis_system@<label>)
PAIR_USER_TURN = "Sentence: {premise}"
#: named prompt sets per task (generate.prompts)
PROMPT_SETS = {"sentiment": {"paper": SENTIMENT_TEMPLATES, "news": NEWS_TEMPLATES}, "nli": {"paper": NLI_TEMPLATES}}
#: the placeholders each template key may use
ALLOWED_FIELDS = {"system": {"domains"}, "premise": {"domain"}, "premise_system": set(),
                  "hypothesis_system": set(), "entailment": {"premise"}, "neutral": {"premise"},
                  "contradiction": {"premise"}, "positive": set(), "negative": set()}
#: the keys that take an ``@<qualifier>``, and what qualifies them
QUALIFIED = {"system": "label", "hypothesis_system": "label", "premise": "domain", "premise_system": "domain",
             "neutral": "variant", "positive": "variant", "negative": "variant"}
SEPARATOR = "@"


def base_key(key: str) -> str:
    """``system@neutral`` -> ``system``."""
    return key.split(SEPARATOR, 1)[0]


def pick(templates: dict[str, str], key: str, qualifier: str | None) -> str:
    """The template ``key@qualifier`` when there is one, else ``key``."""
    if qualifier is not None:
        specific = templates.get(f"{key}{SEPARATOR}{qualifier}")
        if specific is not None:
            return specific
    return templates[key]


def base_templates(task, prompt_set: str = "paper") -> dict[str, str]:
    """The packaged templates of a task: its preset's (``task`` a preset name or a Task with a
    preset), or the generic turns of a task of the recipe's own."""
    if isinstance(task, str):
        return dict(PROMPT_SETS[task].get(prompt_set, TEMPLATES[task]))
    if task.preset is not None:
        return dict(PROMPT_SETS[task.preset].get(prompt_set, TEMPLATES[task.preset]))
    out = dict(GENERIC_TEMPLATES[task.family])
    if task.is_pair:  # a label's system turn alone is enough: the premise is the user turn
        out.update({label: PAIR_USER_TURN for label in task.labels})
    return out


def unknown_template_keys(templates: dict[str, str], task) -> list[tuple[str, list[str]]]:
    """(key, the keys it could have meant) for each template key that is neither a template key nor
    a label of ``task`` (a Task): per-label keys must name the task's labels."""
    known = set(ALLOWED_FIELDS) | set(task.labels)
    out = []
    for key in templates:
        base, _, qualifier = key.partition(SEPARATOR)
        if base not in known:
            out.append((key, sorted(known)))
        elif qualifier and QUALIFIED.get(base) == "label" and qualifier not in task.labels:
            out.append((key, [f"{base}{SEPARATOR}{x}" for x in task.labels]))
    return out


def missing_label_prompts(templates: dict[str, str], task) -> list[str]:
    """The labels of ``task`` that no template asks for: a task without a preset needs a prompt
    per label (``<label>``, or for a pair task ``hypothesis_system@<label>``); a preset task
    needs one for each label its preset does not have."""
    have = base_templates(task)
    have = {k: v for k, v in have.items() if not (task.is_pair and task.preset is None and v == PAIR_USER_TURN)}
    out = []
    for label in task.labels:
        keys = [label] + ([f"hypothesis_system{SEPARATOR}{label}"] if task.is_pair else [])
        if not any(k in templates or k in have for k in keys):
            out.append(label)
    return out


def templates_for(task, overrides: dict[str, str] | None = None, prompt_set: str = "paper") -> dict[str, str]:
    """The task's templates (the named ``prompt_set``) with the recipe's overrides applied (unknown
    keys were rejected by the config). Overriding a key replaces its qualified defaults too:
    ``system`` set in a recipe is every label's system turn unless ``system@<label>`` is set as well.
    ``task`` is a preset name or a Task (a task of the recipe's own has generic turns)."""
    out = base_templates(task, prompt_set)
    overrides = overrides or {}
    for key in overrides:
        if SEPARATOR not in key:
            for default in [k for k in out if base_key(k) == key and k != key and k not in overrides]:
                del out[default]
    out.update(overrides)
    return out


def template_fields(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


def check_templates(templates: dict[str, str]) -> None:
    """Raise ValueError for a template key no task has, or a placeholder its key may not use."""
    from .errors import did_you_mean

    known = set(ALLOWED_FIELDS)
    for key, text in templates.items():
        base, _, qualifier = key.partition(SEPARATOR)
        if not base.strip() or (SEPARATOR in key and base not in known):  # a label's key takes no qualifier
            raise ValueError(f"unknown template key '{key}'{did_you_mean(base, known)}")
        # another base key is a label of a recipe's own task: checked against the task's labels
        # when the recipe is built (config._check_task_templates)
        if SEPARATOR in key and (base not in QUALIFIED or not qualifier):
            qualifiable = ", ".join(f"{k}{SEPARATOR}<{v}>" for k, v in QUALIFIED.items())
            raise ValueError(f"template key '{key}': only {qualifiable} take a qualifier")
        if not isinstance(text, str):
            raise ValueError(f"template '{key}' must be a string, got {type(text).__name__}")
        allowed = ALLOWED_FIELDS.get(base, {"premise"})  # a label's user turn: {premise} for pair tasks
        extra = template_fields(text) - allowed
        if extra:
            raise ValueError(f"template '{key}' uses {{{sorted(extra)[0]}}}; it may use only "
                             f"{sorted(allowed) or 'no placeholders'}")


def instruction(task: str, label: str, templates: dict[str, str], *, domains: list[str] | None = None,
                premise: str | None = None, variant: str | None = None) -> tuple[str, str]:
    """(system turn, user turn) that asks for one example of ``label``: a sentiment review (the
    system turn names ``domains``; each label may have its own) or an NLI hypothesis for
    ``premise`` (the instruction in the label's system turn, the premise in the user turn).
    ``variant`` picks a user turn ``<label>@<variant>`` (``neutral@strict``)."""
    user = pick(templates, label, variant)
    if task == "nli":
        return pick(templates, "hypothesis_system", label), user.format(premise=premise)
    system = pick(templates, "system", label)
    return system.format(domains=join_domains(domains or DEFAULT_SENTIMENT_DOMAINS)), user


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
                       seed: int, shots: Shots | None = None, n_strict_neutral: int = 0) -> list[Request]:
    """One prompt per class, ``n_per_class`` requests each (or a count per label), cycling
    through the classes as the authors did (so a crash mid-run leaves the classes balanced);
    then ``n_strict_neutral`` neutral-only requests with the ``neutral@strict`` user turn (the
    authors' extra neutral run, generate_hiproduct_zeroshotneutral.py)."""
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
    if n_strict_neutral:
        system, user = instruction("sentiment", "neutral", templates, domains=domains, variant="strict")
        for i in range(n_strict_neutral):
            meta = {"variant": "strict"}
            turn = _with_shots(user, shots, sum(counts.values()) + i, meta)
            out.append(Request("review", "neutral", i, _messages(system, turn),
                               request_seed(seed, "review-strict", "neutral", i), meta))
    return out


def premise_requests(n: int, templates: dict[str, str], mix: dict[str, float], seed: int,
                     shots: Shots | None = None) -> list[Request]:
    out = []
    for i in range(n):
        domain = domain_for(i, mix)
        meta = {"domain": domain}
        user = _with_shots(pick(templates, "premise", domain).format(domain=domain), shots, i, meta)
        out.append(Request("premise", None, i, _messages(pick(templates, "premise_system", domain), user),
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

"""Generate stage: English synthetic task data from an LLM, cached, resumable, cleaned.

Sentiment: one prompt per class, ``n_per_class`` generations each (the label is the prompt's).
NLI: ``n_premises`` premises in a domain mix (40% travel, 40% government, 20% fiction), then one
hypothesis per label per clean premise. Prompts are the paper's (:mod:`.prompts`), overridable in
the recipe (``generate.templates``). Requests go to a TGI or OpenAI-compatible server, or to a
local model (:mod:`.backends`); each finished request is cached at once (:mod:`.cache`), so a
rerun or a run resumed after a crash sends only the missing requests, and raising ``n`` adds only
new ones. Raw outputs are cleaned with the paper's rules (:mod:`.clean`).

Input columns: none (the stage reads no dataset).
Output datasets: ``data`` (the clean rows), ``raw`` (every generation with its clean text or
the reason it was dropped) and, with ``llm_labels: true``, ``llm_labels`` (id, llm_label,
llm_soft_label, llm_answer: the LLM as a classifier, see :mod:`.classify`).
Output columns (``data``): id, task, text (sentiment) or premise + hypothesis (nli), lang (``en``),
origin (``synthetic``), prompt_label, gen_model, gen_params (JSON: sampling parameters and the
request's seed).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from .. import schema
from ..errors import HfaugError
from ..layout import REQUESTS_DB, read_adapt, stage_cache_dir
from ..prompts import (
    DEFAULT_DOMAIN_MIX,
    DEFAULT_SENTIMENT_DOMAINS,
    Request,
    check_templates,
    hypothesis_requests,
    premise_requests,
    sentiment_requests,
    templates_for,
)
from .clean import CleanConfig, clean_text, duplicates

if TYPE_CHECKING:
    import datasets

    from ..runs import Run, StageContext, StageResult
    from ..tasks import Task
    from .backends import Backend

logger = logging.getLogger(__name__)

__all__ = ["GenerateConfig", "CleanConfig", "generate", "run", "dry_run"]

DEFAULT_MODELS = {"transformers": "hfaug://tiny/chat-lm", "dummy": "dummy", "tgi": "tgi", "openai": "tgi"}


@dataclass
class GenerateConfig:
    """How the synthetic English data is generated and cleaned (paper defaults)."""

    backend: Literal["transformers", "tgi", "openai", "dummy"] = field(default="transformers", metadata={
        "help": "tgi (a TGI URL), openai (any OpenAI-compatible chat server), transformers (in process) "
                "or dummy (deterministic text, for tests)."})
    model: str | None = field(default=None, metadata={
        "help": "transformers: a model id or path (default hfaug://tiny/chat-lm); openai: the model name "
                "sent to the server; tgi: a label for the cache (the server's /info names the model)."})
    endpoints: list[str] = field(default_factory=list, metadata={
        "help": "Server URLs for tgi/openai; requests are spread over all of them."})
    adapter: str | None = field(default=None, metadata={
        "help": "transformers: a peft LoRA adapter folder loaded on the model. When the recipe has an adapt "
                "section, its adapter is used unless use_adapter is false."})
    use_adapter: bool = field(default=True, metadata={"help": "Use the adapt stage's adapter when it ran."})
    adapter_id: str | None = field(default=None, metadata={
        "help": "tgi: the LoRA adapter the server should apply (TGI --lora-adapters); openai: put it in model."})
    few_shot: int = field(default=0, metadata={
        "help": "Labelled source examples per class shown in each prompt (0: the paper's zero-shot prompts); "
                "each request gets its own seeded examples."})
    n_per_class: int = field(default=66_667, metadata={
        "help": "Sentiment: generations per class (the paper: 200,000 cycling through the 3 classes)."})
    n_by_label: dict[str, int] = field(default_factory=dict, metadata={
        "help": "Sentiment: per-label counts overriding n_per_class, e.g. {neutral: 100000} (the paper ran extra "
                "neutral generations: neutral is scarce after labelling)."})
    n_premises: int = field(default=60_000, metadata={
        "help": "NLI: premises (the paper: 60,000); each gets one hypothesis per label."})
    domains: list[str] = field(default_factory=lambda: list(DEFAULT_SENTIMENT_DOMAINS), metadata={
        "help": "Sentiment: what the reviewer reviews (the paper: travels, movies, electronic gadgets)."})
    domain_mix: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_DOMAIN_MIX), metadata={
        "help": "NLI: premise domains and their shares (the paper: MNLI's travel 0.4, government 0.4, fiction 0.2)."})
    prompts: Literal["paper", "news"] = field(default="paper", metadata={
        "help": "The authors' prompt set: 'paper' (reviews of travels, movies, gadgets; NLI premises and "
                "hypotheses) or 'news' (sentiment: reviews of news, generate_bnsentiment_zeroshot.py)."})
    templates: dict[str, str] = field(default_factory=dict, metadata={
        "help": "Prompt overrides by key: sentiment system/negative/neutral/positive; nli premise_system/"
                "premise/hypothesis_system/entailment/neutral/contradiction. '<key>@<label>' is one label's "
                "system turn (system@neutral, hypothesis_system@entailment), '<key>@<domain>' one domain's premise "
                "prompt (premise@travel, premise_system@travel), neutral@strict the strict neutral user turn. "
                "Overriding a key replaces its '@' defaults too."})
    n_strict_neutral: int = field(default=0, metadata={
        "help": "Sentiment: extra neutral-only requests with the strict neutral prompt (neutral@strict), the "
                "authors' extra run of 200,000 (generate_hiproduct_zeroshotneutral.py)."})
    temperature: float = field(default=1.5, metadata={"help": "Sampling temperature (reviews, hypotheses)."})
    premise_temperature: float = field(default=1.7, metadata={"help": "NLI: temperature for premises."})
    top_p: float = field(default=0.9, metadata={"help": "Nucleus sampling."})
    top_k: int | None = field(default=50, metadata={
        "help": "Top-k sampling (50: the transformers default the authors' generate calls got); null: off."})
    max_new_tokens: int = field(default=256, metadata={
        "help": "Most new tokens per review / hypothesis. The authors capped prompt + reply at max_length 256 "
                "(200 for the strict-neutral run); their prompts take ~70-110 Llama-2 tokens, so replies had "
                "~150-180 tokens; 256 new tokens cuts no reply they could get (docs/fidelity.md)."})
    premise_max_new_tokens: int = field(default=128, metadata={
        "help": "NLI: most new tokens per premise (the authors: max_length 128, prompt included)."})
    min_new_tokens: int = field(default=0, metadata={
        "help": "transformers only: least new tokens (random-weight test models need it)."})
    no_repeat_ngram_size: int = field(default=2, metadata={
        "help": "transformers only: no repeated n-grams of this size. TGI and OpenAI servers lack it: with those "
                "backends it is not applied, which a warning, the manifest and the card say."})
    repetition_penalty: float | None = field(default=None, metadata={"help": "Repetition penalty."})
    stop: list[str] = field(default_factory=list, metadata={"help": "Stop sequences."})
    prompt_format: str = field(default="auto", metadata={
        "help": "tgi: how chat messages become a prompt: auto (the model's own chat template, from generate.model "
                "or the server's /info model id; fails when it cannot be read), llama2, chatml, zephyr, plain, "
                "or a Jinja chat template."})
    details: bool = field(default=False, metadata={
        "help": "tgi: ask for generation details (finish reason, token counts); costs client CPU per token."})
    concurrency: int = field(default=32, metadata={
        "help": "Requests in flight (capped by the servers' /info max_concurrent_requests)."})
    batch_size: int = field(default=16, metadata={"help": "transformers/dummy: prompts per generate call."})
    device: str | None = field(default=None, metadata={"help": "transformers: torch device (default CPU)."})
    threads: int | None = field(default=None, metadata={
        "help": "transformers: torch CPU threads while generating (1 is fastest for tiny models on a busy machine)."})
    trust_remote_code: bool = field(default=False, metadata={"help": "transformers: allow a model's own code."})
    timeout: float = field(default=120.0, metadata={"help": "Seconds per request before it counts as timed out."})
    max_retries: int = field(default=6, metadata={"help": "Retries on 429, 503, timeouts and connection errors."})
    backoff: float = field(default=1.0, metadata={"help": "Seconds before the first retry; doubles, with jitter."})
    backoff_max: float = field(default=60.0, metadata={"help": "Longest wait between retries."})
    max_failed_fraction: float = field(default=0.0, metadata={
        "help": "Share of requests allowed to fail after retries; more ends the run (a rerun retries them)."})
    check_endpoints: bool = field(default=True, metadata={
        "help": "tgi/openai: before the run, check that every endpoint answers (/info, /health or /v1/models)."})
    unreachable_after: float = field(default=30.0, metadata={
        "help": "tgi/openai: stop when every request to every endpoint failed to connect for this many seconds "
                "(finished requests are kept; 0: never stop, retry as configured)."})
    token_env: str | None = field(default="HF_TOKEN", metadata={
        "help": "Environment variable holding the server's token (read at run time, never logged)."})
    token_endpoints: list[str] = field(default_factory=list, metadata={
        "help": "Endpoints (besides the Hub's own https services) that need the token; never plain http to "
                "another host."})
    refresh_cache: bool = field(default=False, metadata={
        "help": "Send every request again (the cache is rewritten, not read), e.g. after a server fault."})
    torch_dtype: str | None = field(default=None, metadata={
        "help": "transformers: weights dtype (bfloat16, float16, float32, auto) for large models."})
    device_map: str | None = field(default=None, metadata={
        "help": "transformers: accelerate device map (e.g. auto: spread a large model over the GPUs)."})
    max_rows: int | None = field(default=130_000, metadata={
        "help": "Keep at most this many clean rows after a seeded shuffle (the paper's pool: 130,000); null: all."})
    held_out: int = field(default=0, metadata={
        "help": "Rows set aside after the shuffle, before max_rows, as dataset 'held_out' (the paper: 10,000)."})
    shuffle: bool = field(default=True, metadata={"help": "Shuffle the clean rows with the run seed."})
    progress: bool = field(default=True, metadata={"help": "Show a progress bar."})
    llm_labels: bool = field(default=False, metadata={
        "help": "Also ask the LLM to classify every clean row (answer held to the label names; soft labels from "
                "log-probabilities): dataset 'llm_labels' (id, llm_label, llm_soft_label, llm_answer)."})
    llm_label_top_n: int = field(default=5, metadata={"help": "Top tokens per step asked for llm_labels soft labels."})
    dry_run_requests: int = field(default=3, metadata={"help": "Real requests sent by --dry-run per kind."})
    clean: CleanConfig = field(default_factory=CleanConfig, metadata={"help": "Cleaning rules (see CleanConfig)."})

    def __post_init__(self):
        if isinstance(self.clean, dict):
            self.clean = CleanConfig(**self.clean)
        for name in ("n_per_class", "n_premises", "max_new_tokens", "premise_max_new_tokens", "concurrency",
                     "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"generate.{name} must be at least 1, got {getattr(self, name)}")
        if any(not isinstance(v, int) or v < 0 for v in self.n_by_label.values()):
            raise ValueError("generate.n_by_label must map labels to counts >= 0")
        if self.held_out < 0:
            raise ValueError(f"generate.held_out must be 0 or more, got {self.held_out}")
        if self.max_rows is not None and self.max_rows < 1:
            raise ValueError(f"generate.max_rows must be at least 1 (or null for all), got {self.max_rows}")
        if self.few_shot < 0:
            raise ValueError(f"generate.few_shot must be 0 or more, got {self.few_shot}")
        if self.min_new_tokens < 0 or self.max_retries < 0:
            raise ValueError("generate.min_new_tokens and generate.max_retries must be >= 0")
        if self.min_new_tokens > self.max_new_tokens:
            raise ValueError(f"generate.min_new_tokens ({self.min_new_tokens}) exceeds max_new_tokens "
                             f"({self.max_new_tokens})")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"generate.top_p must be in (0, 1], got {self.top_p}")
        if self.temperature <= 0 or self.premise_temperature <= 0:
            raise ValueError("generate.temperature and premise_temperature must be > 0")
        if not 0.0 <= self.max_failed_fraction < 1.0:
            raise ValueError(f"generate.max_failed_fraction must be in [0, 1), got {self.max_failed_fraction}")
        if self.backend in ("tgi", "openai") and not self.endpoints:
            raise ValueError(f"backend '{self.backend}' needs generate.endpoints (one or more server URLs)")
        for url in self.endpoints:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"generate.endpoints: '{url}' is not an http(s) URL")
        if not self.domain_mix or any(v < 0 for v in self.domain_mix.values()) or sum(self.domain_mix.values()) <= 0:
            raise ValueError("generate.domain_mix must map domains to non-negative shares with a positive sum")
        if not self.domains:
            raise ValueError("generate.domains must name at least one domain")
        if self.n_strict_neutral < 0:
            raise ValueError(f"generate.n_strict_neutral must be 0 or more, got {self.n_strict_neutral}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"generate.top_k must be at least 1 or null, got {self.top_k}")
        check_templates(self.templates)

    def prompt_set(self, task: "Task") -> str:
        """The prompt set for ``task``; one the task does not have is a user error."""
        from ..prompts import PROMPT_SETS

        sets = PROMPT_SETS[task.preset] if task.preset else {"paper": None}
        if self.prompts not in sets:
            raise HfaugError(f"generate.prompts: '{self.prompts}' is a sentiment prompt set; {task.name} has "
                             f"{', '.join(sets)}")
        return self.prompts

    def not_applied(self) -> dict[str, Any]:
        """Settings the backend cannot send (TGI and OpenAI servers have no no_repeat_ngram_size):
        recorded in the manifest and the card, never silently listed as used."""
        out: dict[str, Any] = {}
        if self.backend in ("tgi", "openai") and self.no_repeat_ngram_size:
            out["no_repeat_ngram_size"] = self.no_repeat_ngram_size
        if self.backend == "openai" and self.top_k:
            out["top_k"] = self.top_k  # the OpenAI chat API has no top_k
        return out

    def counts(self, task: "Task") -> dict[str, int]:
        """Sentiment generations per label; an unknown label in n_by_label is a user error."""
        for label in self.n_by_label:
            task.label_id(label, "generate.n_by_label")
        return {label: self.n_by_label.get(label, self.n_per_class) for label in task.labels}

    @property
    def model_ref(self) -> str:
        return self.model or DEFAULT_MODELS[self.backend]

    def cache_model(self) -> str:
        """The model part of request cache keys: the model and, when used, the adapter's identity
        (a retrained adapter at the same path must not reuse old generations)."""
        if self.backend != "transformers" or not self.adapter:
            return self.model_ref
        files = sorted(Path(self.adapter).glob("adapter_*")) if Path(self.adapter).is_dir() else []
        stamp = [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files]
        from ..runs import stable_hash

        return f"{self.model_ref}+adapter:{stable_hash([str(self.adapter), stamp])}"

    def sampling(self, kind: str) -> dict[str, Any]:
        """The parameters sent with a request of ``kind`` (part of its cache key)."""
        premise = kind == "premise"
        params = {
            "temperature": self.premise_temperature if premise else self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "max_new_tokens": self.premise_max_new_tokens if premise else self.max_new_tokens,
            "repetition_penalty": self.repetition_penalty,
            "stop": list(self.stop),
            "adapter_id": self.adapter_id if self.backend == "tgi" else None,
        }
        if self.backend in ("transformers", "dummy"):
            params["min_new_tokens"] = min(self.min_new_tokens, params["max_new_tokens"])
            params["no_repeat_ngram_size"] = self.no_repeat_ngram_size
        return {k: v for k, v in params.items() if v is not None and v != []}


# ---------------------------------------------------------------------------------------------
# the plain function


def generate(config: GenerateConfig, task: "Task", *, seed: int = 42, cache_dir: str | Path | None = None,
             backend: "Backend | None" = None, source: "datasets.Dataset | None" = None,
             ) -> tuple[dict[str, "datasets.Dataset"], Counter, dict]:
    """Generate, clean and deduplicate; returns ({"data": clean, "raw": raw}, dropped, metrics).

    ``cache_dir`` holds the request cache (``requests.sqlite``); without it nothing is resumable.
    ``source`` (labelled rows: text or premise + hypothesis, label) feeds ``few_shot`` examples.
    """
    from .backends import make_backend
    from .engine import run_sync

    shots = _shots(config, task, seed, source)
    backend = backend or make_backend(config, model=config.model_ref)
    cache = _open_cache(cache_dir, refresh=config.refresh_cache)
    try:
        return run_sync(_generate(config, task, seed, backend, cache, shots))
    finally:
        if cache is not None:
            cache.close()


def _shots(config: GenerateConfig, task: "Task", seed: int, source):
    """Few-shot prompt blocks per request kind, or None for the paper's zero-shot prompts."""
    if not config.few_shot:
        return None
    if source is None:
        raise HfaugError("generate.few_shot needs the source data: run the source stage first (or pass source=)")
    from ..fewshot import ShotSampler, format_shots

    sampler = ShotSampler(source, task, config.few_shot, seed)

    def make(kind: str | None):
        def shots(number: int):
            chosen = sampler.shots(number)
            return format_shots(chosen, task, kind=kind), [s["id"] for s in chosen]
        return shots

    return {"review": make(None), "premise": make("premise"), "hypothesis": make(None)}


def _open_cache(cache_dir, refresh: bool = False):
    from .cache import RequestCache

    return RequestCache(Path(cache_dir) / REQUESTS_DB, refresh=refresh) if cache_dir else None


async def _generate(config: GenerateConfig, task: "Task", seed: int, backend: "Backend", cache, shots=None):
    start = time.perf_counter()
    templates = templates_for(task, config.templates, config.prompt_set(task))
    stats: Counter = Counter()
    dropped: Counter = Counter()
    raw_rows: list[dict] = []
    unfinished: set[str] = set()  # requests that failed within max_failed_fraction: a rerun retries them
    timer: Counter = Counter()  # seconds in the request phases and in deduplication
    await _check_endpoints(backend, config)
    await backend.start()
    try:
        if hasattr(backend, "check_lengths"):
            # premise_max_new_tokens only bounds NLI's premises; a sentiment recipe never sends it
            backend.check_lengths(max(config.max_new_tokens, config.premise_max_new_tokens if task.is_pair else 0))
        if not task.is_pair:
            requests = sentiment_requests(task.labels, config.counts(task), templates, config.domains, seed,
                                          shots and shots["review"], config.n_strict_neutral)
            params = config.sampling("review")
            results = await _send(backend, requests, params, config, cache, stats, "reviews", unfinished, timer)
            rows = []
            for request, result in zip(requests, results):
                gp = _gen_params(params, request, backend)
                if result is None:
                    dropped["request_failed"] += 1
                    continue
                text, reason = clean_text(result["text"], config.clean)
                raw_rows.append(_raw(request, result, text, reason, gp))
                if reason:
                    dropped[reason] += 1
                else:
                    rows.append({schema.TEXT: text, schema.PROMPT_LABEL: request.label, schema.GEN_PARAMS: gp,
                                 "_raw": len(raw_rows) - 1})
            with _timed(timer, "dedupe_s"):
                rows = _dedupe(rows, [r[schema.TEXT] for r in rows], config, dropped, raw_rows)
            rows_in = len(requests)
        else:
            requests = premise_requests(config.n_premises, templates, config.domain_mix, seed,
                                        shots and shots["premise"])
            premise_params = config.sampling("premise")
            results = await _send(backend, requests, premise_params, config, cache, stats, "premises", unfinished, timer)
            premises = []
            n_labels = task.num_labels
            for request, result in zip(requests, results):
                if result is None:
                    dropped["premise_request_failed"] += n_labels
                    continue
                text, reason = clean_text(result["text"], config.clean)
                raw_rows.append(_raw(request, result, text, reason, _gen_params(premise_params, request, backend)))
                if reason:
                    dropped[f"premise_{reason}"] += n_labels
                else:
                    premises.append((request, text, len(raw_rows) - 1))
            with _timed(timer, "dedupe_s"):
                dup = duplicates([p[1] for p in premises], config.clean)
            for i, reason in dup.items():
                dropped[f"premise_{reason}"] += n_labels
                raw_rows[premises[i][2]]["dropped"] = reason
            premises = [p for i, p in enumerate(premises) if i not in dup]
            stats["premises_kept"] = len(premises)
            seeds = {r.index: r.seed for r, _, _ in premises}
            hyp_requests = hypothesis_requests([(r.index, r.meta["domain"], t) for r, t, _ in premises],
                                               task.labels, templates, seed, shots and shots["hypothesis"])
            params = config.sampling("hypothesis")
            results = await _send(backend, hyp_requests, params, config, cache, stats, "hypotheses", unfinished, timer)
            rows = []
            for request, result in zip(hyp_requests, results):
                gp = _gen_params(params, request, backend, premise_seed=seeds[request.index],
                                 premise_params=premise_params)
                if result is None:
                    dropped["request_failed"] += 1
                    continue
                premise = request.meta["premise"]
                text, reason = clean_text(result["text"], config.clean, kind="hypothesis", premise=premise)
                if not reason and " ".join(text.lower().split()) == " ".join(premise.lower().split()):
                    text, reason = None, "hypothesis_copies_premise"
                raw_rows.append(_raw(request, result, text, reason, gp))
                if reason:
                    dropped[reason] += 1
                else:
                    rows.append({schema.PREMISE: premise, schema.HYPOTHESIS: text,
                                 schema.PROMPT_LABEL: request.label, schema.GEN_PARAMS: gp,
                                 "_raw": len(raw_rows) - 1})
            # premises are already deduplicated, so a duplicate pair can only share its premise:
            # compare the hypotheses of each premise (two labels that got the same sentence)
            by_premise: dict[str, list[int]] = {}
            for i, row in enumerate(rows):
                by_premise.setdefault(row[schema.PREMISE], []).append(i)
            gone: set[int] = set()
            for members in by_premise.values():
                with _timed(timer, "dedupe_s"):
                    dup = duplicates([rows[i][schema.HYPOTHESIS] for i in members], config.clean)
                for j, reason in dup.items():
                    gone.add(members[j])
                    dropped[reason] += 1
                    raw_rows[rows[members[j]]["_raw"]]["dropped"] = reason
            rows = [r for i, r in enumerate(rows) if i not in gone]
            rows_in = len(requests) * n_labels
    finally:
        await backend.close()

    if config.shuffle:
        import random

        random.Random(seed).shuffle(rows)
    # the held-out rows come first, so raising max_rows later never moves a row between the two
    held_out, rows = rows[:config.held_out], rows[config.held_out:]
    if config.max_rows is not None and len(rows) > config.max_rows:
        for row in rows[config.max_rows:]:
            raw_rows[row["_raw"]]["dropped"] = "over_max_rows"
        dropped["over_max_rows"] += len(rows) - config.max_rows
        rows = rows[:config.max_rows]

    data = _to_dataset(rows, task, backend)
    raw = _raw_dataset(raw_rows)
    outputs = {"data": data, "raw": raw}
    if config.held_out:
        outputs["held_out"] = _to_dataset(held_out, task, backend)
    llm_metrics = None
    if config.llm_labels and len(data):
        from .classify import aclassify
        from .engine import RetryPolicy

        await backend.start()
        try:
            labels, llm_metrics = await aclassify(
                data, task, backend, cache=cache, concurrency=config.concurrency, seed=seed,
                retry=RetryPolicy(config.max_retries, config.backoff, config.backoff_max), top_n=config.llm_label_top_n,
                progress=config.progress, cache_model=config.cache_model())
        finally:
            await backend.close()
        by_id = dict(zip(data[schema.ID], data[schema.PROMPT_LABEL]))
        agree = [by_id[i] == v for i, v in zip(labels[schema.ID], labels["llm_label"])]
        llm_metrics["agreement_with_prompt_label"] = round(sum(agree) / len(agree), 4) if agree else 0.0
        outputs["llm_labels"] = labels
    wall = time.perf_counter() - start
    gen_tokens = sum(r.get("generated_tokens") or 0 for r in raw_rows)
    metrics = {
        "requests": dict(sorted(stats.items())),
        "rows_requested": rows_in,
        "rows_kept": len(data),
        "keep_rate": round(len(data) / rows_in, 4) if rows_in else 0.0,
        "generated_tokens": gen_tokens,
        "gen_model": backend.model_id,
        "prompt_labels": dict(Counter(task.labels[i] for i in data[schema.PROMPT_LABEL])) if len(data) else {},
        # the request phases (sending and waiting) and the whole stage (cleaning, deduplication,
        # datasets, LLM labels included) separately: one says how fast the server is driven,
        # the other what the stage costs
        "request_phase_s": round(timer["request_s"], 3),
        "requests_per_s": round(stats["sent"] / timer["request_s"], 2) if timer["request_s"] > 0 else 0.0,
        "dedupe_s": round(timer["dedupe_s"], 3),
        "stage_s": round(wall, 3),
        "stage_requests_per_s": round(stats["sent"] / wall, 2) if wall > 0 else 0.0,
    }
    if cache is not None:  # over every run that used this cache: a resumed stage reports its whole effort
        from .engine import Ledger

        metrics["requests_total"] = dict(sorted(Ledger.read(Ledger.path_for(cache.path)).items()))
    if unfinished:
        import hashlib

        metrics["unfinished_requests"] = {
            "count": len(unfinished),
            "digest": hashlib.sha256("\n".join(sorted(unfinished)).encode()).hexdigest()[:16]}
    if llm_metrics is not None:
        metrics["llm_labels"] = llm_metrics
    return outputs, dropped, metrics


@contextlib.contextmanager
def _timed(timer: Counter, key: str):
    start = time.perf_counter()
    try:
        yield
    finally:
        timer[key] += time.perf_counter() - start


async def _check_endpoints(backend, config: GenerateConfig) -> None:
    """A server backend's URLs answer before anything is sent (see :mod:`.endpoints`)."""
    endpoints = getattr(backend, "endpoints", None)
    if endpoints and config.check_endpoints:
        from .endpoints import check_endpoints

        await check_endpoints(endpoints)


async def _send(backend, requests: list[Request], params, config: GenerateConfig, cache, stats: Counter,
                desc: str, unfinished: set[str] | None = None, timer: Counter | None = None) -> list[dict | None]:
    """Send a phase's requests; results in request order (None where a request failed). The keys
    of requests that failed within max_failed_fraction are added to ``unfinished``."""
    from .engine import RetryPolicy, run_requests

    retry = RetryPolicy(config.max_retries, config.backoff, config.backoff_max)
    with _timed(timer if timer is not None else Counter(), "request_s"):
        outcome = await run_requests(backend, requests, params, cache=cache, concurrency=config.concurrency,
                                     retry=retry, progress=config.progress, desc=desc,
                                     cache_model=config.cache_model(), unreachable_after=config.unreachable_after)
    for key, value in outcome.stats.items():
        stats[key] += value
    where = f" in {cache.path}" if cache is not None else ""
    if outcome.fatal is not None and outcome.fatal.reason == "unreachable":
        raise HfaugError(f"generate: {outcome.fatal.message}; {len(outcome.results)} finished requests are "
                         f"kept{where}; start the server (or fix generate.endpoints) and rerun to resume")
    if outcome.fatal is not None:
        done = len(outcome.results)
        raise HfaugError(f"generate: the server rejected a request ({outcome.fatal.message}); {done} finished "
                         f"requests are kept{where}; fix the recipe and rerun to resume")
    failed = len(set(outcome.failed) - set(outcome.results))
    if failed > config.max_failed_fraction * len(set(outcome.keys)):
        last = next(iter(outcome.failed.values()))
        raise HfaugError(f"generate: {failed} of {len(set(outcome.keys))} {desc} requests still failed after "
                         f"{config.max_retries} retries (last: {last}); finished ones are kept{where}; "
                         f"rerun to retry the failed ones")
    if unfinished is not None:
        unfinished.update(set(outcome.failed) - set(outcome.results))
    return [outcome.results.get(key) for key in outcome.keys]


def _gen_params(params: dict, request: Request, backend, **extra) -> str:
    out = {**params, "seed": request.seed, "backend": backend.name}
    for key in ("domain", "few_shot_ids", "variant"):
        if request.meta.get(key):
            out[key] = request.meta[key]
    for key, value in extra.items():
        out[key] = value
    return json.dumps(out, sort_keys=True)


def _raw(request: Request, result: dict, text: str | None, reason: str | None, gen_params: str) -> dict:
    return {"kind": request.kind, "prompt_label": request.label or "", "premise": request.meta.get("premise", ""),
            "output": result.get("text", ""), "clean": text or "", "dropped": reason or "",
            "generated_tokens": result.get("generated_tokens"), "finish_reason": result.get("finish_reason") or "",
            "gen_params": gen_params}


def _dedupe(rows: list[dict], keys: list[str], config: GenerateConfig, dropped: Counter, raw_rows) -> list[dict]:
    dup = duplicates(keys, config.clean)
    for i, reason in dup.items():
        dropped[reason] += 1
        raw_rows[rows[i]["_raw"]]["dropped"] = reason
    return [r for i, r in enumerate(rows) if i not in dup]


def _to_dataset(rows: list[dict], task: "Task", backend) -> "datasets.Dataset":
    import datasets

    cols = [schema.ID, schema.TASK, *task.text_columns, schema.LANG, schema.ORIGIN, schema.PROMPT_LABEL,
            schema.GEN_MODEL, schema.GEN_PARAMS]
    data: dict[str, list] = {c: [] for c in cols}
    for row in rows:
        texts = [row[c] for c in task.text_columns]
        data[schema.ID].append(schema.make_id(task.name, *texts))
        data[schema.TASK].append(task.name)
        for c, t in zip(task.text_columns, texts):
            data[c].append(t)
        data[schema.LANG].append("en")
        data[schema.ORIGIN].append(schema.ORIGIN_SYNTHETIC)
        data[schema.PROMPT_LABEL].append(task.label2id[row[schema.PROMPT_LABEL]])
        data[schema.GEN_MODEL].append(backend.model_id)
        data[schema.GEN_PARAMS].append(row[schema.GEN_PARAMS])
    return datasets.Dataset.from_dict(data, features=schema.features(task, cols))


def _raw_dataset(raw_rows: list[dict]) -> "datasets.Dataset":
    import datasets

    features = datasets.Features({
        "kind": datasets.Value("string"), "prompt_label": datasets.Value("string"),
        "premise": datasets.Value("string"), "output": datasets.Value("string"), "clean": datasets.Value("string"),
        "dropped": datasets.Value("string"), "generated_tokens": datasets.Value("int32"),
        "finish_reason": datasets.Value("string"), "gen_params": datasets.Value("string"),
    })
    # columns, not a list of dicts: from_list infers per row, about twice as slow at 10,000 rows
    return datasets.Dataset.from_dict({k: [row[k] for row in raw_rows] for k in features}, features=features)


# ---------------------------------------------------------------------------------------------
# the pipeline adapter and the dry run


def run(ctx: "StageContext") -> "StageResult":
    from ..runs import StageResult

    config = _with_adapt_stage(ctx)
    not_applied = config.not_applied()
    if not_applied:
        logger.warning("generate: %s is not applied: the %s backend has no such parameter (recorded as not "
                       "applied in the manifest and the dataset card)", ", ".join(f"{k}={v}" for k, v in
                                                                               not_applied.items()), config.backend)
    datasets_, dropped, metrics = generate(config, ctx.task, seed=ctx.seed, cache_dir=ctx.cache_dir,
                                           source=_shot_source(ctx, config))
    if not_applied:
        metrics["not_applied"] = not_applied
    if config.adapter:
        metrics["adapter"] = str(config.adapter)
    requested = metrics["rows_requested"]
    hints = []
    if metrics["keep_rate"] < 0.5:
        hints.append(f"generate kept {metrics['rows_kept']} of {requested} rows; see the 'raw' dataset's "
                     f"'dropped' column for why")
    incomplete = None
    unfinished = metrics.get("unfinished_requests")
    if unfinished:
        # within max_failed_fraction, so the stage finished; it is not fresh, so a plain rerun retries them
        reason = f"{unfinished['count']} requests failed after retries"
        incomplete = {"reason": reason, "state": unfinished["digest"]}
        hints.append(f"generate: {reason} (within max_failed_fraction); rerun to retry them")
    return StageResult(datasets=datasets_, dropped=dropped, rows_in=requested, metrics=metrics,
                       extra={"next": hints} if hints else {}, incomplete=incomplete)


def _shot_source(ctx, config: GenerateConfig):
    """The source rows few-shot examples are drawn from (None without few_shot)."""
    return ctx.input("source", "train") if config.few_shot else None


def _with_adapt_stage(ctx) -> GenerateConfig:
    """The config with the adapt stage's LoRA adapter filled in, when that stage ran for this
    recipe (the transformers backend loads it; a TGI server needs generate.adapter_id instead)."""
    import dataclasses

    config = ctx.config
    if (config.backend != "transformers" or config.adapter or not config.use_adapter
            or not ctx.recipe.has("adapt") or ctx.run.manifest("adapt") is None):
        return config
    info = read_adapt(ctx.input_dir("adapt"))
    adapter = info["adapter"]
    base = info.get("base_model")
    names = {base, info.get("base_model_path")} - {None}
    if base and config.model_ref not in names and _resolved(config.model_ref) not in names:
        raise HfaugError(f"generate.model is '{config.model_ref}' but the adapt stage trained its adapter on "
                         f"'{base}'; set generate.model to '{base}' (or generate.use_adapter: false)")
    return dataclasses.replace(config, adapter=adapter)


def _resolved(ref: str) -> str:
    from ..config import resolve

    return str(resolve(ref))


def dry_run(run: "Run", config: GenerateConfig | None = None) -> str:
    """Send a few real requests per kind (nothing cached, no stage output written) and estimate
    the tokens and time of the whole generation. Returns the report as text. The requests are
    the run's own: with the adapt stage's adapter and the few-shot examples it would use."""
    from ..runs import StageContext
    from .backends import make_backend
    from .engine import RetryPolicy, run_requests, run_sync

    ctx = StageContext(run=run, stage="generate", config=config or run.recipe.sections["generate"], out_dir=None)
    config = _with_adapt_stage(ctx)
    task = run.task
    seed = run.recipe.run.seed
    templates = templates_for(task, config.templates, config.prompt_set(task))
    shots = _shots(config, task, seed, _shot_source(ctx, config))
    backend = make_backend(config, model=config.model_ref)
    if hasattr(backend, "details"):
        backend.details = True  # token counts for the estimate
    n = config.dry_run_requests
    if not task.is_pair:
        phases = [("reviews", sentiment_requests(task.labels, config.counts(task), templates, config.domains, seed,
                                                 shots and shots["review"], config.n_strict_neutral), config.sampling("review"))]
    else:
        premises = premise_requests(config.n_premises, templates, config.domain_mix, seed, shots and shots["premise"])
        fake = [(r.index, r.meta["domain"], "The museum opens at nine every morning.") for r in premises]
        hypotheses = hypothesis_requests(fake, task.labels, templates, seed, shots and shots["hypothesis"])
        phases = [("premises", premises, config.sampling("premise")),
                  ("hypotheses", hypotheses, config.sampling("hypothesis"))]

    async def go():
        out = []
        await _check_endpoints(backend, config)
        await backend.start()
        try:
            for name, requests, params in phases:
                sample = requests[:max(1, n)]
                t0 = time.perf_counter()
                outcome = await run_requests(backend, sample, params, cache=None, concurrency=config.concurrency,
                                             retry=RetryPolicy(config.max_retries, config.backoff, config.backoff_max),
                                             progress=False)
                elapsed = time.perf_counter() - t0
                if outcome.fatal is not None or not outcome.results:
                    err = outcome.fatal.message if outcome.fatal else next(iter(outcome.failed.values()), "no result")
                    raise HfaugError(f"generate --dry-run: the sample requests failed: {err}")
                gens = list(outcome.results.values())
                tokens = [g.get("generated_tokens") or len(g.get("text", "").split()) for g in gens]
                out.append((name, len(requests), len(sample), sum(tokens) / len(tokens), elapsed))
            return out
        finally:
            await backend.close()

    measured = run_sync(go())
    cached = _cached_counts(run, config, phases)
    limit = config.concurrency
    if backend.max_concurrency:
        limit = min(limit, backend.max_concurrency)
    parallel = backend.batch_size if backend.batch_size > 1 else limit
    lines = [f"generate --dry-run: {task.name} with backend '{config.backend}' ({backend.model_id})"]
    total_tokens = total_time = 0.0
    for (name, count, sent, avg_tokens, elapsed), done in zip(measured, cached):
        count -= done  # what the cache already holds is not sent again
        per_request = elapsed / sent if backend.batch_size > 1 else elapsed  # sample sent concurrently
        est_time = count * per_request / (1 if backend.batch_size > 1 else parallel)
        total_tokens += count * avg_tokens
        total_time += est_time
        lines.append(f"  {name}: {count} requests" + (f" ({done} more already cached)" if done else "")
                     + f"; sample of {sent} took {elapsed:.2f}s, "
                     f"{avg_tokens:.0f} new tokens each -> ~{count * avg_tokens:,.0f} tokens, ~{_duration(est_time)}")
    lines.append(f"  total: ~{total_tokens:,.0f} generated tokens, ~{_duration(total_time)} "
                 f"(concurrency {parallel if backend.batch_size == 1 else 1}, batch {backend.batch_size}; "
                 f"cached requests are not sent again)")
    lines.append("  nothing was written; run without --dry-run to generate")
    return "\n".join(lines)


def _cached_counts(run: "Run", config: GenerateConfig, phases) -> list[int]:
    """How many of each phase's requests a previous run already cached (read only)."""
    from .cache import RequestCache
    from .engine import keys_for

    path = stage_cache_dir(run.root, "generate") / REQUESTS_DB
    if not path.is_file():
        return [0] * len(phases)
    with RequestCache(path, readonly=True) as cache:
        return [len(cache.get_many(keys_for(config.cache_model(), requests, params)))
                for _, requests, params in phases]


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"

"""Translate stage: English rows into each target language with a Hub seq2seq MT model.

The paper translates both the teacher-labelled generations and the source training data from
English with IndicTrans2 (Hindi, Marathi, Urdu) and, for Swahili, NLLB-200; for NLI the premise
and the hypothesis are translated separately. This module does the same with any of NLLB-200
(default), M2M100, mBART-50, Marian, or IndicTrans2 (remote code, only when a recipe opts in).

Alignment is the point: a translated row keeps every column of its English row (label, soft
label, dynamics, provenance) and points back at it through ``source_id``. A failing batch is
retried, then bisected down to the failing row, which is dropped and counted, never filled with
another row's text. Finished translations are persisted in a cache (sqlite in the stage's cache
folder) keyed by (model, revision, decoding settings, source language, target language, text), so
a killed run resumes with only the missing texts.

Input columns: id, text (or premise + hypothesis); every other column is carried over unchanged.
Output columns: the input's, with text (or premise + hypothesis) translated,
    id = make_id(task, lang, *translated texts), source_id = the English row's id, lang = ISO code.

Stages: ``translate`` reads the label stage's ``data`` (the generate stage's in the recipe's
``translated-teacher`` setting) and writes one dataset per language named by its code (``hi``,
``mr``); ``translate-source`` reads the source stage's ``train``/``dev`` and writes
``train-<lang>``/``dev-<lang>`` (the paper's translated-teacher setting).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import sqlite3
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import schema
from .errors import HfaugError
from .extras import install_hint
from .languages import (
    FAMILIES,
    INDICTRANS2,
    Language,
    close_matches,
    get_language,
    known_codes,
    m2m100_code,
    marian_code,
    marian_pair,
    mbart50_code,
    same_language,
    script_share,
)
from .runs import StageContext, StageResult
from .schema import DataResult

if TYPE_CHECKING:
    import datasets

    from .tasks import Task

logger = logging.getLogger(__name__)

CHECKS = ("empty", "untranslated", "length_ratio", "repetition", "script")
CACHE_FILE = "translations.sqlite"
# scripts written without spaces between words: sentence chunks are joined without one
_NO_SPACE_SCRIPTS = {"Hans", "Hant", "Jpan", "Thai", "Khmr", "Laoo", "Mymr", "Tibt"}
_SENTENCE_END = re.compile(r"(?<=[.!?।॥؟。！？])\s+")


@dataclass
class TranslateConfig:
    """How to translate: the model(s), the target languages, decoding, and the quality checks."""

    languages: list[str] = field(default_factory=list, metadata={
        "help": "Target languages as ISO 639-1/3 codes (hi, mr, ur, sw, ...); each becomes a dataset of that name."})
    model: str = field(default="facebook/nllb-200-distilled-600M", metadata={
        "help": "Seq2seq MT model (NLLB-200, M2M100, mBART-50, Marian, IndicTrans2) used for every language "
                "not listed in `models`."})
    revision: str | None = field(default=None, metadata={
        "help": "Hub revision (branch, tag or commit) of `model`; `models` entries may say id@revision."})
    models: dict[str, str] = field(default_factory=dict, metadata={
        "help": "Per-language model override, e.g. {hi: ai4bharat/indictrans2-en-indic-1B} (the paper's recipes)."})
    codes: dict[str, str] = field(default_factory=dict, metadata={
        "help": "Model-specific code per language overriding the built-in table, e.g. {ks: kas_Deva}."})
    source_lang: str = field(default="en", metadata={"help": "Language of the input rows (ISO code)."})
    source: bool = field(default=True, metadata={
        "help": "Also translate the source train/dev data (stage translate-source; the translated-teacher setting)."})
    indic_toolkit: bool = field(default=True, metadata={
        "help": "IndicTrans2: pre/post-process with IndicTransToolkit (pip install 'hfaug[indic]'): normalisation, "
                "entity placeholders, script conversion back from Devanagari. false: language tags only."})
    indictrans2_any_transformers: bool = field(default=False, metadata={
        "help": "Run IndicTrans2 even under a transformers its model code does not support (only with a model "
                "revision that carries the fix of AI4Bharat/IndicTrans2 PR #130)."})
    trust_remote_code: bool = field(default=False, metadata={
        "help": "Run the model repo's own code (IndicTrans2 needs it). Only enable for repos you trust."})
    batch_size: int = field(default=16, metadata={"help": "Texts (or sentence chunks) per generate call."})
    sort_by_length: bool = field(default=True, metadata={
        "help": "Batch texts of similar token length together (less padding); false keeps input order."})
    max_length: int = field(default=256, metadata={
        "help": "Most input tokens per generate call; longer texts are split into sentences (split_sentences) "
                "or truncated."})
    split_sentences: bool = field(default=True, metadata={
        "help": "Split texts longer than max_length into sentence chunks and join the translations "
                "(NLLB truncates and degrades on long inputs)."})
    max_new_tokens: int = field(default=256, metadata={"help": "Most tokens generated per text or chunk."})
    min_new_tokens: int = field(default=0, metadata={
        "help": "Fewest tokens generated (0 = model default). Random-weight models need it to say anything."})
    num_beams: int = field(default=5, metadata={"help": "Beam size (IndicTrans2's and NLLB's usual 4-5)."})
    no_repeat_ngram_size: int = field(default=0, metadata={
        "help": "Forbid repeating any n-gram of this size in an output (0 = off); curbs repetition loops."})
    do_sample: bool = field(default=False, metadata={
        "help": "Sample instead of beam search (seeded per batch); for demos on random-weight models."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature (with do_sample)."})
    seed: int | None = field(default=None, metadata={"help": "Sampling seed; default: the run's seed."})
    retries: int = field(default=1, metadata={
        "help": "Retries of a failing batch before it is split in halves to find the failing row."})
    device: str = field(default="auto", metadata={"help": "auto (GPU when present), cpu, cuda, cuda:1, mps."})
    dtype: str = field(default="auto", metadata={
        "help": "auto (bfloat16/float16 on GPU, float32 on CPU), float32, float16 or bfloat16."})
    checks: list[str] = field(default_factory=lambda: list(CHECKS), metadata={
        "help": "Quality checks dropping a translation (each counted by reason): empty, untranslated "
                "(equal to its input), length_ratio, repetition (n-gram loops), script (wrong script). "
                "The paper used none: [] reproduces it."})
    min_length_ratio: float = field(default=0.2, metadata={
        "help": "Least output/input character ratio (Chinese and Japanese run near 0.3)."})
    max_length_ratio: float = field(default=4.0, metadata={"help": "Largest output/input character ratio."})
    length_ratio_min_chars: int = field(default=10, metadata={
        "help": "Inputs shorter than this many characters skip the length-ratio check."})
    max_repeats: int = field(default=4, metadata={
        "help": "A loop: a piece of 2-30 characters repeated this many times in a row."})
    min_script_ratio: float = field(default=0.5, metadata={
        "help": "Least share of the output's letters in the target language's script."})

    def __post_init__(self):
        if not self.languages:
            raise HfaugError("translate.languages is empty: name the target languages, e.g. [hi, mr]")
        for code in self.languages:
            if code not in self.codes:
                get_language(code)
        if len(set(self.languages)) != len(self.languages):
            raise HfaugError(f"translate.languages lists a language twice: {self.languages}")
        get_language(self.source_lang, "translate.source_lang")
        for code in self.models:
            if code not in self.languages:
                raise HfaugError(f"translate.models names '{code}', which is not in translate.languages "
                                 f"{self.languages}")
        for name in self.checks:
            if name not in CHECKS:
                from .errors import did_you_mean

                raise HfaugError(f"translate.checks: unknown check '{name}'{did_you_mean(name, CHECKS)}")
        for name in ("batch_size", "max_length", "max_new_tokens", "num_beams", "max_repeats"):
            if getattr(self, name) < 1:
                raise ValueError(f"translate.{name} must be at least 1, got {getattr(self, name)}")
        if self.min_new_tokens < 0 or self.min_new_tokens > self.max_new_tokens:
            raise ValueError(f"translate.min_new_tokens must be in [0, max_new_tokens], got {self.min_new_tokens}")
        if self.retries < 0:
            raise ValueError("translate.retries must be >= 0")
        if not 0.0 <= self.min_length_ratio <= self.max_length_ratio:
            raise ValueError("translate: need 0 <= min_length_ratio <= max_length_ratio")
        if not 0.0 <= self.min_script_ratio <= 1.0:
            raise ValueError(f"translate.min_script_ratio must be in [0, 1], got {self.min_script_ratio}")
        if self.dtype not in ("auto", "float32", "float16", "bfloat16"):
            raise ValueError(f"translate.dtype must be auto, float32, float16 or bfloat16, got {self.dtype!r}")

    def model_for(self, code: str) -> str:
        """The model reference for a language, with its revision as ``id@revision``."""
        if code in self.models:
            return self.models[code]
        return f"{self.model}@{self.revision}" if self.revision else self.model

    def decoding(self) -> dict[str, Any]:
        """The settings that change a translation (part of the cache key)."""
        out = {"max_length": self.max_length, "max_new_tokens": self.max_new_tokens,
               "min_new_tokens": self.min_new_tokens, "num_beams": self.num_beams,
               "no_repeat_ngram_size": self.no_repeat_ngram_size}
        if self.do_sample:
            out.update(do_sample=True, temperature=self.temperature, seed=self.seed)
        return out


# ---------------------------------------------------------------------------------------------
# the model


#: texts per tokenizer call when counting lengths (memory stays flat in the pool's size)
LENGTH_CHUNK = 2048


def _split_ref(ref: str) -> tuple[str, str | None]:
    """``id@revision`` -> (id, revision); local paths with '@' in a folder name are left alone."""
    if "@" in ref and not Path(ref).exists():
        name, _, revision = ref.rpartition("@")
        return name, revision or None
    return ref, None


class Translator:
    """One MT model: its family, its language codes, and the generate call.

    The tokenizer and config load at once (cheap), so every language is checked before any work;
    the weights load on the first :meth:`generate`.
    """

    def __init__(self, ref: str, config: TranslateConfig, languages: list[Language], source: Language,
                 seed: int = 42):
        from .config import resolve

        self.ref = ref
        self.config = config
        self.seed = config.seed if config.seed is not None else seed
        name, self.revision = _split_ref(ref)
        self.name = name
        self.path = resolve(name)
        self.remote = bool(config.trust_remote_code)
        if "indictrans" in name.lower() and not self.remote:
            raise HfaugError(f"translate: model '{name}' (IndicTrans2) runs its own code from the Hub; "
                             "set translate.trust_remote_code: true if you trust it")
        if "indictrans" in name.lower():
            check_indictrans2_runtime(name, config)  # before anything is downloaded
        if self.remote:
            logger.warning("translate: trust_remote_code is enabled: running code from the '%s' repository", name)
        self._load_tokenizer()
        self.family = self._family()
        self.source_code = self._code(source, source=True)
        self.codes = {lang.code: self._code(lang) for lang in languages}
        self.model = None
        self.device = None
        self.last_error: str | None = None  # the last model failure, for the all-failed message
        if self.family == "indictrans2":
            check_indictrans2_runtime(name, config)
        self.indic = self._indic_processor() if self.family == "indictrans2" and config.indic_toolkit else None
        if self.family == "indictrans2" and config.indic_toolkit and self.indic is None:
            raise HfaugError("translate: IndicTrans2 is pre- and post-processed with IndicTransToolkit, which is not "
                             f"installed: {install_hint('IndicTransToolkit')} (or translate.indic_toolkit: false for language "
                             "tags only)")
        if self.family == "indictrans2" and self.indic is None:
            # without IndicTransToolkit there is no transliteration back from the unified script
            bad = [c for c, code in self.codes.items() if code.split("_")[1] not in ("Deva", "Arab", "Latn")]
            if bad:
                raise HfaugError(f"translate: IndicTrans2 into {bad} needs IndicTransToolkit "
                                 f"({install_hint('IndicTransToolkit')}) for its post-processing")
            logger.warning("translate: IndicTransToolkit is not installed; IndicTrans2 inputs get only "
                           "language tags (no normalisation or entity placeholders)")
        if self.family in ("nllb", "m2m100", "mbart50"):
            self.tokenizer.src_lang = self.source_code  # sets the source language token

    # -- loading ------------------------------------------------------------------------------

    def _load_tokenizer(self) -> None:
        from transformers import AutoConfig, AutoTokenizer

        kwargs = {"revision": self.revision, "trust_remote_code": self.remote}
        try:
            self.model_config = AutoConfig.from_pretrained(self.path, **kwargs)
            self.tokenizer = AutoTokenizer.from_pretrained(self.path, **kwargs)
        except ImportError as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise HfaugError(f"translate: the tokenizer of '{self.name}' needs a package that is not installed: "
                             f"{first}") from None
        except (OSError, ValueError) as e:
            text = str(e).splitlines()[0] if str(e) else type(e).__name__
            if "sentencepiece" in str(e).lower():
                raise HfaugError(f"translate: the tokenizer of '{self.name}' needs sentencepiece "
                                 f"({install_hint('sentencepiece')})") from None
            if "trust_remote_code" in str(e):
                raise HfaugError(f"translate: model '{self.name}' needs its own code: set "
                                 "translate.trust_remote_code: true if you trust the repository") from None
            raise HfaugError(f"translate: cannot load model '{self.name}': {text}") from None

    def _family(self) -> str:
        cls = type(self.tokenizer).__name__
        model_type = getattr(self.model_config, "model_type", "")
        if "IndicTrans" in cls or "indictrans" in model_type.lower():
            return "indictrans2"
        if "Nllb" in cls:
            return "nllb"
        if "M2M100" in cls:
            return "m2m100"
        if "MBart50" in cls or (model_type == "mbart" and hasattr(self.tokenizer, "lang_code_to_id")):
            return "mbart50"
        if "Marian" in cls or model_type == "marian":
            return "marian"
        if model_type == "m2m_100" and self.tokenizer.convert_tokens_to_ids("eng_Latn") != self.tokenizer.unk_token_id:
            return "nllb"
        raise HfaugError(f"translate: cannot tell which translation model family '{self.name}' is "
                         f"(tokenizer {cls}, model type {model_type!r}); supported: {', '.join(FAMILIES)}")

    def _supported(self) -> set[str]:
        """The language codes this model's tokenizer knows."""
        tok = self.tokenizer
        if self.family == "nllb":
            vocab = tok.get_vocab()
            return {t for t in vocab if re.fullmatch(r"[a-z]{3}_[A-Z][a-z]{3}", t)}
        if self.family == "indictrans2":
            return set(INDICTRANS2)
        if self.family == "m2m100":
            return set(getattr(tok, "lang_code_to_id", {}))
        if self.family == "mbart50":
            return set(getattr(tok, "lang_code_to_id", {}))
        return set(getattr(tok, "supported_language_codes", []) or [])

    def _code(self, lang: Language, source: bool = False) -> str:
        supported = self._supported()
        override = self.config.codes.get(lang.code)
        if override is not None:
            code = override
            ok = code in supported or (self.family == "marian" and not supported)
        elif self.family in ("nllb", "indictrans2"):
            code = lang.flores
            ok = code in supported
        elif self.family == "m2m100":
            code = m2m100_code(lang, supported)
            ok = code is not None
        elif self.family == "mbart50":
            code = mbart50_code(lang, supported)
            ok = code is not None
        else:
            code, ok = self._marian_code(lang, supported, source)
        if ok:
            return code
        covered = self._covered_iso(supported)
        near = close_matches(lang.code, covered)
        role = "source" if source else "target"
        hint = f"; close matches it covers: {', '.join(near)}" if near else f"; it covers {len(covered)} languages"
        raise HfaugError(f"translate: model '{self.name}' ({self.family}) does not cover {role} language "
                         f"'{lang.code}' ({lang.name}){hint}; pick another model in translate.models")

    def _marian_code(self, lang: Language, supported: set[str], source: bool) -> tuple[str, bool]:
        if supported:  # a multi-target model: the code is a >>xxx<< prefix token
            if source:
                return "", True
            code = marian_code(lang, supported)
            return code or "", code is not None
        pair = marian_pair(self.name)
        if pair is None:
            logger.warning("translate: cannot read the language pair of Marian model '%s'; trusting the recipe",
                           self.name)
            return "", True
        return "", same_language(pair[0] if source else pair[1], lang)

    def _covered_iso(self, supported: set[str]) -> list[str]:
        covered = []
        for code in known_codes():
            try:
                lang = get_language(code)
            except HfaugError:
                continue
            if self.family in ("nllb", "indictrans2"):
                ok = lang.flores in supported
            elif self.family == "m2m100":
                ok = m2m100_code(lang, supported) is not None
            elif self.family == "mbart50":
                ok = mbart50_code(lang, supported) is not None
            else:
                ok = marian_code(lang, supported) is not None
            if ok:
                covered.append(code)
        return covered

    def _indic_processor(self):
        try:
            from IndicTransToolkit.processor import IndicProcessor  # type: ignore[import-not-found]
        except ImportError:
            try:
                from IndicTransToolkit import IndicProcessor  # type: ignore[import-not-found]
            except ImportError:
                return None
        return IndicProcessor(inference=True)

    def cache_key(self) -> str:
        """Model name and revision: the Hub commit, or a fingerprint of a local folder's files."""
        commit = getattr(self.model_config, "_commit_hash", None)
        if commit:
            return f"{self.name}@{commit}"
        path = Path(self.path)
        if path.is_dir():
            parts = []
            for f in sorted(path.iterdir()):
                if f.is_file():
                    stat = f.stat()
                    parts.append(f"{f.name}:{stat.st_size}:{stat.st_mtime_ns}")
            return f"{path.resolve()}#{hashlib.sha256('|'.join(parts).encode()).hexdigest()[:16]}"
        return f"{self.name}@{self.revision or 'main'}"

    def load_model(self) -> None:
        import torch
        from transformers import AutoModelForSeq2SeqLM

        device = self.config.device
        if device == "auto":
            if torch.cuda.is_available():
                device = "cuda"
            elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
                device = "mps"
            else:
                device = "cpu"
        dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}.get(self.config.dtype)
        if dtype is None:  # auto
            if device.startswith("cuda"):
                dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            else:
                dtype = torch.float32
        model = AutoModelForSeq2SeqLM.from_pretrained(self.path, revision=self.revision,
                                                      trust_remote_code=self.remote, dtype=dtype)
        self.model = model.to(device).eval()
        self.device = device
        logger.info("translate: %s (%s) on %s, %s", self.name, self.family, device, str(dtype).replace("torch.", ""))

    def unload(self) -> None:
        self.model = None
        _free_memory()

    # -- the model call -----------------------------------------------------------------------

    def prepare(self, texts: list[str], code: str) -> list[str]:
        """Texts as the model reads them (language tags, Marian target tokens), leaving no state
        behind: IndicTransToolkit's preprocessing queues one placeholder map per text for its
        postprocessing to take in order, so a look (length counting) takes them back at once."""
        if self.family == "indictrans2":
            if self.indic is not None:
                prepared = self.indic.preprocess_batch(texts, src_lang=self.source_code, tgt_lang=code)
                self._release(len(prepared), code)
                return prepared
            return [f"{self.source_code} {code} {t}" for t in texts]
        if self.family == "marian" and code:
            return [f"{code} {t}" for t in texts]
        return list(texts)

    def _release(self, n: int, code: str) -> None:
        """Take the placeholder maps of ``n`` preprocessed texts off the toolkit's queue unused."""
        if n:
            self.indic.postprocess_batch([""] * n, lang=code)

    def lengths(self, texts: list[str], code: str) -> list[int]:
        """Token length of each text as the model would see it.

        Counted in chunks: a fast tokenizer keeps a full Encoding (tokens, offsets, masks) per
        text, so one call on the paper's 130,000-row pool held about 1.5 GB at once."""
        out: list[int] = []
        for start in range(0, len(texts), LENGTH_CHUNK):
            enc = self.tokenizer(self.prepare(texts[start:start + LENGTH_CHUNK], code), truncation=False)
            out += [len(ids) for ids in enc["input_ids"]]
        return out

    def generate(self, texts: list[str], code: str) -> list[str]:
        """Translate one batch into the language whose model code is ``code``.

        The boundary with the model: everything around it (retries, bisection, cache) is hfaug's.
        Raises whatever the model raises; returns exactly one string per input.
        """
        if self.model is None:
            self.load_model()
        toolkit = self.family == "indictrans2" and self.indic is not None
        # with the toolkit, each batch is preprocessed and postprocessed exactly once, in order:
        # its placeholder maps (numbers, e-mails, URLs) go back into this batch's own rows
        inputs = (self.indic.preprocess_batch(texts, src_lang=self.source_code, tgt_lang=code) if toolkit
                  else self.prepare(texts, code))
        try:
            decoded = self._run_model(texts, inputs, code)
        except BaseException:
            if toolkit:
                self._release(len(inputs), code)  # the next batch must not get this one's maps
            raise
        if toolkit:
            if len(decoded) != len(inputs):
                self._release(len(inputs), code)
                return decoded  # misaligned: refused by the caller, never postprocessed
            decoded = self.indic.postprocess_batch(decoded, lang=code)
        return [d.strip() for d in decoded]

    def _run_model(self, texts: list[str], inputs: list[str], code: str) -> list[str]:
        import torch

        cfg = self.config
        enc = self.tokenizer(inputs, return_tensors="pt", padding=True, truncation=True,
                             max_length=cfg.max_length).to(self.device)
        kwargs: dict[str, Any] = {"max_new_tokens": cfg.max_new_tokens, "num_beams": cfg.num_beams}
        if cfg.min_new_tokens:
            kwargs["min_new_tokens"] = cfg.min_new_tokens
        if cfg.no_repeat_ngram_size:
            kwargs["no_repeat_ngram_size"] = cfg.no_repeat_ngram_size
        if cfg.do_sample:
            kwargs.update(do_sample=True, temperature=cfg.temperature)
            # seeded by the batch's content, so a batch samples the same way in every run
            digest = hashlib.sha256(json.dumps([self.seed, texts], ensure_ascii=False).encode()).digest()
            torch.manual_seed(int.from_bytes(digest[:4], "little"))
        bos = self._forced_bos(code)
        if bos is not None:
            kwargs["forced_bos_token_id"] = bos
        with torch.inference_mode():
            out = self.model.generate(**enc, **kwargs)
        if self.family == "indictrans2" and hasattr(self.tokenizer, "as_target_tokenizer"):
            with self.tokenizer.as_target_tokenizer():
                decoded = self.tokenizer.batch_decode(out, skip_special_tokens=True, clean_up_tokenization_spaces=True)
        else:
            decoded = self.tokenizer.batch_decode(out, skip_special_tokens=True)
        return list(decoded)

    def _forced_bos(self, code: str) -> int | None:
        if self.family == "nllb":
            return self.tokenizer.convert_tokens_to_ids(code)
        if self.family == "m2m100":
            return self.tokenizer.get_lang_id(code)
        if self.family == "mbart50":
            return self.tokenizer.lang_code_to_id[code]
        return None


def _free_memory() -> None:
    import gc

    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # freeing memory is best effort
        pass


# ---------------------------------------------------------------------------------------------
# the cache


class TranslationCache:
    """Finished translations in sqlite, committed after every batch (``path=None``: memory only)."""

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path else None
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(str(self.path) if self.path else ":memory:")
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("CREATE TABLE IF NOT EXISTS translations (key TEXT PRIMARY KEY, lang TEXT, output TEXT)")
        self.conn.commit()

    @staticmethod
    def key(model_key: str, decoding: dict, source: str, target: str, text: str) -> str:
        payload = json.dumps([model_key, decoding, source, target, text], sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    def get_many(self, keys: list[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        for i in range(0, len(keys), 500):
            chunk = keys[i:i + 500]
            marks = ",".join("?" * len(chunk))
            for key, output in self.conn.execute(f"SELECT key, output FROM translations WHERE key IN ({marks})", chunk):
                found[key] = output
        return found

    def put_many(self, rows: list[tuple[str, str, str]]) -> None:
        self.conn.executemany("INSERT OR REPLACE INTO translations (key, lang, output) VALUES (?, ?, ?)", rows)
        self.conn.commit()

    def __len__(self) -> int:
        return self.conn.execute("SELECT COUNT(*) FROM translations").fetchone()[0]

    def close(self) -> None:
        self.conn.close()


# ---------------------------------------------------------------------------------------------
# translating texts: segmenting, batching, retries, bisection


def _batches(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def split_sentences(text: str) -> list[str]:
    parts = [p.strip() for p in _SENTENCE_END.split(text.strip())]
    return [p for p in parts if p]


def _pack(sentences: list[str], lengths: list[int], budget: int) -> list[str]:
    """Consecutive sentences packed into chunks of at most ``budget`` tokens (context kept)."""
    chunks, current, used = [], [], 0
    for sentence, n in zip(sentences, lengths):
        if current and used + n > budget:
            chunks.append(" ".join(current))
            current, used = [], 0
        current.append(sentence)
        used += n
    if current:
        chunks.append(" ".join(current))
    return chunks


def translate_texts(translator: Translator, texts: list[str], lang: Language, *,
                    cache: TranslationCache | None = None, stats: Counter | None = None,
                    progress: bool = True) -> list[str | None]:
    """Translate ``texts`` into ``lang``; one output per input, None where the model failed.

    Duplicate texts are translated once. Long texts are split into sentence chunks. Batches come
    in token-length order (``sort_by_length``); each finished batch goes into the cache at once.
    """
    from tqdm.auto import tqdm

    cfg = translator.config
    stats = stats if stats is not None else Counter()
    cache = cache if cache is not None else TranslationCache(None)
    code = translator.codes[lang.code]
    unique = [t for t in dict.fromkeys(texts) if t.strip()]

    # segments: a text, or its sentence chunks when it is longer than the model's input
    # token lengths, counted once per segment: the plan and the length sort share them (at 130,000
    # texts a second pass of the tokenizer over every text cost as much as a tenth of the stage)
    lengths = dict(zip(unique, translator.lengths(unique, code)))
    plan: dict[str, list[str]] = {}
    for text in unique:
        if lengths[text] <= cfg.max_length:
            plan[text] = [text]
            continue
        sentences = split_sentences(text) if cfg.split_sentences else [text]
        if len(sentences) > 1:
            sentence_lengths = translator.lengths(sentences, code)
            lengths.update(zip(sentences, sentence_lengths))
            plan[text] = _pack(sentences, sentence_lengths, cfg.max_length)
            stats["split"] += 1
            stats["truncated"] += sum(1 for n in sentence_lengths if n > cfg.max_length)
        else:
            plan[text] = [text]
            stats["truncated"] += 1
    segments = list(dict.fromkeys(s for segs in plan.values() for s in segs))

    model_key = translator.cache_key()
    decoding = cfg.decoding()
    if cfg.do_sample:  # the seed really used (the run's when the section leaves it out) changes the samples
        decoding["seed"] = translator.seed
    keys = {s: cache.key(model_key, decoding, translator.source_code, code, s) for s in segments}
    done_by_key = cache.get_many(list(keys.values()))
    done = {s: done_by_key[keys[s]] for s in segments if keys[s] in done_by_key}
    missing = [s for s in segments if s not in done]
    stats["segments"] += len(segments)
    stats["cache_hits"] += len(done)
    if missing and cfg.sort_by_length:
        # packed chunks (several sentences) are the only segments not counted yet
        uncounted = [s for s in missing if s not in lengths]
        lengths.update(zip(uncounted, translator.lengths(uncounted, code)))
        # longest first: the memory peak comes at once, and the bar's estimate errs on the safe side
        missing.sort(key=lambda s: -lengths[s])

    failed: set[str] = set()
    with tqdm(total=len(missing), desc=f"translate {lang.code}", unit="seg", disable=not progress or not missing,
              leave=False) as bar:
        for batch in _batches(missing, cfg.batch_size):
            outputs = _generate_robust(translator, batch, code, lang.code, stats)
            finished = [(s, o) for s, o in zip(batch, outputs) if o is not None]
            cache.put_many([(keys[s], lang.code, o) for s, o in finished])
            done.update(finished)
            failed.update(s for s, o in zip(batch, outputs) if o is None)
            stats["translated"] += len(finished)
            bar.update(len(batch))
    stats["failed_segments"] += len(failed)

    joiner = "" if lang.script in _NO_SPACE_SCRIPTS else " "
    result: dict[str, str | None] = {}
    for text, segs in plan.items():
        result[text] = None if any(s in failed for s in segs) else joiner.join(done[s] for s in segs).strip()
    return [result.get(t, "") if t.strip() else "" for t in texts]


def _generate_robust(translator: Translator, texts: list[str], code: str, lang: str, stats: Counter) -> list[str | None]:
    """A batch's translations; retried, then bisected so that only a failing row is lost."""
    error: Exception | None = None
    for _ in range(translator.config.retries + 1):
        stats["model_calls"] += 1
        try:
            outputs = translator.generate(texts, code)
        except HfaugError:
            raise
        except Exception as e:  # noqa: BLE001 -- any model failure; KeyboardInterrupt passes through
            error = e
            _free_memory()
            continue
        if len(outputs) != len(texts) or not all(isinstance(o, str) for o in outputs):
            # a misaligned answer is never used: that is how rows end up with another row's text
            error = RuntimeError(f"model returned {len(outputs)} outputs for {len(texts)} inputs")
            continue
        return list(outputs)
    translator.last_error = f"{type(error).__name__}: {' '.join(str(error).split())[:200]}"
    if len(texts) == 1:
        logger.warning("translate %s: dropping a text that failed %d times (%s: %s)", lang,
                       translator.config.retries + 1, type(error).__name__, error)
        return [None]
    logger.info("translate %s: a batch of %d failed (%s); splitting it to find the failing row",
                lang, len(texts), type(error).__name__)
    stats["bisections"] += 1
    mid = len(texts) // 2
    return (_generate_robust(translator, texts[:mid], code, lang, stats)
            + _generate_robust(translator, texts[mid:], code, lang, stats))


# ---------------------------------------------------------------------------------------------
# quality checks


@lru_cache(maxsize=8)
def _loop_pattern(max_repeats: int) -> re.Pattern:
    return re.compile(r"(\w.{1,29}?)(?:\s*\1){%d,}" % (max_repeats - 1), re.DOTALL)


def has_loop(text: str, max_repeats: int) -> bool:
    """A piece of 2-30 characters (starting with a letter or digit) repeated ``max_repeats``
    times in a row, with or without spaces: ``की की की की``, ``iteiteiteite``."""
    return _loop_pattern(max_repeats).search(text) is not None


def quality_issue(source: str, output: str | None, lang: Language, config: TranslateConfig) -> str | None:
    """The reason a translation is dropped, or None to keep it."""
    if output is None:
        return "failed"
    checks = config.checks
    if "empty" in checks and not output.strip():
        return "empty"
    if not output.strip():
        return None
    if "untranslated" in checks and output.strip().casefold() == source.strip().casefold():
        return "untranslated"
    if "length_ratio" in checks and len(source.strip()) >= config.length_ratio_min_chars:
        ratio = len(output.strip()) / len(source.strip())
        if ratio < config.min_length_ratio or ratio > config.max_length_ratio:
            return "length_ratio"
    if "repetition" in checks and has_loop(output, config.max_repeats):
        return "repetition"
    if "script" in checks:
        share = script_share(output, lang.script)
        if share is not None and share < config.min_script_ratio:
            return "wrong_script"
    return None


# ---------------------------------------------------------------------------------------------
# datasets


#: the newest transformers IndicTrans2's own model code runs under (its maintainers pin 4.53.x)
INDICTRANS2_MAX_TRANSFORMERS = (4, 53)


def check_indictrans2_runtime(name: str, config: TranslateConfig) -> None:
    """Refuse IndicTrans2 up front where its remote model code fails. Under transformers 4.54 and
    later its generate() breaks on the encoder-decoder cache transformers now builds (AI4Bharat/
    IndicTrans2 issue #128, unmerged fix PR #130): every batch would fail and be dropped."""
    import transformers

    version = tuple(int(x) for x in re.findall(r"\d+", transformers.__version__)[:2])
    if version <= INDICTRANS2_MAX_TRANSFORMERS or config.indictrans2_any_transformers:
        return
    raise HfaugError(
        f"translate: IndicTrans2 ('{name}') cannot run under transformers {transformers.__version__}: its model "
        f"code fails at generate() after 4.53 (its maintainers pin transformers 4.53.x; AI4Bharat/IndicTrans2 "
        f"issue #128, PR #130); translate these languages with NLLB (translate.models: "
        f"{{<lang>: facebook/nllb-200-distilled-600M}}), or run translate in an environment with "
        f"transformers==4.53.3")


def open_translators(config: TranslateConfig, seed: int = 42) -> dict[str, Translator]:
    """One translator per model, by language code; every language is checked here, before any
    work (an uncovered language is a user error naming close matches)."""
    source = get_language(config.source_lang, "translate.source_lang")
    langs = [_language(code, config) for code in config.languages]
    by_model: dict[str, list[Language]] = {}
    for lang in langs:
        by_model.setdefault(config.model_for(lang.code), []).append(lang)
    translators = {}
    for ref, group in by_model.items():
        translator = Translator(ref, config, group, source, seed=seed)
        for lang in group:
            translators[lang.code] = translator
    return translators


def _language(code: str, config: TranslateConfig) -> Language:
    if code in config.codes:
        try:
            lang = get_language(code)
            return Language(code, config.codes[code] if "_" in config.codes[code] else lang.flores, lang.iso1)
        except HfaugError:
            override = config.codes[code]
            return Language(code, override if "_" in override else f"{code}_Zzzz", None)
    return get_language(code)


def translate_datasets(parts: dict[str, "datasets.Dataset"], config: TranslateConfig, task: "Task | str", *,
                       cache_dir: str | Path | None = None, seed: int = 42, progress: bool = True,
                       stage: str = "translate") -> tuple[dict[str, dict[str, "datasets.Dataset"]], Counter, dict]:
    """Translate several datasets (e.g. train and dev) into every language, sharing the model loads.

    Returns ({part: {lang: dataset}}, dropped counts keyed ``<part>-<lang>.<reason>`` (just
    ``<lang>.<reason>`` for a single part named "data"), metrics per language).
    """
    from .tasks import get_task

    task = get_task(task) if isinstance(task, str) else task
    for ds in parts.values():
        schema.require_columns(ds, [schema.ID, *task.text_columns], stage)
    translators = open_translators(config, seed)  # refuses uncovered languages before any work
    langs = [_language(code, config) for code in config.languages]
    cache = TranslationCache(Path(cache_dir) / CACHE_FILE if cache_dir else None)
    outputs: dict[str, dict[str, Any]] = {name: {} for name in parts}
    dropped: Counter = Counter()
    metrics: dict[str, Any] = {}
    try:
        for i, lang in enumerate(langs):
            translator = translators[lang.code]
            stats: Counter = Counter()
            start = time.perf_counter()
            texts = [t for ds in parts.values() for col in task.text_columns for t in schema.column_values(ds, col)]
            translated = dict(zip(texts, translate_texts(translator, texts, lang, cache=cache, stats=stats,
                                                         progress=progress)))
            seconds = time.perf_counter() - start
            if stats["failed_segments"] and not stats["translated"] and not stats["cache_hits"]:
                # every row failed: an empty dataset reported as success would hide a broken model
                raise HfaugError(f"{stage} {lang.code}: all {stats['failed_segments']} texts failed in "
                                 f"'{translator.name}' (last error: {translator.last_error}); nothing was written")
            rows = {}
            for name, ds in parts.items():
                out, reasons = _translated_dataset(ds, translated, lang, task, config)
                outputs[name][lang.code] = out
                rows[name] = len(out)
                prefix = lang.code if list(parts) == ["data"] else f"{name}-{lang.code}"
                for reason, n in reasons.items():
                    dropped[f"{prefix}.{reason}"] += n
            metrics[lang.code] = {
                "model": translator.name, "family": translator.family, "rows": rows,
                **{k: int(v) for k, v in sorted(stats.items())},
                "seconds": round(seconds, 3),
                "segments_per_s": round(stats["translated"] / seconds, 3) if stats["translated"] and seconds else 0.0,
            }
            # free a model once its last language is done
            if all(translators[other.code] is not translator for other in langs[i + 1:]):
                translator.unload()
    finally:
        cache.close()
    return outputs, dropped, metrics


def translate(dataset: "datasets.Dataset", config: TranslateConfig, task: "Task | str" = "sentiment", *,
              cache_dir: str | Path | None = None, seed: int = 42,
              progress: bool = True) -> DataResult:
    """Translate one dataset into every language of ``config``.

    Returns a :class:`~hfaug.schema.DataResult`: datasets by language, dropped counts keyed
    ``<lang>.<reason>``, metrics per language.
    With ``cache_dir`` finished translations persist there and a rerun translates only the rest.
    """
    outputs, dropped, metrics = translate_datasets({"data": dataset}, config, task, cache_dir=cache_dir,
                                                   seed=seed, progress=progress)
    return DataResult(outputs["data"], dropped, metrics)


def _translated_dataset(ds: "datasets.Dataset", translated: dict[str, str | None], lang: Language,
                        task: "Task", config: TranslateConfig) -> tuple["datasets.Dataset", Counter]:
    reasons: Counter = Counter()
    keep: list[int] = []
    columns: dict[str, list[str]] = {col: [] for col in task.text_columns}
    # plain lists: indexing a dataset's column row by row reads it through Arrow once per row
    originals = {col: schema.column_values(ds, col) for col in task.text_columns}
    for i in range(len(ds)):
        row_out = {}
        issue = None
        for col in task.text_columns:
            source = originals[col][i]
            output = translated.get(source)
            issue = quality_issue(source, output, lang, config)
            if issue:
                break
            row_out[col] = output
        if issue:
            reasons[issue] += 1
            continue
        keep.append(i)
        for col in task.text_columns:
            columns[col].append(row_out[col])
    order = list(ds.column_names) + [c for c in (schema.SOURCE_ID, schema.LANG) if c not in ds.column_names]
    out = ds.select(keep)
    new = dict(columns)
    new[schema.SOURCE_ID] = schema.column_values(out, schema.ID)
    new[schema.ID] = [schema.make_id(task.name, lang.code, *(columns[c][j] for c in task.text_columns))
                      for j in range(len(keep))]
    new[schema.LANG] = [lang.code] * len(keep)
    import datasets

    for col, values in new.items():
        if col in out.column_names:
            out = out.remove_columns(col)
        # typed explicitly: an empty list would otherwise make a null column
        out = out.add_column(col, values, feature=datasets.Value("string"))
    out = out.select_columns(order)
    return schema.cast_contract(out, task), reasons


# ---------------------------------------------------------------------------------------------
# stage adapters


def run(ctx: StageContext) -> StageResult:
    """The ``translate`` stage: the label stage's candidates into each target language (in the
    translated-teacher setting: the generate stage's candidates, labelled after translation)."""
    from .config import TRANSLATED_TEACHER

    data = ctx.input("generate" if ctx.recipe.setting == TRANSLATED_TEACHER else "label")
    outputs, dropped, metrics = translate(data, ctx.config, ctx.task, cache_dir=ctx.cache_dir, seed=ctx.seed)
    return StageResult(datasets=outputs, dropped=dropped, rows_in=len(data) * len(ctx.config.languages),
                       metrics=metrics)


def run_source(ctx: StageContext) -> StageResult:
    """The ``translate-source`` stage: the source train/dev data into each target language."""
    parts = {name: ctx.input("source", name) for name in ("train", "dev")}
    outputs, dropped, metrics = translate_datasets(parts, ctx.config, ctx.task, cache_dir=ctx.cache_dir,
                                                   seed=ctx.seed, stage="translate-source")
    datasets_out = {f"{name}-{lang}": ds for name, by_lang in outputs.items() for lang, ds in by_lang.items()}
    rows_in = sum(len(ds) for ds in parts.values()) * len(ctx.config.languages)
    return StageResult(datasets=datasets_out, dropped=dropped, rows_in=rows_in, metrics=metrics)


__all__ = ["TranslateConfig", "Translator", "check_indictrans2_runtime", "TranslationCache", "translate", "translate_datasets",
           "translate_texts", "quality_issue", "has_loop", "split_sentences", "run", "run_source"]

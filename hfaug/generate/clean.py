"""Cleaning of raw generations, as the paper's authors did it (arXiv 2407.10582, "Generation"), each rule
switchable, plus exact and near-duplicate removal. Every dropped text gets a reason.

The rules run in the authors' order (train_llama2/post_process.py, then utils/clean_data.py): cut
the chat scaffolding, keep the text after the last colon, then the text inside quotes, drop a
leading "Review" (the word only), drop non-ASCII characters, collapse whitespace, drop enumerations
like "2. ", normalise spacing around punctuation and repeated punctuation, strip leading
non-letters, then drop texts of ``min_chars - 1`` characters or fewer (the paper: 17).
NLI hypotheses take the first colon segment instead (post_process.py ``xnli_postprocess``), and a
segment or quote that is only the premise is passed over, so a reply quoting its premise never
collapses into it. A reply that is nothing but a preamble ("Sure! Here is a review:") is dropped
(``preamble_only``). ASCII stripping is for English generations only; it must never run on
translated text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..schema import is_blank
from .near_dup import near_duplicates
from .near_dup import normalised as _normalised

_TAGS = re.compile(r"</?s>|\[/?INST\]|<</?SYS>>|<\|[a-zA-Z_]+\|>|^\s*(?:assistant|user|system)\s*:?\s*$",
                   re.IGNORECASE | re.MULTILINE)
_PREAMBLE = re.compile(r"^\s*(?:sure|certainly|of course|okay|ok|here(?:'s| is| are)|i hope|note)\b",
                       re.IGNORECASE)
#: a line that is only a preamble: "Sure!", "Here is a review:", "Certainly! Here's one for you:"
_BARE_PREAMBLE = re.compile(
    r"^\W*(?:(?:sure|certainly|of course|okay|ok|absolutely)\b\W*)*"
    r"(?:here(?:'s| is| are)\b[^:]*?\b(?:reviews?|sentences?|descriptions?|hypothes[ie]s|examples?|one|"
    r"statements?|texts?|premises?)\b[^:]*)?:?\W*$", re.IGNORECASE)
_QUOTED = re.compile(r'"([^"]+)"|\u201c([^\u201d]+)\u201d')
# "Review" as a word: "Reviewers say ..." keeps its first word
_REVIEW = re.compile(r"^\s*review\b\s*(?:#?\d+)?\s*[:.\-]?\s*", re.IGNORECASE)
_ENUM = re.compile(r"(?:^|(?<=\s))\(?\d{1,3}[.)]\s+")
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([,.;:!?])")
_NO_SPACE_AFTER = re.compile(r"([,;:!?])(?=[A-Za-z])|(\.)(?=[A-Z])")
_REPEATED_PUNCT = re.compile(r"([,.;:!?\-])\1+")
_MIXED_PUNCT_RUN = re.compile(r"([!?])[!?.]+")
_LEADING_NONLETTERS = re.compile(r"^[^A-Za-z]+")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


@dataclass
class CleanConfig:
    """Cleaning of the English generations; each rule can be switched off in the recipe."""

    strip_scaffolding: bool = field(default=True, metadata={
        "help": "Cut chat tags ([INST], <|assistant|>, </s>) and preamble lines ('Sure! Here is ...'); a reply "
                "that is only a preamble is dropped (preamble_only)."})
    inside_quotes: bool = field(default=True, metadata={
        "help": "When the output quotes a text, keep the longest quoted text (after the colon rule; never an "
                "NLI hypothesis's premise quoted back)."})
    after_last_colon: bool = field(default=True, metadata={
        "help": "Keep the text after the last colon ('Here is a review: ...'); NLI hypotheses keep the first "
                "colon segment that is not the premise (the authors' rule)."})
    drop_review_prefix: bool = field(default=True, metadata={
        "help": "Drop a leading word 'Review' / 'Review 2:' ('Reviewers ...' is kept)."})
    ascii_only: bool = field(default=True, metadata={
        "help": "Drop non-ASCII characters (English generations only; never on translated text)."})
    collapse_whitespace: bool = field(default=True, metadata={"help": "Collapse runs of whitespace to one space."})
    drop_enumerations: bool = field(default=True, metadata={"help": "Drop enumerations like '2. ' and '3) '."})
    normalise_punctuation: bool = field(default=True, metadata={
        "help": "No space before punctuation, one after; repeated punctuation ('!!!') to one."})
    strip_leading_nonletters: bool = field(default=True, metadata={"help": "Strip everything before the first letter."})
    min_chars: int = field(default=18, metadata={
        "help": "Drop texts shorter than this many characters (the paper drops 17 or fewer)."})
    max_chars: int | None = field(default=None, metadata={"help": "Drop texts longer than this (none by default)."})
    min_words: int = field(default=0, metadata={"help": "Drop texts with fewer whitespace tokens (0: no limit)."})
    dedupe: bool = field(default=True, metadata={"help": "Drop exact duplicates (after cleaning), keeping the first."})
    near_duplicates: bool = field(default=True, metadata={
        "help": "Drop near duplicates: MinHash over character 5-grams, then exact Jaccard check."})
    near_duplicate_threshold: float = field(default=0.8, metadata={
        "help": "Jaccard similarity of character 5-gram sets at or above which a text is a near duplicate."})

    def __post_init__(self):
        if self.min_chars < 0 or self.min_words < 0:
            raise ValueError("generate.clean.min_chars and min_words must be >= 0")
        if self.max_chars is not None and self.max_chars < self.min_chars:
            raise ValueError(f"generate.clean.max_chars ({self.max_chars}) is below min_chars ({self.min_chars})")
        if not 0.0 < self.near_duplicate_threshold <= 1.0:
            raise ValueError(f"generate.clean.near_duplicate_threshold must be in (0, 1], got "
                             f"{self.near_duplicate_threshold}")


def _norm(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]+", " ", text.lower()).split())


def _same(a: str, b: str | None) -> bool:
    """Equal up to case, spacing, quotes and punctuation (a premise quoted back)."""
    return b is not None and _norm(a) == _norm(b)


def _first_colon_segment(t: str, premise: str | None) -> str | None:
    """The authors' hypothesis rule, ``text.split(":")[1]``: the first colon segment, passing over
    segments that are the premise (or contain it) so a reply quoting its premise keeps its own
    sentence."""
    segments = [seg for seg in t.split(":")[1:] if seg.strip()]
    for seg in segments:
        if premise and _norm(premise) and _norm(seg).startswith(_norm(premise)):
            continue  # "Sentence: <premise>\nHypothesis: ..." : the premise's segment
        return seg
    return None if segments else t  # every segment was the premise


def clean_text(text: str, config: CleanConfig | None = None, *, kind: str = "review",
               premise: str | None = None) -> tuple[str | None, str | None]:
    """One raw generation -> (clean text, None) or (None, reason it was dropped).

    ``kind`` is the request's kind ("review", "premise" or "hypothesis"); a hypothesis takes the
    first colon segment (the authors' rule) and never its ``premise`` quoted back."""
    c = config or CleanConfig()
    hypothesis = kind == "hypothesis"
    # control characters are never text (sampling from a small or random model emits them)
    t = _CONTROL.sub(" ", text or "")
    if c.strip_scaffolding:
        t = _TAGS.sub("\n", t)
        lines = [line for line in t.splitlines() if line.strip()]
        kept = [line for line in lines if not _PREAMBLE.match(line)]
        if lines and not kept and all(_BARE_PREAMBLE.match(line) or line.rstrip().endswith(":") for line in lines):
            return None, "preamble_only"  # "Sure! Here is a review:" and nothing after it
        # a preamble that carries the text after a colon ("Here is one: Great trip!") stays for
        # the colon rule
        t = "\n".join(kept if kept else lines)
    if c.after_last_colon and ":" in t:
        if hypothesis:
            segment = _first_colon_segment(t, premise)
            if segment is None:
                return None, "hypothesis_copies_premise"
            t = segment
        else:
            tail = t.rsplit(":", 1)[1]
            if tail.strip():
                t = tail
    if c.inside_quotes:
        quoted = [a or b for a, b in _QUOTED.findall(t)]
        own = [q for q in quoted if q.strip() and not (hypothesis and _same(q, premise))]
        if own:
            t = max(own, key=len)
        elif quoted and hypothesis and len(_norm(_QUOTED.sub(" ", t)).split()) <= 4:
            return None, "hypothesis_copies_premise"  # 'Here it is: "<premise>"': nothing of its own
    if c.drop_review_prefix:
        t = _REVIEW.sub("", t)
    if c.ascii_only:
        t = t.encode("ascii", "ignore").decode("ascii")
    if c.collapse_whitespace:
        t = " ".join(t.split())
    if c.drop_enumerations:
        t = _ENUM.sub("", t)
    if c.normalise_punctuation:
        t = _MIXED_PUNCT_RUN.sub(r"\1", t)
        t = _REPEATED_PUNCT.sub(r"\1", t)
        t = _SPACE_BEFORE_PUNCT.sub(r"\1", t)
        t = _NO_SPACE_AFTER.sub(lambda m: (m.group(1) or m.group(2)) + " ", t)
    if c.strip_leading_nonletters:
        t = _LEADING_NONLETTERS.sub("", t)
    t = t.strip()
    if c.collapse_whitespace:
        t = " ".join(t.split())
    if is_blank(t):  # also a text of invisible characters (zero-width spaces) only
        return None, "empty"
    if len(t) < c.min_chars:
        return None, "too_short"
    if c.max_chars is not None and len(t) > c.max_chars:
        return None, "too_long"
    if c.min_words and len(t.split()) < c.min_words:
        return None, "too_few_words"
    return t, None


def shingles(text: str, k: int = 5) -> set[str]:
    t = _normalised(text)
    if len(t) <= k:
        return {t}
    return {t[i:i + k] for i in range(len(t) - k + 1)}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def duplicates(texts: list[str], config: CleanConfig | None = None) -> dict[int, str]:
    """Indices of texts to drop -> reason (``exact_duplicate`` / ``near_duplicate``); the first
    of each group is kept. Exact means equal after lowercasing and dropping punctuation. A text is
    a near duplicate when the Jaccard similarity of its character 5-gram set with a kept earlier
    text is at or above the threshold (see :mod:`hfaug.generate.near_dup`)."""
    c = config or CleanConfig()
    drop: dict[int, str] = {}
    if c.dedupe:
        seen: set[str] = set()
        for i, text in enumerate(texts):
            key = _normalised(text)
            if key in seen:
                drop[i] = "exact_duplicate"
            seen.add(key)
    if not c.near_duplicates:
        return drop
    for i in near_duplicates(texts, c.near_duplicate_threshold, skip=drop):
        drop[i] = "near_duplicate"
    return drop

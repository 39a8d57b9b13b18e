"""Near-duplicate removal (hfaug/generate/near_dup.py): the LSH finds what an exact all-pairs
check finds, on homogeneous text where a loose banding makes every text a candidate."""

from __future__ import annotations

import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tgi_server import text_for  # noqa: E402

from hfaug.generate import near_dup  # noqa: E402
from hfaug.generate.clean import CleanConfig, _normalised, duplicates, jaccard, shingles  # noqa: E402


def _homogeneous(n: int) -> list[str]:
    """Reviews from one 50-word vocabulary (most pairs share many 5-grams), with planted near
    copies (one word changed, one word added, one dropped) and exact repeats."""
    rng = random.Random(7)
    texts = []
    for i in range(n):
        if i > 10 and rng.random() < 0.15:
            words = rng.choice(texts).rstrip(".").split()
            edit = rng.choice(("swap", "add", "drop"))
            k = rng.randrange(len(words))
            if edit == "swap":
                words[k] = rng.choice(("lovely", "awful", "nice"))
            elif edit == "add":
                words.insert(k, "really")
            elif len(words) > 9:
                del words[k]
            texts.append(" ".join(words) + ".")
        elif i > 10 and rng.random() < 0.03:
            texts.append(rng.choice(texts).upper())
        else:
            texts.append(text_for("Write a review.", i).split(": ")[-1].strip('"'))
    return texts


def _all_pairs(texts: list[str], threshold: float) -> dict[int, str]:
    """The definition: exact duplicates after normalising, then a text whose 5-gram Jaccard with
    any kept earlier text is >= threshold, comparing every pair."""
    drop, seen = {}, set()
    for i, text in enumerate(texts):
        key = _normalised(text)
        if key in seen:
            drop[i] = "exact_duplicate"
        seen.add(key)
    kept: list[set] = []
    for i, text in enumerate(texts):
        if i in drop:
            continue
        sh = shingles(text)
        if any(jaccard(sh, k) >= threshold for k in kept):
            drop[i] = "near_duplicate"
        else:
            kept.append(sh)
    return drop


def test_near_duplicates_match_an_exact_all_pairs_check_on_homogeneous_text():
    texts = _homogeneous(400)
    for threshold in (0.8, 0.6):
        expected = _all_pairs(texts, threshold)
        got = duplicates(texts, CleanConfig(near_duplicate_threshold=threshold))
        assert got == expected
        assert list(expected.values()).count("near_duplicate") >= 20  # the planted copies are found


def test_homogeneous_text_gives_few_exact_checks(monkeypatch):
    """A banding tuned for the threshold keeps the candidates near the true duplicates: the exact
    check runs a few times per near duplicate, not once per pair of similar-looking reviews."""
    texts = _homogeneous(400)
    calls = []
    real = near_dup.exact_jaccard
    monkeypatch.setattr(near_dup, "exact_jaccard", lambda a, b: calls.append(1) or real(a, b))
    found = list(near_dup.near_duplicates(texts, 0.8))
    assert len(found) >= 20
    assert len(calls) <= 2 * len(found)


def test_grams_are_the_shingles_and_bands_fit_the_threshold():
    for text in ("The hotel room was clean, and the staff were friendly!", "Ok 2", "", "abcde"):
        assert len(near_dup.gram_ids(text)) == len(shingles(text))
    a, b = "The hotel room was clean and quiet.", "The hotel room was clean and very quiet."
    assert abs(near_dup.exact_jaccard(near_dup.gram_ids(a), near_dup.gram_ids(b))
               - jaccard(shingles(a), shingles(b))) < 1e-12
    bands, rows = near_dup.lsh_params(0.8)
    assert bands * rows <= near_dup.NUM_PERM and rows >= 6  # sharp enough for homogeneous text
    assert 1 - (1 - 0.8 ** rows) ** bands >= near_dup.RECALL_AT_THRESHOLD

"""Near-duplicate removal that stays near-linear and memory-bounded at the paper's scale.

A text is a near duplicate when the Jaccard similarity of its character 5-gram set (after
lowercasing and dropping punctuation, :func:`hfaug.generate.clean.shingles`) with a text kept
before it is at or above the threshold; the first of each group is kept.

Signatures come from datasketch's ``MinHash`` (a maintained, widely used implementation, already
a small pure-Python dependency; datatrove's minhash is a multi-stage file pipeline built for
corpora that do not fit in memory, far more than one generate stage needs). Candidates come from
the banding of datasketch's ``MinHashLSH``, kept in a dict per band (:class:`_BandIndex`): the
library's index hashes every band in Python twice per text, which cost a third of the stage's
deduplication time at 10,000 texts.
The bands and rows are chosen for the threshold rather than by datasketch's default optimiser,
which weighs false positives over the whole interval [0, threshold] equally: LLM reviews of one
task are homogeneous (most pairs share 10-30% of their 5-grams), so any band that catches such
pairs turns every text into a candidate of thousands of others and the stage becomes quadratic.
We take the most rows per band (the sharpest S-curve) that still finds a pair exactly at the
threshold with probability >= 0.995 (256 permutations at 0.8: 32 bands of 8 rows; a pair at
Jaccard 0.3 becomes a candidate with probability 0.002, at 0.2 with 0.0001).

Every candidate is then confirmed: first by the MinHash estimate (a vectorised comparison of the
kept signatures, dropping candidates far below the threshold: 8 standard deviations of the
estimate), then by the exact Jaccard similarity of the 5-gram sets. The 5-grams are encoded
injectively as integers (the normalised text has 37 symbols, 38^5 < 2^32), so the exact check is
the same set similarity as on the strings, computed with numpy on sets rebuilt from the kept
text: memory holds only the LSH index and one 1 KB signature per kept text, never the sets.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Iterator

import numpy as np

NUM_PERM = 256
RECALL_AT_THRESHOLD = 0.995
# below this many texts an exact all-pairs comparison is cheaper than building the index
_ALL_PAIRS_BELOW = 48

# normalised text is [a-z0-9 ]: each symbol gets a digit 1..37, so grams shorter than 5 (whole
# short texts) never collide with 5-grams, and base 38 keeps every 5-gram under 2^32
_DIGIT = np.zeros(256, dtype=np.uint32)
for _i, _ch in enumerate(b" 0123456789abcdefghijklmnopqrstuvwxyz"):
    _DIGIT[_ch] = _i + 1
_K = 5
_POWERS = np.array([38 ** (_K - 1 - j) for j in range(_K)], dtype=np.uint32)


def normalised(text: str) -> str:
    """Lowercase letters, digits and single spaces: what exact and near duplicates compare (the
    alphabet ``_DIGIT`` numbers)."""
    return " ".join(re.sub(r"[^a-z0-9 ]+", " ", text.lower()).split())


def lsh_params(threshold: float, num_perm: int = NUM_PERM) -> tuple[int, int]:
    """(bands, rows): the most rows per band whose banding still finds a pair at exactly the
    threshold with probability >= RECALL_AT_THRESHOLD."""
    best = (num_perm, 1)
    for rows in range(1, num_perm + 1):
        bands = num_perm // rows
        if 1 - (1 - threshold ** rows) ** bands >= RECALL_AT_THRESHOLD:
            best = (bands, rows)
    return best


def gram_ids(text: str) -> np.ndarray:
    """Sorted unique integer ids of the character 5-grams of the normalised text (injective:
    equal ids <=> equal 5-grams), the same set as :func:`hfaug.generate.clean.shingles`."""
    codes = _DIGIT[np.frombuffer(normalised(text).encode("ascii"), dtype=np.uint8)]
    n = len(codes)
    if n <= _K:  # the whole (short) text is its one shingle
        return np.array([int(np.dot(codes.astype(np.uint64), 38 ** np.arange(n - 1, -1, -1, dtype=np.uint64)))
                         if n else 0], dtype=np.uint32)
    ids = np.zeros(n - _K + 1, dtype=np.uint32)
    for j in range(_K):
        ids += codes[j:n - _K + 1 + j] * _POWERS[j]
    return np.unique(ids)


def exact_jaccard(a: np.ndarray, b: np.ndarray) -> float:
    inter = len(np.intersect1d(a, b, assume_unique=True))
    return inter / (len(a) + len(b) - inter)


def near_duplicates(texts: list[str], threshold: float, skip: Collection[int] = ()) -> Iterator[int]:
    """Indices (in order) of the texts that are near duplicates of a kept earlier text; the
    texts in ``skip`` (already dropped) are neither checked nor kept."""
    todo = [i for i in range(len(texts)) if i not in skip]
    if len(todo) < _ALL_PAIRS_BELOW:
        yield from _all_pairs(texts, todo, threshold)
        return
    from datasketch import MinHash

    bands, rows = lsh_params(threshold, NUM_PERM)
    template = MinHash(num_perm=NUM_PERM, seed=1, scheme="affine32")
    perms = template.permutations
    # identity hash: gram ids are already integers; datasketch's affine32 scheme premixes them
    # with the MurmurHash3 finaliser before the permutations
    lsh = _BandIndex(bands, rows)
    # the MinHash estimate is a mean of NUM_PERM Bernoulli(J) draws: candidates more than 8
    # standard deviations below the threshold are dropped without the exact check
    floor = threshold - 8 * math.sqrt(threshold * (1 - threshold) / NUM_PERM) - 1e-9
    sigs = np.empty((min(len(todo), 1024), NUM_PERM), dtype=np.uint32)
    n_kept = 0
    kept_index: list[int] = []
    for i in todo:
        grams = gram_ids(texts[i])
        m = MinHash(num_perm=NUM_PERM, seed=1, scheme="affine32", hashfunc=_identity, permutations=perms)
        m.update_batch(grams)
        band_keys = lsh.keys(m.hashvalues)
        cands = lsh.query(band_keys)
        if cands:
            cands = np.fromiter(cands, dtype=np.int64, count=len(cands))
            est = (sigs[cands] == m.hashvalues).mean(axis=1)
            dup = False
            for c in cands[est >= floor]:
                if exact_jaccard(grams, gram_ids(texts[kept_index[c]])) >= threshold:
                    dup = True
                    break
            if dup:
                yield i
                continue
        if n_kept == len(sigs):  # grow the signature store geometrically (amortised linear)
            sigs = np.concatenate([sigs, np.empty_like(sigs)])
        sigs[n_kept] = m.hashvalues
        lsh.insert(n_kept, band_keys)
        kept_index.append(i)
        n_kept += 1


def _all_pairs(texts: list[str], todo: list[int], threshold: float) -> Iterator[int]:
    kept: list[np.ndarray] = []
    for i in todo:
        grams = gram_ids(texts[i])
        if any(exact_jaccard(grams, k) >= threshold for k in kept):
            yield i
        else:
            kept.append(grams)


def _identity(x):
    return x


class _BandIndex:
    """The banding of MinHashLSH (``bands`` bands of ``rows`` signature values, a candidate shares
    at least one band), one dict per band. datasketch's MinHashLSH hashes each band separately in
    Python, for the query and again for the insert, which was half of the stage's deduplication
    time at 10,000 texts; here a text's band keys come from one vectorised step and serve both.
    A key is a 64-bit polynomial hash of the band's values: equal bands always share a key, and a
    rare collision only adds a candidate, which the MinHash estimate and the exact Jaccard check
    then reject, so the result is the same. An int key per band keeps the index small in memory."""

    def __init__(self, bands: int, rows: int):
        self.bands, self.rows = bands, rows
        self.tables: list[dict[int, list[int]]] = [{} for _ in range(bands)]
        # odd multipliers, fixed (a run's index is in memory only; any fixed choice is as good)
        self._mult = (np.random.default_rng(1).integers(1, 2 ** 63, size=rows, dtype=np.uint64) * 2 + 1)

    def keys(self, hashvalues: np.ndarray) -> list[int]:
        block = hashvalues[:self.bands * self.rows].reshape(self.bands, self.rows).astype(np.uint64)
        return (block * self._mult).sum(axis=1, dtype=np.uint64).tolist()  # wraps modulo 2^64

    def query(self, keys: list[int]) -> set[int]:
        out: set[int] = set()
        for table, key in zip(self.tables, keys):
            found = table.get(key)
            if found:
                out.update(found)
        return out

    def insert(self, item: int, keys: list[int]) -> None:
        for table, key in zip(self.tables, keys):
            found = table.get(key)
            if found is None:
                table[key] = [item]
            else:
                found.append(item)

"""Select stage: the paper's data-selection strategies over the teacher-labelled candidates.

Every strategy fills a budget of ``k`` rows per class (the teacher's predicted class) from a pool
that first loses exact duplicates and too-short rows. Each strategy ranks every class once;
a budget takes the first ``k`` of that ranking, so several budgets cost one ranking, and a smaller
budget's selection is a prefix of a larger one's. Ties are broken by ``id`` (ascending), so a
selection depends on the seed and the data only, never on the input row order.

Strategies (the paper's names; per class ``c`` of the teacher argmax):

* ``random`` (rand-k): each row gets ``u ~ U[0, 1)`` from ``numpy.random.default_rng(seed)``,
  drawn in id order; the class is sorted by ``u`` descending (a seeded shuffle) and the first k
  rows are taken. ``score = u``.
* ``top-k``: sort by the teacher's max probability ``confidence = max_l soft_label[l]``,
  descending. ``score = confidence``.
* ``div-k``: embed the rows (sentence-transformers, LaBSE by default; the premise for NLI),
  L2-normalise, k-means into ``n_clusters`` (25) clusters per class in cosine geometry, sort each
  cluster by ``confidence`` descending, then take rows round-robin over the clusters (each
  cluster's next best in turn, clusters in a fixed order) until k. ``score = confidence``,
  ``cluster`` = the cluster id. Clusters are numbered by their best row (highest confidence, then
  id), which fixes the paper's otherwise arbitrary cluster order.
* ``ambiguous`` (amb-k): top k by ``variability = max_l std_e P[n, e, l]``; ``easy`` (easy-k):
  top k by ``mean_confidence = max_l mean_e P[n, e, l]``, over the teacher's per-epoch checkpoint
  probabilities ``P`` (see :mod:`hfaug.datamaps`). The class is the final checkpoint's argmax
  (the paper's form, ``dynamics_class: final``) or the teacher label (``dynamics_class: label``).
* ``all``: the whole filtered pool, no selection (the paper's baseline); ``rank`` = pool order.

Where this differs from the authors' scripts (each choice documented, the paper's form kept where
it is a formula): the authors ran nltk's ``KMeansClusterer`` (cosine, 2 repeats) to convergence;
the default here is MiniBatchKMeans on unit vectors with a final cosine assignment (minutes become
a second; ``kmeans: spherical`` runs nltk's algorithm, vectorised). Their round-robin visits
clusters by arbitrary k-means ids; here clusters are numbered by their best row. Their rand-k
shuffled each class with ``random.shuffle``; here the seeded keys are drawn in id order, so the
choice does not depend on the input order. Duplicates and short rows are removed from the whole pool
before ranking (the authors skipped them while taking rows: the same choice whenever duplicates
carry the same scores, as identical texts do). For NLI the
paper embeds the premise (default); their ``diverseTopK.py`` embedded premise and hypothesis joined
by a tab, which is ``embed_column: pair``. For amb-k/easy-k one version of their code groups rows
by the best checkpoint's argmax (the teacher label, ``dynamics_class: label``); the paper's form,
the final checkpoint's argmax, is the default.

Shortfall (a class with fewer than k rows), ``shortfall``:

* ``paper`` (default, the authors' rules): rand-k, top-k, amb-k and easy-k fill the classes in the
  order neutral, positive, negative (NLI: neutral, entailment, contradiction) up to the cumulative
  limits k, 2k, 3k, so a short class's shortfall cascades to the next class in that order and the
  last class's shortfall is lost (self-training/pseudo_label_as.py lines 301-323,
  pseudo_label_xnli_cartography.py 274-295). div-k moves only neutral's shortfall, to positive
  (entailment): ``positive takes min(available, k + max(0, k - neutral available))``
  (utils/diverseTopK.py lines 78 and 89-92); the other classes' shortfalls are lost. A task with
  other labels (a recipe's own, binary sentiment) uses its label order instead: the cascade in that
  order, div-k moving the first label's shortfall to the second.
* ``fewer``: every class gives what it has, nothing moves.
* ``redistribute`` (hfaug's own, not the authors'): ``shortfall_to`` (default positive /
  entailment) takes every other class's shortfall, i.e. fills
  ``k + sum of the other classes' shortfalls`` as far as it has rows; the same for every strategy.

Input columns: id, task, text (or premise + hypothesis), lang, soft_label, label, confidence;
for ambiguous/easy: variability and mean_confidence (or checkpoint_probs); optional:
checkpoint_probs, prompt_label (the gold-label data map).
Output columns: the input columns, plus strategy (string), rank (int32, 0 = chosen first within
its class), score (float32, what ranked the row; absent for ``all``) and cluster (int32, div-k).
Output datasets: ``{lang}-{short}-{k}`` (short: randk, topk, divk, ambk, easyk) and ``{lang}-all``.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from . import schema
from .atomic import save_npy
from .errors import HfaugError
from .extras import missing
from .layout import FIGURES_DIR
from .runs import StageContext, StageResult
from .strategies import DYNAMICS_STRATEGIES, STRATEGIES, canonical_strategy, subset_name
from .tasks import Task, get_task

if TYPE_CHECKING:
    import datasets
    import numpy as np

logger = logging.getLogger(__name__)

#: who receives another class's shortfall under ``redistribute``: the authors' "pos" class
DEFAULT_SHORTFALL_TO = {"sentiment": "positive", "nli": "entailment"}
#: the authors' fill order (pseudo_label_as.py, pseudo_label_xnli_cartography.py): neutral, "pos", "neg"
PAPER_ORDER = {"sentiment": ("neutral", "positive", "negative"), "nli": ("neutral", "entailment", "contradiction")}
#: the paper's minimum lengths in whitespace words: sentiment "more than 10", NLI "at least 5"
DEFAULT_MIN_WORDS = {"sentiment": 11, "nli": 5}


@dataclass
class SelectConfig:
    """Which subsets to choose from the teacher-labelled candidates, and how."""

    strategies: list[str] = field(default_factory=lambda: ["random", "top-k", "div-k"], metadata={
        "help": f"Strategies to run: {', '.join(STRATEGIES)} (aliases rand-k, amb-k, easy-k, ...)."})
    budgets: list[int] = field(default_factory=lambda: [2500], metadata={
        "help": "Budgets k: rows per teacher-predicted class (the paper: 2,500 to 27,500)."})
    shortfall: Literal["paper", "fewer", "redistribute"] = field(default="paper", metadata={
        "help": "A class with fewer than k rows: 'paper' (the authors' rules: rand/top/amb/easy cascade the "
                "shortfall neutral -> positive -> negative, div-k moves only neutral's shortfall to positive; a task "
                "with other labels cascades in its own label order); "
                "'fewer' returns fewer; 'redistribute' gives every class's shortfall to shortfall_to."})
    shortfall_to: str | None = field(default=None, metadata={
        "help": "With shortfall: redistribute, the class receiving the shortfall (default: positive for "
                "sentiment, entailment for NLI; a task with other labels: its last label)."})
    dedup: bool = field(default=True, metadata={
        "help": "Drop exact duplicates (by text; premise + hypothesis for NLI)."})
    min_words: int | None = field(default=None, metadata={
        "help": "Minimum whitespace words in every text column (default: the paper's 11 for sentiment, i.e. "
                "more than 10; 5 for NLI premise and hypothesis; none for a task without a preset). 0 switches "
                "the filter off."})
    embedder: str = field(default="sentence-transformers/LaBSE", metadata={
        "help": "sentence-transformers model for div-k (and diversity)."})
    embed_column: str | None = field(default=None, metadata={
        "help": "Column embedded for div-k (default: text; premise for NLI, as in the paper); 'pair' embeds "
                "premise and hypothesis joined by a tab (the authors' diverseTopK.py)."})
    embed_batch_size: int = field(default=64, metadata={"help": "Batch size of the embedder."})
    device: str | None = field(default=None, metadata={"help": "Device of the embedder (default: auto)."})
    n_clusters: int = field(default=25, metadata={
        "help": "k-means clusters per class for div-k (the paper: 25)."})
    kmeans: Literal["minibatch", "spherical"] = field(default="minibatch", metadata={
        "help": "div-k clustering: 'minibatch' (scikit-learn MiniBatchKMeans on L2-normalised embeddings, "
                "rows assigned to the nearest centroid by cosine) or 'spherical' (full Lloyd iterations with "
                "cosine assignment, the algorithm of the nltk KMeansClusterer the paper used; slower)."})
    kmeans_max_iter: int = field(default=100, metadata={"help": "Maximum k-means iterations."})
    kmeans_threads: int = field(default=1, metadata={
        "help": "BLAS/OpenMP threads for k-means (0: the libraries' default). One thread takes about a "
                "second per 43,000 rows and never thrashes a shared CPU; more pay only on huge pools."})
    dynamics_class: Literal["final", "label"] = field(default="final", metadata={
        "help": "Class used by ambiguous/easy: 'final' = the last checkpoint's argmax (the paper), "
                "'label' = the teacher label."})
    languages: list[str] = field(default_factory=list, metadata={
        "help": "Target languages to select for (default: every translated language)."})
    include_english: bool = field(default=False, metadata={
        "help": "Also select from the English (label stage) data when the recipe translates."})
    diversity: bool = field(default=False, metadata={
        "help": "Embed and report the diversity of every selected set even without div-k."})
    figures: bool = field(default=True, metadata={
        "help": "Write the data map and histograms (PNG) for the card."})

    def __post_init__(self):
        if not self.strategies:
            raise HfaugError(f"select.strategies is empty; valid strategies: {', '.join(STRATEGIES)}")
        canonical = []
        for name in self.strategies:
            key = canonical_strategy(name)
            if key not in canonical:
                canonical.append(key)
        self.strategies = canonical
        needs_budget = [s for s in self.strategies if s != "all"]
        if needs_budget and not self.budgets:
            raise ValueError("select.budgets is empty: give at least one k (rows per class)")
        for k in self.budgets:
            if k <= 0:
                raise ValueError(f"select.budgets must be positive rows per class, got {k}")
        self.budgets = sorted(set(self.budgets))
        if self.min_words is not None and self.min_words < 0:
            raise ValueError(f"select.min_words must be >= 0, got {self.min_words}")
        if self.n_clusters < 1:
            raise ValueError(f"select.n_clusters must be >= 1, got {self.n_clusters}")
        if self.kmeans_threads < 0:
            raise ValueError(f"select.kmeans_threads must be >= 0, got {self.kmeans_threads}")
        if self.kmeans_max_iter < 1:
            raise ValueError(f"select.kmeans_max_iter must be >= 1, got {self.kmeans_max_iter}")
        if self.embed_batch_size < 1:
            raise ValueError(f"select.embed_batch_size must be >= 1, got {self.embed_batch_size}")

    @property
    def needs_embeddings(self) -> bool:
        return "div-k" in self.strategies or self.diversity


@dataclass
class Selection:
    """What :func:`select` returns for one language."""

    datasets: dict[str, "datasets.Dataset"]
    dropped: Counter
    metrics: dict[str, Any]
    figures: list[Path] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# filters


def arrow_table(dataset: "datasets.Dataset"):
    """The rows of ``dataset`` as a ``pyarrow.Table`` (zero-copy unless it holds an indices mapping)."""
    if getattr(dataset, "_indices", None) is None:
        return dataset.data.table
    return dataset.with_format("arrow")[:]


def word_counts(strings, cap: int | None = None) -> "np.ndarray":
    """Whitespace words per string, as ``len(s.split())`` counts them (Unicode whitespace), in Arrow.

    With ``cap`` the counts stop at ``cap`` (enough for a minimum-length test, and cheaper).
    """
    import numpy as np
    import pyarrow.compute as pc

    trimmed = pc.utf8_trim_whitespace(strings)
    max_splits = None if cap is None else max(cap - 1, 0)
    # ASCII text (English) takes the cheaper ASCII kernel; both split on runs of whitespace
    is_ascii = pc.all(pc.string_is_ascii(trimmed)).as_py()
    split = pc.ascii_split_whitespace if is_ascii else pc.utf8_split_whitespace
    counts = pc.list_value_length(split(trimmed, max_splits=max_splits)).to_numpy(zero_copy_only=False)
    empty = pc.utf8_length(trimmed).to_numpy(zero_copy_only=False) == 0
    return np.where(empty, 0, counts).astype(np.int64)


def filter_pool(dataset, task: Task, config: SelectConfig) -> tuple["np.ndarray", Counter]:
    """Indices of the rows kept (ascending), and the rows dropped by reason.

    ``duplicate``: the same text (premise and hypothesis for NLI) as an earlier row; the first
    occurrence stays. ``too_short``: a text column with fewer than ``min_words`` whitespace words
    (``len(text.split())``, as the authors' code); a missing text counts as zero words.
    ``dataset`` is a Dataset or a pyarrow Table.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    table = dataset if isinstance(dataset, pa.Table) else arrow_table(dataset)
    n = table.num_rows
    keep = np.ones(n, dtype=bool)
    dropped: Counter = Counter()
    columns = [pc.fill_null(table.column(c).combine_chunks(), "") for c in task.text_columns]
    if config.dedup and n:
        # one integer code per distinct text (Arrow's hash table), combined over the text columns
        code = np.zeros(n, dtype=np.int64)
        for column in columns:
            encoded = column.dictionary_encode()
            code = code * len(encoded.dictionary) + encoded.indices.to_numpy(zero_copy_only=False)
        if len(columns) == 1:
            # Arrow numbers distinct values in order of first appearance: a row is a first
            # occurrence exactly when its code exceeds every earlier code (no sort needed)
            earlier = np.maximum.accumulate(np.r_[-1, code[:-1]])
            keep = code > earlier
        else:
            _, first = np.unique(code, return_index=True)
            keep[:] = False
            keep[first] = True
        dropped["duplicate"] = int(n - keep.sum())
    min_words = DEFAULT_MIN_WORDS.get(task.preset or "", 0) if config.min_words is None else config.min_words
    if min_words > 0 and n:
        short = np.zeros(n, dtype=bool)
        for column in columns:
            short |= word_counts(column, cap=min_words) < min_words
        dropped["too_short"] = int((short & keep).sum())
        keep &= ~short
    return np.flatnonzero(keep), +dropped


# ---------------------------------------------------------------------------------------------
# rankings (pure numpy: every function returns, per class, pool indices in selection order)


def id_ranks(ids) -> "np.ndarray":
    """The rank of each id in ascending string order: the deterministic tie-breaker."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    array = ids if isinstance(ids, (pa.Array, pa.ChunkedArray)) else pa.array(list(ids), type=pa.string())
    return np.asarray(pc.rank(array, sort_keys="ascending", tiebreaker="first"), dtype=np.int64) - 1


def sort_rows(keys: list, ids) -> "np.ndarray":
    """``np.lexsort(keys)`` (last key primary) with remaining ties broken by ``ids`` ascending.

    ``ids`` is either integer ranks (used as the least key) or the id strings (a pyarrow string
    array or a list): then only rows tied on every key are ranked by id, so a million rows never
    need a full string sort.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(ids, np.ndarray) and ids.dtype.kind in "iu":
        return np.lexsort((ids, *keys))
    order = np.lexsort(keys)
    n = len(order)
    if n < 2:
        return order
    same = np.ones(n - 1, dtype=bool)
    for key in keys:
        sorted_key = np.asarray(key)[order]
        same &= sorted_key[1:] == sorted_key[:-1]
    if not same.any():
        return order
    in_tie = np.zeros(n, dtype=bool)
    in_tie[:-1] |= same
    in_tie[1:] |= same
    run = np.cumsum(np.r_[True, ~same])  # tie-run number of each sorted position
    positions = np.flatnonzero(in_tie)
    members = order[positions]
    array = ids if isinstance(ids, (pa.Array, pa.ChunkedArray)) else pa.array(list(ids), type=pa.string())
    tied_ids = array.take(pa.array(members))
    id_rank = np.asarray(pc.rank(tied_ids, sort_keys="ascending", tiebreaker="first"), dtype=np.int64)
    order[positions] = members[np.lexsort((id_rank, run[positions]))]
    return order


def rank_by_score(classes, score, ids, num_labels: int) -> list["np.ndarray"]:
    """Per class, the row indices sorted by ``score`` descending, ties by id ascending (``ids``:
    id strings or integer id ranks). A missing (NaN) score sorts last."""
    import numpy as np

    classes = np.asarray(classes, dtype=np.int64)
    key = np.asarray(score, dtype=np.float64)
    key = np.where(np.isnan(key), -np.inf, key)
    order = sort_rows([-key, classes], ids)
    bounds = np.searchsorted(classes[order], np.arange(num_labels + 1))
    return [order[bounds[c]:bounds[c + 1]] for c in range(num_labels)]


def random_keys(ids, seed: int) -> "np.ndarray":
    """``u ~ U[0, 1)`` per row from ``default_rng(seed)``, drawn in id order (input order does not
    matter). ``ids``: id strings or integer id ranks."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(ids, np.ndarray) and ids.dtype.kind in "iu":
        id_order = np.argsort(ids, kind="stable")
    else:
        array = ids if isinstance(ids, (pa.Array, pa.ChunkedArray)) else pa.array(list(ids), type=pa.string())
        id_order = np.asarray(pc.sort_indices(array), dtype=np.int64)
    u = np.empty(len(id_order), dtype=np.float64)
    u[id_order] = np.random.default_rng(seed).random(len(id_order))
    return u


def normalise(embeddings) -> "np.ndarray":
    """Rows scaled to unit L2 norm (zero rows stay zero): cosine similarity becomes a dot product."""
    import numpy as np

    x = np.asarray(embeddings, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def spherical_kmeans(x, n_clusters: int, seed: int, max_iter: int = 100, tol: float = 1e-6, init=None,
                     ) -> tuple["np.ndarray", "np.ndarray", int]:
    """k-means with cosine distance, as nltk's ``KMeansClusterer(distance=cosine_distance,
    avoid_empty_clusters=True)`` computes it, vectorised.

    Start from ``init`` or ``n_clusters`` distinct rows drawn with ``default_rng(seed)``; repeat:
    assign each row to ``argmax_j cos(x, m_j)``; ``m_j <- (m_j + sum of its rows) / (1 + |rows|)``; stop when
    ``sum_j (1 - cos(m_j_old, m_j_new)) < tol`` or after ``max_iter`` iterations.
    Returns (labels, means, iterations run).
    """
    import numpy as np

    x = np.asarray(x, dtype=np.float32)
    n = len(x)
    k = min(n_clusters, n)
    rng = np.random.default_rng(seed)
    if init is None:
        means = x[rng.choice(n, size=k, replace=False)].astype(np.float64)
    else:
        means = np.array(init, dtype=np.float64)
        k = len(means)
    labels = np.zeros(n, dtype=np.int64)
    iterations = 0
    for iterations in range(1, max_iter + 1):  # noqa: B007 (the count is reported)
        unit = normalise(means)
        labels = np.asarray((x @ unit.T).argmax(axis=1), dtype=np.int64)
        onehot = np.zeros((n, k), dtype=x.dtype)
        onehot[np.arange(n), labels] = 1.0
        sums = (onehot.T @ x).astype(np.float64)  # per-cluster sums as one BLAS call
        counts = np.bincount(labels, minlength=k)[:, None]
        new_means = (means + sums) / (1.0 + counts)
        # nltk's convergence test, in float64: sum over clusters of the cosine distance moved
        old_unit = means / np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-300)
        new_unit = new_means / np.maximum(np.linalg.norm(new_means, axis=1, keepdims=True), 1e-300)
        moved = float((1.0 - (old_unit * new_unit).sum(axis=1)).sum())
        means = new_means
        if moved < tol:
            break
    labels = np.asarray((x @ normalise(means).T).argmax(axis=1), dtype=np.int64)
    return labels, means, iterations


def cluster_cosine(x, n_clusters: int, seed: int, method: str = "minibatch", max_iter: int = 100,
                   ) -> "np.ndarray":
    """Cluster labels of L2-normalised rows ``x`` in cosine geometry.

    ``minibatch``: scikit-learn MiniBatchKMeans on the unit vectors, then every row goes to the
    centroid with the highest cosine (centroids re-normalised), so the partition is a cosine one.
    ``spherical``: :func:`spherical_kmeans` (nltk's algorithm).
    """
    import numpy as np

    n = len(x)
    k = min(n_clusters, n)
    if k <= 1:
        return np.zeros(n, dtype=np.int64)
    if k == n:
        return np.arange(n, dtype=np.int64)
    if method == "spherical":
        return spherical_kmeans(x, k, seed, max_iter=max_iter)[0]
    import warnings

    from sklearn.cluster import MiniBatchKMeans

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate points -> "fewer distinct clusters" warnings
        km = MiniBatchKMeans(n_clusters=k, random_state=seed, n_init=3, batch_size=2048,
                             max_iter=max_iter).fit(x)
    centers = normalise(km.cluster_centers_)
    return np.asarray((x @ centers.T).argmax(axis=1), dtype=np.int64)


def diverse_order(classes, confidence, ids, embeddings, num_labels: int, *, n_clusters: int = 25,
                  seed: int = 42, method: str = "minibatch", max_iter: int = 100, threads: int = 1,
                  ) -> tuple[list["np.ndarray"], "np.ndarray"]:
    """div-k: per class, k-means on the unit embeddings; each cluster sorted by ``confidence``
    descending (ties by id); round-robin over the clusters: round ``r`` takes the ``r``-th best row of
    cluster 0, 1, 2, ... (clusters that ran out are skipped). Clusters are renumbered by their best row
    (highest confidence, then lowest id). Returns (per-class orders, cluster id of every row).
    ``ids``: id strings or integer id ranks. ``threads`` caps the BLAS/OpenMP threads of the
    clustering (0: no cap)."""
    import contextlib

    import numpy as np
    import pyarrow as pa

    classes = np.asarray(classes, dtype=np.int64)
    confidence = np.asarray(confidence, dtype=np.float64)
    conf_key = np.where(np.isnan(confidence), -np.inf, confidence)
    numeric_ids = isinstance(ids, np.ndarray) and ids.dtype.kind in "iu"
    if not numeric_ids and not isinstance(ids, (pa.Array, pa.ChunkedArray)):
        ids = pa.array(list(ids), type=pa.string())
    x = normalise(embeddings)
    cluster = np.full(len(classes), -1, dtype=np.int64)
    orders = []
    for c in range(num_labels):
        rows = np.flatnonzero(classes == c)
        if len(rows) == 0:
            orders.append(rows)
            continue
        if threads:
            from threadpoolctl import threadpool_limits

            limit = threadpool_limits(limits=threads)
        else:
            limit = contextlib.nullcontext()
        with limit:
            raw = cluster_cosine(x[rows], n_clusters, seed, method, max_iter)
        # within each cluster: confidence descending, id ascending
        class_ids = ids[rows] if numeric_ids else ids.take(pa.array(rows))
        by_cluster = sort_rows([-conf_key[rows], raw], class_ids)
        sorted_raw = raw[by_cluster]
        starts = np.flatnonzero(np.r_[True, sorted_raw[1:] != sorted_raw[:-1]])
        # renumber clusters by their best row (the first of each group), best first
        best = by_cluster[starts]
        best_ids = class_ids[best] if numeric_ids else class_ids.take(pa.array(best))
        renumber = np.empty(raw.max() + 1, dtype=np.int64)
        renumber[sorted_raw[starts]] = np.argsort(sort_rows([-conf_key[rows][best]], best_ids))
        group_sizes = np.diff(np.r_[starts, len(rows)])
        position = np.arange(len(rows)) - np.repeat(starts, group_sizes)
        local_cluster = renumber[sorted_raw]
        round_robin = np.lexsort((local_cluster, position))
        orders.append(rows[by_cluster[round_robin]])
        cluster[rows[by_cluster]] = local_cluster
    return orders, cluster


def take_counts(available: list[int], k: int, policy: str, receiver: int | None,
                order: tuple[int, ...] | None = None, strategy: str = "top-k") -> list[int]:
    """Rows taken per class for budget ``k``.

    ``fewer``: ``min(k, available)``. ``redistribute``: the receiver takes
    ``min(available, k + sum over other classes of max(0, k - available))``. ``paper``: with
    ``order`` = (neutral, pos, neg) class ids, div-k gives pos ``min(available, k + max(0, k -
    available[neutral]))``; every other strategy fills the classes in ``order`` up to the
    cumulative limits k, 2k, 3k (pseudo_label_as.py), so a shortfall cascades down the order."""
    take = [min(k, a) for a in available]
    if policy == "paper" and order is not None:
        neutral, pos = order[0], order[1]
        if strategy == "div-k":
            take[pos] = min(available[pos], k + max(0, k - available[neutral]))
            return take
        total = 0
        for step, c in enumerate(order, start=1):
            take[c] = min(available[c], step * k - total)
            total += take[c]
        return take
    if policy == "redistribute" and receiver is not None:
        missing = sum(max(0, k - a) for c, a in enumerate(available) if c != receiver)
        take[receiver] = min(available[receiver], k + missing)
    return take


def mean_pairwise_cosine_distance(embeddings) -> float:
    """Diversity of a set: ``mean_{i != j} (1 - cos(e_i, e_j))``, computed exactly in O(n d) as
    ``1 - (||sum_i u_i||^2 - sum_i ||u_i||^2) / (n (n - 1))`` with unit vectors ``u``."""
    import numpy as np

    u = normalise(embeddings).astype(np.float64)
    n = len(u)
    if n < 2:
        return float("nan")
    total = u.sum(axis=0)
    same = float((u * u).sum())
    return float(1.0 - (total @ total - same) / (n * (n - 1)))


# ---------------------------------------------------------------------------------------------
# embeddings


def embed_texts(texts: list[str], model_ref: str, *, batch_size: int = 64, device: str | None = None,
                cache_dir: str | Path | None = None) -> "np.ndarray":
    """Unit sentence embeddings ``[len(texts), dim]`` (float32); each distinct text is embedded
    once, and the result is cached in ``cache_dir`` under a hash of the model and the texts."""
    import numpy as np


    distinct = list(dict.fromkeys(texts))
    cache_path = None
    if cache_dir is not None:
        digest = hashlib.sha256(model_ref.encode())
        for t in distinct:
            digest.update(t.encode("utf-8", "surrogatepass") + b"\x00")
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        cache_path = Path(cache_dir) / f"embeddings-{digest.hexdigest()[:20]}.npy"
        if cache_path.is_file():
            logger.info("embeddings from cache %s", cache_path)
            unique = np.load(cache_path)
            return _expand(unique, distinct, texts)
    model = _embedder(model_ref, device)
    logger.info("embedding %d distinct texts with %s", len(distinct), model_ref)
    unique = model.encode(distinct, batch_size=batch_size, convert_to_numpy=True, normalize_embeddings=True,
                          show_progress_bar=len(distinct) > 10 * batch_size).astype(np.float32)
    if cache_path is not None:
        save_npy(cache_path, unique)
    return _expand(unique, distinct, texts)


@functools.lru_cache(maxsize=2)
def _embedder(model_ref: str, device: str | None):
    """The sentence embedder, loaded once per process (select embeds every language with it)."""
    from .config import resolve

    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as e:
        raise missing("div-k", e) from None
    try:
        return SentenceTransformer(resolve(model_ref), device=device)
    except OSError as e:
        raise HfaugError(f"select.embedder '{model_ref}' could not be loaded: {e}") from None


def _expand(unique, distinct: list[str], texts: list[str]):
    import numpy as np

    index = {t: i for i, t in enumerate(distinct)}
    return unique[np.fromiter((index[t] for t in texts), dtype=np.int64, count=len(texts))]


# ---------------------------------------------------------------------------------------------
# the stage function


class _Pool:
    """The filtered pool's columns, read straight from Arrow (no per-row Python, no copies of the
    rows left out): ``keep`` indexes the input table's rows that passed the filters."""

    def __init__(self, table, keep):
        self.table = table
        self.keep = None if len(keep) == table.num_rows else keep
        self.size = len(keep)
        self.column_names = table.column_names

    def __contains__(self, name: str) -> bool:
        return name in self.column_names

    def arrow(self, name: str):
        column = self.table.column(name).combine_chunks()
        return column if self.keep is None else column.take(self.keep)

    def floats(self, name: str) -> "np.ndarray":
        import numpy as np

        return np.asarray(self.arrow(name).to_numpy(zero_copy_only=False), dtype=np.float64)

    def strings(self, name: str) -> list:
        return self.arrow(name).to_pylist()

    def rows(self, chosen):
        """The pool rows ``chosen`` (pool positions) as a pyarrow Table."""
        import numpy as np

        chosen = np.asarray(chosen, dtype=np.int64)
        return self.table.take(chosen if self.keep is None else self.keep[chosen])


def _nested_floats(array, inner_length: int, what: str) -> "np.ndarray":
    """A list<float> (or list<list<float>>) Arrow array as a float64 array ``[rows, ..., inner_length]``."""
    import numpy as np
    import pyarrow as pa

    n = len(array)
    depth = 0
    values = array
    while any(check(values.type) for check in (pa.types.is_list, pa.types.is_large_list,
                                               pa.types.is_fixed_size_list)):
        values = values.flatten()
        depth += 1
    flat = np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.float64)
    if n == 0:
        return np.zeros((0, 1, inner_length) if depth == 2 else (0, inner_length))
    if depth == 2:
        middle = len(array.flatten()) // n
        ok = middle > 0 and len(array.flatten()) == n * middle and len(flat) == n * middle * inner_length
        shape = (n, middle, inner_length)
    else:
        ok = len(flat) == n * inner_length
        shape = (n, inner_length)
    if not ok:
        raise HfaugError(f"select: every row's {what} must hold {inner_length} probabilities per entry "
                         f"(the task's labels) and, for checkpoint_probs, the same number of checkpoints; "
                         f"rerun the label stage")
    return flat.reshape(shape)


def _last_checkpoint(array, num_labels: int) -> "np.ndarray":
    """``P[:, -1, :]`` read from a list<list<float>> Arrow array without converting every checkpoint."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    lengths = pc.list_value_length(array).to_numpy(zero_copy_only=False)
    if len(lengths) and lengths.min() < 1:
        raise HfaugError("select: a row has no checkpoint_probs; rerun the label stage with dynamics: true")
    last = array.flatten().take(pa.array(np.cumsum(lengths) - 1))
    return _nested_floats(last, num_labels, schema.CHECKPOINT_PROBS)


def select(dataset: "datasets.Dataset", config: SelectConfig | None = None, task: str | Task = "sentiment", *,
           seed: int = 42, lang: str | None = None, embeddings=None, cache_dir: str | Path | None = None,
           figures_dir: str | Path | None = None) -> Selection:
    """Run every configured strategy and budget on one language's teacher-labelled pool.

    ``embeddings`` (``[len(dataset), dim]``) skips the embedder for div-k. Returns a
    :class:`Selection` whose datasets are named ``{lang}-{short}-{k}`` / ``{lang}-all``.
    """
    import numpy as np

    from .datamaps import dynamics, gold_dynamics, write_figures

    config = config or SelectConfig()
    task = get_task(task) if isinstance(task, str) else task
    schema.require_columns(dataset, [schema.SOFT_LABEL, schema.ID, *task.text_columns], "select")
    if lang is None:
        lang = dataset[0][schema.LANG] if schema.LANG in dataset.column_names and len(dataset) else "en"
    strategies = config.strategies
    uses_dynamics = [s for s in strategies if s in DYNAMICS_STRATEGIES]
    if uses_dynamics and schema.CHECKPOINT_PROBS not in dataset.column_names:
        for column in (schema.VARIABILITY, schema.MEAN_CONFIDENCE):
            if column not in dataset.column_names:
                raise HfaugError(
                    f"select: strategy '{uses_dynamics[0]}' needs the '{column}' column (or "
                    f"checkpoint_probs); "
                    f"it is written by the label stage with dynamics: true"
                )
    receiver = None
    order = None
    if config.shortfall == "paper":
        # the authors' order only for the paper's label sets; a task of the recipe's own (or a
        # preset with other labels) fills in its own label order
        names = PAPER_ORDER[task.preset] if task.is_paper else task.labels
        order = tuple(task.label_id(name, "select.shortfall") for name in names)
    if config.shortfall == "redistribute":
        paper_default = DEFAULT_SHORTFALL_TO[task.preset] if task.is_paper else None
        name = config.shortfall_to or paper_default or task.labels[-1]
        receiver = task.label_id(name, "select.shortfall_to")

    table = arrow_table(dataset)
    rows_in = table.num_rows
    keep, dropped = filter_pool(table, task, config)
    pool = _Pool(table, keep)
    if rows_in and not len(keep):
        logger.warning("select: the filters dropped all %d rows of '%s' (%s); see select.min_words and "
                       "select.dedup", rows_in, lang, ", ".join(f"{k}={v}" for k, v in dropped.items()))
    if embeddings is not None:
        embeddings = np.asarray(embeddings)
        if len(embeddings) != rows_in:
            raise HfaugError(f"select: got {len(embeddings)} embeddings for {rows_in} rows")
        embeddings = embeddings[keep]
    n = pool.size
    num_labels = task.num_labels

    ids = pool.arrow(schema.ID)  # tie-breaker: only tied rows are ever sorted by id
    soft = None
    if schema.LABEL in pool:
        classes = pool.floats(schema.LABEL).astype(np.int64)
    else:
        soft = _nested_floats(pool.arrow(schema.SOFT_LABEL), num_labels, schema.SOFT_LABEL)
        classes = soft.argmax(axis=1)
    if schema.CONFIDENCE in pool:
        confidence = pool.floats(schema.CONFIDENCE)
    else:
        if soft is None:
            soft = _nested_floats(pool.arrow(schema.SOFT_LABEL), num_labels, schema.SOFT_LABEL)
        confidence = soft.max(axis=1)

    has_columns = schema.VARIABILITY in pool and schema.MEAN_CONFIDENCE in pool
    has_probs = schema.CHECKPOINT_PROBS in pool
    wants_gold = bool(config.figures and figures_dir) and schema.PROMPT_LABEL in pool
    probs = None
    if has_probs and ((uses_dynamics and not has_columns) or wants_gold or (figures_dir and not has_columns)):
        probs = _nested_floats(pool.arrow(schema.CHECKPOINT_PROBS), num_labels, schema.CHECKPOINT_PROBS)
    variability = mean_conf = None
    if has_columns:
        variability, mean_conf = pool.floats(schema.VARIABILITY), pool.floats(schema.MEAN_CONFIDENCE)
    elif probs is not None:
        stats = dynamics(probs)
        variability, mean_conf = stats.variability, stats.mean_confidence
    dyn_classes = classes
    if uses_dynamics and config.dynamics_class == "final":
        if probs is not None:
            dyn_classes = probs[:, -1, :].argmax(axis=-1)
        elif has_probs:
            dyn_classes = _last_checkpoint(pool.arrow(schema.CHECKPOINT_PROBS), num_labels).argmax(axis=-1)
        else:
            logger.warning("select: no checkpoint_probs, so ambiguous/easy group rows by the teacher label")

    if config.needs_embeddings and embeddings is None and n:
        column = config.embed_column or task.text_columns[0]
        if column == "pair":
            texts = ["\t".join(parts) for parts in zip(*(pool.strings(c) for c in task.text_columns))]
        else:
            schema.require_columns(dataset, [column], "select")
            texts = pool.strings(column)
        embeddings = embed_texts(texts, config.embedder, batch_size=config.embed_batch_size,
                                 device=config.device, cache_dir=cache_dir)

    base_fingerprint = getattr(dataset, "_fingerprint", "") or ""
    features = dataset.features

    def output(name: str, chosen, strategy: str, ranks, score=None, extra=None):
        fingerprint = hashlib.sha256(f"{base_fingerprint}|{name}|{config!r}|{seed}".encode()).hexdigest()[:16]
        return _output(pool.rows(chosen), features, strategy, ranks, score, extra or {}, fingerprint)

    outputs: dict[str, "datasets.Dataset"] = {}
    metrics: dict[str, Any] = {}
    for strategy in strategies:
        extra_columns: dict[str, "np.ndarray"] = {}
        group = classes
        if strategy == "all":
            chosen = np.arange(n)
            ranks = np.zeros(n, dtype=np.int32)
            for c in range(num_labels):
                mask = classes == c
                ranks[mask] = np.arange(int(mask.sum()), dtype=np.int32)
            name = subset_name(lang, strategy)
            outputs[name] = output(name, chosen, strategy, ranks)
            metrics[name] = _set_metrics(classes[chosen], task, embeddings, chosen)
            continue
        if strategy == "random":
            score = random_keys(ids, seed)
            orders = rank_by_score(classes, score, ids, num_labels)
        elif strategy == "top-k":
            score = confidence
            orders = rank_by_score(classes, score, ids, num_labels)
        elif strategy == "div-k":
            score = confidence
            orders, cluster = diverse_order(classes, confidence, ids, embeddings, num_labels,
                                            n_clusters=config.n_clusters, seed=seed, method=config.kmeans,
                                            max_iter=config.kmeans_max_iter, threads=config.kmeans_threads)
            extra_columns["cluster"] = cluster.astype(np.int32)
        else:  # ambiguous / easy
            score = variability if strategy == "ambiguous" else mean_conf
            group = dyn_classes
            orders = rank_by_score(group, score, ids, num_labels)
        available = [len(o) for o in orders]
        for k in config.budgets:
            take = take_counts(available, k, config.shortfall, receiver, order, strategy)
            chosen = np.concatenate([orders[c][:take[c]] for c in range(num_labels)]).astype(np.int64)
            ranks = np.concatenate([np.arange(t, dtype=np.int32) for t in take])
            name = subset_name(lang, strategy, k)
            outputs[name] = output(name, chosen, strategy, ranks, np.asarray(score, dtype=np.float32)[chosen],
                                   {key: v[chosen] for key, v in extra_columns.items()})
            m = _set_metrics(classes[chosen], task, embeddings, chosen)
            short = {task.labels[c]: k - take[c] for c in range(num_labels) if take[c] < k}
            if short:
                m["short"] = short
            metrics[name] = m

    figures: list[Path] = []
    pool_metrics: dict[str, Any] = {"rows_in": rows_in, "rows": n, "labels": _label_counts(classes, task)}
    if dropped:
        pool_metrics["dropped"] = dict(dropped)
    if config.figures and figures_dir is not None:
        gold = None
        if probs is not None and schema.PROMPT_LABEL in pool and n:
            prompt = pool.arrow(schema.PROMPT_LABEL)
            values = np.asarray(prompt.to_numpy(zero_copy_only=False), dtype=np.float64)
            # the gold-label map needs a gold label (the prompt's) on every row
            if prompt.null_count == 0 and (values >= 0).all():
                gold = gold_dynamics(probs, values.astype(np.int64))
                pool_metrics["gold_map"] = {
                    "mean_confidence": round(float(gold.confidence.mean()), 6),
                    "mean_variability": round(float(gold.variability.mean()), 6),
                    "mean_correctness": round(float(gold.correctness.mean()), 6),
                }
        figures = write_figures(Path(figures_dir), lang, task.labels, classes=classes, confidence=confidence,
                                variability=variability, mean_confidence=mean_conf, gold=gold, seed=seed)
    metrics["pool"] = {lang: pool_metrics}
    return Selection(datasets=outputs, dropped=dropped, metrics=metrics, figures=figures)


def _label_counts(classes, task: Task) -> dict[str, int]:
    import numpy as np

    counts = np.bincount(np.asarray(classes, dtype=np.int64), minlength=task.num_labels)
    return {name: int(counts[i]) for i, name in enumerate(task.labels)}


def _set_metrics(classes, task: Task, embeddings, chosen) -> dict[str, Any]:
    out: dict[str, Any] = {"rows": int(len(chosen)), "labels": _label_counts(classes, task)}
    if embeddings is not None and len(chosen) > 1:
        out["diversity"] = round(mean_pairwise_cosine_distance(embeddings[chosen]), 6)
    return out


def _output(table, features, strategy: str, ranks, score, extra: dict, fingerprint: str,
            ) -> "datasets.Dataset":
    """The chosen rows (a pyarrow Table, in selection order) plus strategy, rank, score and extra
    columns, as an in-memory Dataset with the input's features."""
    import datasets
    import numpy as np
    import pyarrow as pa
    from datasets.table import InMemoryTable

    features = features.copy()
    n = table.num_rows
    columns = {schema.STRATEGY: (pa.array([strategy] * n, type=pa.string()), datasets.Value("string")),
               schema.RANK: (pa.array(np.asarray(ranks, dtype=np.int32)), datasets.Value("int32"))}
    if score is not None:
        columns["score"] = (pa.array(np.asarray(score, dtype=np.float32)), datasets.Value("float32"))
    for name, values in extra.items():
        columns[name] = (pa.array(np.asarray(values, dtype=np.int32)), datasets.Value("int32"))
    for name, (array, feature) in columns.items():
        if name in table.column_names:  # re-selecting a selection: the new ranking wins
            table = table.drop_columns([name])
            del features[name]
        table = table.append_column(name, array)
        features[name] = feature
    table = table.replace_schema_metadata(None)
    return datasets.Dataset(InMemoryTable(table), info=datasets.DatasetInfo(features=features),
                            fingerprint=fingerprint)


# ---------------------------------------------------------------------------------------------
# the pipeline adapter


def _inputs(ctx: StageContext) -> list[tuple[str, "datasets.Dataset"]]:
    from .config import ENGLISH_TEACHER, TRANSLATED_TEACHER

    config: SelectConfig = ctx.config
    setting = ctx.recipe.setting
    if setting == ENGLISH_TEACHER or not ctx.recipe.has("translate"):
        return [("en", ctx.input("label"))]
    if setting == TRANSLATED_TEACHER:
        # the labelled translations, one pool per language: selection (and div-k's embeddings)
        # on the target-language text, as in the authors' create_diffKs.py
        return _by_language(ctx.input("label"), config.languages)
    names = ctx.run.outputs("translate")
    if config.languages:
        unknown = [lang for lang in config.languages if lang not in names]
        if unknown:
            raise HfaugError(f"select.languages: no translation into '{unknown[0]}'; translated languages: "
                             f"{', '.join(names) or 'none'}")
        names = [name for name in names if name in config.languages]
    inputs = [(name, ctx.input("translate", name)) for name in names]
    if config.include_english:
        inputs.insert(0, ("en", ctx.input("label")))
    if not inputs:
        raise HfaugError("select: the translate stage wrote no languages; check translate.languages")
    return inputs


def _by_language(data: "datasets.Dataset", languages: list[str]) -> list[tuple[str, "datasets.Dataset"]]:
    """The label stage's translated rows split by their ``lang`` column, in first-seen order."""
    schema.require_columns(data, [schema.LANG], "select")
    langs = data[schema.LANG]
    names = list(dict.fromkeys(langs))
    unknown = [lang for lang in languages if lang not in names]
    if unknown:
        raise HfaugError(f"select.languages: no labelled translation into '{unknown[0]}'; translated languages: "
                         f"{', '.join(names) or 'none'}")
    chosen = [name for name in names if not languages or name in languages]
    if not chosen:
        raise HfaugError("select: the label stage wrote no translated rows; check translate.languages")
    rows: dict[str, list[int]] = {name: [] for name in chosen}
    for i, lang in enumerate(langs):
        if lang in rows:
            rows[lang].append(i)
    return [(name, data.select(rows[name])) for name in chosen]


def run(ctx: StageContext) -> StageResult:
    config: SelectConfig = ctx.config
    datasets_out: dict = {}
    dropped: Counter = Counter()
    metrics: dict[str, Any] = {}
    rows_in = 0
    figures_dir = ctx.out_dir / FIGURES_DIR
    for lang, dataset in _inputs(ctx):
        logger.info("select: %s, %d candidates, strategies %s, budgets %s", lang, len(dataset),
                    ", ".join(config.strategies), ", ".join(map(str, config.budgets)))
        rows_in += len(dataset)
        result = select(dataset, config, ctx.task, seed=ctx.seed, lang=lang, cache_dir=ctx.cache_dir,
                        figures_dir=figures_dir if config.figures else None)
        datasets_out.update(result.datasets)
        dropped.update(result.dropped)
        pool = result.metrics.pop("pool")
        metrics.setdefault("pool", {}).update(pool)
        metrics.update(result.metrics)
    final_dir = ctx.run.stage_dir(ctx.stage)
    extra: dict[str, Any] = {"next": [f"{len(datasets_out)} selected subsets in {final_dir}: "
                                      f"{', '.join(datasets_out)}"]}
    for line in _shortfall_lines(metrics):  # on the console, not only in the manifest
        logger.warning("select: %s", line)
        extra["next"].append(line)
    if config.figures:
        extra["figures"] = sorted(p.name for p in figures_dir.glob("*.png"))
        extra["next"].append(f"data maps and histograms for the dataset card: {final_dir / FIGURES_DIR}")
    return StageResult(datasets=datasets_out, dropped=dropped, rows_in=rows_in, metrics=metrics, extra=extra)


def _shortfall_lines(metrics: dict[str, Any]) -> list[str]:
    """One line per subset whose budget is larger than what its pool had for some class."""
    lines = []
    for name, m in metrics.items():
        if isinstance(m, dict) and m.get("short"):
            missing = ", ".join(f"{label} {n}" for label, n in m["short"].items())
            lines.append(f"{name}: the budget is larger than the pool; {m.get('rows', 0)} rows selected, short by "
                         f"{missing} (lower select.budgets or generate more candidates)")
    return lines

"""Select stage: each strategy's choice pinned on hand-made pools, the data-map statistics against
numpy, filters, shortfall, the CLI errors, and a run through the pipeline with the tiny embedder."""

from __future__ import annotations

import json

import datasets
import numpy as np
import pytest
import yaml

from hfaug import cli, datamaps, pipeline
from hfaug.config import load_recipe
from hfaug.errors import HfaugError
from hfaug.runs import Run, StageResult, execute
from hfaug.select import (
    SelectConfig,
    cluster_cosine,
    diverse_order,
    mean_pairwise_cosine_distance,
    select,
    spherical_kmeans,
    take_counts,
)
from hfaug.tasks import get_task

SENT = get_task("sentiment")  # negative, neutral, positive
NLI = get_task("nli")
NEG, NEU, POS = 0, 1, 2
LONG = " and the rest of this sentence is long enough to pass the filter"  # 13 words


def soft(label: int, conf: float) -> list[float]:
    rest = (1.0 - conf) / 2
    return [conf if i == label else rest for i in range(3)]


def pool(rows, task=SENT, lang="hi", **extra_columns):
    """rows: (id, label, confidence[, text]) -> a select input dataset."""
    data = {"id": [], "task": [], "lang": [], "soft_label": [], "label": [], "confidence": []}
    texts = {c: [] for c in task.text_columns}
    for row in rows:
        rid, label, conf = row[:3]
        text = row[3] if len(row) > 3 else f"{rid}{LONG}"
        data["id"].append(rid)
        data["task"].append(task.name)
        data["lang"].append(lang)
        data["soft_label"].append(soft(label, conf))
        data["label"].append(label)
        data["confidence"].append(conf)
        for c in task.text_columns:
            texts[c].append(text if c != "hypothesis" else f"hypothesis of {text}")
    data.update(texts)
    data.update(extra_columns)
    features = datasets.Features({
        "id": datasets.Value("string"), "task": datasets.Value("string"), "lang": datasets.Value("string"),
        "soft_label": datasets.Sequence(datasets.Value("float32")),
        "label": datasets.ClassLabel(names=list(task.labels)), "confidence": datasets.Value("float32"),
        **{c: datasets.Value("string") for c in task.text_columns},
    })
    for name, values in extra_columns.items():
        features[name] = datasets.Dataset.from_dict({name: values}).features[name]
    return datasets.Dataset.from_dict(data, features=features)


def ids(ds) -> list[str]:
    return list(ds["id"])


def brute_diversity(texts, embedder) -> float:
    """mean_{i != j} (1 - cos(e_i, e_j)) over the texts' embeddings, pair by pair, with the
    sentence-transformers model ``embedder`` called here (not through select's embedding cache)."""
    e = embedder.encode(list(texts), convert_to_numpy=True).astype(np.float64)
    u = e / np.linalg.norm(e, axis=1, keepdims=True)
    n = len(u)
    return float(np.mean([1 - u[i] @ u[j] for i in range(n) for j in range(n) if i != j]))


def cfg(**kw) -> SelectConfig:
    kw.setdefault("figures", False)
    return SelectConfig(**kw)


# ---------------------------------------------------------------------------------------------
# top-k, random, all


def test_top_k_sorts_by_confidence_and_breaks_ties_by_id():
    rows = [("n3", NEG, 0.9), ("n1", NEG, 0.9), ("n2", NEG, 0.5), ("n0", NEG, 0.7),
            ("u1", NEU, 0.6), ("u0", NEU, 0.8), ("p0", POS, 0.4), ("p1", POS, 0.95), ("p2", POS, 0.95)]
    out = select(pool(rows), cfg(strategies=["top-k"], budgets=[2], shortfall="fewer"), SENT).datasets
    ds = out["hi-topk-2"]
    assert ids(ds) == ["n1", "n3", "u0", "u1", "p1", "p2"]
    assert list(ds["rank"]) == [0, 1, 0, 1, 0, 1]
    assert list(ds["strategy"]) == ["top-k"] * 6
    assert np.allclose(ds["score"], [0.9, 0.9, 0.8, 0.6, 0.95, 0.95])
    assert ds.features["rank"] == datasets.Value("int32")
    assert ds.features["label"].names == list(SENT.labels)


def test_top_k_does_not_depend_on_input_order():
    rng = np.random.default_rng(3)
    rows = [(f"r{i:03d}", int(rng.integers(3)), float(np.round(rng.random(), 1))) for i in range(60)]
    config = cfg(strategies=["top-k", "random"], budgets=[5])
    a = select(pool(rows), config, SENT, seed=7).datasets
    b = select(pool(rows[::-1]), config, SENT, seed=7).datasets
    for name in a:
        assert ids(a[name]) == ids(b[name]), name


def test_sort_rows_breaks_ties_by_id_strings_like_id_ranks():
    from hfaug.select import id_ranks, sort_rows

    rng = np.random.default_rng(8)
    n = 500
    ids = [f"x{v:06d}" for v in rng.permutation(n)]
    classes = rng.integers(0, 3, n)
    score = rng.integers(0, 5, n).astype(float)  # many ties
    by_strings = sort_rows([-score, classes], ids)
    by_ranks = sort_rows([-score, classes], id_ranks(ids))
    assert by_strings.tolist() == by_ranks.tolist()
    assert by_strings.tolist() == sorted(range(n), key=lambda i: (classes[i], -score[i], ids[i]))


def test_random_is_a_seeded_shuffle_per_class():
    rows = [(f"r{i:02d}", i % 3, 0.5 + i / 200) for i in range(45)]
    config = cfg(strategies=["random"], budgets=[3, 15])
    one = select(pool(rows), config, SENT, seed=1).datasets
    again = select(pool(rows[::-1]), config, SENT, seed=1).datasets
    other = select(pool(rows), config, SENT, seed=2).datasets
    assert ids(one["hi-randk-3"]) == ids(again["hi-randk-3"])
    assert ids(one["hi-randk-3"]) != ids(other["hi-randk-3"])
    # the direct computation: u ~ U[0,1) from default_rng(seed), drawn in id order, descending per class
    u = dict(zip(sorted(r[0] for r in rows), np.random.default_rng(1).random(len(rows))))
    expected = []
    for c in range(3):
        members = sorted((r[0] for r in rows if r[1] == c), key=lambda i: -u[i])
        expected += members[:3]
    assert ids(one["hi-randk-3"]) == expected
    # k = 15 is the whole pool of each class: every row, and the 3-budget is its prefix per class
    full = one["hi-randk-15"]
    assert sorted(ids(full)) == sorted(r[0] for r in rows)
    for c in range(3):
        assert [i for i, lab in zip(ids(full), full["label"]) if lab == c][:3] == expected[3 * c:3 * c + 3]


def test_all_keeps_the_filtered_pool_in_order():
    rows = [("a", NEG, 0.9), ("b", POS, 0.8), ("c", NEG, 0.7), ("d", NEU, 0.6, "too short")]
    result = select(pool(rows), cfg(strategies=["all"]), SENT)
    ds = result.datasets["hi-all"]
    assert ids(ds) == ["a", "b", "c"]
    assert list(ds["rank"]) == [0, 0, 1]
    assert "score" not in ds.column_names
    assert result.dropped == {"too_short": 1}


# ---------------------------------------------------------------------------------------------
# shortfall and budgets larger than the pool


def test_shortfall_fewer_and_redistribute_to_positive():
    rows = ([(f"n{i}", NEG, 0.9 - i / 100) for i in range(6)] + [("u0", NEU, 0.7), ("u1", NEU, 0.6)]
            + [(f"p{i}", POS, 0.9 - i / 100) for i in range(8)])
    fewer = select(pool(rows), cfg(strategies=["top-k"], budgets=[4], shortfall="fewer"), SENT)
    ds = fewer.datasets["hi-topk-4"]
    assert ids(ds) == ["n0", "n1", "n2", "n3", "u0", "u1", "p0", "p1", "p2", "p3"]
    assert fewer.metrics["hi-topk-4"]["short"] == {"neutral": 2}
    redistributed = select(pool(rows), cfg(strategies=["top-k"], budgets=[4], shortfall="redistribute"), SENT)
    ds = redistributed.datasets["hi-topk-4"]
    assert ids(ds) == ["n0", "n1", "n2", "n3", "u0", "u1", "p0", "p1", "p2", "p3", "p4", "p5"]
    assert list(ds["rank"]) == [0, 1, 2, 3, 0, 1, 0, 1, 2, 3, 4, 5]
    assert redistributed.metrics["hi-topk-4"]["labels"] == {"negative": 4, "neutral": 2, "positive": 6}
    to_negative = select(pool(rows), cfg(strategies=["top-k"], budgets=[4], shortfall="redistribute",
                                         shortfall_to="negative"), SENT)
    assert to_negative.metrics["hi-topk-4"]["labels"] == {"negative": 6, "neutral": 2, "positive": 4}


def test_paper_shortfall_cascades_for_top_k_and_moves_only_neutral_for_div_k():
    """The authors' rules (pseudo_label_as.py 301-323, diverseTopK.py 89-92): rand/top/amb/easy fill
    neutral, positive, negative up to k, 2k, 3k; div-k gives only neutral's shortfall to positive."""
    rows = ([(f"n{i}", NEG, 0.9 - i / 100) for i in range(8)] + [("u0", NEU, 0.7), ("u1", NEU, 0.6)]
            + [(f"p{i}", POS, 0.9 - i / 100) for i in range(5)])
    paper = select(pool(rows), cfg(strategies=["top-k", "random", "div-k"], budgets=[4], n_clusters=2), SENT,
                   embeddings=np.random.default_rng(0).normal(size=(len(rows), 8)))
    assert SelectConfig().shortfall == "paper"
    # neutral 2 (2 short) -> positive may take 6 but has 5 -> negative fills up to 3k = 12: 5
    for name in ("hi-topk-4", "hi-randk-4"):
        assert paper.metrics[name]["labels"] == {"negative": 5, "neutral": 2, "positive": 5}, name
    assert ids(paper.datasets["hi-topk-4"])[:5] == ["n0", "n1", "n2", "n3", "n4"]
    # div-k: positive takes k + neutral's shortfall = 6 (has 5); negative's budget stays k
    assert paper.metrics["hi-divk-4"]["labels"] == {"negative": 4, "neutral": 2, "positive": 5}
    # a short negative (the last class) loses its shortfall under the paper's rules
    short_neg = [(f"n{i}", NEG, 0.9) for i in range(2)] + [(f"u{i}", NEU, 0.8) for i in range(8)] + \
        [(f"p{i}", POS, 0.9 - i / 100) for i in range(8)]
    out = select(pool(short_neg), cfg(strategies=["top-k", "div-k"], budgets=[4], n_clusters=2), SENT,
                 embeddings=np.random.default_rng(0).normal(size=(len(short_neg), 8))).metrics
    assert out["hi-topk-4"]["labels"] == out["hi-divk-4"]["labels"] == {"negative": 2, "neutral": 4, "positive": 4}
    # hfaug's redistribute policy differs: positive takes every class's shortfall, for div-k too
    other = select(pool(rows), cfg(strategies=["top-k", "div-k"], budgets=[4], n_clusters=2,
                                   shortfall="redistribute"), SENT, embeddings=np.random.default_rng(0).normal(size=(len(rows), 8))).metrics
    assert other["hi-topk-4"]["labels"] == other["hi-divk-4"]["labels"] == {"negative": 4, "neutral": 2,
                                                                          "positive": 5}


def test_paper_shortfall_order_for_nli():
    nli = get_task("nli")
    ent, neu, con = 0, 1, 2
    rows = ([(f"e{i}", ent, 0.9) for i in range(3)] + [(f"u{i}", neu, 0.9) for i in range(8)]
            + [(f"c{i}", con, 0.9) for i in range(8)])
    out = select(pool(rows, task=nli), cfg(strategies=["top-k"], budgets=[4]), nli).metrics
    # neutral 4, entailment 3 (1 short) -> contradiction fills up to 12: 5
    assert out["hi-topk-4"]["labels"] == {"entailment": 3, "neutral": 4, "contradiction": 5}


def test_budget_larger_than_the_pool_takes_everything():
    rows = [("n0", NEG, 0.5), ("u0", NEU, 0.6), ("p0", POS, 0.7), ("p1", POS, 0.8)]
    out = select(pool(rows), cfg(strategies=["top-k", "div-k"], budgets=[100], n_clusters=25),
                 SENT, embeddings=np.eye(4)).datasets
    for name in ("hi-topk-100", "hi-divk-100"):
        assert ids(out[name]) == ["n0", "u0", "p1", "p0"], name


def test_take_counts():
    assert take_counts([10, 2, 10], 4, "fewer", 2) == [4, 2, 4]
    assert take_counts([10, 2, 10], 4, "redistribute", 2) == [4, 2, 6]
    assert take_counts([1, 2, 5], 4, "redistribute", 2) == [1, 2, 5]  # receiver runs out too
    assert take_counts([10, 10, 1], 4, "redistribute", 2) == [4, 4, 1]  # the receiver itself is short


# ---------------------------------------------------------------------------------------------
# div-k


def _two_cluster_pool():
    # negative class: rows a* point along x, rows b* along y; confidence fixes the order inside each
    rows = [("a1", NEG, 0.90), ("a2", NEG, 0.70), ("a3", NEG, 0.50),
            ("b1", NEG, 0.80), ("b2", NEG, 0.60), ("b3", NEG, 0.60),
            ("u1", NEU, 0.9), ("p1", POS, 0.9)]
    emb = np.array([[1, 0.01, 0], [1, 0.02, 0], [1, 0, 0.02],
                    [0.01, 1, 0], [0.02, 1, 0], [0, 1, 0.01],
                    [0, 0, 1], [0, 0, 1]], dtype=np.float32)
    return rows, emb


@pytest.mark.parametrize("method", ["minibatch", "spherical"])
def test_div_k_round_robin_over_clusters(method):
    rows, emb = _two_cluster_pool()
    config = cfg(strategies=["div-k"], budgets=[5, 3], n_clusters=2, kmeans=method, shortfall="fewer")
    out = select(pool(rows), config, SENT, embeddings=emb, seed=0).datasets
    # cluster of a1 (best row, 0.9) goes first; rounds: a1 b1 | a2 b2 | a3 b3 (b2/b3 tie -> id)
    assert ids(out["hi-divk-5"]) == ["a1", "b1", "a2", "b2", "a3", "u1", "p1"]
    assert list(out["hi-divk-5"]["cluster"])[:5] == [0, 1, 0, 1, 0]
    assert ids(out["hi-divk-3"]) == ["a1", "b1", "a2", "u1", "p1"]
    assert list(out["hi-divk-3"]["rank"]) == [0, 1, 2, 0, 0]


def test_div_k_differs_from_top_k_when_clusters_are_uneven():
    # top-k would take three rows of cluster a; div-k alternates between the clusters
    rows = [("a1", POS, 0.99), ("a2", POS, 0.98), ("a3", POS, 0.97), ("b1", POS, 0.5), ("b2", POS, 0.4)]
    emb = np.array([[1, 0], [1, 0.01], [1, 0.02], [0, 1], [0.01, 1]], dtype=np.float32)
    result = select(pool(rows), cfg(strategies=["div-k", "top-k"], budgets=[3], n_clusters=2, shortfall="fewer"),
                    SENT, embeddings=emb)
    out = result.datasets
    assert ids(out["hi-divk-3"]) == ["a1", "b1", "a2"]
    assert ids(out["hi-topk-3"]) == ["a1", "a2", "a3"]
    # top-k's three rows point almost the same way (diversity near 0); div-k's span both directions
    diversity = {name: m["diversity"] for name, m in result.metrics.items() if name != "pool"}
    assert diversity["hi-topk-3"] < 0.01 and diversity["hi-divk-3"] > 0.3


def test_diverse_order_orders_every_row_once():
    rng = np.random.default_rng(0)
    n = 300
    classes = rng.integers(0, 3, n)
    conf = rng.random(n)
    emb = rng.normal(size=(n, 16))
    orders, cluster = diverse_order(classes, conf, np.arange(n), emb, 3, n_clusters=5, seed=1)
    for c in range(3):
        assert sorted(orders[c].tolist()) == np.flatnonzero(classes == c).tolist()
        # round 0 = the best row of every cluster, in cluster order; the first is the class's best
        k = len(np.unique(cluster[classes == c]))
        first_round = orders[c][:k]
        assert cluster[first_round].tolist() == list(range(k))
        assert conf[first_round[0]] == conf[classes == c].max()
        # inside a cluster the rows come by confidence, descending
        for j in range(k):
            in_cluster = [i for i in orders[c] if cluster[i] == j]
            assert np.all(np.diff(conf[in_cluster]) <= 0)


def test_cosine_clusterings_separate_directions_not_lengths():
    x = np.array([[1, 0], [5, 0.1], [0.1, 1], [0, 7]], dtype=np.float32)
    for method in ("minibatch", "spherical"):
        from hfaug.select import normalise

        labels = cluster_cosine(normalise(x), 2, seed=0, method=method)
        assert labels[0] == labels[1] and labels[2] == labels[3] and labels[0] != labels[2], method


def test_spherical_kmeans_is_nltks_cosine_kmeans():
    import random

    from nltk.cluster import KMeansClusterer
    from nltk.cluster.util import cosine_distance

    rng = np.random.default_rng(5)
    centres = rng.normal(size=(4, 8))
    x = np.concatenate([c + 0.6 * rng.normal(size=(30, 8)) for c in centres])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    init = x[[0, 1, 2, 3]]  # a poor start, so several iterations run
    labels, means, iterations = spherical_kmeans(x, 4, seed=0, init=init)
    clusterer = KMeansClusterer(4, distance=cosine_distance, initial_means=[m.copy() for m in init],
                                avoid_empty_clusters=True, rng=random.Random(0))
    theirs = np.array(clusterer.cluster(list(x), assign_clusters=True))
    assert iterations > 1
    assert (labels == theirs).all()
    assert np.allclose(means, np.array(clusterer.means()), atol=1e-5)


# ---------------------------------------------------------------------------------------------
# ambiguous / easy and the data maps


def test_dynamics_equal_numpy_on_random_tensors():
    rng = np.random.default_rng(11)
    for n, e, labels in [(50, 5, 3), (7, 15, 3), (20, 2, 4)]:
        p = rng.dirichlet(np.ones(labels), size=(n, e))
        stats = datamaps.dynamics(p)
        var = np.array([max(np.std([p[i, t, j] for t in range(e)]) for j in range(labels)) for i in range(n)])
        conf = np.array([max(np.mean([p[i, t, j] for t in range(e)]) for j in range(labels)) for i in range(n)])
        assert np.allclose(stats.variability, var) and np.allclose(stats.mean_confidence, conf)
        assert (stats.final_class == p[:, -1].argmax(1)).all()
        gold = rng.integers(0, labels, n)
        g = datamaps.gold_dynamics(p, gold)
        assert np.allclose(g.confidence, [p[i, :, gold[i]].mean() for i in range(n)])
        assert np.allclose(g.variability, [np.sqrt(np.mean((p[i, :, gold[i]] - p[i, :, gold[i]].mean()) ** 2))
                                           for i in range(n)])
        assert np.allclose(g.correctness, [np.mean([p[i, t].argmax() == gold[i] for t in range(e)])
                                           for i in range(n)])


def test_ambiguous_and_easy_rank_by_the_paper_statistics():
    rng = np.random.default_rng(2)
    n, e = 90, 5
    p = rng.dirichlet(np.ones(3), size=(n, e)).astype(np.float32)
    final = p[:, -1].argmax(1)
    teacher = rng.integers(0, 3, n)  # a label that disagrees with the final checkpoint on purpose
    rows = [(f"r{i:02d}", int(teacher[i]), float(p[i, -1].max())) for i in range(n)]
    ds = pool(rows, checkpoint_probs=p.tolist())
    out = select(ds, cfg(strategies=["ambiguous", "easy"], budgets=[4], shortfall="fewer"), SENT).datasets
    p64 = p.astype(np.float64)
    var = p64.std(axis=1).max(axis=-1)
    conf = p64.mean(axis=1).max(axis=-1)
    for name, score in (("hi-ambk-4", var), ("hi-easyk-4", conf)):
        expected = []
        for c in range(3):
            members = [i for i in range(n) if final[i] == c]
            expected += [f"r{i:02d}" for i in sorted(members, key=lambda i: (-score[i], i))[:4]]
        assert ids(out[name]) == expected, name
        assert np.allclose(out[name]["score"], [score[int(i[1:])] for i in expected], atol=1e-6)
    # as the label stage writes it (statistics as columns, probabilities alongside): the same choice
    with_columns = pool(rows, checkpoint_probs=p.tolist(), variability=var.tolist(),
                        mean_confidence=conf.tolist())
    config = cfg(strategies=["ambiguous", "easy"], budgets=[4], shortfall="fewer")
    again = select(with_columns, config, SENT).datasets
    assert ids(again["hi-ambk-4"]) == ids(out["hi-ambk-4"])
    assert ids(again["hi-easyk-4"]) == ids(out["hi-easyk-4"])
    # dynamics_class: label groups by the teacher label instead
    config = cfg(strategies=["easy"], budgets=[4], dynamics_class="label")
    by_label = select(ds, config, SENT).datasets["hi-easyk-4"]
    assert list(by_label["label"]) == [0] * 4 + [1] * 4 + [2] * 4


def test_ambiguous_uses_the_label_stage_columns_and_ties_by_id():
    rows = [("b", NEG, 0.5), ("a", NEG, 0.5), ("c", NEG, 0.5), ("u", NEU, 0.5), ("p", POS, 0.5)]
    ds = pool(rows, variability=[0.2, 0.2, 0.3, 0.1, 0.1], mean_confidence=[0.9, 0.8, 0.7, 0.6, 0.6])
    out = select(ds, cfg(strategies=["amb-k", "easy-k"], budgets=[2], shortfall="fewer"), SENT).datasets
    assert ids(out["hi-ambk-2"]) == ["c", "a", "u", "p"]
    assert ids(out["hi-easyk-2"]) == ["b", "a", "u", "p"]


def test_ambiguous_without_dynamics_names_the_label_stage():
    with pytest.raises(HfaugError, match="variability.*label stage"):
        select(pool([("a", NEG, 0.5)]), cfg(strategies=["ambiguous"]), SENT)


# ---------------------------------------------------------------------------------------------
# filters, diversity, errors


def test_filters_count_duplicates_and_short_rows():
    rows = [("a", NEG, 0.9, "same text" + LONG), ("b", NEG, 0.8, "same text" + LONG),
            ("c", POS, 0.7, "one two three four five six seven eight nine ten"),  # 10 words: too short
            ("d", POS, 0.7, "one two three four five six seven eight nine ten eleven")]
    result = select(pool(rows), cfg(strategies=["all"]), SENT)
    assert ids(result.datasets["hi-all"]) == ["a", "d"]
    assert result.dropped == {"duplicate": 1, "too_short": 1}
    kept = select(pool(rows), cfg(strategies=["all"], dedup=False, min_words=0), SENT)
    assert len(kept.datasets["hi-all"]) == 4 and not kept.dropped


def test_nli_filter_needs_five_words_in_premise_and_hypothesis():
    rows = [("a", 0, 0.9, "a b c d e"), ("b", 1, 0.9, "a b c d"), ("c", 2, 0.9, "x y z w v")]
    ds = pool(rows, task=NLI)
    ds = ds.map(lambda r: {"hypothesis": "short one" if r["id"] == "c" else "five words in this one"})
    result = select(ds, cfg(strategies=["all"]), NLI)
    assert ids(result.datasets["hi-all"]) == ["a"]
    assert result.dropped == {"too_short": 2}


def test_mean_pairwise_cosine_distance_matches_brute_force():
    x = np.random.default_rng(4).normal(size=(40, 6))
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    brute = np.mean([1 - u[i] @ u[j] for i in range(40) for j in range(40) if i != j])
    assert mean_pairwise_cosine_distance(x) == pytest.approx(brute, abs=1e-6)


def test_unknown_strategy_lists_the_valid_ones():
    with pytest.raises(HfaugError, match="random, top-k, div-k, ambiguous, easy, all"):
        SelectConfig(strategies=["topp"])
    assert SelectConfig(strategies=["rand-k", "topk", "amb-k"]).strategies == ["random", "top-k", "ambiguous"]


def _write_recipe(tmp_path, select_section):
    recipe = {"name": "sel", "task": "sentiment", "output_dir": str(tmp_path / "runs"),
              "source": {"path": "hfaug://data/demo/sentiment_en.jsonl"}, "select": select_section}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path, recipe


def test_cli_missing_soft_label_exits_2_naming_the_label_stage(tmp_path, capsys):
    path, recipe = _write_recipe(tmp_path, {"strategies": ["top-k"], "budgets": [2]})
    run = Run(load_recipe(recipe))
    bare = pool([("a", NEG, 0.9)]).remove_columns(["soft_label"])
    execute(run, "label", lambda ctx: StageResult(datasets={"data": bare}), None, [])
    capsys.readouterr()  # the upstream save's progress bars
    assert cli.main(["select", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "soft_label" in err[0] and "label stage" in err[0]


def test_cli_unknown_strategy_exits_2_listing_the_valid_ones(tmp_path, capsys):
    path, _ = _write_recipe(tmp_path, {"strategies": ["diverse-k"]})
    assert cli.main(["select", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "diverse-k" in err[0] and "random, top-k, div-k, ambiguous, easy, all" in err[0]


# ---------------------------------------------------------------------------------------------
# the stage in a run, with the tiny embedder


def test_stage_in_a_run_writes_subsets_metrics_and_figures(tmp_path, tiny):
    rng = np.random.default_rng(0)
    from hfaug.config import resolve

    with open(resolve("hfaug://data/demo/sentiment_en.jsonl"), encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f if line.strip()]
    n = len(texts)
    p = rng.dirichlet(np.ones(3), size=(n, 3)).astype(np.float32)
    rows = [(f"id{i:03d}", int(p[i, -1].argmax()), float(p[i, -1].max()), texts[i]) for i in range(n)]
    data = pool(rows, lang="en", checkpoint_probs=p.tolist(), prompt_label=rng.integers(0, 3, n).tolist())
    data = data.cast_column("prompt_label", datasets.ClassLabel(names=list(SENT.labels)))
    _, recipe = _write_recipe(tmp_path, {
        "strategies": ["random", "top-k", "div-k", "ambiguous", "easy", "all"], "budgets": [5, 10],
        "embedder": str(tiny["embedder"]), "n_clusters": 3, "min_words": 0})
    run = Run(load_recipe(recipe))
    execute(run, "label", lambda ctx: StageResult(datasets={"data": data}), None, [])
    manifest, skipped = pipeline.run_stage(run, "select")
    assert not skipped
    shorts = ("randk", "topk", "divk", "ambk", "easyk")
    expected = {f"en-{s}-{k}" for s in shorts for k in (5, 10)} | {"en-all"}
    assert set(manifest["rows_out"]) == expected
    assert manifest["rows_out"]["en-divk-10"] == 30 and "short" not in manifest["metrics"]["en-divk-10"]
    assert manifest["dropped"].get("duplicate", 0) == n - len(set(texts))
    from sentence_transformers import SentenceTransformer

    embedder = SentenceTransformer(str(tiny["embedder"]))
    for name in expected:
        metrics = manifest["metrics"][name]
        assert sum(metrics["labels"].values()) == manifest["rows_out"][name]
        # the diversity of the rows this subset saved, recomputed pair by pair
        chosen = run.load("select", name)["text"]
        assert metrics["diversity"] == pytest.approx(brute_diversity(chosen, embedder), abs=1e-5), name
    saved = run.load("select", "en-divk-10")
    assert saved.features["cluster"] == datasets.Value("int32")
    assert saved.features["label"].names == list(SENT.labels)
    assert set(saved["strategy"]) == {"div-k"}
    figures = run.stage_dir("select") / "figures"
    for name in ("datamap-en.png", "datamap-gold-en.png", "labels-en.png", "confidence-en.png"):
        assert (figures / name).stat().st_size > 1000, name
    assert (figures / "datamap-en.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the embeddings were cached, and a rerun is skipped
    assert list(run.cache_dir("select").glob("embeddings-*.npy"))
    assert pipeline.run_stage(run, "select")[1]


def test_stage_selects_per_translated_language(tmp_path):
    pytest.importorskip("hfaug.translate")
    rows = [(f"r{i}", i % 3, 0.5 + i / 100) for i in range(12)]
    _, recipe = _write_recipe(tmp_path, {"strategies": ["top-k", "all"], "budgets": [2], "languages": ["mr"],
                                         "include_english": True})
    recipe["translate"] = {"languages": ["hi", "mr"]}
    run = Run(load_recipe(recipe))
    execute(run, "label", lambda ctx: StageResult(datasets={"data": pool(rows, lang="en")}), None, [])
    execute(run, "translate", lambda ctx: StageResult(datasets={"hi": pool(rows, lang="hi"),
                                                               "mr": pool(rows[:6], lang="mr")}), None, [])
    manifest, _ = pipeline.run_stage(run, "select")
    assert manifest["rows_out"] == {"en-topk-2": 6, "en-all": 12, "mr-topk-2": 6, "mr-all": 6}
    assert set(manifest["metrics"]["pool"]) == {"en", "mr"}
    assert set(manifest["extra"]["figures"]) >= {"labels-mr.png", "confidence-mr.png", "labels-en.png"}
    recipe["select"]["languages"] = ["sw"]
    with pytest.raises(HfaugError, match="no translation into 'sw'.*hi, mr"):
        pipeline.run_stage(Run(load_recipe(recipe)), "select")


def test_word_counts_match_python_split():
    import pyarrow as pa

    from hfaug.select import word_counts

    texts = ["  a b  c ", "", "   ", "x\u00a0y", "हिंदी में एक वाक्य", "one\ttwo\nthree", "a\u3000b c",
             "w " * 30]
    assert word_counts(pa.array(texts)).tolist() == [len(t.split()) for t in texts]
    assert word_counts(pa.array(texts), cap=4).tolist() == [min(len(t.split()), 4) for t in texts]
    ascii_only = ["a b", " c  d e ", ""]
    assert word_counts(pa.array(ascii_only)).tolist() == [2, 3, 0]


@pytest.mark.parametrize("embed_column", [None, "pair"])
def test_nli_div_k_with_the_tiny_embedder(tiny, tmp_path, embed_column):
    premises = ["the museum opens at nine every morning", "the train to the coast leaves from platform two",
                "the new phone has a bright screen and a long battery life"]
    rows = []
    for i, premise in enumerate(premises):
        for label in range(3):
            rows.append((f"{i}{label}", label, 0.5 + 0.1 * i, premise))
    ds = pool(rows, task=NLI).map(lambda r: {"hypothesis": f"hypothesis {r['id']} about the premise"})
    config = cfg(strategies=["div-k"], budgets=[2], n_clusters=2, embedder=str(tiny["embedder"]),
                 embed_column=embed_column)
    result = select(ds, config, NLI, cache_dir=tmp_path)
    out = result.datasets["hi-divk-2"]
    assert len(out) == 6 and set(out["cluster"]) <= {0, 1}
    # the diversity of the chosen rows, over the column div-k embedded, recomputed pair by pair
    texts = out["premise"] if embed_column is None else [f"{p}\t{h}" for p, h in zip(out["premise"], out["hypothesis"])]
    from sentence_transformers import SentenceTransformer

    embedder = SentenceTransformer(str(tiny["embedder"]))
    assert result.metrics["hi-divk-2"]["diversity"] == pytest.approx(brute_diversity(texts, embedder), abs=1e-5)
    # one cached embedding file per embedded text set (premise vs premise + hypothesis)
    assert len(list(tmp_path.glob("embeddings-*.npy"))) == 1


def test_dedup_keeps_first_occurrences_on_chunked_columns():
    import random

    import pyarrow as pa

    from hfaug.select import filter_pool

    rnd = random.Random(0)
    texts = [rnd.choice("abcdef") * rnd.randint(1, 3) for _ in range(500)]
    table = pa.table({"text": pa.chunked_array([texts[:200], texts[200:]])})
    keep, dropped = filter_pool(table, SENT, SelectConfig(min_words=0, figures=False))
    first = list({t: i for i, t in reversed(list(enumerate(texts)))}.values())
    assert keep.tolist() == sorted(first)
    assert dropped == {"duplicate": 500 - len(set(texts))}

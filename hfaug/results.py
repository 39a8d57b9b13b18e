"""Results of an experiment grid: per language x strategy x budget (x setting), the mean and std over
seeds of accuracy and macro-F1, the gain over the source-only baseline and over ``all``, and whether
a strategy beats random; as a ``datasets`` table, markdown, and two figures.

Input: one record per (student, test set): ``student``, ``setting``, ``lang`` (the test set's key),
``strategy``, ``budget`` (None for ``all`` and the baseline), ``seed``, ``accuracy``, ``macro_f1``
(the numbers in each student's metrics.json), and optionally the student's per-row predictions.

"Beats random" is judged two ways, both against the random subset of the same language, budget and
setting: seed-level (the accuracy difference of each seed both were trained with, how many seeds
the strategy won) and a paired bootstrap over the test rows (Koehn 2004; Berg-Kirkpatrick et al.
2012): each row's correctness is averaged over the seeds of each side, the rows are resampled with
replacement, and ``p`` is the share of resamples in which the strategy is not ahead. A strategy
beats random when p < 0.05. The seeds themselves are not resampled: with 3 seeds, the seed-level
wins are shown next to p rather than folded into it.

Plain numpy, datasets and matplotlib (Agg canvas, no pyplot): no model is loaded here.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .grid import BASELINE
from .layout import FIGURES_DIR, GRID_JSON, GRID_MD

if TYPE_CHECKING:
    import datasets
    import numpy as np

ALL = "all"
RANDOM = "random"
ALPHA = 0.05
BOOTSTRAP_SAMPLES = 1000
#: the order strategies are listed and drawn in
ORDER = (BASELINE, ALL, RANDOM, "top-k", "div-k", "ambiguous", "easy")
FIGURE_BUDGETS = "accuracy_vs_budget.png"
FIGURE_STRATEGIES = "strategies.png"
COLUMNS = ("setting", "lang", "strategy", "budget", "seeds", "n_seeds", "accuracy_mean", "accuracy_std",
           "macro_f1_mean", "macro_f1_std", "gain_vs_source_only", "gain_vs_all", "vs_random_gain",
           "vs_random_wins", "vs_random_seeds", "vs_random_p", "beats_random")


def _mean(values: list[float]) -> float | None:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return sum(values) / len(values) if values else None


def _std(values: list[float]) -> float | None:
    """Sample standard deviation (n - 1); None for fewer than two values."""
    values = [v for v in values if v is not None and not math.isnan(v)]
    if len(values) < 2:
        return None
    m = sum(values) / len(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def _sub(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _order(strategy: str) -> tuple[int, str]:
    return (ORDER.index(strategy) if strategy in ORDER else len(ORDER), strategy)


def paired_bootstrap(correct_a: "np.ndarray", correct_b: "np.ndarray", *, samples: int = BOOTSTRAP_SAMPLES,
                     seed: int = 0) -> float:
    """Share of bootstrap resamples of the rows in which ``a`` is not ahead of ``b`` (a one-sided
    p-value for "a is more accurate than b"). Inputs: per-row correctness in [0, 1], same rows."""
    import numpy as np

    diff = np.asarray(correct_a, dtype=np.float64) - np.asarray(correct_b, dtype=np.float64)
    n = len(diff)
    if n == 0:
        return float("nan")
    rng = np.random.default_rng(seed)
    not_ahead = 0
    for start in range(0, samples, 100):  # 100 resamples at a time: bounded memory on big test sets
        size = min(100, samples - start)
        means = diff[rng.integers(0, n, size=(size, n))].mean(axis=1)
        not_ahead += int((means <= 0).sum())
    return not_ahead / samples


def aggregate(records: list[dict[str, Any]], *, predictions: dict[tuple[str, str], list[int]] | None = None,
              gold: dict[str, list[int]] | None = None, samples: int = BOOTSTRAP_SAMPLES,
              seed: int = 0) -> list[dict[str, Any]]:
    """One row per (setting, lang, strategy, budget), in ``COLUMNS`` (see the module docstring).

    ``predictions`` maps (student, lang) to the predicted label ids on that test set and ``gold``
    maps lang to its labels; without them the bootstrap columns stay None.
    """
    import numpy as np

    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r.get("setting") or "", r["lang"], r["strategy"], r.get("budget")), []).append(r)

    def correctness(members: list[dict], lang: str):
        if not predictions or not gold or lang not in gold:
            return None
        rows = [predictions.get((m["student"], lang)) for m in members]
        if any(p is None or len(p) != len(gold[lang]) for p in rows):
            return None
        return (np.asarray(rows) == np.asarray(gold[lang])[None, :]).mean(axis=0)

    def mean_of(key: tuple) -> float | None:
        return _mean([m["accuracy"] for m in groups[key]]) if key in groups else None

    out = []
    for key in sorted(groups, key=lambda k: (k[0], k[1], _order(k[2]), -1 if k[3] is None else k[3])):
        setting, lang, strategy, budget = key
        members = sorted(groups[key], key=lambda m: m["seed"])
        acc = [m["accuracy"] for m in members]
        f1 = [m.get("macro_f1") for m in members]
        row = {"setting": setting, "lang": lang, "strategy": strategy, "budget": budget,
               "seeds": [int(m["seed"]) for m in members], "n_seeds": len(members),
               "accuracy_mean": _mean(acc), "accuracy_std": _std(acc),
               "macro_f1_mean": _mean(f1), "macro_f1_std": _std(f1),
               "gain_vs_source_only": _sub(_mean(acc), mean_of((setting, lang, BASELINE, None))),
               "gain_vs_all": _sub(_mean(acc), mean_of((setting, lang, ALL, None))),
               "vs_random_gain": None, "vs_random_wins": None, "vs_random_seeds": None, "vs_random_p": None,
               "beats_random": None}
        random_key = (setting, lang, RANDOM, budget)
        if strategy not in (RANDOM, ALL, BASELINE) and random_key in groups:
            theirs = {m["seed"]: m["accuracy"] for m in groups[random_key]}
            diffs = [m["accuracy"] - theirs[m["seed"]] for m in members if m["seed"] in theirs]
            if diffs:
                row.update(vs_random_gain=sum(diffs) / len(diffs), vs_random_wins=sum(d > 0 for d in diffs),
                           vs_random_seeds=len(diffs))
            mine, other = correctness(members, lang), correctness(groups[random_key], lang)
            if mine is not None and other is not None:
                p = paired_bootstrap(mine, other, samples=samples, seed=seed)
                row.update(vs_random_p=p, beats_random=bool(p < ALPHA))
        out.append(row)
    return out


def features() -> "datasets.Features":
    import datasets

    number = datasets.Value("float64")
    return datasets.Features({
        "setting": datasets.Value("string"), "lang": datasets.Value("string"),
        "strategy": datasets.Value("string"), "budget": datasets.Value("int64"),
        "seeds": datasets.Sequence(datasets.Value("int64")), "n_seeds": datasets.Value("int64"),
        "accuracy_mean": number, "accuracy_std": number, "macro_f1_mean": number, "macro_f1_std": number,
        "gain_vs_source_only": number, "gain_vs_all": number, "vs_random_gain": number,
        "vs_random_wins": datasets.Value("int64"), "vs_random_seeds": datasets.Value("int64"),
        "vs_random_p": number, "beats_random": datasets.Value("bool"),
    })


def to_dataset(rows: list[dict[str, Any]]) -> "datasets.Dataset":
    """The results table as a ``datasets.Dataset`` (publishable like any other)."""
    import datasets

    return datasets.Dataset.from_list([{c: r.get(c) for c in COLUMNS} for r in rows], features=features())


def _pct(value: float | None) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f}"


def _points(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:+.2f}"


def markdown(rows: list[dict[str, Any]], figures: list[str] = ()) -> str:
    """The results as a markdown table (percent; gains in points), the figures embedded above it."""
    with_setting = any(r["setting"] for r in rows)
    header = (["setting"] if with_setting else []) + [
        "language", "strategy", "budget", "seeds", "accuracy", "macro-F1", "vs source-only", "vs all", "vs random"]
    lines = [f"![{Path(f).stem}]({f})" for f in figures] + ([""] if figures else [])
    lines += ["| " + " | ".join(header) + " |", "|" + "|".join("---" if i < 4 + with_setting else "---:"
                                                              for i in range(len(header))) + "|"]
    for r in rows:
        versus = "-"
        if r["vs_random_seeds"]:
            versus = f"{_points(r['vs_random_gain'])} ({r['vs_random_wins']}/{r['vs_random_seeds']} seeds"
            versus += f", p={r['vs_random_p']:.3f}" if r["vs_random_p"] is not None else ""
            versus += ")" + (" **beats random**" if r["beats_random"] else "")
        std = {k: f" ± {_pct(r[k])}" if r[k] is not None else "" for k in ("accuracy_std", "macro_f1_std")}
        cells = ([r["setting"] or "-"] if with_setting else []) + [
            r["lang"], r["strategy"], "-" if r["budget"] is None else str(r["budget"]), str(r["n_seeds"]),
            _pct(r["accuracy_mean"]) + std["accuracy_std"], _pct(r["macro_f1_mean"]) + std["macro_f1_std"],
            _points(r["gain_vs_source_only"]) if r["strategy"] != BASELINE else "-",
            _points(r["gain_vs_all"]) if r["strategy"] != ALL else "-", versus]
        lines.append("| " + " | ".join(cells) + " |")
    note = ("Accuracy and macro-F1 in percent, mean ± std over seeds; gains in points of accuracy. "
            f"vs random: mean paired difference per seed, seeds won, and the paired bootstrap p over the "
            f"test rows ({BOOTSTRAP_SAMPLES} resamples); beats random when p < {ALPHA}.")
    return "\n".join(lines) + "\n\n" + note + "\n"


# ---------------------------------------------------------------------------------------------
# figures


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _label(strategy: str, setting: str, with_setting: bool) -> str:
    return f"{strategy} ({setting})" if with_setting and setting else strategy


def _compared_langs(rows: list[dict[str, Any]]) -> list[str]:
    """Languages with a strategy to compare (a test set only the baseline was scored on, e.g. of
    another language than the subsets', has no panel); all of them when none has one."""
    compared = sorted({r["lang"] for r in rows if r["strategy"] != BASELINE})
    return compared or sorted({r["lang"] for r in rows})


def plot_budgets(rows: list[dict[str, Any]], path: Path) -> Path:
    """Accuracy vs budget per strategy (mean ± std over seeds), one panel per language; the
    source-only baseline and ``all`` as horizontal lines, like the paper's figures."""
    langs = _compared_langs(rows)
    with_setting = len({r["setting"] for r in rows}) > 1
    fig = _figure(4.2 * max(len(langs), 1), 3.4)
    for i, lang in enumerate(langs):
        ax = fig.add_subplot(1, max(len(langs), 1), i + 1)
        mine = [r for r in rows if r["lang"] == lang and r["accuracy_mean"] is not None]
        lines = sorted({(r["setting"], r["strategy"]) for r in mine if r["budget"] is not None},
                       key=lambda k: (k[0], _order(k[1])))
        for setting, strategy in lines:
            points = sorted((r for r in mine if (r["setting"], r["strategy"]) == (setting, strategy)
                             and r["budget"] is not None), key=lambda r: r["budget"])
            ax.errorbar([r["budget"] for r in points], [100 * r["accuracy_mean"] for r in points],
                        yerr=[100 * (r["accuracy_std"] or 0.0) for r in points], marker="o", capsize=3,
                        label=_label(strategy, setting, with_setting))
        for r in mine:
            if r["budget"] is None:
                style = "--" if r["strategy"] == BASELINE else ":"
                ax.axhline(100 * r["accuracy_mean"], linestyle=style, color="gray" if style == "--" else "black",
                           label=_label(r["strategy"], r["setting"], with_setting))
        ax.set_title(lang)
        ax.set_xlabel("budget (rows per class)")
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(str(path), format="png")
    return path


def plot_strategies(rows: list[dict[str, Any]], path: Path, budget: int | None = None) -> Path:
    """Accuracy of every strategy at one budget (default: the smallest), next to ``all`` and the
    source-only baseline; grouped by language, error bars the std over seeds."""
    import numpy as np

    budgets = sorted({r["budget"] for r in rows if r["budget"] is not None})
    if budget not in budgets:
        budget = budgets[0] if budgets else None
    langs = _compared_langs(rows)
    chosen = [r for r in rows if r["accuracy_mean"] is not None and (r["budget"] is None or r["budget"] == budget)
              and r["lang"] in langs]
    with_setting = len({r["setting"] for r in rows}) > 1
    bars = sorted({(r["setting"], r["strategy"]) for r in chosen}, key=lambda k: (k[0], _order(k[1])))
    fig = _figure(max(5.0, 1.2 + 0.5 * len(bars) * max(len(langs), 1)), 3.6)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / max(len(bars), 1)
    x = np.arange(len(langs))
    for j, (setting, strategy) in enumerate(bars):
        values, errors = [], []
        for lang in langs:
            match = [r for r in chosen if (r["setting"], r["strategy"], r["lang"]) == (setting, strategy, lang)]
            values.append(100 * match[0]["accuracy_mean"] if match else float("nan"))  # nan: no bar
            errors.append(100 * (match[0]["accuracy_std"] or 0.0) if match else 0.0)
        ax.bar(x + (j - (len(bars) - 1) / 2) * width, values, width, yerr=errors, capsize=3,
               label=_label(strategy, setting, with_setting))
    ax.set_xticks(x)
    ax.set_xticklabels(langs)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"strategies at budget {budget} per class" if budget is not None else "strategies")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(str(path), format="png")
    return path


def write(rows: list[dict[str, Any]], folder: Path, *, default_budget: int | None = None,
          title: str = "Results") -> dict[str, Path]:
    """``results.md``, ``results.json`` and ``figures/*.png`` in ``folder``; returns their paths."""
    import json

    folder = Path(folder)
    (folder / FIGURES_DIR).mkdir(parents=True, exist_ok=True)
    paths = {"budgets": plot_budgets(rows, folder / FIGURES_DIR / FIGURE_BUDGETS),
             "strategies": plot_strategies(rows, folder / FIGURES_DIR / FIGURE_STRATEGIES, default_budget)}
    figures = [f"{FIGURES_DIR}/{p.name}" for p in paths.values()]
    (folder / GRID_MD).write_text(f"# {title}\n\n" + markdown(rows, figures), encoding="utf-8")
    (folder / GRID_JSON).write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    paths.update(markdown=folder / GRID_MD, json=folder / GRID_JSON)
    return paths

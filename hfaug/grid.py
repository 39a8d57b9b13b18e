"""The experiment grid: which students a run trains (subset x seed, plus the source-only baseline),
how they are split into shards for separate processes, and what the grid costs before it starts.

The paper's claims are comparisons between students that differ in one thing: the selection
strategy, the budget, or the seed (42, 12 and 100). Every student of a grid is independent of the
others, so ``hfaug distill --config R --shard i/n`` trains the i-th of n disjoint shares of them in
one process each (one per GPU); a final ``hfaug distill --config R`` (or ``hfaug run R``) finds them
all in the cache, evaluates them and aggregates the results.

Nothing here imports torch, transformers or datasets: the plan and the estimate are cheap.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import HfaugError

if TYPE_CHECKING:
    from .config import Recipe
    from .runs import Run

#: the student trained on the gold (source) rows alone: the baseline every strategy is compared to
BASELINE = "source-only"
_SHARD = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


@dataclass(frozen=True)
class Student:
    """One student of the grid: its folder name, its synthetic subset (None: baseline), its seed."""

    name: str
    subset: str | None
    seed: int

    @property
    def is_baseline(self) -> bool:
        return self.subset is None


def plan(subsets: list[str], config: Any, run_seed: int) -> list[Student]:
    """The students of a distill config, in a fixed order (the order shards are dealt from).

    Without ``seeds`` there is one student per subset, named like the subset (seed: ``config.seed``
    or the run's); with ``seeds`` one per subset and seed, named ``<subset>-seed<N>``. The baseline
    (``source-only``) joins when ``baseline`` is true, or is null and ``seeds`` is set.
    """
    seeds = list(getattr(config, "seeds", None) or [])
    baseline = getattr(config, "baseline", None)
    if baseline is None:
        baseline = bool(seeds)
    names: list[str | None] = ([None] if baseline else []) + list(subsets)
    if not seeds:
        seed = config.seed if getattr(config, "seed", None) is not None else run_seed
        return [Student(name or BASELINE, name, seed) for name in names]
    return [Student(f"{name or BASELINE}-seed{seed}", name, seed) for name in names for seed in seeds]


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` -> (i, n), shards numbered from 0; a malformed value is a user error."""
    match = _SHARD.match(str(text))
    if not match:
        raise HfaugError(f"--shard {text}: expected INDEX/COUNT with shards numbered from 0, e.g. --shard 0/4")
    index, count = int(match.group(1)), int(match.group(2))
    if count < 1 or index >= count:
        raise HfaugError(f"--shard {text}: the index must be 0..{max(count - 1, 0)} for {count} shard(s) "
                         "(shards are numbered from 0), e.g. --shard 0/4")
    return index, count


def shard(students: list[Student], index: int, count: int) -> list[Student]:
    """The ``index``-th of ``count`` disjoint shares of ``students`` (dealt round-robin, so each
    shard gets a mix of subsets and seeds and the shards take about the same time)."""
    return students[index::count]


# ---------------------------------------------------------------------------------------------
# cost before starting (`hfaug run RECIPE --dry-run`)


def planned_subsets(recipe: "Recipe", run: "Run | None" = None) -> list[str]:
    """The select outputs the distill stage will train on: ``distill.subsets``, the select stage's
    outputs when it has run, else what the select and translate sections will produce."""
    from .strategies import ALL, canonical_strategy, subset_name

    config = recipe.sections["distill"]
    if config.subsets:
        return list(config.subsets)
    if run is not None and run.manifest("select") is not None:
        return run.outputs("select")
    select = recipe.sections.get("select")
    translate = recipe.sections.get("translate")
    # the languages select reads (hfaug.select._inputs): the translations, or the English labels
    langs = list(getattr(translate, "languages", None) or []) if translate is not None else ["en"]
    if getattr(select, "languages", None):
        langs = [lang for lang in langs if lang in select.languages]
    if getattr(select, "include_english", False) and "en" not in langs:
        langs.insert(0, "en")
    strategies = [canonical_strategy(s) for s in getattr(select, "strategies", None) or []]
    budgets = list(getattr(select, "budgets", None) or [])
    out = []
    for lang in langs:
        for strategy in strategies:
            if strategy == ALL:
                out.append(subset_name(lang, strategy))
            else:
                out += [subset_name(lang, strategy, k) for k in budgets]
    return out


def _gold_rows(recipe: "Recipe", run: "Run | None") -> int | None:
    """Rows of the gold training data: from the source stage's manifest, or a local source file."""
    if run is not None:
        manifest = run.manifest("source") or {}
        rows = (manifest.get("rows_out") or {}).get("train")
        if rows is not None:
            return int(rows)
    from pathlib import Path

    from .config import resolve

    path = getattr(recipe.sections["source"], "path", None)
    try:
        local = Path(resolve(path)) if path else None
    except HfaugError:
        return None
    if local is not None and local.is_file() and local.suffix in (".jsonl", ".csv", ".tsv"):
        with local.open(encoding="utf-8") as f:
            return max(sum(1 for line in f if line.strip()) - (local.suffix != ".jsonl"), 0)
    if local is not None and local.exists():
        return None
    from .hub import split_rows

    spec = recipe.sections["source"]
    return split_rows(spec.path, getattr(spec, "revision", None), getattr(spec, "name", None),
                      getattr(spec, "split", None) or "train")


def _synthetic_rows(name: str, recipe: "Recipe", run: "Run | None", num_labels: int) -> int:
    """Rows of a subset: the select stage's count when it has run, else budget x classes; an
    ``-all`` subset is the candidate pool (generate.max_rows, or n_per_class x classes)."""
    if run is not None and run.manifest("select") is not None:
        rows = (run.manifest("select").get("rows_out") or {}).get(name)
        if rows is not None:
            return int(rows)
    match = re.search(r"-(\d+)$", name)
    if match:
        return int(match.group(1)) * num_labels
    generate = recipe.sections.get("generate")
    if generate is None:
        return 0
    pool = int(getattr(generate, "n_per_class", 0)) * num_labels + sum(getattr(generate, "n_by_label", {}).values())
    held_out = int(getattr(generate, "held_out", 0) or 0)
    max_rows = getattr(generate, "max_rows", None)
    return min(pool - held_out, max_rows) if max_rows else pool - held_out


def estimate(recipe: "Recipe", run: "Run | None" = None) -> dict[str, Any]:
    """How many students the recipe's grid trains and about how many GPU hours that takes:
    sum over students of epochs x (gold + synthetic rows) / (rows per second of one GPU)."""
    config = recipe.sections["distill"]
    subsets = planned_subsets(recipe, run)
    students = plan(subsets, config, recipe.run.seed)
    num_labels = _num_labels(recipe)
    gold = _gold_rows(recipe, run)
    epochs = float(config.num_train_epochs)
    speed = float(config.estimate_rows_per_second)
    rows = sum((gold or 0) + (0 if s.is_baseline else _synthetic_rows(s.subset, recipe, run, num_labels))
               for s in students)
    return {"subsets": len(subsets), "seeds": list(getattr(config, "seeds", None) or []),
            "students": len(students), "baseline": any(s.is_baseline for s in students),
            "gold_rows": gold, "training_rows": rows, "epochs": epochs, "rows_per_second": speed,
            "gpu_hours": rows * epochs / speed / 3600.0}


def _num_labels(recipe: "Recipe") -> int:
    from .tasks import resolve_task

    return resolve_task(recipe.run.task).num_labels


def describe(recipe: "Recipe", run: "Run | None" = None) -> str:
    """The grid's size and cost as a few lines for ``--dry-run``."""
    if not recipe.has("distill"):
        return "experiment grid: the recipe has no distill section, so no students are trained"
    e = estimate(recipe, run)
    seeds = e["seeds"]
    lines = [f"experiment grid: {e['subsets']} subset(s){' + the source-only baseline' if e['baseline'] else ''}"
             f" x {len(seeds) if seeds else 1} seed(s){' ' + str(seeds) if seeds else ''}"
             f" = {e['students']} student(s)"]
    gold = "unknown (run `hfaug source` first to count them)" if e["gold_rows"] is None else f"{e['gold_rows']:,}"
    lines.append(f"  gold rows per student: {gold}; training rows over the grid: {e['training_rows']:,}"
                 f" x {e['epochs']:g} epochs")
    cost = f"{e['gpu_hours']:.1f} GPU hours" if e["gpu_hours"] >= 1 else f"{60 * e['gpu_hours']:.1f} GPU minutes"
    lines.append(f"  estimate: {cost} at {e['rows_per_second']:g} training rows/s per GPU "
                 "(distill.estimate_rows_per_second; a trained student's metrics.json has the measured "
                 "train_samples_per_second)")
    lines.append("  scale out: one process per GPU with `hfaug distill --config RECIPE --shard i/n`, then "
                 "`hfaug distill --config RECIPE` once to collect and aggregate")
    return "\n".join(lines)


def dry_run(recipe: "Recipe") -> str:
    """``hfaug run RECIPE --dry-run``: the grid and its cost; reads the run directory when it
    exists (the counted source and select rows), creates nothing."""
    from pathlib import Path

    from .runs import Run

    root = Path(recipe.run.output_dir) / recipe.run.name
    return describe(recipe, Run(recipe) if root.is_dir() else None)

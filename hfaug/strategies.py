"""The selection strategies' names and the names of the subsets they produce.

The select stage writes, the experiment grid plans and distill reads these names, so they live
here rather than in any one of them (no stage imports another). Nothing heavy is imported.
"""

from __future__ import annotations

from .errors import HfaugError, did_you_mean

#: strategy -> the short name used in output dataset names
STRATEGIES: dict[str, str] = {
    "random": "randk",
    "top-k": "topk",
    "div-k": "divk",
    "ambiguous": "ambk",
    "easy": "easyk",
    "all": "all",
}
ALIASES: dict[str, str] = {
    "rand-k": "random", "randk": "random", "rand": "random",
    "topk": "top-k", "top": "top-k",
    "divk": "div-k", "diverse": "div-k",
    "amb-k": "ambiguous", "ambk": "ambiguous", "amb": "ambiguous",
    "easy-k": "easy", "easyk": "easy",
}
#: the strategies that rank by the teacher's training dynamics (label.dynamics must be on)
DYNAMICS_STRATEGIES = ("ambiguous", "easy")
#: every row of a language, no budget
ALL = "all"


def canonical_strategy(name: str) -> str:
    """The canonical strategy name for a name or alias; an unknown one lists the valid ones."""
    key = str(name).strip().lower()
    key = ALIASES.get(key, key)
    if key not in STRATEGIES:
        raise HfaugError(
            f"unknown selection strategy '{name}' in select.strategies"
            f"{did_you_mean(key, [*STRATEGIES, *ALIASES])}; "
            f"valid strategies: {', '.join(STRATEGIES)}"
        )
    return key


def subset_name(lang: str, strategy: str, budget: int | None = None) -> str:
    """The select output for one language and canonical strategy: ``{lang}-{short}-{k}``, or
    ``{lang}-all`` (no budget)."""
    if strategy == ALL:
        return f"{lang}-{STRATEGIES[ALL]}"
    return f"{lang}-{STRATEGIES[strategy]}-{budget}"

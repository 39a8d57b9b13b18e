"""Source stage: the labelled (English) training data, with a dev split for model selection.

Output datasets: ``train`` and ``dev``.
Output columns: id, task, text (or premise + hypothesis), lang, origin (``source``), label.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

from .loading import DataSpec, load_labelled
from .runs import StageContext, StageResult
from .schema import DataResult

logger = logging.getLogger(__name__)


@dataclass
class SourceConfig(DataSpec):
    """The labelled source data. Model selection reads only this dev split, never target data."""

    dev: DataSpec | None = field(default=None, metadata={
        "help": "Separate dev data (same keys as source). Without it, dev_fraction of train is held out."})
    dev_fraction: float = field(default=0.1, metadata={"help": "Share of train held out as dev when no dev is given."})

    def __post_init__(self):
        if not 0.0 <= self.dev_fraction < 1.0:
            raise ValueError(f"source.dev_fraction must be in [0, 1), got {self.dev_fraction}")


def source(config: SourceConfig, task, seed: int = 42) -> DataResult:
    """Load train and dev splits: a :class:`~hfaug.schema.DataResult` with datasets train and dev."""
    train, dropped = load_labelled(config, task, seed=seed, where="source")
    if config.dev is not None:
        dev, dev_dropped = load_labelled(config.dev, task, seed=seed, where="source.dev")
        dropped.update({f"dev_{k}": v for k, v in dev_dropped.items()})
    elif config.dev_fraction > 0 and len(train) > 1:
        parts = train.train_test_split(test_size=config.dev_fraction, seed=seed)
        train, dev = parts["train"], parts["test"]
    else:
        dev = train.select([])
    return DataResult({"train": train, "dev": dev}, dropped)


def run(ctx: StageContext) -> StageResult:
    splits, dropped, _ = source(ctx.config, ctx.task, ctx.seed)
    counts = Counter()
    for split, ds in splits.items():
        for label in ds["label"]:
            counts[f"{split}.{ctx.task.labels[label]}"] += 1
    return StageResult(datasets=splits, dropped=dropped, rows_in=sum(map(len, splits.values())) + sum(dropped.values()),
                       metrics={"labels": dict(sorted(counts.items()))})

"""hfaug: LLM-based augmentations with effective data selection for zero-shot crosslingual transfer.

The Python API mirrors the CLI. Each stage is a module holding a config dataclass and a function
of the same name, Dataset in, Dataset out. Selecting the most confident row per teacher-predicted
class from soft-labelled candidates (columns ``id``, ``text``, ``soft_label`` in the task's label
order, here negative / neutral / positive)::

    >>> import datasets
    >>> from hfaug import select
    >>> pool = datasets.Dataset.from_dict({
    ...     "id": ["r1", "r2", "r3", "r4", "r5", "r6"],
    ...     "text": ["a great film", "wonderful actors", "a dull plot", "the worst evening",
    ...              "it runs two hours", "shot in Mumbai"],
    ...     "soft_label": [[.1, .1, .8], [.05, .05, .9], [.7, .2, .1], [.9, .05, .05], [.2, .6, .2], [.1, .8, .1]],
    ... })
    >>> chosen = select.select(pool, select.SelectConfig(strategies=["top-k"], budgets=[1], min_words=0),
    ...                        "sentiment")
    >>> sorted(chosen.datasets["en-topk-1"]["text"])
    ['shot in Mumbai', 'the worst evening', 'wonderful actors']

The other stages read the same way (``label.label(candidates, label.LabelConfig(teacher=...), task)``
returns the soft-labelled rows and the rows dropped by reason), and ``hfaug.run("demo")`` runs a whole
recipe. Stage modules are imported on first use, so ``import hfaug`` stays light.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# datasets pings a download counter on S3 whenever it loads a local json/csv/parquet file (its
# packaged builders): a request leaving the machine for local data, the offline demo included.
# Off unless the user turns it on.
os.environ.setdefault("HF_UPDATE_DOWNLOAD_COUNTS", "0")

_STAGE_MODULES = (
    "source", "generate", "adapt", "teacher", "label", "translate", "select", "publish",
    "distill", "evaluate", "export", "serve", "predict",
)
_LAZY = {
    "load_recipe": "hfaug.config",
    "Recipe": "hfaug.config",
    "Run": "hfaug.runs",
    "HfaugError": "hfaug.errors",
    "get_task": "hfaug.tasks",
    "TASKS": "hfaug.tasks",
    "Task": "hfaug.tasks",
    "resolve_task": "hfaug.tasks",
}

__all__ = ["run", "__version__", *_STAGE_MODULES, *_LAZY]

if TYPE_CHECKING:
    from .config import Recipe, load_recipe  # noqa: F401
    from .errors import HfaugError  # noqa: F401
    from .runs import Run  # noqa: F401
    from .tasks import TASKS, Task, get_task, resolve_task  # noqa: F401


def run(recipe, overrides=None, *, force: str | None = None):
    """Run a recipe (path, packaged name or dict) end to end; returns the :class:`Run`."""
    from .config import load_recipe
    from .pipeline import run_pipeline

    return run_pipeline(load_recipe(recipe, overrides), force=force)


def __getattr__(name: str):
    if name in _STAGE_MODULES:
        return importlib.import_module(f"hfaug.{name}")
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hfaug' has no attribute '{name}'")

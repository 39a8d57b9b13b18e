"""Run directories, manifests, skip-if-unchanged and atomic writes.

A run lives in ``<output_dir>/<name>/``::

    recipe.yaml              the resolved recipe of the last run
    <stage>/                 one folder per stage, replaced atomically when the stage finishes
        manifest.json        config, hash of config + inputs, rows in/out, dropped by reason, ...
        <dataset>/           each output dataset (datasets.save_to_disk)
        ...                  other artifacts (checkpoints, figures, reports)
    cache/<stage>/           work persisted while a stage runs (requests, translations), so a
                             killed stage only loses what was in flight

A stage is skipped when its manifest's ``hash`` equals the hash of its current config and the
manifests of its inputs. A stage that runs writes into ``.<stage>.tmp`` and is renamed into place
only when it succeeded, so a killed stage leaves nothing half-written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import shutil
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import Recipe, to_dict
from .errors import HfaugError

if TYPE_CHECKING:
    import datasets

    from .tasks import Task

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
VERSIONED_PACKAGES = (
    "hfaug", "torch", "transformers", "datasets", "huggingface_hub", "accelerate",
    "optimum", "optimum-onnx", "onnxruntime", "sentence-transformers", "trl", "gradio",
)


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def stable_hash(data: Any) -> str:
    payload = json.dumps(data, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON through a temp file and rename, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, default=str, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


@dataclass
class StageResult:
    """What a stage hands back to the driver.

    ``datasets`` are saved under the stage folder by name (``data`` is the main output).
    ``dropped`` counts every row the stage left out, by reason; nothing is dropped silently.
    """

    datasets: dict[str, "datasets.Dataset"] = field(default_factory=dict)
    dropped: Counter = field(default_factory=Counter)
    rows_in: int | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


class Run:
    """One run directory and the recipe that drives it."""

    def __init__(self, recipe: Recipe, root: str | Path | None = None):
        self.recipe = recipe
        self.root = Path(root) if root else Path(recipe.run.output_dir) / recipe.run.name
        self.root.mkdir(parents=True, exist_ok=True)
        #: (stage, "ran" | "skipped", manifest, seconds) of the last run_pipeline, for the summary
        self.report: list[tuple[str, str, dict, float]] = []

    @property
    def task(self) -> "Task":
        from .tasks import get_task

        return get_task(self.recipe.run.task)

    def stage_dir(self, stage: str) -> Path:
        return self.root / stage

    def cache_dir(self, stage: str) -> Path:
        path = self.root / "cache" / stage
        path.mkdir(parents=True, exist_ok=True)
        return path

    def manifest(self, stage: str) -> dict | None:
        path = self.stage_dir(stage) / MANIFEST
        if not path.is_file():
            return None
        return json.loads(path.read_text(encoding="utf-8"))

    def require(self, stage: str) -> Path:
        """The finished output folder of ``stage``; a user error if that stage has not run."""
        if self.manifest(stage) is None:
            raise HfaugError(
                f"stage '{stage}' has no output in {self.root}; run `hfaug {stage} --config "
                f"{self.recipe.ref}` (or `hfaug run`) first"
            )
        return self.stage_dir(stage)

    def load(self, stage: str, name: str = "data") -> "datasets.Dataset":
        """A dataset written by an earlier stage."""
        import datasets

        path = self.require(stage) / name
        if not path.exists():
            raise HfaugError(f"stage '{stage}' wrote no dataset named '{name}' in {self.root / stage}")
        return datasets.load_from_disk(str(path))

    def outputs(self, stage: str) -> list[str]:
        """Names of the datasets a finished stage wrote."""
        manifest = self.manifest(stage) or {}
        return list(manifest.get("rows_out", {}))

    def save_recipe(self) -> None:
        path = self.root / "recipe.yaml"
        tmp = path.with_name(".recipe.yaml.tmp")
        tmp.write_text(self.recipe.to_yaml(), encoding="utf-8")
        os.replace(tmp, path)


@dataclass
class StageContext:
    """Everything a stage's ``run(ctx)`` needs: its config, its run, and where to write."""

    run: Run
    stage: str
    config: Any
    out_dir: Path  # the temp folder that becomes <run>/<stage>/ on success

    @property
    def recipe(self) -> Recipe:
        return self.run.recipe

    @property
    def task(self) -> "Task":
        return self.run.task

    @property
    def seed(self) -> int:
        return self.run.recipe.run.seed

    @property
    def cache_dir(self) -> Path:
        return self.run.cache_dir(self.stage)

    def input(self, stage: str, name: str = "data") -> "datasets.Dataset":
        return self.run.load(stage, name)

    def input_dir(self, stage: str) -> Path:
        return self.run.require(stage)


def stage_key(run: Run, stage: str, config: Any, inputs: list[str], reads: dict | None = None) -> str:
    """Hash of what determines a stage's output: its config, the task and seed, its inputs.

    Inputs enter through their manifests' ``run_id``, which changes each time an input stage
    actually runs, so a forced upstream rerun invalidates everything downstream.
    """
    upstream = {}
    for name in inputs:
        manifest = run.manifest(name)
        upstream[name] = manifest["run_id"] if manifest else None
    return stable_hash({
        "stage": stage,
        "config": to_dict(config) if config is not None else None,
        "task": run.recipe.run.task,
        "seed": run.recipe.run.seed,
        "inputs": upstream,
        **({"reads": reads} if reads else {}),  # other recipe sections the stage reads
    })


def is_fresh(run: Run, stage: str, key: str) -> bool:
    manifest = run.manifest(stage)
    return manifest is not None and manifest.get("hash") == key


def execute(run: Run, stage: str, fn, config: Any, inputs: list[str], *, force: bool = False,
            reads: dict | None = None) -> tuple[dict, bool]:
    """Run one stage unless it is fresh; returns (manifest, skipped)."""
    key = stage_key(run, stage, config, inputs, reads)
    if not force and is_fresh(run, stage, key):
        logger.info("%s: unchanged, skipped", stage)
        return run.manifest(stage), True

    final = run.stage_dir(stage)
    # Under `accelerate launch` every process runs the stage on its share of the rows; the stage
    # gathers the results, and only the main process writes the output folder.
    rank = int(os.environ.get("RANK", "0"))
    tmp = run.root / (f".{stage}.tmp" if rank == 0 else f".{stage}.tmp-rank{rank}")
    if tmp.exists():
        shutil.rmtree(tmp)  # leftovers of a killed attempt; finished work lives in cache/
    tmp.mkdir(parents=True)
    ctx = StageContext(run=run, stage=stage, config=config, out_dir=tmp)
    logger.info("%s: running", stage)
    start = time.perf_counter()
    result: StageResult = fn(ctx)
    wall = time.perf_counter() - start
    if rank != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        return {"stage": stage, "rank": rank, "rows_out": {k: len(v) for k, v in result.datasets.items()}}, False

    rows_out = {}
    for name, ds in result.datasets.items():
        # an empty dataset saved with 0 shards cannot be loaded back: keep one (empty) shard
        ds.save_to_disk(str(tmp / name), num_shards=1 if len(ds) == 0 else None)
        rows_out[name] = len(ds)
    manifest = {
        "stage": stage,
        "hash": key,
        "run_id": uuid.uuid4().hex,
        "config": to_dict(config) if config is not None else None,
        "task": run.recipe.run.task,
        "setting": run.recipe.setting,  # the paper's setting the stage ran in (docs/fidelity.md)
        "seed": run.recipe.run.seed,
        "inputs": {name: (run.manifest(name) or {}).get("run_id") for name in inputs},
        "rows_in": result.rows_in,
        "rows_out": rows_out,
        "dropped": dict(result.dropped),
        "metrics": result.metrics,
        **({"extra": result.extra} if result.extra else {}),
        "wall_time_s": round(wall, 3),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "versions": package_versions(),
    }
    write_json_atomic(tmp / MANIFEST, manifest)
    _swap_into_place(tmp, final)
    logger.info("%s: done in %.1fs (%s)", stage, wall, ", ".join(f"{k}: {v} rows" for k, v in rows_out.items()))
    return manifest, False


def _swap_into_place(tmp: Path, final: Path) -> None:
    old = final.with_name(f".{final.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    if old.exists():
        shutil.rmtree(old)

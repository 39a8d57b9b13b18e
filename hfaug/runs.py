"""Run directories, manifests, skip-if-unchanged and atomic writes.

A run lives in ``<output_dir>/<name>/`` (every stage's files: :mod:`hfaug.layout`)::

    recipe.yaml              the resolved recipe of the last run
    <stage>/                 one folder per stage, replaced atomically when the stage finishes
        manifest.json        config, hash of config + inputs, rows in/out, dropped by reason, ...
        <dataset>/           each output dataset (datasets.save_to_disk)
        ...                  other artifacts (checkpoints, figures, reports)
    cache/<stage>/           work persisted while a stage runs (requests, translations), so a
                             killed stage only loses what was in flight

A stage is skipped when its manifest's ``hash`` equals the hash of its current config and the
manifests of its inputs. A stage that runs writes into ``.<stage>.tmp`` and is renamed into place
only when it succeeded, so a killed stage leaves nothing half-written; a stage that fails
removes its ``.<stage>.tmp`` folder. The manifest lists every file of the stage and is written
last; a stage whose manifest names a missing file is not fresh (it reruns) and is not an input.

One process at a time works in a run directory: it holds ``.lock`` (an advisory ``flock``, which
the kernel releases when the holder dies, so a lock left by a killed run is simply taken over).
A second run exits with the holder's pid, or waits for it with ``--wait``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import shutil
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .atomic import replace_folder, write_text
from .atomic import write_json as write_json_atomic  # noqa: F401 -- the name the stages import
from .config import Recipe, to_dict
from .errors import HfaugError
from .hub import known_secrets, redact
from .layout import LOCK, MANIFEST, RECIPE_FILE, stage_cache_dir

if TYPE_CHECKING:
    import datasets

    from .tasks import Task

logger = logging.getLogger(__name__)

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
    #: set when the stage finished with work left to retry (requests failed within
    #: max_failed_fraction): ``{"reason": ..., "state": ...}``. Such a stage is not fresh, so a
    #: plain rerun retries; ``state`` (e.g. a digest of what failed) unchanged after that rerun
    #: means the output is too, and the downstream stages stay fresh.
    incomplete: dict[str, Any] | None = None


# ---------------------------------------------------------------------------------------------
# one process per run directory

#: locks this process holds, by (lock path, thread): [file descriptor, depth] (a run holding its
#: lock calls run_stage, which takes it again; another thread's run is another run and waits)
_HELD: dict[tuple[str, int], list[int]] = {}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def _read_holder(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return {}


@contextlib.contextmanager
def run_lock(root: Path, *, wait: bool = False) -> Iterator[None]:
    """Hold ``<root>/.lock`` while the block runs.

    Held by another live process: without ``wait`` a user error naming its pid, with ``wait``
    block until it is released. Left by a process that died (kill -9, a crash): taken over. Only
    the main process of a distributed launch locks; the other ranks work under its lock.
    """
    if int(os.environ.get("RANK", "0")) != 0:
        yield
        return
    try:
        import fcntl
    except ImportError:  # no flock (Windows): one run at a time is then up to the user
        yield
        return
    path = Path(root) / LOCK
    key = (str(path.resolve()), threading.get_ident())
    if key in _HELD:
        _HELD[key][1] += 1
        try:
            yield
        finally:
            _HELD[key][1] -= 1
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(path)
            for _ in range(10):  # the holder writes its pid just after it takes the lock
                if holder.get("pid"):
                    break
                time.sleep(0.05)
                holder = _read_holder(path)
            pid = holder.get("pid", "unknown")
            since = f", since {holder['started']}" if holder.get("started") else ""
            if not wait:
                raise HfaugError(
                    f"run directory {root} is in use by another hfaug run (pid {pid}{since}); wait for it "
                    f"to finish, or rerun with --wait to start when it does") from None
            logger.info("waiting for the hfaug run with pid %s to release %s", pid, root)
            fcntl.flock(fd, fcntl.LOCK_EX)
        before = _read_holder(path)
        if before.get("pid") and before.get("host") == socket.gethostname() and before["pid"] != os.getpid() \
                and not _pid_alive(int(before["pid"])):
            logger.info("took over the lock of pid %s on %s (that process is gone)", before["pid"], root)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                  "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}).encode(), 0)
        _HELD[key] = [fd, 1]
        try:
            yield
        finally:
            del _HELD[key]
            os.ftruncate(fd, 0)  # the file stays (removing it would race a waiter); only the holder leaves
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


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
        from .tasks import resolve_task

        return resolve_task(self.recipe.run.task)

    def stage_dir(self, stage: str) -> Path:
        return self.root / stage

    def lock(self, *, wait: bool = False):
        """This run directory's lock (a context manager); see :func:`run_lock`."""
        return run_lock(self.root, wait=wait)

    def missing_files(self, stage: str) -> list[str]:
        """Files the stage's manifest lists that are gone (a copy cut short, a hand deletion)."""
        manifest = self.manifest(stage) or {}
        folder = self.stage_dir(stage)
        return [name for name in manifest.get("files", []) if not (folder / name).exists()]

    def cache_dir(self, stage: str) -> Path:
        path = stage_cache_dir(self.root, stage)
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
        missing = self.missing_files(stage)
        if missing:
            raise HfaugError(
                f"stage '{stage}' in {self.root} is incomplete ({len(missing)} files its manifest lists are "
                f"missing, e.g. {missing[0]}); rerun it: `hfaug {stage} --config {self.recipe.ref}` (or `hfaug run`)"
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
        write_text(self.root / RECIPE_FILE, self.recipe.to_yaml())  # secrets blanked, as every recipe copy


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


def task_key(run: Run) -> Any:
    """The recipe's task as plain data: a preset's name (as before tasks of a recipe's own existed,
    so earlier runs keep their hashes), or the whole task mapping."""
    task = run.recipe.run.task
    return task if isinstance(task, str) else to_dict(task)


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
        "task": task_key(run),
        "seed": run.recipe.run.seed,
        "inputs": upstream,
        **({"reads": reads} if reads else {}),  # other recipe sections the stage reads
    })


def is_fresh(run: Run, stage: str, key: str) -> bool:
    manifest = run.manifest(stage)
    if manifest is None or manifest.get("hash") != key:
        return False
    missing = run.missing_files(stage)
    if missing:
        logger.warning("%s: %d files its manifest lists are missing (e.g. %s); running it again",
                       stage, len(missing), missing[0])
        return False
    if manifest.get("incomplete"):
        logger.info("%s: the last run left work to retry (%s); running it again", stage,
                    manifest["incomplete"].get("reason", "incomplete"))
        return False
    return True


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
    previous = run.manifest(stage)
    logger.info("%s: running", stage)
    start = time.perf_counter()
    try:
        result: StageResult = fn(ctx)
        wall = time.perf_counter() - start
        if rank != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            return {"stage": stage, "rank": rank, "rows_out": {k: len(v) for k, v in result.datasets.items()}}, False
        manifest = _write_outputs(run, stage, key, config, inputs, result, tmp, wall, previous)
    except BaseException:
        # nothing of a failed or interrupted attempt is kept here (finished work lives in cache/)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_folder(tmp, final)
    logger.info("%s: done in %.1fs (%s)", stage, wall,
                ", ".join(f"{k}: {v} rows" for k, v in manifest["rows_out"].items()))
    return manifest, False


def _write_outputs(run: Run, stage: str, key: str, config: Any, inputs: list[str], result: StageResult, tmp: Path,
                   wall: float, previous: dict | None) -> dict:
    """Save the stage's datasets into ``tmp``, then its manifest (last, listing every file)."""
    rows_out = {}
    for name, ds in result.datasets.items():
        # an empty dataset saved with 0 shards cannot be loaded back: keep one (empty) shard
        ds.save_to_disk(str(tmp / name), num_shards=1 if len(ds) == 0 else None)
        rows_out[name] = len(ds)
    run_id = uuid.uuid4().hex
    if (previous and previous.get("hash") == key and previous.get("incomplete") and result.incomplete
            and previous["incomplete"].get("state") == result.incomplete.get("state")):
        # a rerun that retried and got nothing new: the same output, so downstream stays fresh
        run_id = previous["run_id"]
    manifest = {
        "stage": stage,
        "hash": key,
        "run_id": run_id,
        "config": redact(to_dict(config), known_secrets(run.recipe)) if config is not None else None,
        "task": task_key(run),
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
        **({"incomplete": result.incomplete} if result.incomplete else {}),
        # every file in place before the manifest is written: is_fresh/require check they still are
        "files": sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file()),
    }
    write_json_atomic(tmp / MANIFEST, manifest)
    return manifest


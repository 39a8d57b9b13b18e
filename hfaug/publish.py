"""Publish stages: the selected data as a versioned Hub dataset repo, the students as model repos.

``publish`` (``run``) builds the whole repo in a local folder first -- the layout a Hub dataset
repo has, which ``load_dataset(folder, config)`` loads as it is::

    README.md                                  dataset card; its YAML lists configs and features
    data/<config>/<split>-00000-of-00001.parquet
    figures/*.png                              the select stage's figures (data maps)
    recipe.yaml                                the resolved recipe, without secrets
    reproduce.py                               downloads recipe.yaml and reruns it with hfaug

then, when a repo id and a token are there, pushes it as ONE commit and tags that commit
(``v1``, ``v2``, ... or ``publish.tag``). An existing tag is never moved: asking for it is a user
error and the server is left unchanged. Transient server failures are retried; if the commit
still fails nothing is tagged and earlier versions are untouched.

When the recipe trains students, the dataset is not pushed here: ``publish-model`` pushes it with
the students as one release (:func:`release`), after every gate (export parity included) passed,
under one tag on every repo, resumable after a failure. Hub failures raise
:class:`~hfaug.errors.HubError` (exit code 3), never the bad-recipe code 2.

Configs: one per selected dataset (``hi-divk-2500``, ``hi-all``, ...), ``en-candidates`` (the
English generations with teacher soft labels; ``translated-candidates`` in translated-teacher, where
the teacher labels the translations) and ``source-translated`` (the translated source
data, splits train/validation, with a ``lang`` column).

Input columns: the contract columns of each dataset (at least id, task, the task's text columns,
label); labels become ClassLabel with the task's names and soft labels Sequence(float32).
Output: ``<run>/publish/hub-layout/`` (or ``publish.local_dir``) and, when pushed, the Hub repo.

The token comes from ``HF_TOKEN`` or the login cache only (never from the recipe) and is never
logged or written; ``HF_ENDPOINT`` points the clients at a self-hosted or enterprise Hub.
"""

from __future__ import annotations

import fnmatch
import logging
import math
import re
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from . import schema
from .atomic import atomic_folder, write_json
from .cards import (
    ModelCardData,
    OnnxExport,
    dataset_card,
    hub_lang,
    model_card,
    release_section,
)
from .errors import HfaugError, HubError
from .hub import HubRepo, hub_endpoint, hub_token, known_secrets, next_tag, redact
from .layout import (
    CARD,
    CARD_DATA,
    EXPORT_DIRS,
    FIGURES_DIR,
    GRID_DIR,
    HUB_LAYOUT_DIR,
    MANIFEST,
    ONNX_FILE,
    RECIPE_FILE,
    RELEASE_DATASET_DIR,
    RELEASE_FILE,
    REPO_INT8_FILE,
    REPO_ONNX_DIR,
    export_dirs,
    student_dirs,
    student_metrics_path,
)
from .runs import StageContext, StageResult
from .space_info import student_info, write_info

if TYPE_CHECKING:
    import datasets

    from .tasks import Task

logger = logging.getLogger(__name__)

CANDIDATES_CONFIG = "en-candidates"
#: translated-teacher labels the translations, so its candidates are not English
TRANSLATED_CANDIDATES_CONFIG = "translated-candidates"


def candidates_config(setting: str) -> str:
    """The config name of the teacher-labelled candidates in ``setting``."""
    return TRANSLATED_CANDIDATES_CONFIG if setting == "translated-teacher" else CANDIDATES_CONFIG
SOURCE_CONFIG = "source-translated"
SCRIPT_FILE = "reproduce.py"
MAX_SHARD_BYTES = 500 * 1024 * 1024  # parquet shards stay well under the Hub's recommended file size
REPO_ID_RE = re.compile(r"^[\w.\-]{1,96}/[\w.\-]{1,96}$")
TAG_RE = re.compile(r"^[\w.\-]{1,64}$")
CONFIG_NAME_RE = re.compile(r"^[A-Za-z0-9][\w.\-]*$")
SPLIT_NAMES = {"train": "train", "dev": "validation", "validation": "validation", "test": "test"}


@dataclass
class PublishConfig:
    """Where and how the run's data (and students) are published."""

    repo_id: str | None = field(default=None, metadata={
        "help": "Hub dataset repo 'user/name'. None: write the local folder only (the offline default)."})
    local_dir: str | None = field(default=None, metadata={
        "help": "Write the repo layout here and push nothing. Default: <run>/publish/hub-layout "
                "(always written)."})
    private: bool = field(default=False, metadata={"help": "Create the Hub repos as private."})
    tag: str | None = field(default=None, metadata={
        "help": "Version tag of this publish. None: the next free v1, v2, ... An existing tag is never moved."})
    license: str = field(default="cc-by-4.0", metadata={
        "help": "License id in the card (Hub license ids). Check the generator model's terms of use."})
    pretty_name: str | None = field(default=None, metadata={
        "help": "Title of the card. Default: from the run name."})
    configs: list[str] | None = field(default=None, metadata={
        "help": "Select datasets to publish (fnmatch patterns, e.g. 'hi-*'). None: all of them."})
    candidates: bool = field(default=True, metadata={
        "help": f"Publish the teacher-labelled generations as config '{CANDIDATES_CONFIG}' "
                f"('{TRANSLATED_CANDIDATES_CONFIG}' in translated-teacher, where the teacher labels the translations)."})
    source_translated: bool = field(default=True, metadata={
        "help": f"Publish the translated source data as config '{SOURCE_CONFIG}'."})
    models: bool = field(default=True, metadata={
        "help": "Run publish-model: push each student (and its ONNX export) as a model repo."})
    model_repo: str = field(default="{repo_id}-{name}", metadata={
        "help": "Model repo id pattern; {repo_id} is publish.repo_id, {name} the student's name."})
    commit_message: str | None = field(default=None, metadata={
        "help": "Commit title. Default: 'hfaug publish <tag>'."})
    retries: int = field(default=3, metadata={
        "help": "Retries of each Hub call on a server error or lost connection."})
    retry_wait: float = field(default=2.0, metadata={"help": "Seconds before the first retry; doubles each time."})

    def __post_init__(self):
        if self.repo_id is not None and not REPO_ID_RE.match(self.repo_id):
            raise HfaugError(f"publish.repo_id '{self.repo_id}' must look like 'user/name' "
                             "(letters, digits, '-', '_', '.')")
        if self.tag is not None and not TAG_RE.match(self.tag):
            raise HfaugError(f"publish.tag '{self.tag}' must be letters, digits, '-', '_' or '.', e.g. v3")
        if "{name}" not in self.model_repo:
            raise HfaugError(f"publish.model_repo '{self.model_repo}' must contain {{name}} (the student's name)")
        if self.retries < 0 or self.retry_wait < 0:
            raise HfaugError("publish.retries and publish.retry_wait must be >= 0")
        if not self.license:
            raise HfaugError("publish.license must be a Hub license id, e.g. cc-by-4.0")


# ---------------------------------------------------------------------------------------------
# secrets


def scrub(text: str, ctx: StageContext) -> str:
    """Free text (cards, commit messages) with every secret blanked, as recipe.yaml has it."""
    return redact(text, known_secrets(ctx.recipe))


# ---------------------------------------------------------------------------------------------
# collecting the run's datasets


def collect(ctx: StageContext) -> dict[str, dict[str, "datasets.Dataset"]]:
    """{config: {split: Dataset}} from the select, label and translate-source outputs of a run."""

    config: PublishConfig = ctx.config
    run, task = ctx.run, ctx.task
    out: dict[str, dict[str, datasets.Dataset]] = {}
    if run.manifest("select") is not None:
        rows_out = run.manifest("select").get("rows_out") or {}
        for name in run.outputs("select"):
            if config.configs and not any(fnmatch.fnmatch(name, p) for p in config.configs):
                continue
            if name in (CANDIDATES_CONFIG, TRANSLATED_CANDIDATES_CONFIG, SOURCE_CONFIG) or \
                    not CONFIG_NAME_RE.match(name):
                raise HfaugError(f"publish: select dataset '{name}' cannot be a config name "
                                 f"(reserved or invalid); rename it in the select section")
            if not rows_out.get(name):
                # an empty subset has no rows to load (and save_to_disk writes no shard for it)
                logger.warning("publish: select subset '%s' is empty and is left out", name)
                continue
            out[name] = {"train": _typed(run.load("select", name), task, f"select/{name}")}
    if config.candidates and run.manifest("label") is not None:
        out[candidates_config(ctx.recipe.setting)] = {"train": _typed(run.load("label"), task, "label/data")}
    # a run stated as english-teacher translates nothing: an older run's translations are not its data
    if config.source_translated and run.manifest("translate-source") is not None and \
            ctx.recipe.run.setting != "english-teacher":
        splits: dict[str, list[datasets.Dataset]] = {}
        source_rows = run.manifest("translate-source").get("rows_out") or {}
        for name in run.outputs("translate-source"):
            match = re.fullmatch(r"(train|dev|validation|test)-(.+)", name)
            if not match or not source_rows.get(name):
                continue
            ds = run.load("translate-source", name)
            if schema.LANG not in ds.column_names:
                ds = ds.add_column(schema.LANG, [match.group(2)] * len(ds))
            splits.setdefault(SPLIT_NAMES[match.group(1)], []).append(_typed(ds, task, f"translate-source/{name}"))
        if splits:
            out[SOURCE_CONFIG] = {split: _concat(parts) for split, parts in splits.items()}
    if not out:
        raise HfaugError("publish: nothing to publish; the run has no select, label or translate-source "
                         "outputs (run those stages first)")
    return out


def _typed(ds: "datasets.Dataset", task: "Task", where: str) -> "datasets.Dataset":
    schema.require_columns(ds, [schema.ID, *task.text_columns, schema.LABEL], f"publish ({where})")
    return schema.cast_contract(ds, task)


def _concat(parts: list["datasets.Dataset"]) -> "datasets.Dataset":
    import datasets

    common = [c for c in parts[0].column_names if all(c in p.column_names for p in parts)]
    return datasets.concatenate_datasets([p.select_columns(common) for p in parts])


# ---------------------------------------------------------------------------------------------
# the local layout and the card


def write_data(configs: dict[str, dict[str, "datasets.Dataset"]], folder: Path) -> dict[str, dict[str, list[str]]]:
    """Parquet shards under data/<config>/; returns {config: {split: [relative paths]}}."""
    files: dict[str, dict[str, list[str]]] = {}
    for name, splits in configs.items():
        for split, ds in splits.items():
            nbytes = ds.data.nbytes if len(ds) else 0
            shards = max(1, math.ceil(nbytes / MAX_SHARD_BYTES))
            for i in range(shards):
                rel = f"data/{name}/{split}-{i:05d}-of-{shards:05d}.parquet"
                (folder / rel).parent.mkdir(parents=True, exist_ok=True)
                part = ds.shard(shards, i, contiguous=True) if shards > 1 else ds
                part.to_parquet(str(folder / rel))
                files.setdefault(name, {}).setdefault(split, []).append(rel)
    return files



def _section(ctx: StageContext, name: str, stages: tuple[str, ...] = ()) -> dict:
    """A stage's resolved config, secrets blanked: from the manifest of the run that made the
    data (what was really used), else from the recipe."""
    from .config import to_dict

    for stage in stages or (name,):
        manifest = ctx.run.manifest(stage)
        if manifest and isinstance(manifest.get("config"), dict):
            return redact(manifest["config"], known_secrets())
    config = ctx.recipe.sections.get(name)
    return redact(to_dict(config), known_secrets()) if config is not None else {}


def _pick(data: dict, *keys: str) -> Any:
    for key in keys:
        if data.get(key) not in (None, "", [], {}):
            return data[key]
    return None


SELECTION_KEYS = {"strategies", "budgets", "shortfall", "n_clusters", "embedder", "kmeans", "dynamics_class",
                  "languages", "dedup", "strategy", "budget"}
SAMPLING_KEYS = ("backend", "temperature", "premise_temperature", "top_p", "top_k", "min_p", "typical_p",
                 "max_new_tokens", "premise_max_new_tokens", "min_new_tokens", "no_repeat_ngram_size",
                 "repetition_penalty", "presence_penalty", "frequency_penalty", "do_sample", "n_per_class",
                 "n_premises", "seed", "stop")


#: generation settings a server backend cannot send (hfaug.generate.GenerateConfig.not_applied)
_NOT_APPLIED = {"tgi": ("no_repeat_ngram_size",), "openai": ("no_repeat_ngram_size", "top_k")}


def provenance(ctx: StageContext, configs: dict[str, dict[str, "datasets.Dataset"]]) -> dict[str, Any]:
    """Who made the data: generator and its sampling, MT model, teacher, selection (for the card)."""
    secrets = known_secrets()
    gen_config = _section(ctx, "generate")
    gen_model = _pick(gen_config, "model", "model_id", "model_name", "generator")
    sampling = {}
    # the other task's knobs (NLI premises for sentiment, per-class counts for NLI) are noise here
    skip = ("n_per_class",) if ctx.task.is_pair else ("premise_temperature", "premise_max_new_tokens", "n_premises")
    for key in (k for k in SAMPLING_KEYS if k not in skip):
        for where in (gen_config, gen_config.get("sampling") or {}, gen_config.get("params") or {}):
            if isinstance(where, dict) and where.get(key) not in (None, "", [], {}):
                sampling[key] = where[key]
                break
    backend = gen_config.get("backend")
    for key in _NOT_APPLIED.get(backend, ()):
        if key in sampling:  # never listed as used: the server has no such parameter
            sampling[key] = f"{sampling[key]} (not applied: the {backend} backend has no such parameter)"
    candidates = configs.get(candidates_config(ctx.recipe.setting), {}).get("train")
    if candidates is not None and len(candidates):
        if gen_model is None and schema.GEN_MODEL in candidates.column_names:
            gen_model = ", ".join(sorted(set(candidates[schema.GEN_MODEL]))[:3])
        if schema.GEN_PARAMS in candidates.column_names:
            sampling.setdefault("gen_params", redact(candidates[0][schema.GEN_PARAMS], secrets))
    translate = _section(ctx, "translate", ("translate", "translate-source"))
    teacher = _section(ctx, "teacher")
    label = _section(ctx, "label")
    select = _section(ctx, "select")
    return {
        "generator": {"model": gen_model, "sampling": sampling},
        "mt_model": _pick(translate, "model", "model_id", "mt_model"),
        "teacher": _pick(teacher, "model", "base_model", "model_id") or _pick(label, "teacher", "model"),
        "selection": {k: v for k, v in select.items() if v not in (None, "", [], {})
                      and (k in SELECTION_KEYS or not SELECTION_KEYS & select.keys())},
        "seed": ctx.seed,
        "setting": ctx.recipe.setting,
    }


def reproduce_script() -> str:
    """The text of scripts/reproduce.py (uploaded with each dataset)."""
    path = Path(__file__).resolve().parents[1] / "scripts" / SCRIPT_FILE
    if path.is_file():
        return path.read_text(encoding="utf-8")
    # installed from a wheel without scripts/: a script that defers to the installed CLI
    return ('"""Rerun the recipe of this dataset: python reproduce.py REPO --revision TAG"""\n'
            "import subprocess, sys\n"
            "sys.exit(subprocess.call(['hfaug', 'reproduce', *sys.argv[1:]]))\n")


def build_layout(ctx: StageContext, folder: Path, *, repo_id: str | None, tag: str | None) -> dict:
    """Write the complete repo into ``folder``; returns {config: {split: rows}}."""
    config: PublishConfig = ctx.config
    configs = collect(ctx)
    folder.mkdir(parents=True, exist_ok=True)
    files = write_data(configs, folder)
    figures = []
    select_dir = ctx.run.stage_dir("select") / FIGURES_DIR
    grid_dir = ctx.run.stage_dir("distill") / GRID_DIR / FIGURES_DIR  # the experiment grid, when it has run
    for source_dir in (select_dir, grid_dir):
        for png in sorted(source_dir.glob("*.png")) if source_dir.is_dir() else ():
            (folder / FIGURES_DIR).mkdir(exist_ok=True)
            shutil.copy2(png, folder / FIGURES_DIR / png.name)
            figures.append(f"{FIGURES_DIR}/{png.name}")
    # the data maps lead; the histograms follow
    figures.sort(key=lambda f: (0 if "datamap" in f or "data_map" in f else 1, f))
    (folder / RECIPE_FILE).write_text(recipe_yaml(ctx), encoding="utf-8")
    (folder / SCRIPT_FILE).write_text(reproduce_script(), encoding="utf-8")
    pretty = config.pretty_name or f"hfaug {ctx.recipe.run.name} ({ctx.task.name})"
    local_path = str(config.local_dir or ctx.run.stage_dir(ctx.stage) / HUB_LAYOUT_DIR)
    card = dataset_card(configs, files, ctx.task, license=config.license, pretty_name=pretty,
                        description=ctx.recipe.run.description, provenance=provenance(ctx, configs),
                        figures=figures, repo_id=repo_id, revision=tag, local_path=None if repo_id else local_path,
                        recipe_file=RECIPE_FILE, script_file=SCRIPT_FILE)
    (folder / CARD).write_text(scrub(card, ctx), encoding="utf-8")
    return {name: {split: len(ds) for split, ds in splits.items()} for name, splits in configs.items()}


def recipe_yaml(ctx: StageContext) -> str:
    """The resolved recipe as uploaded: secret-looking keys blanked, the token nowhere."""
    return ctx.recipe.to_yaml(drop=("output_dir",))  # a path of this machine; reproduce chooses its own


# ---------------------------------------------------------------------------------------------
# pushing


def _write_local(folder: Path, target: Path) -> None:
    """Mirror ``folder`` into ``target`` (replacing what was there) through a temp copy and rename."""
    target = target.resolve()
    if target == folder.resolve():
        return
    if target.exists() and not (target / CARD).exists() and any(target.iterdir()):
        raise HfaugError(f"publish.local_dir {target} exists and is not an hfaug layout; choose an empty folder")
    with atomic_folder(target) as tmp:
        shutil.copytree(folder, tmp, dirs_exist_ok=True)


def run(ctx: StageContext) -> StageResult:
    """The ``publish`` stage: build the layout, then push it as one tagged commit when possible."""
    config: PublishConfig = ctx.config
    token = hub_token()
    push = config.repo_id is not None and config.local_dir is None and token is not None
    if config.repo_id and config.local_dir is not None:
        logger.info("publish: local_dir is set, so %s is not pushed", config.repo_id)
    elif config.repo_id and token is None:
        logger.warning("publish: no Hub token (set HF_TOKEN or run `huggingface-cli login`); "
                       "writing the local folder only, %s is not pushed", config.repo_id)
    publisher = tag = None
    if push and releases_students(ctx):
        # the dataset goes out with the students, after every gate (export parity included) passed
        push = False
        logger.info("publish: %s is pushed together with the students by publish-model (one release)",
                    config.repo_id)
    elif push:
        publisher = HubRepo(config.repo_id, "dataset", token=token, private=config.private,
                              retries=config.retries, retry_wait=config.retry_wait)
        tag = publisher.prepare(config.tag)
    folder = ctx.out_dir / HUB_LAYOUT_DIR
    counts = build_layout(ctx, folder, repo_id=config.repo_id if push else None, tag=tag)
    if config.local_dir is not None:
        _write_local(folder, Path(config.local_dir))
    metrics: dict[str, Any] = {"configs": {n: sum(s.values()) for n, s in counts.items()}}
    where = str(Path(config.local_dir) if config.local_dir else ctx.run.stage_dir(ctx.stage) / HUB_LAYOUT_DIR)
    hints = []
    if publisher is not None:
        sha = publisher.push(folder, tag, scrub(config.commit_message or f"hfaug publish {tag}", ctx))
        metrics.update({"repo_id": config.repo_id, "tag": tag, "commit": sha, "endpoint": hub_endpoint()})
        first = next(iter(counts))
        hints.append(f"load_dataset({config.repo_id!r}, {first!r}, revision={tag!r})")
        logger.info("publish: %s@%s (%s) with %d configs", config.repo_id, tag, sha[:8], len(counts))
    else:
        first = next(iter(counts))
        hints.append(f"load_dataset({where!r}, {first!r})")
    metrics["local_dir"] = where
    return StageResult(rows_in=sum(sum(s.values()) for s in counts.values()), metrics=metrics,
                       extra={"next": hints})


# ---------------------------------------------------------------------------------------------
# students as model repos


def students(ctx: StageContext) -> dict[str, dict[str, Path]]:
    """{name: {"model": folder, "onnx": folder or absent}} from distill's students/ and export's onnx/."""
    found: dict[str, dict[str, Path]] = {}
    if ctx.run.manifest("distill") is not None:
        for name, folder in student_dirs(ctx.run.stage_dir("distill")).items():
            found[name] = {"model": folder}
    if ctx.run.manifest("export") is not None:
        # fp32 exports in onnx/<name>/, int8 ones in int8/<name>/ (both optional)
        for kind in EXPORT_DIRS:
            for name, folder in export_dirs(ctx.run.stage_dir("export"), kind).items():
                if name in found:
                    found[name][kind] = folder
    return found


def model_layout(parts: dict[str, Path], folder: Path) -> Path:
    """A student's model repo in ``folder``: the PyTorch model at the root, the ONNX files in onnx/.

    Optimum's names, so ``ORTModelForSequenceClassification.from_pretrained(repo, subfolder="onnx",
    file_name="model_quantized.onnx")`` and the Space (spaces/hfaug_space.py) read the same files::

        onnx/model.onnx (+ model.onnx_data when the fp32 graph is over 2 GB)   fp32
        onnx/model_quantized.onnx                                              dynamic int8, one file
        onnx/config.json, onnx/tokenizer.json, ...                             shared by both
        onnx/hfaug.json                 the Space's examples, metrics and repo links (publish-model)
    """
    shutil.copytree(parts["model"], folder, ignore=shutil.ignore_patterns(CARD_DATA))  # the card is rendered
    onnx = folder / REPO_ONNX_DIR
    if "onnx" in parts:
        shutil.copytree(parts["onnx"], onnx, dirs_exist_ok=True)
    if "int8" in parts:
        onnx.mkdir(exist_ok=True)
        source = parts["int8"] / ONNX_FILE
        if source.is_file():
            shutil.copy2(source, onnx / REPO_INT8_FILE)
        for item in parts["int8"].iterdir():
            # config and tokenizer when there is no fp32 export; never the fp32 graph's external data
            if (item.is_file() and item.suffix != ".onnx" and not item.name.endswith(("_data", ".data"))
                    and not (onnx / item.name).exists()):
                shutil.copy2(item, onnx / item.name)
    return folder


def card_data_from_run(ctx: StageContext, name: str, dataset: tuple[str, str] | None = None) -> ModelCardData:
    """A student's card data from the run, for a student folder without distill's card.json
    (``dataset``: the repo id and tag of the dataset released with it)."""
    import json

    distill = _section(ctx, "distill")
    path = student_metrics_path(ctx.run.stage_dir("distill"), name)
    saved = json.loads(path.read_text()) if path.is_file() else {}
    test = saved.get("test") if isinstance(saved.get("test"), dict) else {}
    published = (ctx.run.manifest("publish") or {}).get("metrics") or {}
    if dataset is not None:
        published = {"repo_id": dataset[0], "tag": dataset[1]}
    datasets_used = []
    if published.get("repo_id"):
        datasets_used.append({"name": f"{name} (synthetic, teacher soft labels)", "path": published["repo_id"],
                              "revision": published.get("tag"), "description": f"config '{name}'",
                              "synthetic": True})
    subset = saved.get("subset") if isinstance(saved.get("subset"), dict) else {}
    return ModelCardData(
        name=name, title=name, base_model=_pick(distill, "model", "base_model", "model_name_or_path") or "unknown",
        task=ctx.task.name, labels=list(ctx.task.labels),
        languages=sorted({hub_lang(lang) for lang in test} | {"en"}),
        datasets=datasets_used, subset=subset.get("name") or name, strategy=subset.get("strategy"),
        budget=subset.get("budget_per_class"), test_metrics=test, dev_accuracy=saved.get("dev_accuracy"),
        metrics_note=saved.get("note"),
        training={k: v for k, v in distill.items() if isinstance(v, (int, float, str, bool)) and v not in ("", None)},
        seed=ctx.seed, description=ctx.recipe.run.description,
    )


def student_card(ctx: StageContext, name: str, parts: dict[str, Path], *, repo_id: str | None,
                 revision: str | None, dataset: tuple[str, str] | None = None) -> str:
    """A student's card as publish-model pushes it, rendered here once: distill's card data (else
    what the run says) with the repo id, the version tag, publish.license and the ONNX files with
    export's parity figures. ``dataset``: (repo id, tag) of the dataset released together with it."""
    config: PublishConfig = ctx.config
    data = ModelCardData.load(parts["model"]) or card_data_from_run(ctx, name, dataset)
    if dataset is not None:  # the synthetic rows are that dataset's config, at the release's tag
        data.datasets = [{**d, "path": dataset[0], "revision": dataset[1], "description": f"config '{data.subset}'"}
                         if d.get("synthetic") else d for d in data.datasets]
    figures = ((ctx.run.manifest("export") or {}).get("metrics") or {}).get(name) or {}
    variants = {"fp32": "onnx" in parts, "int8": "int8" in parts}
    onnx = OnnxExport(**variants, parity={v: f for v, f in figures.items()
                                          if variants.get(v) and isinstance(f, dict) and "agreement" in f})
    return model_card(replace(data, repo_id=repo_id, revision=revision, license=config.license, onnx=onnx))


def releases_students(ctx: StageContext) -> bool:
    """Whether publish-model pushes the dataset together with the students (one release, one tag)."""
    config: PublishConfig = ctx.config
    return bool(config.models and ctx.recipe.has("distill"))




@dataclass
class Target:
    """One repo of a release: where it goes and how to build its folder once the tag is known."""

    repo_id: str
    repo_type: str
    build: Callable[[str], Path]


def release(ctx: StageContext, targets: list[Target], token: str) -> tuple[str, dict[str, str]]:
    """Push every repo of a release under ONE tag; returns (tag, {repo_id: commit}).

    The tag is chosen (or checked free) on every repo before anything is pushed. Progress goes to
    ``cache/<stage>/release.json`` after each commit and tag, so a rerun finishes a half-done
    release with the same tag instead of starting a new version, and a repo already tagged by this
    release is not pushed again. The stage's old manifest is removed first: a failed release is
    never "unchanged, skipped".
    """
    import json

    config: PublishConfig = ctx.config
    publishers = {t.repo_id: HubRepo(t.repo_id, t.repo_type, token=token, private=config.private,
                                       retries=config.retries, retry_wait=config.retry_wait) for t in targets}
    tags = {repo: p.tags() for repo, p in publishers.items()}
    path = ctx.cache_dir / RELEASE_FILE
    record = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    if record.get("repos", {}).keys() == set(publishers) and config.tag in (None, record.get("tag")):
        tag = record["tag"]
        logger.info("publish: finishing the half-done release %s", tag)
    else:
        tag = config.tag or next_tag({t for repo_tags in tags.values() for t in repo_tags})
        record = {"tag": tag, "repos": dict.fromkeys(publishers)}
    for repo, repo_tags in tags.items():
        if tag in repo_tags and repo_tags[tag] != record["repos"].get(repo):
            raise HfaugError(f"publish: tag '{tag}' already exists on {repo} (commit {repo_tags[tag][:8]}); "
                             "tags are never moved: choose a new publish.tag, or leave it empty for the next vN")
    write_json(path, record, indent=1)
    (ctx.run.stage_dir(ctx.stage) / MANIFEST).unlink(missing_ok=True)
    message = scrub(config.commit_message or f"hfaug publish {tag}", ctx)
    for target in targets:
        repo, publisher = target.repo_id, publishers[target.repo_id]
        if tags[repo].get(tag) == record["repos"][repo] is not None:
            logger.info("publish: %s@%s was pushed by an earlier attempt", repo, tag)
            continue
        if record["repos"][repo] is None:
            record["repos"][repo] = publisher.commit(target.build(tag), message)
            write_json(path, record, indent=1)
        try:
            publisher.tag(record["repos"][repo], tag, message)
        except HubError as e:
            raise HubError(f"{e}. Commit {record['repos'][repo][:8]} of {repo} is pushed but not tagged '{tag}'; "
                           f"rerun `hfaug publish-model --config {ctx.recipe.ref}` (or the whole run) to finish release {tag}") from None
    path.unlink()
    return tag, record["repos"]


def run_models(ctx: StageContext) -> StageResult:
    """The ``publish-model`` stage: each student (plus its ONNX export under onnx/) as a model repo."""
    config: PublishConfig = ctx.config
    found = students(ctx)
    if not found:
        if ctx.recipe.has("distill"):
            raise HfaugError("publish-model: the distill stage left no students in its students/ folder; "
                             "run distill first (or set publish.models: false)")
        logger.info("publish-model: the recipe has no distill section, so there are no students to publish")
        return StageResult(metrics={"students": {}},
                           extra={"next": ["add a distill section to train and publish students"]})
    token = hub_token()
    push = config.repo_id is not None and config.local_dir is None and token is not None
    if config.repo_id and token is None and config.local_dir is None:
        logger.warning("publish-model: no Hub token; writing local folders only")
    repos = {}
    for name in found:
        repo_id = config.model_repo.format(repo_id=config.repo_id or "", name=name) if config.repo_id else None
        if repo_id is not None and not REPO_ID_RE.match(repo_id):
            raise HfaugError(f"publish.model_repo gives '{repo_id}' for student '{name}', not a 'user/name' repo id")
        repos[name] = repo_id
    dataset = config.repo_id if push and releases_students(ctx) else None

    def build_student(name: str, tag: str | None) -> Path:
        parts = found[name]
        folder = ctx.out_dir / HUB_LAYOUT_DIR / name
        if folder.exists():
            shutil.rmtree(folder)
        model_layout(parts, folder)
        if (folder / REPO_ONNX_DIR).is_dir():  # what the Space shows: examples, metrics, this repo and the dataset's
            info = student_info(ctx.run, name, model_repo=repos[name], dataset_repo=dataset,
                                revision=tag if dataset else None)
            if tag is not None:
                info["model_revision"] = tag
            path = write_info(folder / REPO_ONNX_DIR, info)
            path.write_text(scrub(path.read_text(encoding="utf-8"), ctx), encoding="utf-8")  # no secret in a repo
        card = student_card(ctx, name, parts, repo_id=repos[name], revision=tag,
                            dataset=(dataset, tag) if dataset else None)
        if tag is not None:
            card = card.rstrip("\n") + release_section(tag, dataset, [r for n, r in repos.items() if n != name])
        (folder / CARD).write_text(scrub(card, ctx), encoding="utf-8")
        return folder

    def build_dataset(tag: str) -> Path:
        folder = ctx.out_dir / RELEASE_DATASET_DIR
        if folder.exists():
            shutil.rmtree(folder)
        build_layout(ctx, folder, repo_id=dataset, tag=tag)
        card = folder / CARD
        card.write_text(scrub(card.read_text(encoding="utf-8").rstrip("\n") + release_section(tag, None, list(repos.values())), ctx),
                        encoding="utf-8")
        return folder

    metrics: dict[str, Any] = {}
    hints = []
    tag, commits = None, {}
    if push:
        targets = [Target(dataset, "dataset", build_dataset)] if dataset else []
        targets += [Target(repos[name], "model", lambda t, n=name: build_student(n, t)) for name in found]
        tag, commits = release(ctx, targets, token)
    for name, parts in found.items():
        folder = build_student(name, tag)  # the local copy, as pushed (or as it would be)
        entry: dict[str, Any] = {"local_dir": str(ctx.run.stage_dir(ctx.stage) / HUB_LAYOUT_DIR / name),
                                 "onnx": "onnx" in parts, "int8": "int8" in parts}
        if config.local_dir is not None:
            target = Path(config.local_dir).with_name(f"{Path(config.local_dir).name}-{name}")
            _write_local(folder, target)
            entry["local_dir"] = str(target)
        if push:
            entry.update({"repo_id": repos[name], "tag": tag, "commit": commits[repos[name]]})
            hints.append(f"AutoModelForSequenceClassification.from_pretrained({repos[name]!r}, revision={tag!r})")
        else:
            hints.append(f"AutoModelForSequenceClassification.from_pretrained({entry['local_dir']!r})")
        metrics[name] = entry
    result: dict[str, Any] = {"students": metrics}
    if dataset:
        result["dataset"] = {"repo_id": dataset, "tag": tag, "commit": commits[dataset], "endpoint": hub_endpoint()}
        hints.insert(0, f"load_dataset({dataset!r}, <config>, revision={tag!r})")
    return StageResult(metrics=result, extra={"next": hints})

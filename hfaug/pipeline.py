"""The run driver: the order of the stages and what each reads. Only this module and the CLI know it.

Each stage module exposes ``run(ctx: StageContext) -> StageResult`` (the adapter used here) next
to its plain Python function (``label(dataset, config, ...)``). A stage takes part in a run when
its recipe section is present; ``source`` is always there.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path

from . import health
from .config import ENGLISH_TEACHER, TRANSLATED_TEACHER, Recipe, import_entry, to_dict
from .errors import HfaugError, did_you_mean
from .runs import Run, execute

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stage:
    name: str  # the CLI verb and the folder in the run directory
    section: str  # the recipe section holding its config
    entry: str  # "module:function" taking a StageContext
    inputs: tuple[str, ...] = ()  # stages whose outputs it may read (absent ones are ignored)
    help: str = ""
    reads: tuple[str, ...] = ()  # other recipe sections (or "section.key") it reads: they enter its hash


PIPELINE: tuple[Stage, ...] = (
    Stage("source", "source", "hfaug.source:run", (), "load the labelled source data (train/dev)"),
    Stage("adapt", "adapt", "hfaug.adapt:run", ("source",),
          "LoRA-fine-tune the generator LLM on the source data (optional)",
          reads=("generate.templates", "generate.domains", "generate.prompts")),  # it trains on generate's requests
    Stage("generate", "generate", "hfaug.generate:run", ("source", "adapt"),
          "LLM-written English candidates, cleaned"),
    Stage("translate-source", "translate", "hfaug.translate:run_source", ("source",),
          "translate the source data (translated-teacher setting, published as source-translated)"),
    Stage("teacher", "teacher", "hfaug.teacher:run", ("source", "translate-source"),
          "fine-tune the teacher; one checkpoint per epoch"),
    Stage("label", "label", "hfaug.label:run", ("generate", "teacher"),
          "teacher soft labels (and training dynamics) on the candidates"),
    Stage("translate", "translate", "hfaug.translate:run", ("label",),
          "translate the labelled candidates into the target languages"),
    Stage("select", "select", "hfaug.select:run", ("label", "translate"),
          "choose the subsets: random, top-k, div-k, ambiguous, easy, all"),
    Stage("publish", "publish", "hfaug.publish:run", ("label", "translate-source", "select"),
          "push the selected data as a versioned Hub dataset repo (or a local folder)"),
    Stage("distill", "distill", "hfaug.distill:run", ("source", "translate-source", "select"),
          "train students on source plus selected synthetic rows with soft labels",
          reads=("evaluate",)),  # its model cards carry the target-language metrics
    Stage("export", "export", "hfaug.export:run", ("source", "distill"),
          "export students to ONNX (optionally int8) behind a parity gate"),
    Stage("evaluate", "evaluate", "hfaug.evaluate:run", ("teacher", "distill", "export"),
          "accuracy and macro-F1 per target language"),
    Stage("publish-model", "publish", "hfaug.publish:run_models", ("publish", "distill", "export", "evaluate"),
          "push the students as versioned Hub model repos"),
)

STAGES = {stage.name: stage for stage in PIPELINE}

#: Per setting, the stages whose inputs differ from PIPELINE's (the hybrid's). In the paper's
#: translated-teacher setting (train_ST_as.sh, pseudo_label_xnli_cartography.py) the generations are
#: translated first and the teacher, trained on the translated source, labels the translations.
SETTING_INPUTS: dict[str, dict[str, tuple[str, ...]]] = {
    TRANSLATED_TEACHER: {"translate": ("generate",), "label": ("translate", "teacher"), "select": ("label",)},
}
#: stages a setting never runs: the english-teacher setting translates nothing (train_ST.sh)
SETTING_SKIPS: dict[str, tuple[str, ...]] = {ENGLISH_TEACHER: ("translate-source", "translate")}
#: stages whose behaviour depends on the setting: it enters their hash
SETTING_STAGES = ("translate", "teacher", "label", "select", "publish", "distill", "evaluate")


def get_stage(name: str) -> Stage:
    try:
        return STAGES[name]
    except KeyError:
        raise HfaugError(f"unknown stage '{name}'{did_you_mean(name, STAGES)}") from None


def stage_function(stage: Stage):
    return import_entry(stage.entry, stage.name)


def planned(recipe: Recipe) -> list[Stage]:
    """The stages a recipe asks for, in the order of its setting."""
    setting = recipe.setting
    skips = SETTING_SKIPS.get(setting, ())
    stages = [s for s in PIPELINE if recipe.has(s.section) and _enabled(recipe, s) and s.name not in skips]
    if setting == TRANSLATED_TEACHER:
        # translate the generations before the teacher labels them
        names = [s.name for s in stages]
        if "translate" in names and "label" in names:
            stages.insert(names.index("label"), stages.pop(names.index("translate")))
    return stages




def _enabled(recipe: Recipe, stage: Stage) -> bool:
    config = recipe.sections[stage.section]
    # a section may switch one of its stages off, e.g. translate.source: false
    flag = {"translate-source": "source", "publish-model": "models"}.get(stage.name)
    return bool(getattr(config, flag, True)) if flag else True


def run_stage(run: Run, name: str, *, force: bool = False, wait: bool = False) -> tuple[dict, bool]:
    """Run one stage of ``run`` (its inputs must have run); returns (manifest, skipped).

    Holds the run directory's lock: another run working there is a user error naming its pid,
    or, with ``wait``, waited for."""
    with run.lock(wait=wait):
        return _run_stage(run, name, force=force)


def _run_stage(run: Run, name: str, *, force: bool = False) -> tuple[dict, bool]:
    stage = get_stage(name)
    recipe = run.recipe
    if not recipe.has(stage.section):
        raise HfaugError(f"the recipe has no '{stage.section}' section, which stage '{name}' needs")
    if stage.name in SETTING_SKIPS.get(recipe.setting, ()):
        raise HfaugError(f"stage '{name}' has no part in the '{recipe.setting}' setting; set the recipe's "
                         f"setting (e.g. --setting translated-teacher) to run it")
    inputs = stage_inputs(recipe, stage)
    for dep in inputs:
        run.require(dep)
    manifest, skipped = execute(run, name, stage_function(stage), recipe.sections[stage.section], inputs,
                                force=force, reads=stage_reads(recipe, stage))
    health.enforce(run, name, manifest)  # warns, or stops the run after a stage that finished broken
    return manifest, skipped


def stage_inputs(recipe: Recipe, stage: Stage) -> list[str]:
    """The earlier stages ``stage`` reads in this recipe: they must have run, and their run ids
    enter its hash. Zero-shot generation reads no source rows (only few-shot examples and adapt
    do, and adapt reads the source itself), so it runs before, or without, the source stage."""
    names = {s.name for s in planned(recipe)}
    # the recipe's setting may give the stage other inputs (SETTING_INPUTS)
    inputs = [i for i in SETTING_INPUTS.get(recipe.setting, {}).get(stage.name, stage.inputs) if i in names]
    if stage.name == "generate" and not getattr(recipe.sections[stage.section], "few_shot", 0):
        inputs = [i for i in inputs if i != "source"]
    return inputs


def stage_reads(recipe: Recipe, stage: Stage) -> dict:
    """The values of other recipe sections (or of single keys, "section.key") that ``stage``
    reads: they enter its hash, so changing them reruns it and changing anything else does not."""
    reads = {}
    for read in stage.reads:
        section, _, key = read.partition(".")
        if recipe.has(section):
            values = to_dict(recipe.sections[section])
            reads[read] = values.get(key) if key else values
    if stage.name in SETTING_STAGES:
        reads["setting"] = recipe.setting
    return reads


def run_pipeline(recipe: Recipe, *, force: str | None = None, root: str | Path | None = None,
                 wait: bool = False) -> Run:
    """Run every stage of the recipe in order, skipping the unchanged ones.

    ``force`` names a stage to rerun together with everything after it. The run directory is
    locked for the whole run (``wait``: wait for another run holding it instead of failing).
    """
    run = Run(recipe, root)
    with run.lock(wait=wait):
        _run_all(run, recipe, force)
    return run


def _run_all(run: Run, recipe: Recipe, force: str | None) -> None:
    run.save_recipe()
    stages = planned(recipe)
    if force is not None:
        get_stage(force)
        if force not in {s.name for s in stages}:
            raise HfaugError(f"--force {force}: the recipe does not run that stage")
    forcing = False
    for stage in stages:
        forcing = forcing or stage.name == force
        start = time.perf_counter()
        manifest, skipped = run_stage(run, stage.name, force=forcing)
        run.report.append((stage.name, "skipped" if skipped else "ran", manifest, time.perf_counter() - start))


def reproduce(repo: str, revision: str = "main", output_dir: str | Path | None = None):
    """Download a published dataset's recipe.yaml (repo id or local layout) and rerun it in a clean folder.

    The publish section is kept but made local, so a reproduction never pushes and its
    ``<output_dir>/<name>/publish/hub-layout`` can be compared with the published copy. Returns the :class:`~hfaug.runs.Run`.
    """
    import yaml

    from .config import load_recipe
    from .hub import download_recipe
    from .layout import RECIPE_FILE

    if Path(repo).is_dir():
        path = Path(repo) / RECIPE_FILE
        if not path.is_file():
            raise HfaugError(f"reproduce: {repo} has no {RECIPE_FILE}; is it a folder written by hfaug publish?")
    else:
        path = Path(download_recipe(repo, revision))
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise HfaugError(f"reproduce: {RECIPE_FILE} of {repo}@{revision} is not a recipe mapping")
    if not any(section in data for section in ("label", "select")):
        data.pop("publish", None)  # nothing of this recipe's own would be published
    elif isinstance(data.get("publish"), dict):
        # rebuild the published layout locally (to compare with the Hub copy); never push again
        data["publish"] = {**data["publish"], "repo_id": None, "local_dir": None, "tag": None}
    safe = re.sub(r"[^\w.\-]+", "-", f"{repo}-{revision}").strip("-")
    out = Path(output_dir) if output_dir else Path("reproduce") / safe
    if out.exists() and any(out.iterdir()):
        raise HfaugError(f"reproduce: {out} is not empty; give a clean --output-dir")
    data["output_dir"] = str(out)
    recipe = load_recipe(data)
    logger.info("reproduce: rerunning %s@%s in %s", repo, revision, out)
    return run_pipeline(recipe, root=out / recipe.run.name)


def summary(run: Run, report: list | None = None) -> str:
    """A plain-text table of a run: stages, status, rows, drops, metrics and where things are."""
    report = report if report is not None else run.report
    lines = [f"hfaug run '{run.recipe.run.name}' ({run.task.name}) in {run.root}", ""]
    # `dropped` is the last column and never cut: every dropped row is counted by reason, and the
    # reasons are what a user reads the table for
    header = f"{'stage':<17} {'status':<8} {'rows in':>8} {'rows out':<34} {'time':>7}  dropped"
    lines += [header, "-" * (len(header) + 23)]
    for name, status, manifest, _ in report:
        rows_out = ", ".join(f"{k}={v}" for k, v in (manifest.get("rows_out") or {}).items()) or "-"
        dropped = ", ".join(f"{k}={v}" for k, v in (manifest.get("dropped") or {}).items()) or "-"
        rows_in = manifest.get("rows_in")
        lines.append(f"{name:<17} {status:<8} {rows_in if rows_in is not None else '-':>8} "
                     f"{_clip(rows_out, 34):<34} {manifest.get('wall_time_s', 0):>6.1f}s  {dropped}")
    for name, _, manifest, _ in report:
        for line in _metric_lines(manifest.get("metrics") or {}):
            lines.append(f"  {name}: {line}")
    lines += ["", f"outputs: {run.root}/<stage>/ (manifest.json in each)"]
    if run.recipe.run.health != "off":
        problems = [p for name, _, m, _ in report for p in health.findings(run, name, m)]
        if problems:
            lines += ["", "health (see the log for each; recipe key health: warn|stop|off):"]
            lines += [f"  {p}" for p in problems]
    hints = [h for _, _, m, _ in report for h in (m.get("extra") or {}).get("next", [])]
    if hints:
        lines += ["next:"] + [f"  {h}" for h in hints]
    return "\n".join(lines)


def _metric_lines(metrics: dict, prefix: str = "") -> list[str]:
    out = []
    flat = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            out += _metric_lines(value, f"{prefix}{key}.")
        else:
            flat[key] = value
    if flat:
        parts = [f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in flat.items()]
        out.insert(0, f"{prefix.rstrip('.') or 'metrics'}: " + ", ".join(parts))
    return out


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"

"""Recipes: YAML files turned into typed, validated stage configs.

A recipe has a few run-wide keys (``name``, ``task``, ``seed``, ``output_dir``) and one section per
stage. Each section is validated into the stage's config dataclass: an unknown key, a value of the
wrong type or a missing required value is a :class:`~hfaug.errors.HfaugError` naming the key and
the closest valid one. Command-line flags (``--generate.temperature 1.2``) override the file.

Two URL-like prefixes keep packaged recipes machine-independent:
``hfaug://data/...`` is a file shipped in the package, and ``hfaug://tiny/<kind>`` is a tiny
offline model built on first use by :mod:`hfaug.testing`. :func:`resolve` turns both into paths.
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import importlib
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from .errors import HfaugError, did_you_mean
from .extras import missing
from .tasks import TaskSpec  # noqa: F401  (RunConfig.task's type hint)
from .typed import check_type, from_dict, type_hints  # noqa: F401  (check_type, from_dict: hfaug.config API too)

#: section name -> "module:ConfigClass". Stages import nothing from each other; this map and
#: the pipeline are the only places that know them all.
SECTIONS: dict[str, str] = {
    "source": "hfaug.source:SourceConfig",
    "adapt": "hfaug.adapt:AdaptConfig",
    "generate": "hfaug.generate:GenerateConfig",
    "teacher": "hfaug.teacher:TeacherConfig",
    "label": "hfaug.label:LabelConfig",
    "translate": "hfaug.translate:TranslateConfig",
    "select": "hfaug.select:SelectConfig",
    "publish": "hfaug.publish:PublishConfig",
    "distill": "hfaug.distill:DistillConfig",
    "evaluate": "hfaug.evaluate:EvaluateConfig",
    "export": "hfaug.export:ExportConfig",
    "serve": "hfaug.serve:ServeConfig",
}

PACKAGE_PREFIX = "hfaug://"

#: the two settings the paper ran, and the stage order hfaug had before it named them
ENGLISH_TEACHER = "english-teacher"
TRANSLATED_TEACHER = "translated-teacher"
HYBRID = "hybrid"
SETTINGS = (ENGLISH_TEACHER, TRANSLATED_TEACHER, HYBRID)


@dataclass
class RunConfig:
    """Run-wide settings shared by every stage."""

    name: str = field(default="run", metadata={"help": "Run name: outputs go to <output_dir>/<name>/."})
    task: "str | TaskSpec" = field(default="sentiment", metadata={
        "help": "Task: a preset ('sentiment', 'nli') or a task of your own: {name, labels (in order), preset or "
                "text ('text' or [premise, hypothesis]), description}, e.g. {name: reviews2, preset: sentiment, "
                "labels: [negative, positive]} (README, 'Your own data')."})
    seed: int = field(default=42, metadata={"help": "Seed for every random choice of the run."})
    output_dir: str = field(default="runs", metadata={"help": "Folder holding run directories."})
    description: str = field(default="", metadata={"help": "Free text, shown in cards."})
    setting: str | None = field(default=None, metadata={
        "help": "The paper's setting, which decides the stage order and inputs: 'english-teacher' (teacher, "
                "labels, selection and student all on English; no translation) or 'translated-teacher' "
                "(source and generations translated; the teacher is trained on the translated source and "
                "labels the translated generations; selection and student on the translated text). "
                "'hybrid' (not the paper's): the teacher labels English generations, the labels are copied "
                "onto their translations, the student trains on English gold + translated synthetic rows. "
                "Default: english-teacher without a translate section, hybrid with one (docs/fidelity.md)."})
    # YAML reads a bare `off` as false: both spellings mean off
    health: typing.Literal["warn", "stop", "off"] | bool = field(default="warn", metadata={
        "help": "Health checks (teacher at chance, one label taking nearly all labels, a subset missing a "
                "class, a student no better than the baseline): 'warn' logs and lists them, 'stop' ends the run "
                "after the stage (its output kept), 'off' skips them."})

    def __post_init__(self):
        from .tasks import resolve_task

        resolve_task(self.task)
        if self.setting is not None and self.setting not in SETTINGS:
            raise HfaugError(f"'recipe.setting' must be one of {list(SETTINGS)}, got {self.setting!r}"
                             f"{did_you_mean(str(self.setting), SETTINGS)}")
        if isinstance(self.health, bool):
            self.health = "warn" if self.health else "off"


@dataclass
class Recipe:
    """A validated recipe: run-wide settings plus one typed config per stage section present."""

    run: RunConfig
    sections: dict[str, Any]
    raw: dict  # the resolved recipe as plain data (what gets saved with the run)
    source_path: str | None = None

    def __getattr__(self, name: str):
        sections = self.__dict__.get("sections", {})
        if name in sections:
            return sections[name]
        raise AttributeError(name)

    @property
    def ref(self) -> str:
        """How to name this recipe on the command line: a packaged name (``demo``) or its path."""
        if not self.source_path:
            return "<recipe>"
        root = Path(str(resources.files("hfaug") / "recipes"))
        path = Path(self.source_path).resolve()
        return path.relative_to(root).with_suffix("").as_posix() if path.is_relative_to(root) else self.source_path

    def has(self, section: str) -> bool:
        return section in self.sections

    @property
    def setting(self) -> str:
        """The run's setting (``run.setting``, or the one its sections imply when unstated)."""
        if self.run.setting:
            return self.run.setting
        return HYBRID if self.has("translate") else ENGLISH_TEACHER

    def to_yaml(self, *, drop: tuple[str, ...] = ()) -> str:
        """The recipe as YAML with every secret blanked (a token typed into free text too);
        ``drop`` leaves out run-wide keys (the uploaded copy drops output_dir, a local path)."""
        from .hub import known_secrets, redact

        data = {k: v for k, v in redact(self.raw, known_secrets(self)).items() if k not in drop}
        return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def config_class(section: str) -> type:
    """Import the config dataclass of a stage section."""
    if section not in SECTIONS:
        raise HfaugError(f"unknown recipe section '{section}'{did_you_mean(section, [*SECTIONS, *RUN_KEYS])}")
    return import_entry(SECTIONS[section], section)


def import_entry(entry: str, stage: str):
    """The object named by ``"module:attribute"``, imported on first use (heavy stages stay unloaded)."""
    module_name, attribute = entry.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and e.name.startswith("hfaug"):
            raise HfaugError(f"stage '{stage}' is not available in this version of hfaug") from None
        raise missing(f"stage '{stage}'", e) from None
    return getattr(module, attribute)


RUN_KEYS = [f.name for f in dataclasses.fields(RunConfig)]


def lazy_attributes(namespace: dict, builders: dict[str, Any]):
    """A module ``__getattr__`` building classes that subclass heavy packages' classes (e.g.
    ``DistillConfig(TrainingArguments)``) on first access, so importing the module stays light."""

    def __getattr__(name: str):
        if name in builders:
            value = builders[name]()
            namespace[name] = value  # built once; later lookups find it directly
            return value
        raise AttributeError(f"module {namespace['__name__']!r} has no attribute {name!r}")

    return __getattr__


# ---------------------------------------------------------------------------------------------
# loading


def packaged_recipes() -> list[str]:
    """Names of the recipes shipped in the package, e.g. ``demo`` or ``paper/xnli-hi``."""
    root = resources.files("hfaug") / "recipes"
    names = []
    for path in Path(str(root)).rglob("*.yaml"):
        names.append(path.relative_to(Path(str(root))).with_suffix("").as_posix())
    return sorted(names)


def find_recipe(ref: str) -> Path:
    """A recipe path, or the name of a packaged recipe."""
    path = Path(ref)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise HfaugError(f"recipe file '{ref}' does not exist")
        return path
    packaged = Path(str(resources.files("hfaug") / "recipes")) / f"{ref}.yaml"
    if packaged.is_file():
        return packaged
    raise HfaugError(f"no recipe file or packaged recipe named '{ref}'{did_you_mean(ref, packaged_recipes())}")


def load_recipe(ref: str | Path | dict, overrides: dict[str, Any] | list[str] | None = None) -> Recipe:
    """Read, override and validate a recipe.

    ``ref`` is a YAML path, a packaged recipe name or an already parsed dict. ``overrides`` maps
    dotted keys (``"generate.temperature"``) to values, or is a list of ``key=value`` strings.
    """
    source_path = None
    if isinstance(ref, dict):
        data = copy.deepcopy(ref)
    else:
        path = find_recipe(str(ref))
        source_path = str(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark else ""
            raise HfaugError(f"recipe {path}{where} is not valid YAML: {getattr(e, 'problem', e)}") from None
        if not isinstance(data, dict):
            raise HfaugError(f"recipe {path} must be a mapping of sections, got {type(data).__name__}")
    for key, value in _normalise_overrides(overrides).items():
        _set_dotted(data, key, value)
    return build_recipe(data, source_path)


def build_recipe(data: dict, source_path: str | None = None) -> Recipe:
    run_data = {k: v for k, v in data.items() if k in RUN_KEYS}
    run = from_dict(RunConfig, run_data, "recipe")
    sections = {}
    for key, value in data.items():
        if key in RUN_KEYS:
            continue
        cls = config_class(key)
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise HfaugError(f"recipe section '{key}' must be a mapping, got {type(value).__name__}")
        sections[key] = from_dict(cls, value, key)
    if "source" not in sections:
        raise HfaugError("recipe has no 'source' section: say where the labelled source data is (source.path)")
    recipe = Recipe(run=run, sections=sections, raw=data, source_path=source_path)
    _check_setting(recipe)
    _check_task_templates(recipe)
    return recipe


def _check_task_templates(recipe: Recipe) -> None:
    """generate.templates against the task: a per-label key names one of the task's labels, and
    every label of a task without a preset has its prompt (nothing generic can ask for it)."""
    from .prompts import missing_label_prompts, unknown_template_keys
    from .tasks import resolve_task

    generate = recipe.sections.get("generate")
    if generate is None:
        return
    task = resolve_task(recipe.run.task)
    templates = getattr(generate, "templates", None) or {}
    for key, known in unknown_template_keys(templates, task):
        raise HfaugError(f"generate.templates: '{key}' is neither a template key nor a label of task "
                         f"'{task.name}' {list(task.labels)}{did_you_mean(key, known)}")
    if getattr(generate, "n_strict_neutral", 0) and "neutral" not in task.labels:
        raise HfaugError(f"generate.n_strict_neutral asks for extra 'neutral' rows but task '{task.name}' has no "
                         f"neutral label {list(task.labels)}; remove generate.n_strict_neutral")
    missing = missing_label_prompts(templates, task)
    if missing:
        label = missing[0]
        how = (f"generate.templates.hypothesis_system@{label} (the instruction for a '{label}' hypothesis)"
               if task.is_pair else f"generate.templates.{label} (the user turn asking for one '{label}' example)")
        raise HfaugError(f"generate.templates: no prompt for label '{label}' of task '{task.name}'; add {how}")


def _check_setting(recipe: Recipe) -> None:
    """The sections a setting needs: translated-teacher translates the source and the generations."""
    if recipe.setting != TRANSLATED_TEACHER:
        return
    translate = recipe.sections.get("translate")
    if translate is None:
        raise HfaugError("setting 'translated-teacher' needs a translate section (the target languages and "
                         "the MT model); add one, or use setting: english-teacher")
    if not getattr(translate, "source", True):
        raise HfaugError("setting 'translated-teacher' trains the teacher on the translated source: "
                         "remove translate.source: false")


def _normalise_overrides(overrides) -> dict[str, Any]:
    if not overrides:
        return {}
    if isinstance(overrides, dict):
        return dict(overrides)
    out = {}
    for item in overrides:
        if "=" not in item:
            raise HfaugError(f"override '{item}' must look like section.key=value")
        key, value = item.split("=", 1)
        out[key] = parse_value(value)
    return out


def parse_value(text: str) -> Any:
    """A command-line value read as YAML, so ``3``, ``1e-5``, ``true`` and ``[hi, mr]`` get types."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _set_dotted(data: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise HfaugError(f"override '{dotted}': '{part}' is not a section")
        node = child
    node[parts[-1]] = value


# ---------------------------------------------------------------------------------------------
# validation


def to_dict(config: Any) -> dict:
    """A config dataclass as plain data (for manifests, hashes and saved recipes)."""
    if not dataclasses.is_dataclass(config):
        return config  # already plain data
    out = {}
    for f in dataclasses.fields(config):
        if not f.init:
            continue
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            value = to_dict(value)
        elif isinstance(value, enum.Enum):
            value = value.value
        out[f.name] = value
    return out


# ---------------------------------------------------------------------------------------------
# package references


def resolve(ref: str | None) -> str | None:
    """Turn ``hfaug://data/...`` and ``hfaug://tiny/<kind>`` into local paths; others pass through.

    Model ids and Hub dataset ids are returned unchanged, so the stages always call the real
    ``from_pretrained(ref)`` / ``load_dataset(ref)``.
    """
    if not ref or not isinstance(ref, str) or not ref.startswith(PACKAGE_PREFIX):
        return ref
    rest = ref[len(PACKAGE_PREFIX):]
    kind, _, name = rest.partition("/")
    if kind == "data":
        path = Path(str(resources.files("hfaug") / "data")) / name
        if not path.exists():
            raise HfaugError(f"packaged data file '{ref}' does not exist")
        return str(path)
    if kind == "tiny":
        from .testing import tiny_model

        return str(tiny_model(name))
    raise HfaugError(f"unknown package reference '{ref}': use hfaug://data/<file> or hfaug://tiny/<kind>")


# ---------------------------------------------------------------------------------------------
# reference


def reference_markdown(sections: list[str] | None = None) -> str:
    """The recipe reference: every section's keys with type, default and help, as markdown."""
    out = ["# Recipe reference", "", "Generated by `hfaug recipes --reference` from the config dataclasses.", ""]
    out += _section_table("run-wide keys (top level)", RunConfig)
    for name in sections or SECTIONS:
        try:
            cls = config_class(name)
        except HfaugError as e:
            out += [f"## {name}", "", f"_{e}_", ""]
            continue
        out += _section_table(name, cls)
    return "\n".join(out)


def section_keys(cls: type) -> list[tuple[str, str, str, str]]:
    """A config class's recipe keys as (name, type, default, help); for a TrainingArguments
    subclass only hfaug's own keys (the reference and ``--help`` point at the rest)."""
    hints = type_hints(cls)
    own = _own_fields(cls)
    keys = []
    for f in dataclasses.fields(cls):
        if not f.init or (own is not None and f.name not in own):
            continue
        if f.default is not dataclasses.MISSING:
            default = repr(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            default = repr(f.default_factory())
        else:
            default = "required"
        keys.append((f.name, _type_name(hints.get(f.name, Any)), default, str(f.metadata.get("help", "")).strip()))
    return keys


def _section_table(title: str, cls: type) -> list[str]:
    lines = [f"## {title}", "", (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else "", "",
             "| key | type | default | meaning |", "|---|---|---|---|"]
    for name, type_name, default, help_text in section_keys(cls):
        help_text = help_text.replace("|", "\\|").replace("\n", " ")
        lines.append(f"| `{name}` | {type_name} | `{default}` | {help_text} |")
    if _own_fields(cls) is not None:
        lines.append("| ... | | | every `transformers.TrainingArguments` option |")
    return lines + [""]


def _own_fields(cls: type) -> set[str] | None:
    """For configs subclassing TrainingArguments, only the keys hfaug adds (the rest are Trainer's)."""
    for base in cls.__mro__[1:]:
        if base.__name__ == "TrainingArguments":
            inherited = {f.name for f in dataclasses.fields(base)}
            return {f.name for f in dataclasses.fields(cls)} - inherited
    return None


def _type_name(hint: Any) -> str:
    if isinstance(hint, type):
        return hint.__name__
    return str(hint).replace("typing.", "").replace("|", "or")

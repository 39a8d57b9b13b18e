"""Every card hfaug writes: the dataset card, the student's model card, the ONNX folders' cards and
the LoRA adapter's card.

The stages collect what a card says while they run and store it in their outputs (distill:
``students/<name>/card.json``, a :class:`ModelCardData`; export: the parity figures in its
manifest); the stage that publishes renders the card ONCE, when the repo id, the version tag, the
ONNX files and the license are known (``publish`` / ``publish-model``). Stages that do not publish
write a local README with the same functions; it says the repo id is not known yet rather than
inventing one. The Markdown lives in the Jinja templates in model_cards/ (shipped in the wheel).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from . import schema
from .errors import HfaugError
from .layout import CARD, CARD_DATA, REPO_FP32_FILE, REPO_INT8_FILE, REPO_ONNX_DIR

if TYPE_CHECKING:
    import datasets

    from .tasks import Task


PAPER_CITATION = """@inproceedings{fazili-etal-2024-boosting,
  title = {Boosting Zero-Shot Crosslingual Performance using {LLM}-Based Augmentations with Effective Data Selection},
  author = {Fazili, Barah and Agrawal, Ashish Sunil and Jyothi, Preethi},
  booktitle = {Findings of the Association for Computational Linguistics: ACL 2024},
  pages = {13406--13422},
  year = {2024},
  eprint = {2407.10582},
  archivePrefix = {arXiv}
}"""


def template_dir() -> Path:
    return Path(str(resources.files("hfaug") / "model_cards"))


def render(template: str, **context: Any) -> str:
    """Render ``model_cards/<template>`` with ``context`` (``citation`` is always available)."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(template_dir())),
        undefined=jinja2.StrictUndefined,  # a missing value is a bug in the caller, not a blank
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    try:
        return env.get_template(template).render(citation=PAPER_CITATION, **context)
    except jinja2.TemplateNotFound:
        raise HfaugError(f"card template '{template}' not found in {template_dir()}") from None


# ---------------------------------------------------------------------------------------------
# the student's model card


def is_hub_id(ref: Any) -> bool:
    """Whether ``ref`` names a Hub repo ('user/name'), not a path, an hfaug:// model or a local folder."""
    return (isinstance(ref, str) and ref.count("/") == 1 and not ref.startswith(("hfaug:", ".", "/"))
            and not Path(ref).exists())


@dataclass
class OnnxExport:
    """The ONNX files of a published student (under onnx/, Optimum's names) and their parity figures."""

    fp32: bool = False  # onnx/model.onnx
    int8: bool = False  # onnx/model_quantized.onnx (dynamic int8)
    #: variant -> {agreement, disagreements, rows, max_prob_diff, mean_prob_diff} (export's manifest)
    parity: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class ModelCardData:
    """What a student's card says. The distill stage collects it (``students/<name>/card.json``);
    the publishing stage fills in the repo id, the version tag, the license and the ONNX export,
    and renders the card once (:func:`model_card`)."""

    name: str  # the student's name (its select subset, with -seed<N> in a grid)
    title: str  # the card's heading before the student has a repo id: <run>-<name>
    base_model: str  # Hub id (or path) of the pretrained encoder the student starts from
    task: str  # "sentiment" or "nli"
    labels: list[str]  # in the order of the model's logits (id2label)
    languages: list[str]  # ISO 639 codes: English plus the target languages
    #: training data: {"name", "path", "revision", "description", "synthetic": bool}
    datasets: list[dict[str, Any]] = field(default_factory=list)
    subset: str | None = None  # the select output of the synthetic rows (None: the source-only baseline)
    strategy: str | None = None  # selection strategy of the synthetic rows
    budget: int | None = None  # synthetic rows per class (or per language) of that subset
    test_metrics: dict[str, dict[str, Any]] = field(default_factory=dict)  # language -> {metric -> number}
    dev_accuracy: float | None = None  # on the (English) dev split used for model selection
    metrics_note: str | None = None  # why test metrics are missing, if they are
    training: dict[str, Any] = field(default_factory=dict)  # training parameters shown as a table
    seed: int | None = None
    description: str = ""  # the recipe's description
    grid: dict[str, Any] | None = None  # {"figures", "students", "seed", "table"}: the run's experiment grid
    # known only to the stage that publishes
    license: str | None = None  # Hub license id (None: apache-2.0)
    repo_id: str | None = None  # where the model is published; None for a local folder
    revision: str | None = None  # the version tag of this upload
    onnx: OnnxExport | None = None

    def to_json(self) -> str:
        """The text of ``card.json``: what the publishing stage needs to render this card again."""
        return json.dumps(asdict(self), ensure_ascii=False, indent=1)

    @classmethod
    def load(cls, folder: Path) -> "ModelCardData | None":
        """The card data saved in ``folder`` (None when there is none, e.g. a student of an older run)."""
        path = Path(folder) / CARD_DATA
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as e:
            raise HfaugError(f"{path} is not valid JSON ({e}); rerun the distill stage to write it again") from None
        known = {f.name for f in fields(cls)}
        if not isinstance(data, dict) or not {"name", "title", "base_model", "task", "labels", "languages"} <= set(data):
            raise HfaugError(f"{path} is not an hfaug card file; rerun the distill stage to write it again")
        onnx = data.get("onnx")
        data["onnx"] = OnnxExport(**onnx) if isinstance(onnx, dict) else None
        return cls(**{k: v for k, v in data.items() if k in known})


def model_card(data: ModelCardData) -> str:
    """Render model_cards/model_card.md for one student. Without a repo id (a local folder) the card
    says the student is not published yet instead of naming a repo it does not have."""
    context = asdict(data)
    context["onnx"] = asdict(data.onnx) if data.onnx and (data.onnx.fp32 or data.onnx.int8) else None
    return render(
        "model_card.md", **context,
        model_name=data.repo_id or data.title,
        base_model_is_hub=is_hub_id(data.base_model),
        hub_datasets=[d["path"] for d in data.datasets if is_hub_id(d.get("path"))],
        onnx_file=REPO_FP32_FILE, int8_file=REPO_INT8_FILE, onnx_subfolder=REPO_ONNX_DIR,
    )


# ---------------------------------------------------------------------------------------------
# the dataset card

TASK_IDS = {"sentiment": "sentiment-classification", "nli": "natural-language-inference"}


#: the Hub's size_categories, with the row count each one ends below
SIZE_CATEGORIES = [(10**3, "n<1K"), (10**4, "1K<n<10K"), (10**5, "10K<n<100K"), (10**6, "100K<n<1M"),
                   (10**7, "1M<n<10M"), (10**8, "10M<n<100M"), (10**9, "100M<n<1B"), (10**10, "1B<n<10B"),
                   (10**11, "10B<n<100B"), (10**12, "100B<n<1T")]


def size_category(rows: int) -> str:
    """The Hub's size category of a dataset with ``rows`` rows."""
    return next((c for limit, c in SIZE_CATEGORIES if rows < limit), "n>1T")


def card_metadata(configs: dict[str, dict[str, "datasets.Dataset"]], files: dict[str, dict[str, list[str]]],
                  task: "Task", languages: list[str], license: str, pretty_name: str) -> str:
    """The card's YAML: configs with data_files, dataset_info with features and splits, tags."""
    import datasets
    from datasets.info import DatasetInfosDict
    from huggingface_hub import DatasetCardData

    total = sum(len(ds) for splits in configs.values() for ds in splits.values())
    size = size_category(total)
    card = DatasetCardData(
        language=languages, license=license, pretty_name=pretty_name,
        task_categories=["text-classification"], task_ids=[TASK_IDS[task.preset]] if task.preset in TASK_IDS else None,
        size_categories=[size], tags=["hfaug", "synthetic", "llm-generated", "cross-lingual", "data-selection"],
        # no default config: load_dataset(repo) alone lists the choices rather than silently picking one subset
        configs=[{"config_name": name,
                  "data_files": [{"split": split, "path": f"data/{name}/{split}-*.parquet"}
                                 for split in files[name]]}
                 for name in configs],
    )
    infos = DatasetInfosDict()
    for name, splits in configs.items():
        first = next(iter(splits.values()))
        split_dict = datasets.SplitDict()
        for split, ds in splits.items():
            split_dict.add(datasets.SplitInfo(name=split, num_bytes=ds.data.nbytes, num_examples=len(ds)))
        infos[name] = datasets.DatasetInfo(features=first.features, splits=split_dict, config_name=name,
                                           dataset_size=sum(ds.data.nbytes for ds in splits.values()))
    infos.to_dataset_card_data(card)
    return card.to_yaml()


def label_counts(ds: "datasets.Dataset", task: "Task") -> dict[str, int]:
    counts = Counter(ds[schema.LABEL]) if len(ds) else Counter()
    return {name: counts.get(i, 0) for i, name in enumerate(task.labels)}


def dataset_card(configs: dict[str, dict[str, "datasets.Dataset"]], files: dict[str, dict[str, list[str]]],
                 task: "Task", *, license: str, pretty_name: str, description: str = "",
                 provenance: dict | None = None, figures: list[str] = (), repo_id: str | None = None,
                 revision: str | None = None, local_path: str | None = None, recipe_file: str | None = None,
                 script_file: str = "reproduce.py") -> str:
    """Render model_cards/dataset_card.md for these configs (rows per config, split and label)."""
    from . import __version__

    langs = set()
    for splits in configs.values():
        for ds in splits.values():
            if schema.LANG in ds.column_names and len(ds):
                langs.update(ds.unique(schema.LANG))
    languages = sorted({hub_lang(lang) for lang in langs} | {"en"})
    rows = []
    for name, splits in configs.items():
        for split, ds in splits.items():
            strategies = sorted(ds.unique(schema.STRATEGY)) if schema.STRATEGY in ds.column_names and len(ds) else []
            row_langs = sorted(ds.unique(schema.LANG)) if schema.LANG in ds.column_names and len(ds) else []
            rows.append({"config": name, "split": split, "rows": len(ds), "labels": label_counts(ds, task),
                         "strategy": ", ".join(strategies), "languages": ", ".join(row_langs)})
    where = repo_id or local_path or "."
    load_lines = []
    for name in configs:
        args = [repr(where), repr(name)]
        if repo_id and revision:
            args.append(f"revision={revision!r}")
        load_lines.append(f"load_dataset({', '.join(args)})")
    return render(
        "dataset_card.md",
        metadata=card_metadata(configs, files, task, languages, license, pretty_name).strip(),
        pretty_name=pretty_name, description=description, task=task.name, task_description=task.description,
        labels=list(task.labels), languages=languages, rows=rows, configs=list(configs),
        provenance=provenance or {"generator": {"model": None, "sampling": {}}, "mt_model": None,
                                  "teacher": None, "selection": {}, "seed": None},
        figures=list(figures), license=license, repo_id=repo_id, revision=revision, load_lines=load_lines,
        recipe_file=recipe_file, script_file=script_file, hfaug_version=__version__, install=install_command(),
    )


def install_command() -> str:
    """How to install the hfaug that writes this card. hfaug is not on a package index: the pip
    requirement of the source this copy was installed from (PEP 610's direct_url.json: a VCS URL
    at its commit, or an archive URL), else a clone of the hfaug source at this version."""
    from importlib import metadata

    from . import __version__

    try:
        direct = json.loads(metadata.distribution("hfaug").read_text("direct_url.json") or "{}")
    except (metadata.PackageNotFoundError, ValueError):
        direct = {}
    url = direct.get("url") or ""
    vcs = direct.get("vcs_info") or {}
    if vcs.get("vcs") == "git" and url.startswith(("https://", "ssh://")):
        return f'pip install "hfaug @ git+{url}@{vcs.get("commit_id") or vcs.get("requested_revision") or "main"}"'
    if url.startswith("https://") and not direct.get("dir_info"):
        return f'pip install "hfaug @ {url}"'
    # a local folder or an editable clone: its path means nothing on another machine
    return (f"# hfaug is not on PyPI: install hfaug {__version__} from a clone of its source\n"
            "pip install -e 'path/to/hfaug[all]'")


def hub_lang(code: str) -> str:
    """FLORES-style codes (hin_Deva) to the ISO 639 part the Hub's language field takes."""
    return code.split("_")[0].split("-")[0].lower()


# ---------------------------------------------------------------------------------------------
# releases


def release_section(tag: str, dataset: str | None, models: list[str]) -> str:
    """The card section that names every repo of the release (each card names the others)."""
    from huggingface_hub import constants

    hub = constants.ENDPOINT.rstrip("/")  # the Hub the release goes to (HF_ENDPOINT for a private one)
    parts = ([f"the dataset [`{dataset}`]({hub}/datasets/{dataset}/tree/{tag})"] if dataset else [])
    parts += [f"the student [`{m}`]({hub}/{m}/tree/{tag})" for m in models]
    return (f"\n\n## Release {tag}\n\nThis repo is one part of hfaug release `{tag}`: {', '.join(parts)}. "
            f"Every part carries the tag `{tag}`; load them with `revision=\"{tag}\"`.\n")


# ---------------------------------------------------------------------------------------------
# the ONNX folders' cards (export)



class ParityGate(Protocol):
    """What an ONNX card states about the export (export.ExportConfig has it; cards imports no stage)."""

    quantization: str
    per_channel: bool
    min_agreement: float
    max_prob_diff: float
    int8_max_prob_diff: float | None


def write_onnx_card(student: Path, folder: Path, *, name: str, variant: str, figures: dict, config: ParityGate,
               rows_from: str, passed: bool) -> Path:
    """The student's card with an ONNX section (format, parity figures, usage) appended."""
    from .predict import read_labels

    source = Path(student) / CARD
    text = source.read_text(encoding="utf-8") if source.is_file() else f"# {name}\n"
    text = _add_tags(text, ["onnx"] + (["int8"] if variant == "int8" else []))
    what = ("dynamically quantised to int8 with ONNX Runtime "
            f"(`{config.quantization}` preset, per-channel {str(config.per_channel).lower()})"
            if variant == "int8" else "exported to ONNX (fp32) with Optimum")
    rows = "\n".join(
        f"| {v} | {f['agreement']:.2%} | {f['disagreements']} / {f['rows']} | {f['max_prob_diff']:.2e} | "
        f"{f['mean_prob_diff']:.2e} |" for v, f in figures.items())
    int8_limit = f", int8 max prob diff <= {config.int8_max_prob_diff:g}" if config.int8_max_prob_diff is not None else ""
    section = f"""

## ONNX export

This folder holds the student **{name}** {what}: `model.onnx` with its `config.json` and tokenizer.

Parity with the PyTorch student on {figures[variant]['rows']} {rows_from}, batched and padded identically:

| model | label agreement | rows that differ | max prob diff | mean prob diff |
|---|---|---|---|---|
{rows}

Gate: label agreement >= {config.min_agreement:.0%}, fp32 max prob diff <= {config.max_prob_diff:g}{int8_limit}: **{"passed" if passed else "FAILED"}**.

```python
from hfaug.predict import OnnxClassifier  # onnxruntime + tokenizer, no torch

clf = OnnxClassifier("{folder.name}")
clf.predict_proba(["..."])  # columns: {", ".join(read_labels(folder))}
```
"""
    path = Path(folder) / CARD
    path.write_text(text.rstrip("\n") + section, encoding="utf-8")
    return path


def _add_tags(card: str, tags: list[str]) -> str:
    """Add ``tags`` to the card's YAML front matter (creating it), so the Hub lists the model as ONNX."""
    import yaml

    meta, body = {}, card
    if card.startswith("---\n"):
        end = card.find("\n---", 4)
        if end != -1:
            try:
                meta = yaml.safe_load(card[4:end]) or {}
                body = card[end + 4:].lstrip("\n")
            except yaml.YAMLError:
                meta, body = {}, card
    if not isinstance(meta, dict):
        meta, body = {}, card
    existing = meta.get("tags") or []
    meta["tags"] = list(existing) + [t for t in tags if t not in existing]
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n\n" + body


# ---------------------------------------------------------------------------------------------
# the LoRA adapter's card (adapt)



def adapter_card(*, base_model: str, task: "Task", lora: dict, metrics: dict, rows: int, data: str,
               adapter_id: str = "<user>/<adapter-repo>", description: str = "") -> str:
    """The adapter's README.md: what it is, how it was trained, and how to load and serve it."""

    targets = lora["target_modules"]
    targets = targets if isinstance(targets, str) else ", ".join(targets)
    loss = ""
    if "loss_first" in metrics:
        loss = (f"- training loss: {metrics['loss_first']:.4f} (step {metrics.get('loss_first_step', 1)}) -> "
                f"{metrics['loss_last']:.4f} (step {metrics.get('loss_last_step', metrics.get('steps', '?'))})\n")
    hub_base = base_model if not base_model.startswith(("hfaug://", "/", ".")) else None
    front = ["---", "library_name: peft", "pipeline_tag: text-generation",
             "tags: [hfaug, lora, sft, trl, synthetic-data-generation]"]
    if hub_base:
        front.append(f"base_model: {hub_base}")
    front.append("---")
    return "\n".join(front) + f"""

# LoRA adapter: {task.name} data generator

A LoRA adapter for `{base_model}` trained by hfaug (`hfaug adapt`) with TRL's
`SFTTrainer`, so that the generator's outputs look like the user's labelled {task.name} data. It is
the optional adaptation step of the pipeline following *Boosting Zero-Shot Crosslingual Performance
using LLM-Based Augmentations with Effective Data Selection* (Fazili et al., Findings of ACL 2024).
{description}

## Training

- base model: `{base_model}`
- data: {rows} instruction/response pairs from {data}: each labelled row became a chat turn
  asking for an example of its label (the generate stage's prompt) answered with the row's text
  ({"the hypothesis of that relation to the premise" if task.is_pair else "the review"}); loss on the response only
- LoRA: r={lora['r']}, alpha={lora['alpha']}, dropout={lora['dropout']}, target modules: {targets}
- steps: {metrics.get('steps', '?')}
{loss}
## Use with peft

```python
from peft import AutoPeftModelForCausalLM
from transformers import AutoTokenizer

model = AutoPeftModelForCausalLM.from_pretrained("{adapter_id}")   # loads the base model too
tokenizer = AutoTokenizer.from_pretrained("{adapter_id}")
messages = [{{"role": "user", "content": "Write a single review of at most two short sentences indicating positive sentiment."}}]
inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
print(tokenizer.decode(model.generate(inputs, max_new_tokens=64, do_sample=True)[0][inputs.shape[1]:]))
```

In hfaug, the generate stage's `transformers` backend loads the base model and this adapter.

## Serve with Text Generation Inference

TGI serves LoRA adapters next to the base model and picks one per request:

```bash
docker run --gpus all -p 8080:80 ghcr.io/huggingface/text-generation-inference:latest \\
    --model-id {hub_base or '<base-model-id>'} --lora-adapters {adapter_id}
# a local adapter folder: mount it and pass --lora-adapters name=/data/adapter
```

```python
from huggingface_hub import InferenceClient

client = InferenceClient("http://localhost:8080")
client.text_generation(prompt, adapter_id="{adapter_id}", max_new_tokens=64)
# raw HTTP: POST /generate {{"inputs": ..., "parameters": {{"adapter_id": "{adapter_id}"}}}}
```

Requests without `adapter_id` get the base model.

## Citation

```bibtex
{PAPER_CITATION}
```
"""

"""The Space's whole program: an ONNX predictor, model references (Hub or local) and the Gradio app.

Only published packages are needed -- onnxruntime, tokenizers, numpy, huggingface_hub and gradio
(spaces/requirements.txt) -- so the Space builds from this folder alone, without hfaug or torch.
``hfaug serve`` imports this same file (hfaug.serve), so the local app and the Space are one code.

A model reference (``HFAUG_MODELS`` on a Space, ``name=reference`` pairs separated by commas)::

    owner/name                 a model repo written by `hfaug publish-model` (onnx/ in it), main
    owner/name@v2              ... at a tag, branch or commit
    owner/name@v2:fp32         ... the fp32 model (onnx/model.onnx) rather than the default int8
    owner/name/sub/folder      an ONNX export in another folder of a repo
    ./models/hi or /abs/path   a local folder: an export folder (model.onnx) or a repo layout

The files are the ones Optimum reads: ``ORTModelForSequenceClassification.from_pretrained(repo,
subfolder="onnx", file_name="model_quantized.onnx")`` loads the same int8 model.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger("hfaug.serve")  # one name, under `hfaug serve` and on a Space

#: file names per variant, Optimum's: the int8 model sits beside the fp32 one in onnx/
ONNX_FILES = {"int8": "model_quantized.onnx", "fp32": "model.onnx"}
ONNX_SUBFOLDER = "onnx"  # where publish-model puts the ONNX files in a model repo
#: beside the model: the student's languages, example texts in them, metrics and repos (hfaug writes it)
INFO_FILE = "hfaug.json"
#: the small files a predictor needs next to the model (config for labels, the tokenizer)
SIDE_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", INFO_FILE)
NLI_LABELS = {"entailment", "neutral", "contradiction"}


class ModelError(ValueError):
    """A model reference that cannot be served: what is wrong and how to fix it, in one line."""


# ---------------------------------------------------------------------------------------------
# the predictor: onnxruntime + tokenizers, no transformers, no torch


def softmax(logits: np.ndarray) -> np.ndarray:
    logits = logits.astype(np.float64)
    logits -= logits.max(axis=-1, keepdims=True)  # no overflow on large logits
    exp = np.exp(logits)
    return (exp / exp.sum(axis=-1, keepdims=True)).astype(np.float32)


def _token(value: Any) -> str | None:
    """A special token as tokenizer_config.json writes it (a string or an AddedToken mapping)."""
    return value.get("content") if isinstance(value, dict) else value


def load_tokenizer(folder: Path, max_length: int):
    """The folder's fast tokenizer (tokenizer.json) truncating and padding as transformers does."""
    from tokenizers import Tokenizer

    path = folder / "tokenizer.json"
    if not path.is_file():
        raise ModelError(f"{folder} has no tokenizer.json (a fast tokenizer); export the student with hfaug")
    tok = Tokenizer.from_file(str(path))
    config: dict = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        if (folder / name).is_file():
            config.update(json.loads((folder / name).read_text(encoding="utf-8")))
    # transformers' tokenizer(texts, pairs, truncation=True, max_length=n): longest side first
    tok.enable_truncation(max_length, strategy="longest_first", direction=config.get("truncation_side", "right"))
    pad = _token(config.get("pad_token"))
    pad_id = tok.token_to_id(pad) if pad else None
    if pad_id is None:
        pad, pad_id = "[PAD]", 0
    tok.enable_padding(pad_id=pad_id, pad_token=pad, direction=config.get("padding_side", "right"))
    return tok


def read_info(folder: Path) -> dict[str, Any]:
    """The student's ``hfaug.json`` (languages, examples, metrics, repos), or {} when it has none."""
    path = folder / INFO_FILE
    if not path.is_file():
        return {}
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:  # a broken file costs the examples and metrics, not the model
        logger.warning("ignoring %s: %s", path, e)
        return {}
    return info if isinstance(info, dict) else {}


class OnnxPredictor:
    """An exported sequence classifier: ``labels`` and ``predict_proba(texts, pairs=None)``.

    ``model_file`` is an ONNX file (``model.onnx`` or ``model_quantized.onnx``); ``config.json``
    (id2label) and ``tokenizer.json`` sit in the same folder.
    """

    def __init__(self, model_file: str | Path, max_length: int = 128, batch_size: int = 32):
        import onnxruntime as ort

        model_file = Path(model_file)
        if not model_file.is_file():
            raise ModelError(f"no ONNX model at {model_file}; export the student first (hfaug export)")
        folder = model_file.parent
        self.path, self.batch_size = model_file, batch_size
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        id2label = config.get("id2label") or {}
        if not id2label:
            raise ModelError(f"{folder}/config.json has no id2label: export a model with a classification head")
        self.labels: list[str] = [id2label[k] for k in sorted(id2label, key=int)]
        self.tokenizer = load_tokenizer(folder, max_length)
        self.info: dict[str, Any] = read_info(folder)
        # the Rust tokenizer's truncation/padding state is per object: one caller at a time
        self._lock = threading.Lock()
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_name = self.session.get_outputs()[0].name

    def __repr__(self) -> str:
        return f"OnnxPredictor({str(self.path)!r}, labels={self.labels})"

    def predict_proba(self, texts: Sequence[str], pairs: Sequence[str] | None = None) -> np.ndarray:
        """Probabilities of shape ``(len(texts), len(labels))`` in input order (``pairs``: NLI hypotheses)."""
        if pairs is not None and len(pairs) != len(texts):
            raise ValueError(f"got {len(texts)} texts but {len(pairs)} pairs; give one pair per text")
        out = np.zeros((len(texts), len(self.labels)), dtype=np.float32)
        inputs = list(texts) if pairs is None else list(zip(texts, pairs))
        with self._lock:
            lengths = [len(e.ids) for e in self.tokenizer.encode_batch(inputs)] if inputs else []
            order = np.argsort(-np.array(lengths, dtype=np.int64), kind="stable")
            # similar lengths share a batch, so padding (wasted compute) stays small
            batches = [(idx, self.tokenizer.encode_batch([inputs[i] for i in idx]))
                       for idx in (order[s:s + self.batch_size] for s in range(0, len(order), self.batch_size))]
        for idx, encodings in batches:
            given = {"input_ids": [e.ids for e in encodings], "attention_mask": [e.attention_mask for e in encodings],
                     "token_type_ids": [e.type_ids for e in encodings]}
            feed = {name: np.asarray(given[name], dtype=np.int64) for name in self.input_names if name in given}
            if len(feed) != len(self.input_names):
                raise ModelError(f"{self.path} wants inputs {self.input_names}; the tokenizer gives {list(given)}")
            out[idx] = softmax(self.session.run([self.output_name], feed)[0])
        return out

    def predict(self, texts: Sequence[str], pairs: Sequence[str] | None = None) -> list[str]:
        """The most probable label name per text."""
        return [self.labels[i] for i in self.predict_proba(texts, pairs).argmax(axis=-1)]


# ---------------------------------------------------------------------------------------------
# model references


@dataclass(frozen=True)
class ModelRef:
    """A parsed reference: a local ``path``, or a Hub ``repo_id`` (+ ``subfolder``, ``revision``)."""

    path: Path | None = None
    repo_id: str | None = None
    subfolder: str = ONNX_SUBFOLDER
    revision: str | None = None
    variant: str | None = None  # int8, fp32, or None: int8 when there is one


def parse_ref(ref: str) -> ModelRef:
    """``owner/name[/sub][@revision][:int8|:fp32]`` or a local folder (see the module docstring)."""
    ref = ref.strip()
    base, variant = ref, None
    head, sep, tail = ref.rpartition(":")
    if sep and tail in ONNX_FILES:
        base, variant = head, tail
    path = Path(base).expanduser()
    if path.exists() or base.startswith((".", "/", "~")):
        if not path.exists():
            raise ModelError(f"model folder '{base}' does not exist")
        return ModelRef(path=path, variant=variant)
    base, _, revision = base.partition("@")
    parts = [p for p in base.strip("/").split("/") if p]
    if len(parts) < 2:
        raise ModelError(f"model '{ref}' is neither a local folder nor a Hub repo id "
                         "(owner/name, owner/name@revision, owner/name:fp32)")
    return ModelRef(repo_id="/".join(parts[:2]), subfolder="/".join(parts[2:]) or ONNX_SUBFOLDER,
                    revision=revision or None, variant=variant)


def pick_file(names: set[str], variant: str | None, where: str, *, export_folder: bool = False) -> str:
    """The ONNX file name of ``variant`` among ``names`` (int8 first when no variant is asked for)."""
    for v in ([variant] if variant else ["int8", "fp32"]):
        if ONNX_FILES[v] in names:
            return ONNX_FILES[v]
    if export_folder and variant == "int8" and ONNX_FILES["fp32"] in names:
        # a local export's int8/<name>/ folder keeps Optimum's default name
        return ONNX_FILES["fp32"]
    raise ModelError(f"{where} has no {' or '.join(ONNX_FILES[v] for v in ([variant] if variant else ONNX_FILES))}; "
                     "publish the student with its ONNX export (hfaug publish-model)")


def resolve(ref: str | ModelRef) -> Path:
    """The local ONNX file of a reference, downloading only its files from the Hub when needed."""
    ref = parse_ref(ref) if isinstance(ref, str) else ref
    if ref.path is not None:
        for folder in (ref.path / ONNX_SUBFOLDER, ref.path):  # a repo layout, or an export folder
            names = {p.name for p in folder.glob("*.onnx")} if folder.is_dir() else set()
            if names:
                return folder / pick_file(names, ref.variant, str(folder), export_folder=folder == ref.path)
        raise ModelError(f"{ref.path} holds no ONNX model (model.onnx or onnx/model_quantized.onnx)")
    from huggingface_hub import HfApi, snapshot_download

    where = f"{ref.repo_id}@{ref.revision or 'main'}/{ref.subfolder}"
    try:
        files = HfApi().list_repo_files(ref.repo_id, revision=ref.revision)
    except Exception as e:  # offline, missing repo or revision, no access: say which
        raise ModelError(f"cannot list model repo {ref.repo_id}@{ref.revision or 'main'} on the Hub: "
                         f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    inside = {f[len(ref.subfolder) + 1:] for f in files if f.startswith(ref.subfolder + "/")}
    name = pick_file({f for f in inside if "/" not in f}, ref.variant, where)
    # only this variant's model (and its external data, if any) and the small files beside it
    patterns = [f"{ref.subfolder}/{n}" for n in (name, name + "_data", *SIDE_FILES)]
    try:
        local = snapshot_download(ref.repo_id, revision=ref.revision, allow_patterns=patterns)
    except Exception as e:
        raise ModelError(f"cannot download {where}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    return Path(local) / ref.subfolder / name


def parse_models(spec: str) -> dict[str, str]:
    """``"a=path/or/repo,b=owner/repo@v2:fp32,owner/repo"`` -> {name: reference}."""
    out: dict[str, str] = {}
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        name, sep, ref = item.partition("=")
        if not sep:  # the reference's last folder or repo name, without @revision or :variant
            name, ref = item.split("@")[0].removesuffix(":fp32").removesuffix(":int8").rstrip("/").split("/")[-1], item
        out[name.strip()] = ref.strip()
    return out


def load_models(models: str | Mapping[str, str | Path], *, max_length: int = 128) -> dict[str, OnnxPredictor]:
    """ONNX predictors by display name, from ``"name=ref,..."`` or a {name: ref} mapping."""
    refs = parse_models(models) if isinstance(models, str) else dict(models)
    if not refs:
        raise ModelError("no models to serve: give name=folder_or_repo pairs (HFAUG_MODELS on a Space)")
    out = {}
    for name, ref in refs.items():
        try:
            out[name] = OnnxPredictor(resolve(str(ref)), max_length=max_length)
            parsed = parse_ref(str(ref))
        except ModelError as e:
            raise ModelError(f"model '{name}': {e}") from None
        if parsed.repo_id:  # served from the Hub: that repo (at that revision) is the model's link
            out[name].info.setdefault("model_repo", parsed.repo_id)
            if parsed.revision:
                out[name].info["model_revision"] = parsed.revision
        logger.info("loaded %s from %s (%s)", name, out[name].path, ", ".join(out[name].labels))
    return out


# ---------------------------------------------------------------------------------------------
# the app

#: language codes the built-in examples and the page name in words (others are shown as their code)
LANGUAGE_NAMES = {"en": "English", "hi": "Hindi", "mr": "Marathi", "sw": "Swahili", "ur": "Urdu"}

#: built-in examples per task and language code: the fallback for a student whose hfaug.json has
#: no rows in a language (or that has no hfaug.json); the Space shows those of its students' languages
EXAMPLES: dict[str, dict[str, list[list[str]]]] = {
    "sentiment": {
        "en": [
            ["This e-reader is light, the screen is easy on the eyes, and the battery lasts for weeks."],
            ["A boring, confusing horror film with no scares and terrible acting from the whole cast."],
        ],
        "hi": [
            ["यह होटल बहुत साफ़-सुथरा था और कर्मचारियों का व्यवहार बेहद अच्छा था।"],
            ["होटल का कमरा गंदा था और शिकायत करने पर भी किसी ने ध्यान नहीं दिया।"],
        ],
        "mr": [
            ["हे हॉटेल अतिशय स्वच्छ होते आणि कर्मचाऱ्यांचे वागणे खूप चांगले होते."],
            ["हॉटेलची खोली अस्वच्छ होती आणि तक्रार करूनही कोणी लक्ष दिले नाही."],
        ],
        "ur": [
            ["یہ ہوٹل بہت صاف ستھرا تھا اور عملے کا رویہ بہت اچھا تھا۔"],
            ["ہوٹل کا کمرہ گندا تھا اور شکایت کرنے پر بھی کسی نے توجہ نہیں دی۔"],
        ],
        "sw": [
            ["Hoteli hii ilikuwa safi sana na wafanyakazi walikuwa wakarimu mno."],
            ["Chumba kilikuwa kichafu na hakuna aliyejali tulipolalamika."],
        ],
    },
    "nli": {
        "en": [
            ["The cable car to the summit runs every fifteen minutes and stops operating when winds are strong.",
             "Strong winds can stop the cable car from running."],
            ["The cable car to the summit runs every fifteen minutes and stops operating when winds are strong.",
             "The cable car runs only once a day."],
        ],
        "hi": [
            ["दिल्ली से मनाली जाने वाली बस रात आठ बजे चलती है और अगली सुबह पहुँचती है।", "मनाली की बस रात भर सफ़र करती है।"],
            ["दिल्ली से मनाली जाने वाली बस रात आठ बजे चलती है और अगली सुबह पहुँचती है।",
             "मनाली जाने वाली बस सुबह दिल्ली से रवाना होती है।"],
        ],
        "ur": [
            ["لاہور سے کراچی جانے والی ٹرین رات آٹھ بجے چلتی ہے اور اگلی شام پہنچتی ہے۔", "ٹرین رات بھر سفر کرتی ہے۔"],
            ["لاہور سے کراچی جانے والی ٹرین رات آٹھ بجے چلتی ہے اور اگلی شام پہنچتی ہے۔", "ٹرین صبح لاہور سے روانہ ہوتی ہے۔"],
        ],
        "sw": [
            ["Basi la kwenda Mombasa linaondoka Nairobi saa tatu usiku na kufika asubuhi.",
             "Basi hilo husafiri wakati wa usiku."],
            ["Basi la kwenda Mombasa linaondoka Nairobi saa tatu usiku na kufika asubuhi.",
             "Basi la kwenda Mombasa linaondoka Nairobi mchana."],
        ],
    },
}


def language_name(code: str) -> str:
    return LANGUAGE_NAMES.get(code.split(":")[0], code)


def run_examples(models: Mapping[str, Any], task: str | None, n_columns: int) -> dict[str, list[list[str]]]:
    """Examples by language name for the students' own languages (their hfaug.json rows, else built-in).

    Students without languages (no hfaug.json): every built-in language of the task.
    """
    builtin = EXAMPLES.get(task or "", {})
    languages = list(dict.fromkeys(code for m in models.values() for code in (m.info.get("languages") or [])))
    if not languages:
        return {language_name(code): rows for code, rows in builtin.items()}
    out: dict[str, list[list[str]]] = {}
    for code in languages:
        rows = [list(r) for m in models.values() for r in (m.info.get("examples") or {}).get(code, [])
                if isinstance(r, (list, tuple)) and len(r) == n_columns]
        rows = list({tuple(r): r for r in rows}.values()) or builtin.get(code, [])  # one of each, else built-in
        if rows:
            out[language_name(code)] = rows
    return out


def _hub_url() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def _links(info: Mapping[str, Any]) -> list[str]:
    """Markdown links to the student's model repo and its dataset repo, each at its revision."""
    links = []
    if info.get("model_repo"):
        rev = info.get("model_revision") or info.get("revision") or "main"
        links.append(f"model [`{info['model_repo']}@{rev}`]({_hub_url()}/{info['model_repo']}/tree/{rev})")
    if info.get("dataset_repo"):
        rev = info.get("revision") or "main"
        links.append(f"dataset [`{info['dataset_repo']}@{rev}`]({_hub_url()}/datasets/{info['dataset_repo']}/tree/{rev})")
    return links


def students_markdown(models: Mapping[str, Any]) -> str:
    """Every served student in one table: languages, accuracy / macro-F1 per test set, repos."""
    lines = ["| model | languages | accuracy / macro-F1 | repos |", "|---|---|---|---|"]
    for name, model in models.items():
        info = model.info
        scores = "; ".join(f"{language_name(k)} {100 * m['accuracy']:.1f}% / {100 * m['macro_f1']:.1f}%"
                           for k, m in (info.get("metrics") or {}).items()
                           if isinstance(m.get("accuracy"), (int, float)) and isinstance(m.get("macro_f1"), (int, float)))
        lines.append(f"| {name} | {', '.join(language_name(c) for c in info.get('languages') or []) or '-'} | "
                     f"{scores or '-'} | {' · '.join(_links(info)) or '-'} |")
    return "\n".join(lines)


def model_info_markdown(name: str, info: Mapping[str, Any]) -> str:
    """One student's languages, metrics per test set and links to its model and dataset repos."""
    lines = [f"**{name}**" + (f" ({', '.join(language_name(c) for c in info['languages'])})"
                              if info.get("languages") else "")]
    metrics = info.get("metrics") or {}
    if metrics:
        lines += ["", "| test set | accuracy | macro-F1 | rows |", "|---|---:|---:|---:|"]
        for key, m in metrics.items():
            cells = [f"{100 * m[k]:.1f}%" if isinstance(m.get(k), (int, float)) else "-" for k in ("accuracy", "macro_f1")]
            lines.append(f"| {language_name(key)} (`{key}`) | {cells[0]} | {cells[1]} | {m.get('n', '-')} |")
        if info.get("metrics_of"):
            lines.append(f"\nmeasured on `{info['metrics_of']}`")
    else:
        lines.append("\nno test metrics recorded for this student")
    links = _links(info)
    if links:
        lines.append("\n" + " · ".join(links))
    return "\n".join(lines)


def is_pair_model(labels: list[str], info: Mapping[str, Any] | None = None) -> bool:
    """Pair students (NLI, or a task of the run's own with two text columns, as ``hfaug.json`` says)
    take two texts; everything else one. Without ``hfaug.json``, the NLI labels mean a pair."""
    columns = (info or {}).get("text_columns")
    if isinstance(columns, list) and columns:
        return len(columns) == 2
    return set(labels) == NLI_LABELS


def check_text(text: str | None, what: str, max_chars: int) -> str:
    """The stripped text, or a ``gr.Error`` saying why it is refused (shown in the UI, raised by the API)."""
    import gradio as gr

    text = (text or "").strip()
    # a refused input is the user's, not a bug: one log line, no traceback (print_exception=False)
    if not text:
        logger.info("refused input: the %s is empty", what)
        raise gr.Error(f"The {what} is empty: please type a sentence.", title="Empty input", print_exception=False)
    if len(text) > max_chars:
        logger.info("refused input: the %s is %d characters long (limit %d)", what, len(text), max_chars)
        raise gr.Error(f"The {what} is {len(text)} characters long; the limit is {max_chars}. "
                       "Please shorten it.", title="Input too long", print_exception=False)
    return text


def build_demo(models: Mapping[str, Any], *, pair: bool | None = None, max_chars: int = 1000,
               concurrency_limit: int = 4, max_queue: int = 64, title: str = "",
               examples: Mapping[str, list[list[str]]] | None = None):
    """The Gradio app over ``models`` (display name -> predictor), queue configured, not launched."""
    import gradio as gr

    if not models:
        raise ModelError("build_demo: no models to serve")
    names = list(models)
    labels = models[names[0]].labels
    for name in names[1:]:
        if set(models[name].labels) != set(labels):
            raise ModelError(f"models '{names[0]}' and '{name}' predict different labels "
                             f"({labels} vs {models[name].labels}); serve one task per app")
    pair = is_pair_model(labels, models[names[0]].info) if pair is None else pair
    # binary sentiment (a subset of the sentiment labels) shows the sentiment examples too
    task = models[names[0]].info.get("task") or (
        "nli" if pair else "sentiment" if set(labels) <= {"negative", "neutral", "positive"} else None)
    examples = examples if examples is not None else run_examples(models, task, 2 if pair else 1)
    title = title or ("Natural language inference" if pair else "Text classification") + " in many languages"

    def scores(name: str, texts: list[str], pairs: list[str] | None) -> dict[str, float]:
        if name not in models:
            raise gr.Error(f"Unknown model '{name}'; choose one of: {', '.join(names)}.", title="Unknown model")
        probs = models[name].predict_proba(texts, pairs)[0]
        return {label: float(p) for label, p in zip(models[name].labels, probs)}

    def model_info(model: str) -> str:
        """The chosen student's languages, metrics and repo links (Markdown)."""
        if model not in models:
            raise gr.Error(f"Unknown model '{model}'; choose one of: {', '.join(names)}.", title="Unknown model")
        return model_info_markdown(model, models[model].info)

    # named parameters become the API's parameter names (gradio_client's predict(text=..., model=...))
    def predict_text(text: str, model: str) -> dict[str, float]:
        return scores(model, [check_text(text, "text", max_chars)], None)

    def predict_pair(premise: str, hypothesis: str, model: str) -> dict[str, float]:
        return scores(model, [check_text(premise, "premise", max_chars)],
                      [check_text(hypothesis, "hypothesis", max_chars)])

    with gr.Blocks(title=title, analytics_enabled=False) as demo:
        gr.Markdown(f"# {title}\n"
                    "Students distilled with [hfaug](https://arxiv.org/abs/2407.10582) (LLM-based augmentations "
                    "with data selection), served as ONNX. Labels: " + ", ".join(labels) +
                    f". Up to {max_chars} characters per box.")
        with gr.Accordion(f"Students ({len(names)})", open=len(names) > 1):
            gr.Markdown(students_markdown(models), elem_id="students")
        with gr.Row():
            with gr.Column(scale=3):
                if pair:
                    boxes = [gr.Textbox(label="Premise", lines=2, max_lines=6, elem_id="premise"),
                             gr.Textbox(label="Hypothesis", lines=1, max_lines=4, elem_id="hypothesis")]
                else:
                    boxes = [gr.Textbox(label="Text", lines=3, max_lines=8, elem_id="text",
                                        placeholder="Type a sentence in any language the student knows")]
                model = gr.Dropdown(names, value=names[0], label="Model (student / language)", elem_id="model")
                button = gr.Button("Classify", variant="primary", elem_id="classify")
                info = gr.Markdown(model_info(names[0]), elem_id="model-info")
            with gr.Column(scale=2):
                output = gr.Label(num_top_classes=len(labels), label="Label probabilities", elem_id="prediction")
        for language, rows in examples.items():
            gr.Examples(rows, inputs=boxes, label=f"{language} examples", cache_examples=False)
        gr.on([button.click, *[b.submit for b in boxes]], predict_pair if pair else predict_text,
              inputs=[*boxes, model], outputs=output, api_name="predict")
        model.change(model_info, inputs=model, outputs=info, api_name="model_info")
    demo.queue(default_concurrency_limit=concurrency_limit, max_size=max_queue)
    return demo


def demo_from_env(here: Path):
    """The Space's app from its variables (HFAUG_MODELS, HFAUG_MAX_CHARS, ...), see README.md."""
    spec = os.environ.get("HFAUG_MODELS", "").strip()
    if not spec:
        local = sorted({p.parent.parent if p.parent.name == ONNX_SUBFOLDER else p.parent
                        for p in (here / "models").glob("**/*.onnx")})
        spec = ",".join(f"{p.name}={p}" for p in local)
    models = load_models(spec, max_length=int(os.environ.get("HFAUG_MAX_LENGTH", "128")))
    return build_demo(models, max_chars=int(os.environ.get("HFAUG_MAX_CHARS", "1000")),
                      concurrency_limit=int(os.environ.get("HFAUG_CONCURRENCY", "2")),
                      title=os.environ.get("HFAUG_TITLE", ""))

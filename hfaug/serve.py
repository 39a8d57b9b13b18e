"""Serve exported students in a Gradio app: the Space in spaces/ and ``hfaug serve`` share this code.

``build_demo(models)`` makes the app: one text box (premise and hypothesis for NLI), a model
choice, label probabilities out, examples per language, and an API endpoint (``/predict``) that
``gradio_client`` calls. Empty or too-long input is refused with a clear message (``gr.Error``: a
toast in the browser, an error through the API) and the server keeps serving. Requests go through
Gradio's queue with a concurrency limit, so a burst of callers waits instead of overloading the CPU.

    from hfaug.serve import build_demo, load_models
    demo = build_demo(load_models("student=runs/demo/export/int8/student"))
    demo.launch()

``hfaug serve --config RECIPE`` does the same on the students a run exported
(``<run>/export/int8/<name>/``, or ``onnx/<name>/`` for fp32).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from .errors import HfaugError, did_you_mean

if TYPE_CHECKING:
    import gradio as gr

    from .predict import OnnxClassifier
    from .runs import Run

logger = logging.getLogger(__name__)

NLI_LABELS = {"entailment", "neutral", "contradiction"}

#: a few examples per language and task (from the packaged demo data); the Space shows them by language
EXAMPLES: dict[str, dict[str, list[list[str]]]] = {
    "sentiment": {
        "English": [
            ["This e-reader is light, the screen is easy on the eyes, and the battery lasts for weeks."],
            ["A boring, confusing horror film with no scares and terrible acting from the whole cast."],
        ],
        "Hindi": [
            ["यह होटल बहुत साफ़-सुथरा था और कर्मचारियों का व्यवहार बेहद अच्छा था।"],
            ["होटल का कमरा गंदा था और शिकायत करने पर भी किसी ने ध्यान नहीं दिया।"],
        ],
        "Marathi": [
            ["हे हॉटेल अतिशय स्वच्छ होते आणि कर्मचाऱ्यांचे वागणे खूप चांगले होते."],
            ["हॉटेलची खोली अस्वच्छ होती आणि तक्रार करूनही कोणी लक्ष दिले नाही."],
        ],
    },
    "nli": {
        "English": [
            ["The cable car to the summit runs every fifteen minutes and stops operating when winds are strong.",
             "Strong winds can stop the cable car from running."],
            ["The cable car to the summit runs every fifteen minutes and stops operating when winds are strong.",
             "The cable car runs only once a day."],
        ],
        "Hindi": [
            ["दिल्ली से मनाली जाने वाली बस रात आठ बजे चलती है और अगली सुबह पहुँचती है।", "मनाली की बस रात भर सफ़र करती है।"],
            ["दिल्ली से मनाली जाने वाली बस रात आठ बजे चलती है और अगली सुबह पहुँचती है।",
             "मनाली जाने वाली बस सुबह दिल्ली से रवाना होती है।"],
        ],
        "Swahili": [
            ["Basi la kwenda Mombasa linaondoka Nairobi saa tatu usiku na kufika asubuhi.",
             "Basi hilo husafiri wakati wa usiku."],
            ["Basi la kwenda Mombasa linaondoka Nairobi saa tatu usiku na kufika asubuhi.",
             "Basi la kwenda Mombasa linaondoka Nairobi mchana."],
        ],
    },
}


@dataclass
class ServeConfig:
    """``hfaug serve``: the Gradio app on the students a run exported."""

    variant: Literal["int8", "fp32"] = field(default="int8", metadata={
        "help": "Which export to serve: int8 (falls back to fp32 for a student without one) or fp32."})
    models: list[str] = field(default_factory=list, metadata={
        "help": "Students to serve (names under export/onnx/); empty serves all."})
    host: str = field(default="127.0.0.1", metadata={
        "help": "Address to listen on (0.0.0.0 to serve other machines)."})
    port: int = field(default=7860, metadata={"help": "Port to listen on (the next free one if taken)."})
    share: bool = field(default=False, metadata={"help": "Open a public gradio.live link (needs the internet)."})
    max_chars: int = field(default=1000, metadata={"help": "Longest accepted input, in characters per box."})
    max_length: int = field(default=128, metadata={"help": "Tokens fed to the model (longer input is truncated)."})
    concurrency_limit: int = field(default=4, metadata={"help": "Requests computed at once; the rest wait in the queue."})
    max_queue: int = field(default=64, metadata={"help": "Requests allowed to wait; more are refused as busy."})
    title: str = field(default="", metadata={"help": "Page title (default: derived from the run)."})

    def __post_init__(self):
        if not 0 < self.port < 65536:
            raise ValueError(f"serve.port must be a TCP port (1-65535), got {self.port}")
        if self.max_chars < 1 or self.max_length < 8:
            raise ValueError("serve.max_chars must be >= 1 and serve.max_length >= 8")
        if self.concurrency_limit < 1 or self.max_queue < 1:
            raise ValueError("serve.concurrency_limit and serve.max_queue must be >= 1")


# ---------------------------------------------------------------------------------------------
# loading models


def parse_models(spec: str) -> dict[str, str]:
    """``"a=path/or/repo,b=owner/repo/subfolder,owner/repo"`` -> {name: reference}."""
    out: dict[str, str] = {}
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        name, sep, ref = item.partition("=")
        if not sep:
            name, ref = Path(item.rstrip("/")).name, item
        out[name.strip()] = ref.strip()
    return out


def resolve_model(ref: str) -> Path:
    """A local folder, or a Hub model repo ``owner/name`` (optionally ``owner/name/sub/folder``)."""
    path = Path(ref).expanduser()
    if path.exists():
        return path
    parts = ref.strip("/").split("/")
    if len(parts) < 2 or ref.startswith((".", "/", "~")):
        raise HfaugError(f"model '{ref}' is neither a local folder nor a Hub repo id (owner/name)")
    from huggingface_hub import snapshot_download

    repo_id, sub = "/".join(parts[:2]), "/".join(parts[2:])
    patterns = [f"{sub}/*" if sub else "*", "config.json"]
    try:
        local = snapshot_download(repo_id, allow_patterns=patterns)
    except Exception as e:  # offline, missing repo, no access: say which
        raise HfaugError(f"cannot download model '{repo_id}' from the Hub: {type(e).__name__}: {e}") from None
    return Path(local) / sub if sub else Path(local)


def load_models(models: str | Mapping[str, str | Path], *, max_length: int = 128) -> dict[str, "OnnxClassifier"]:
    """ONNX classifiers by display name, from ``"name=ref,..."`` or a {name: ref} mapping."""
    from .predict import OnnxClassifier

    refs = parse_models(models) if isinstance(models, str) else dict(models)
    if not refs:
        raise HfaugError("no models to serve: give name=folder_or_repo pairs (HFAUG_MODELS on a Space)")
    out = {}
    for name, ref in refs.items():
        folder = resolve_model(str(ref))
        try:
            out[name] = OnnxClassifier(folder, max_length=max_length)
        except (FileNotFoundError, ImportError) as e:
            raise HfaugError(f"model '{name}': {e}") from None
        logger.info("loaded %s from %s (%s)", name, folder, ", ".join(out[name].labels))
    return out


# ---------------------------------------------------------------------------------------------
# the app


def is_pair_model(labels: list[str]) -> bool:
    """NLI students take a premise and a hypothesis; everything else one text."""
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


def build_demo(models: Mapping[str, "OnnxClassifier"], *, pair: bool | None = None, max_chars: int = 1000,
               concurrency_limit: int = 4, max_queue: int = 64, title: str = "",
               examples: Mapping[str, list[list[str]]] | None = None) -> "gr.Blocks":
    """The Gradio app over ``models`` (display name -> classifier), queue configured, not launched."""
    try:
        import gradio as gr
    except ImportError as e:
        raise HfaugError(f"serving needs gradio ({e}); pip install 'hfaug[serve]'") from None

    if not models:
        raise HfaugError("build_demo: no models to serve")
    names = list(models)
    labels = models[names[0]].labels
    for name in names[1:]:
        if set(models[name].labels) != set(labels):
            raise HfaugError(f"models '{names[0]}' and '{name}' predict different labels "
                             f"({labels} vs {models[name].labels}); serve one task per app")
    pair = is_pair_model(labels) if pair is None else pair
    task = "nli" if pair else "sentiment" if set(labels) == {"negative", "neutral", "positive"} else None
    examples = examples if examples is not None else EXAMPLES.get(task or "", {})
    title = title or ("Natural language inference" if pair else "Text classification") + " in many languages"

    def scores(name: str, texts: list[str], pairs: list[str] | None) -> dict[str, float]:
        if name not in models:
            raise gr.Error(f"Unknown model '{name}'; choose one of: {', '.join(names)}.", title="Unknown model")
        probs = models[name].predict_proba(texts, pairs)[0]
        return {label: float(p) for label, p in zip(models[name].labels, probs)}

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
            with gr.Column(scale=2):
                output = gr.Label(num_top_classes=len(labels), label="Label probabilities", elem_id="prediction")
        for language, rows in examples.items():
            gr.Examples(rows, inputs=boxes, label=f"{language} examples", cache_examples=False)
        gr.on([button.click, *[b.submit for b in boxes]], predict_pair if pair else predict_text,
              inputs=[*boxes, model], outputs=output, api_name="predict")
    demo.queue(default_concurrency_limit=concurrency_limit, max_size=max_queue)
    return demo


def launch(demo: "gr.Blocks", *, host: str = "127.0.0.1", port: int | None = None, share: bool = False,
           block: bool = False, quiet: bool = True) -> str:
    """Start the server (no telemetry, no share link unless asked); returns the local URL."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    demo.launch(server_name=host, server_port=port, share=share, prevent_thread_lock=True, quiet=quiet,
                show_error=False)
    if block:
        demo.block_thread()
    return demo.local_url


# ---------------------------------------------------------------------------------------------
# on a run


def exported_students(run: "Run", config: ServeConfig) -> dict[str, Path]:
    """The ONNX folders of a run's students, by name, in the variant asked for."""
    from .export import INT8_DIR, ONNX_DIR

    root = run.require("export")
    fp32 = {p.parent.name: p.parent for p in sorted((root / ONNX_DIR).glob("*/model.onnx"))}
    if not fp32:
        raise HfaugError(f"serve: the export stage of {run.root} wrote no ONNX students; rerun `hfaug export`")
    names = config.models or list(fp32)
    for name in names:
        if name not in fp32:
            raise HfaugError(f"serve.models: no exported student '{name}' in {root / ONNX_DIR}{did_you_mean(name, fp32)}")
    out = {}
    for name in names:
        int8 = root / INT8_DIR / name
        if config.variant == "int8" and (int8 / "model.onnx").is_file():
            out[name] = int8
        else:
            if config.variant == "int8":
                logger.warning("serve: student '%s' has no int8 export; serving fp32", name)
            out[name] = fp32[name]
    return out


def serve(run: "Run", config: ServeConfig | None = None, *, block: bool = True) -> "gr.Blocks":
    """Launch the app on a run's exported students; returns the running demo (``demo.local_url``)."""
    config = config or ServeConfig()
    folders = exported_students(run, config)
    models = load_models({n: str(p) for n, p in folders.items()}, max_length=config.max_length)
    demo = build_demo(models, pair=run.task.is_pair, max_chars=config.max_chars,
                      concurrency_limit=config.concurrency_limit, max_queue=config.max_queue,
                      title=config.title)
    demo.hfaug_models, demo.hfaug_pair = folders, run.task.is_pair  # for the CLI's summary
    launch(demo, host=config.host, port=config.port, share=config.share, block=block)
    return demo


def describe(demo: Any) -> str:
    """What ``hfaug serve`` prints once the server is up."""
    folders = getattr(demo, "hfaug_models", {})
    first = next(iter(folders), "<model>")
    inputs = "<premise>, <hypothesis>" if getattr(demo, "hfaug_pair", False) else "<text>"
    lines = [f"serving {len(folders)} student(s): " + ", ".join(f"{n} ({p})" for n, p in folders.items()),
             f"  browser: {demo.local_url}"]
    if getattr(demo, "share_url", None):
        lines.append(f"  public:  {demo.share_url}")
    lines.append(f"  API:     gradio_client.Client({demo.local_url!r}).predict({inputs}, {first!r}, api_name='/predict')")
    lines.append("press Ctrl+C to stop")
    return "\n".join(lines)

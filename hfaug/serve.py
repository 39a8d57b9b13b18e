"""Serve exported students in a Gradio app: ``hfaug serve`` runs the Space's own program.

The predictor (onnxruntime + tokenizers), the model references and the app live in
spaces/hfaug_space.py, so the Space deploys from its folder with published packages only; this
module loads that one file and adds what a run needs (its exported students, the CLI's summary).

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

import importlib.util
import logging
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal

from .errors import HfaugError, did_you_mean
from .extras import missing
from .layout import INT8_DIR, ONNX_DIR, ONNX_FILE, export_dirs
from .space_info import student_info

if TYPE_CHECKING:
    import gradio as gr

    from .runs import Run

logger = logging.getLogger(__name__)



def _space_module() -> ModuleType:
    """spaces/hfaug_space.py, the Space's own program: one file serves the Space and ``hfaug serve``."""
    if "hfaug_space" in sys.modules:
        return sys.modules["hfaug_space"]
    here = Path(__file__).resolve().parent
    # a checkout: <repo>/spaces/; an installed wheel ships the same file as hfaug/spaces/
    for path in (here.parent / "spaces" / "hfaug_space.py", here / "spaces" / "hfaug_space.py"):
        if path.is_file():
            spec = importlib.util.spec_from_file_location("hfaug_space", path)
            module = importlib.util.module_from_spec(spec)
            sys.modules["hfaug_space"] = module
            spec.loader.exec_module(module)
            return module
    raise HfaugError("serving needs spaces/hfaug_space.py, which this install of hfaug lacks; reinstall hfaug")


space = _space_module()
EXAMPLES = space.EXAMPLES
NLI_LABELS = space.NLI_LABELS
is_pair_model = space.is_pair_model
check_text = space.check_text
parse_models = space.parse_models


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
# loading models and the app (the Space's code, its errors as hfaug's one-line errors)


def load_models(models: str | Mapping[str, str | Path], *, max_length: int = 128) -> dict[str, Any]:
    """ONNX predictors by display name, from ``"name=ref,..."`` or a {name: ref} mapping."""
    try:
        return space.load_models({k: str(v) for k, v in models.items()} if isinstance(models, Mapping) else models,
                                 max_length=max_length)
    except space.ModelError as e:
        raise HfaugError(str(e)) from None
    except ImportError as e:
        raise missing("serving", e, prefer="serve") from None


def build_demo(models: Mapping[str, Any], **options: Any) -> "gr.Blocks":
    """The Gradio app over ``models`` (display name -> predictor), queue configured, not launched."""
    try:
        import gradio  # noqa: F401
    except ImportError as e:
        raise missing("serving", e, prefer="serve") from None
    try:
        return space.build_demo(models, **options)
    except space.ModelError as e:
        raise HfaugError(str(e)) from None


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
    root = run.require("export")
    fp32 = export_dirs(root, ONNX_DIR)
    if not fp32:
        raise HfaugError(f"serve: the export stage of {run.root} wrote no ONNX students; rerun `hfaug export`")
    names = config.models or list(fp32)
    for name in names:
        if name not in fp32:
            raise HfaugError(f"serve.models: no exported student '{name}' in {root / ONNX_DIR}{did_you_mean(name, fp32)}")
    out = {}
    for name in names:
        int8 = root / INT8_DIR / name
        if config.variant == "int8" and (int8 / ONNX_FILE).is_file():
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
    for name, predictor in models.items():
        # the run's current view (evaluate's metrics, the published repos), not only what export wrote
        predictor.info = {**predictor.info, **student_info(run, name)}
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

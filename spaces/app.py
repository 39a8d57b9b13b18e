"""A Hugging Face Space serving hfaug students (ONNX): deploy this folder as it is.

Models come from ``HFAUG_MODELS`` (a Space variable), ``name=reference`` pairs separated by
commas, where a reference is a Hub model repo (``owner/name``, or ``owner/name/sub/folder`` for an
ONNX export inside a repo) or a local folder::

    HFAUG_MODELS="hindi=my-org/hfaug-xnli-hi-divk/onnx/int8,swahili=my-org/hfaug-xnli-sw-divk/onnx/int8"

Without it, every ``models/<name>/model.onnx`` next to this file is served (copy the folders of
``<run>/export/int8/`` there). Other variables: ``HFAUG_MAX_CHARS`` (input limit per box, 1000),
``HFAUG_CONCURRENCY`` (requests computed at once, 2 on a free CPU Space), ``HFAUG_TITLE``.

Locally, ``hfaug serve --config RECIPE`` runs the same app on a run's exported students.
"""

from __future__ import annotations

import os
from pathlib import Path

from hfaug.serve import build_demo, load_models

HERE = Path(__file__).resolve().parent


def model_spec() -> str:
    spec = os.environ.get("HFAUG_MODELS", "").strip()
    if spec:
        return spec
    local = sorted(p.parent for p in (HERE / "models").glob("*/model.onnx"))
    return ",".join(f"{p.name}={p}" for p in local)


demo = build_demo(
    load_models(model_spec(), max_length=int(os.environ.get("HFAUG_MAX_LENGTH", "128"))),
    max_chars=int(os.environ.get("HFAUG_MAX_CHARS", "1000")),
    concurrency_limit=int(os.environ.get("HFAUG_CONCURRENCY", "2")),
    title=os.environ.get("HFAUG_TITLE", ""),
)

if __name__ == "__main__":
    # a Space sets GRADIO_SERVER_NAME / GRADIO_SERVER_PORT; locally this serves on 127.0.0.1:7860
    demo.launch()

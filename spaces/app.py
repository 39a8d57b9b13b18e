"""A Hugging Face Space serving hfaug students (ONNX): deploy this folder as it is.

Models come from ``HFAUG_MODELS`` (a Space variable), ``name=reference`` pairs separated by
commas; a reference is a model repo written by ``hfaug publish-model`` (``owner/name``, pinned
with ``@v2``, the fp32 model with ``:fp32``; int8 is the default), ``owner/name/sub/folder`` for an
ONNX export elsewhere in a repo, or a local folder::

    HFAUG_MODELS="hindi=my-org/hfaug-xnli-divk@v2,swahili=my-org/hfaug-xnli-sw-divk@v2:fp32"

Without it, every ONNX model under ``models/<name>/`` next to this file is served. Other
variables: ``HFAUG_MAX_CHARS`` (input limit per box, 1000), ``HFAUG_CONCURRENCY`` (requests
computed at once, 2 on a free CPU Space), ``HFAUG_MAX_LENGTH``, ``HFAUG_TITLE``.

Everything else is in hfaug_space.py beside this file (no hfaug install needed); locally,
``hfaug serve --config RECIPE`` runs the same app on a run's exported students.
"""

from __future__ import annotations

from pathlib import Path

from hfaug_space import demo_from_env

demo = demo_from_env(Path(__file__).resolve().parent)

if __name__ == "__main__":
    # a Space sets GRADIO_SERVER_NAME / GRADIO_SERVER_PORT; locally this serves on 127.0.0.1:7860
    demo.launch()

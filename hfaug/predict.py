"""Class probabilities from an exported (ONNX) student with onnxruntime: used by evaluate and the Space.

Light on purpose: onnxruntime, numpy and the model's own tokenizer (``AutoTokenizer``), no torch,
so a Space serving a student installs a few hundred MB rather than a deep-learning framework.

    clf = OnnxClassifier("runs/demo/export/int8/student")
    clf.labels                                  # ["negative", "neutral", "positive"]
    clf.predict_proba(["The room was lovely."]) # array of shape (1, 3), rows sum to 1
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .extras import install_hint
from .layout import ONNX_FILE

logger = logging.getLogger(__name__)


def softmax(logits: np.ndarray) -> np.ndarray:
    logits = logits.astype(np.float64)
    logits -= logits.max(axis=-1, keepdims=True)  # no overflow on large logits
    exp = np.exp(logits)
    return (exp / exp.sum(axis=-1, keepdims=True)).astype(np.float32)


def read_labels(path: str | Path) -> list[str]:
    """Label names in index order, from the ``id2label`` of a model folder's config.json."""
    config = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
    id2label = config.get("id2label") or {}
    if not id2label:
        raise ValueError(f"{path}/config.json has no id2label: export a model with a classification head")
    return [id2label[k] for k in sorted(id2label, key=int)]


def length_sorted_batches(tokenizer: Any, texts: Sequence[str], pairs: Sequence[str] | None, *,
                          max_length: int, batch_size: int) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
    """Yield ``(row indices, numpy encodings)`` for batches of similar length, longest first.

    Each row is tokenized once (truncated to ``max_length``; pairs: longest side first) and each
    batch is padded only to its own longest row, so sorting by length keeps padding (wasted
    compute) small. Longest first: the first batch shows at once whether memory suffices. Shared
    by the ONNX predictor, the PyTorch classifier (label, evaluate) and the export parity check,
    so every runtime sees exactly the same inputs.
    """
    if pairs is not None and len(pairs) != len(texts):
        raise ValueError(f"got {len(texts)} texts but {len(pairs)} pairs; give one pair per text")
    args = (list(texts),) if pairs is None else (list(texts), list(pairs))
    enc = tokenizer(*args, truncation=True, max_length=max_length)
    keys = [k for k in enc if k in ("input_ids", "attention_mask", "token_type_ids")]
    # pad() on pre-tokenized rows is the point here (tokenize once, pad per sorted batch)
    getattr(tokenizer, "deprecation_warnings", {})["Asking-to-pad-a-fast-tokenizer"] = True
    lengths = np.array([len(ids) for ids in enc["input_ids"]])
    order = np.argsort(-lengths, kind="stable")
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        batch = tokenizer.pad([{k: enc[k][i] for k in keys} for i in idx], return_tensors="np")
        yield idx, {k: np.asarray(v, dtype=np.int64) for k, v in batch.items()}


class OnnxClassifier:
    """An exported sequence classifier: ``labels`` and ``predict_proba(texts, pairs=None)``.

    ``path`` is a folder holding ``model.onnx``, ``config.json`` (id2label) and the tokenizer, as
    written by ``hfaug export`` (or any Optimum ONNX export of a ``*ForSequenceClassification``).
    """

    def __init__(self, path: str | Path, max_length: int = 128, batch_size: int = 32,
                 providers: list[str] | None = None):
        try:
            import onnxruntime as ort
            from transformers import AutoTokenizer
        except ImportError as e:
            raise ImportError(f"ONNX inference needs onnxruntime and transformers ({e}); "
                              f"{install_hint(e.name or 'onnxruntime', prefer='export')}") from e

        self.path = Path(path)
        model_file = self.path / ONNX_FILE if self.path.is_dir() else self.path
        if not model_file.is_file():
            raise FileNotFoundError(f"no {ONNX_FILE} in {self.path}: export the student first (hfaug export)")
        folder = model_file.parent
        self.max_length = max_length
        self.batch_size = batch_size
        self.labels: list[str] = read_labels(folder)
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
        # a fast tokenizer sets truncation/padding on its Rust state per call, so concurrent callers
        # (Gradio's worker threads) would collide ("Already borrowed"); the ONNX session is thread-safe
        self._tokenizer_lock = threading.Lock()
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(model_file), options,
                                            providers=providers or ["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_name = self.session.get_outputs()[0].name  # "logits" in Optimum exports

    def __repr__(self) -> str:
        return f"OnnxClassifier({str(self.path)!r}, labels={self.labels})"

    def predict_proba(self, texts: list[str], pairs: list[str] | None = None) -> np.ndarray:
        """Probabilities of shape ``(len(texts), len(labels))`` in input order (``pairs``: NLI hypotheses)."""
        out = np.zeros((len(texts), len(self.labels)), dtype=np.float32)
        if not len(texts):
            return out
        with self._tokenizer_lock:
            batches = list(length_sorted_batches(self.tokenizer, texts, pairs, max_length=self.max_length,
                                                 batch_size=self.batch_size))
        for idx, enc in batches:
            feed = {}
            for name in self.input_names:
                if name in enc:
                    feed[name] = enc[name]
                elif name == "token_type_ids":  # exported with segment ids the tokenizer does not emit
                    feed[name] = np.zeros_like(enc["input_ids"])
                else:
                    raise ValueError(f"{self.path}: the ONNX model wants input '{name}' the tokenizer does not give")
            logits = self.session.run([self.output_name], feed)[0]
            out[idx] = softmax(logits)
        return out

    def predict(self, texts: list[str], pairs: list[str] | None = None) -> list[str]:
        """The most probable label name per text."""
        return [self.labels[i] for i in self.predict_proba(texts, pairs).argmax(axis=-1)]

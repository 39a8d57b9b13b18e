"""Batched classifier inference shared by ``label``, ``evaluate`` and ``distill``.

:class:`TorchClassifier` tokenizes every row once, sorts the rows by token length and pads each
batch only to its own longest row (dynamic padding): on long-tailed text lengths that removes most
of the padding a fixed-order batcher computes on. Rows come back in input order.

:func:`predict_proba_distributed` splits rows across the processes of ``accelerate launch`` (one
slice per process, GPU per process when present), gathers the slices and puts them back in the
original order, so one process and N processes give the same output.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import schema
from .errors import HfaugError
from .extras import missing
from .layout import ONNX_FILE

if TYPE_CHECKING:
    import datasets
    import numpy as np

    from .tasks import Task

logger = logging.getLogger(__name__)


def check_tokenizer(tokenizer, model, where: str) -> None:
    """Refuse a tokenizer that emits ids the model has no embedding for (a silent index error on
    CPU, a device-side assert on GPU, or garbage if the ids happen to fit)."""
    embeddings = model.get_input_embeddings()
    size = getattr(embeddings, "num_embeddings", None)
    if size is not None and len(tokenizer) > size:
        raise HfaugError(
            f"{where}: the tokenizer has {len(tokenizer)} tokens but the model has only {size} embeddings; "
            "the tokenizer does not belong to this model (save the model's own tokenizer with it)"
        )


def process_state():
    """accelerate's PartialState for this process. On a machine without a GPU it is created with
    ``cpu=True``: accelerate only sets up a multi-process CPU group (gloo) when asked for the CPU,
    so ``accelerate launch --multi_gpu --num_processes N`` (torchrun) on CPU gives N real ranks."""
    import torch
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available())


def default_device(device=None):
    """The device to run on: the given one, else this process's accelerator, else CPU."""
    import torch

    if device is not None:
        return torch.device(device)
    try:
        state = process_state()
        if state.num_processes > 1:
            return state.device
    except Exception:  # accelerate unusable here: fall back to plain torch
        pass
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class TorchClassifier:
    """A sequence classifier (any AutoModelForSequenceClassification folder or Hub id).

    ``labels`` are the model's label names in its own output order (config.id2label); use
    :func:`reorder_to_task` to put the columns in a task's order.
    """

    def __init__(self, path, max_length: int = 128, batch_size: int = 32, device=None):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from .config import resolve

        self.path = str(path)
        ref = resolve(self.path)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(ref)
            self.model = AutoModelForSequenceClassification.from_pretrained(ref)
        except OSError as e:
            raise HfaugError(f"cannot load classifier '{self.path}': {str(e).splitlines()[0]}") from None
        check_tokenizer(self.tokenizer, self.model, f"classifier '{self.path}'")
        self.device = default_device(device)
        self.model.to(self.device).eval()
        self.max_length = int(max_length)
        self.batch_size = int(batch_size)
        id2label = self.model.config.id2label
        self.labels: list[str] = [str(id2label[i]) for i in range(self.model.config.num_labels)]

    def predict_proba(self, texts: list[str], pairs: list[str] | None = None) -> "np.ndarray":
        """Softmax probabilities, one row per input row, in input order (float32)."""
        import numpy as np
        import torch
        from tqdm.auto import tqdm

        from .predict import length_sorted_batches

        texts = list(texts)
        out = np.zeros((len(texts), len(self.labels)), dtype=np.float32)
        if not texts:
            return out
        batches = length_sorted_batches(self.tokenizer, texts, pairs, max_length=self.max_length,
                                        batch_size=self.batch_size)
        total = -(-len(texts) // self.batch_size)
        with torch.inference_mode():
            for rows, enc in tqdm(batches, total=total, desc="classify", unit="batch", disable=total < 10,
                                  leave=False):
                logits = self.model(**{k: torch.from_numpy(v).to(self.device) for k, v in enc.items()}).logits
                out[rows] = torch.softmax(logits.float(), dim=-1).cpu().numpy()
        return out


def load_classifier(path, **kw):
    """An ONNX classifier (:class:`hfaug.predict.OnnxClassifier`) when the folder holds a
    ``model.onnx``, else a :class:`TorchClassifier`. Both have ``labels`` and ``predict_proba``."""
    from .config import resolve

    folder = Path(str(resolve(str(path))))
    if folder.is_dir() and (folder / ONNX_FILE).is_file():
        try:
            from .predict import OnnxClassifier
        except ImportError as e:
            raise missing(f"'{path}' is an ONNX model; ONNX inference", e, prefer="export") from None
        return OnnxClassifier(str(folder), **kw)
    return TorchClassifier(path, **kw)


def reorder_to_task(probs: "np.ndarray", model_labels, task: "Task") -> "np.ndarray":
    """Columns of ``probs`` (in ``model_labels`` order) put in ``task.labels`` order, by name."""
    import numpy as np

    model_labels = [str(x) for x in model_labels]
    if sorted(model_labels) != sorted(task.labels):
        raise HfaugError(
            f"the model's labels {model_labels} do not match the {task.name} labels {list(task.labels)}; "
            "train it with the task's labels (id2label) or use a model made for this task"
        )
    index = [model_labels.index(name) for name in task.labels]
    return np.asarray(probs)[:, index]


def task_inputs(dataset: "datasets.Dataset", task: "Task") -> tuple[list[str], list[str] | None]:
    """(texts, pairs) for a task: text, or premise + hypothesis."""
    texts = schema.column_values(dataset, task.text_columns[0])
    pairs = schema.column_values(dataset, task.text_columns[1]) if task.is_pair else None
    return texts, pairs


def predict_proba_distributed(classifier, texts: list[str], pairs: list[str] | None = None) -> "np.ndarray":
    """``classifier.predict_proba`` over all processes of ``accelerate launch``; every process
    returns the full array in input order. One process: a plain call."""
    import numpy as np
    from accelerate.utils import gather_object

    state = process_state()
    if state.num_processes == 1:
        return classifier.predict_proba(texts, pairs)
    n = len(texts)
    with state.split_between_processes(list(range(n))) as mine:
        part_texts = [texts[i] for i in mine]
        part_pairs = [pairs[i] for i in mine] if pairs is not None else None
        probs = (classifier.predict_proba(part_texts, part_pairs) if mine
                 else np.zeros((0, len(classifier.labels)), np.float32))
        # gather_object concatenates the per-process lists, so pair each row with its index
        gathered = gather_object([(i, row.tolist()) for i, row in zip(mine, probs)])
    out = np.zeros((n, len(classifier.labels)), dtype=np.float32)
    seen = np.zeros(n, dtype=bool)
    for i, row in gathered:
        out[i] = row
        seen[i] = True
    if not seen.all():  # would mean a lost slice: never hand back zeros as probabilities
        raise RuntimeError(f"distributed inference lost {int((~seen).sum())} of {n} rows")
    return out


def score(classifier, dataset: "datasets.Dataset", task: "Task", *,
          with_predictions: bool = False) -> dict[str, Any]:
    """Accuracy and macro-F1 of ``classifier`` on a labelled dataset (contract columns); with
    ``with_predictions`` also ``predictions``, the predicted label id of every row (for paired
    comparisons of two models on the same rows)."""
    import numpy as np
    from sklearn.metrics import accuracy_score, f1_score

    texts, pairs = task_inputs(dataset, task)
    gold = np.asarray(list(dataset["label"]))
    if len(gold) == 0:
        return {"accuracy": float("nan"), "macro_f1": float("nan"), "n": 0,
                **({"predictions": []} if with_predictions else {})}
    probs = reorder_to_task(classifier.predict_proba(texts, pairs), classifier.labels, task)
    pred = probs.argmax(axis=1)
    return {
        "accuracy": float(accuracy_score(gold, pred)),
        "macro_f1": float(f1_score(gold, pred, average="macro")),
        "n": int(len(gold)),
        **({"predictions": pred.astype(int).tolist()} if with_predictions else {}),
    }

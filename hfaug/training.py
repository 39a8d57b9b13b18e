"""What the Trainer-based stages (teacher, distill, adapt) share."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import HfaugError

if TYPE_CHECKING:
    from .tasks import Task


def load_for_fine_tuning(ref: str, task: "Task", where: str, *, seed: int, revision: str | None = None,
                         trust_remote_code: bool = False):
    """(model, tokenizer) to fine-tune ``ref`` on ``task``: the pretrained encoder with a fresh head
    named with the task's labels. The head's initialisation is seeded, so the same recipe trains
    the same model in any process; a tokenizer that does not fit the model is refused."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, set_seed

    from .config import resolve
    from .inference import check_tokenizer

    path = resolve(ref)
    kwargs = {"revision": revision} if revision else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code, **kwargs)
        set_seed(seed)
        model = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=task.num_labels, id2label=task.id2label, label2id=task.label2id,
            ignore_mismatched_sizes=True, trust_remote_code=trust_remote_code, **kwargs)
    except OSError as e:
        raise HfaugError(f"{where}: cannot load model '{ref}': {str(e).splitlines()[0]}") from None
    check_tokenizer(tokenizer, model, f"{where} '{ref}'")
    return model, tokenizer


def accuracy(eval_pred) -> dict[str, float]:
    """The Trainer's ``compute_metrics`` for model selection: dev accuracy."""
    import numpy as np

    logits, labels = eval_pred
    logits = logits[0] if isinstance(logits, tuple) else logits
    return {"accuracy": float((np.argmax(logits, axis=-1) == labels).mean())}


def quiet_progress(trainer) -> None:
    """Keep the Trainer's progress bars but drop the log dicts it prints under them.

    The stages log their own one-line results (dev accuracy per epoch, losses) and keep the full
    log history in their outputs, so the printed dicts only bury the run's summary.
    """
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    class _Progress(ProgressCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            pass

    trainer.remove_callback(PrinterCallback)  # with disable_tqdm it prints every log dict
    if any(isinstance(cb, ProgressCallback) for cb in trainer.callback_handler.callbacks):
        trainer.remove_callback(ProgressCallback)
        trainer.add_callback(_Progress())

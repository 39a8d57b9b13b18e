"""Teacher stage: fine-tune a multilingual encoder on the labelled source data (English or translated).

Input datasets: ``source`` ``train``/``dev``, or with ``train_on: translated`` (always in the
recipe's ``translated-teacher`` setting) the ``translate-source`` outputs ``train-<lang>``/``dev-<lang>``.
Input columns: text (or premise + hypothesis), label.

Output folder (no dataset)::

    checkpoints/epoch-<n>/   model + tokenizer after each epoch (weights only, no optimizer state);
                             the amb/easy strategies score the candidates with every one of them
    best/                    the best evaluation by dev accuracy (every eval_steps and each epoch end)
    teacher.json             {"epochs": [...], "best_epoch": n, "dev_accuracy": {...}, "max_length": ...}

Model selection reads only the source (or translated source) dev set, never target data.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from . import schema
from .errors import HfaugError, did_you_mean
from .layout import BEST_DIR, TEACHER_JSON, TRAINER_DIR, checkpoint_path
from .runs import StageContext, StageResult, write_json_atomic
from .training import accuracy, load_for_fine_tuning, quiet_progress

if TYPE_CHECKING:
    import datasets

    from .tasks import Task

logger = logging.getLogger(__name__)


@dataclass
class TeacherConfig:
    """How the teacher is trained. Defaults are the paper's (arXiv 2407.10582, "Teacher and student")."""

    model: str = field(default="FacebookAI/xlm-roberta-large", metadata={
        "help": "Encoder to fine-tune: a Hub id, a local folder or hfaug://tiny/encoder."})
    train_on: Literal["source", "translated"] = field(default="source", metadata={
        "help": "'source': the English source data; 'translated': the translate-source outputs."})
    languages: list[str] = field(default_factory=list, metadata={
        "help": "With train_on: translated, the languages to train on (empty: every translated language)."})
    epochs: int = field(default=15, metadata={"help": "Training epochs; one checkpoint is kept per epoch."})
    learning_rate: float = field(default=5e-6, metadata={"help": "Peak learning rate (AdamW, linear decay)."})
    batch_size: int = field(default=32, metadata={"help": "Rows per device per step."})
    gradient_accumulation_steps: int = field(default=4, metadata={"help": "Steps accumulated per update."})
    max_length: int = field(default=128, metadata={
        "help": "Max tokens per row (label uses the same length when scoring candidates)."})
    eval_steps: int | None = field(default=100, metadata={
        "help": "Evaluate on dev every this many updates (and at each epoch end); null: each epoch end only."})
    eval_batch_size: int = field(default=64, metadata={"help": "Rows per evaluation batch."})
    seed: int | None = field(default=None, metadata={"help": "Training seed (default: the run's seed)."})
    training_args: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "Any other transformers TrainingArguments option, e.g. {bf16: true, warmup_ratio: 0.1}."})

    def __post_init__(self):
        for name in ("epochs", "batch_size", "gradient_accumulation_steps", "max_length", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"teacher.{name} must be at least 1, got {getattr(self, name)}")
        if self.eval_steps is not None and self.eval_steps < 1:
            raise ValueError(f"teacher.eval_steps must be at least 1 or null, got {self.eval_steps}")
        if self.learning_rate <= 0:
            raise ValueError(f"teacher.learning_rate must be positive, got {self.learning_rate}")
        if self.languages and self.train_on != "translated":
            raise ValueError("teacher.languages applies only with train_on: translated")


# ---------------------------------------------------------------------------------------------
# data


def _translated_splits(ctx: StageContext, languages: list[str]) -> tuple["datasets.Dataset", "datasets.Dataset"]:
    import datasets

    names = ctx.run.outputs("translate-source")
    available = sorted({n.split("-", 1)[1] for n in names if n.startswith(("train-", "dev-"))})
    if not available:
        raise HfaugError("teacher.train_on is 'translated' but the translate-source stage wrote no train-<lang> "
                         "datasets; add a translate section with source: true")
    chosen = languages or available
    for lang in chosen:
        if lang not in available:
            raise HfaugError(f"teacher.languages: no translated source for '{lang}'{did_you_mean(lang, available)}")
    trains = [ctx.input("translate-source", f"train-{lang}") for lang in chosen]
    devs = [ctx.input("translate-source", f"dev-{lang}") for lang in chosen if f"dev-{lang}" in names]
    train = datasets.concatenate_datasets(trains)
    dev = datasets.concatenate_datasets(devs) if devs else train.select([])
    return train, dev


# ---------------------------------------------------------------------------------------------
# training


def _training_arguments(config: TeacherConfig, work_dir: Path, seed: int, has_dev: bool):
    import torch
    from transformers import TrainingArguments

    kwargs: dict[str, Any] = dict(
        output_dir=str(work_dir),
        num_train_epochs=config.epochs,
        learning_rate=config.learning_rate,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.eval_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        # the paper's optimiser: AdamW eps 1e-8, no weight decay, linear decay without warm-up
        adam_epsilon=1e-8, weight_decay=0.0, lr_scheduler_type="linear", warmup_steps=0, max_grad_norm=1.0,
        eval_strategy=("steps" if config.eval_steps else "epoch") if has_dev else "no",
        eval_steps=config.eval_steps,
        # checkpoints are written by _CheckpointCallback (weights only, our folder layout)
        save_strategy="no",
        logging_steps=max(1, config.eval_steps or 50),
        report_to="none",
        dataloader_pin_memory=torch.cuda.is_available(),
        seed=seed,
        data_seed=seed,
    )
    valid = {f.name for f in dataclasses.fields(TrainingArguments)}
    for key in config.training_args:
        if key not in valid:
            raise HfaugError(f"teacher.training_args: '{key}' is not a TrainingArguments option"
                             f"{did_you_mean(key, valid)}")
    kwargs.update(config.training_args)
    try:
        return TrainingArguments(**kwargs)
    except (ValueError, TypeError) as e:
        raise HfaugError(f"teacher.training_args: {str(e).splitlines()[0]}") from None


def _checkpoint_callback(out_dir: Path, tokenizer):
    from transformers import TrainerCallback

    class _CheckpointCallback(TrainerCallback):
        """Saves weights after every epoch and whenever dev accuracy improves (best/)."""

        def __init__(self):
            self.epoch = 0
            self.pending_epoch: int | None = None
            self.epochs: list[dict] = []
            self.evaluations: list[dict] = []
            self.best: dict | None = None

        def on_epoch_end(self, args, state, control, model=None, **kwargs):
            self.epoch += 1
            rel = checkpoint_path(self.epoch)
            if state.is_world_process_zero:
                model.save_pretrained(out_dir / rel)
                tokenizer.save_pretrained(out_dir / rel)
            self.epochs.append({"epoch": self.epoch, "step": state.global_step, "path": rel, "dev_accuracy": None})
            if args.eval_strategy != "no":
                control.should_evaluate = True  # every epoch checkpoint gets its dev accuracy
                self.pending_epoch = self.epoch
            elif state.is_world_process_zero:
                # no dev data: nothing to select on, the last epoch is "best"
                model.save_pretrained(out_dir / BEST_DIR)
                tokenizer.save_pretrained(out_dir / BEST_DIR)
                self.best = {"epoch": self.epoch, "step": state.global_step, "accuracy": None}
            return control

        def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):
            dev = float(metrics["eval_accuracy"])
            epoch = self.pending_epoch if self.pending_epoch is not None else round(state.epoch or 0.0, 3)
            self.evaluations.append({"step": state.global_step, "epoch": epoch, "accuracy": dev})
            if self.pending_epoch is not None:
                self.epochs[self.pending_epoch - 1]["dev_accuracy"] = dev
                self.pending_epoch = None
            if self.best is None or dev > self.best["accuracy"]:
                self.best = {"epoch": epoch, "step": state.global_step, "accuracy": dev}
                if state.is_world_process_zero:
                    model.save_pretrained(out_dir / BEST_DIR)
                    tokenizer.save_pretrained(out_dir / BEST_DIR)
            logger.info("teacher: step %d epoch %s dev accuracy %.4f (best %.4f)", state.global_step, epoch,
                        dev, self.best["accuracy"])

    return _CheckpointCallback()


def train_teacher(train: "datasets.Dataset", dev: "datasets.Dataset", config: TeacherConfig, task: "Task",
                  out_dir: str | Path, *, seed: int = 42, work_dir: str | Path | None = None) -> dict:
    """Fine-tune ``config.model`` on ``train``, select on ``dev``; writes the teacher folder
    (checkpoints/epoch-<n>/, best/, teacher.json) into ``out_dir`` and returns teacher.json's data.

    Empty-text rows are skipped and counted in the returned ``dropped``.
    """
    import datasets
    from transformers import DataCollatorWithPadding, Trainer

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dropped: Counter = Counter()
    prepared = {}
    for split, ds in (("train", train), ("dev", dev)):
        schema.require_columns(ds, [*task.text_columns, schema.LABEL], "teacher")
        ds, n_empty = schema.drop_empty(ds, task)
        if n_empty:
            dropped[f"{split}.empty_text"] += n_empty
        prepared[split] = (ds, schema.label_ids(ds, task, f"teacher {split} data"))
    if len(prepared["train"][0]) == 0:
        raise HfaugError("teacher: the training data has no rows with text")

    model, tokenizer = load_for_fine_tuning(config.model, task, "teacher.model", seed=seed)

    def encode(ds: "datasets.Dataset", labels: list[int]) -> "datasets.Dataset":
        cols = [list(ds[c]) for c in task.text_columns]
        enc = tokenizer(*cols, truncation=True, max_length=config.max_length)
        return datasets.Dataset.from_dict({**{k: enc[k] for k in enc}, "labels": labels})

    train_ds = encode(*prepared["train"])
    dev_ds = encode(*prepared["dev"]) if len(prepared["dev"][0]) else None
    if dev_ds is None:
        logger.warning("teacher: no dev rows; the last epoch is kept as best (no model selection)")

    work_dir = Path(work_dir) if work_dir else out_dir / ".trainer"
    args = _training_arguments(config, work_dir, seed, dev_ds is not None)
    callback = _checkpoint_callback(out_dir, tokenizer)
    trainer = Trainer(model=model, args=args, train_dataset=train_ds, eval_dataset=dev_ds,
                      data_collator=DataCollatorWithPadding(tokenizer), processing_class=tokenizer,
                      compute_metrics=accuracy if dev_ds is not None else None, callbacks=[callback])
    quiet_progress(trainer)
    trainer.train()

    best = callback.best or {}
    info = {
        "model": config.model,
        "task": task.name,
        "labels": list(task.labels),
        "max_length": config.max_length,
        "train_on": config.train_on,
        "languages": list(config.languages),
        "train_rows": len(train_ds),
        "dev_rows": len(dev_ds) if dev_ds is not None else 0,
        "epochs": callback.epochs,
        "evaluations": callback.evaluations,
        "best_epoch": best.get("epoch"),
        "best_step": best.get("step"),
        "best_dev_accuracy": best.get("accuracy"),
        "dev_accuracy": {str(e["epoch"]): e["dev_accuracy"] for e in callback.epochs},
        "dropped": dict(dropped),
    }
    if trainer.is_world_process_zero():
        write_json_atomic(out_dir / TEACHER_JSON, info)
    return info


def run(ctx: StageContext) -> StageResult:
    config: TeacherConfig = ctx.config
    task = ctx.task
    from .config import TRANSLATED_TEACHER

    # the translated-teacher setting trains on the translated source whatever train_on says
    translated = config.train_on == "translated" or ctx.recipe.setting == TRANSLATED_TEACHER
    if translated:
        train, dev = _translated_splits(ctx, config.languages)
    else:
        train, dev = ctx.input("source", "train"), ctx.input("source", "dev")
    seed = config.seed if config.seed is not None else ctx.seed
    if translated and config.train_on != "translated":
        config = dataclasses.replace(config, train_on="translated")  # teacher.json says what it was trained on
    info = train_teacher(train, dev, config, task, ctx.out_dir, seed=seed, work_dir=ctx.cache_dir / TRAINER_DIR)
    metrics = {
        "best_epoch": info["best_epoch"],
        "best_dev_accuracy": info["best_dev_accuracy"],
        "dev_accuracy": {f"epoch-{k}": v for k, v in info["dev_accuracy"].items()},
    }
    return StageResult(dropped=Counter(info["dropped"]), rows_in=len(train) + len(dev), metrics=metrics,
                       extra={"next": [f"teacher: best checkpoint in {ctx.run.stage_dir(ctx.stage) / BEST_DIR}"]})

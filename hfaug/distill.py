"""Distill stage: train multilingual students on the source data plus each selected synthetic subset.

A student is a fresh pretrained encoder (never the teacher). Its training rows are the gold source
rows (``is_gold=1``, cross-entropy on their label) and the selected synthetic rows (``is_gold=0``,
KL divergence from the teacher's soft label), shuffled together. The best epoch by dev accuracy
(source dev, or translated source dev) is kept.

Input datasets: ``source`` ``train``/``dev`` (or ``translate-source`` ``train-<lang>``/``dev-<lang>``
with ``train_on_translated_source``; in the recipe's ``translated-teacher`` setting always the
translated source of each subset's own language), and every ``select`` output named in ``subsets``.
Input columns: gold rows: text (or premise + hypothesis), label; synthetic rows: text (or premise
+ hypothesis), soft_label (``label_mode: soft``/``hard``) or prompt_label (``label_mode: prompt``).

Output folder (no dataset)::

    students/<subset>/    model + tokenizer (id2label = the task's labels), README.md (model card),
                          card.json (the card's data, rendered again by publish-model with the repo id),
                          metrics.json (dev accuracy, per-language test metrics, training details)

Pieces usable on their own: :func:`distill_loss` (the pure loss), :class:`SoftLabelTrainer`
(a ``transformers.Trainer`` overriding only ``compute_loss``), :class:`DistillConfig` (a
``transformers.TrainingArguments`` subclass, so every Trainer option works, including
``accelerate launch`` and DeepSpeed), :func:`mix` (gold + synthetic rows) and :func:`distill`.

``DistillConfig`` and ``SoftLabelTrainer`` subclass transformers classes; they are built on first
access (PEP 562 module ``__getattr__``) so importing this module stays cheap.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from . import schema
from .atomic import atomic_folder, write_text
from .cards import ModelCardData, model_card
from .config import lazy_attributes
from .errors import HfaugError, did_you_mean
from .grid import BASELINE as BASELINE_NAME
from .layout import (
    CARD,
    CARD_DATA,
    FIGURES_DIR,
    GRID_DIR,
    GRID_MD,
    METRICS_JSON,
    RESULTS_DATASET,
    STUDENTS_DIR,
    WORK_CHECKPOINTS,
    WORK_LOGS,
    stage_cache_dir,
)
from .runs import StageContext, StageResult, stable_hash, write_json_atomic
from .training import accuracy, load_for_fine_tuning, quiet_progress

if TYPE_CHECKING:
    import datasets
    import torch

    from .grid import Student
    from .tasks import Task

logger = logging.getLogger(__name__)

LOSS_FORMS = ("paper", "standard")
LABEL_MODES = ("soft", "hard", "prompt")
IS_GOLD = "is_gold"  # training-only column: 1 for a source (gold) row, 0 for a synthetic row
DEFAULT_OUTPUT_DIR = "distill_output"
_DONE = "done.json"
CACHE_KEY = "cache_key"  # in metrics.json: the student's key, so a later run can reuse it
_EVALUATED = ("test", "note", "subset", CACHE_KEY)  # metrics.json keys written after training
_SUBSET_NAME = re.compile(r"^(?P<lang>[A-Za-z_]+)-(?P<strategy>[a-z_]+?)(?:-(?P<budget>\d+))?$")


# ---------------------------------------------------------------------------------------------
# the loss (pure)


def distill_loss(
    logits: "torch.Tensor",
    labels: "torch.Tensor",
    soft_labels: "torch.Tensor | None" = None,
    is_gold: "torch.Tensor | None" = None,
    *,
    temperature: float = 1.5,
    loss_form: str = "paper",
    label_mode: str = "soft",
    gold_weight: float = 1.0,
    synthetic_weight: float = 1.0,
    num_items: "int | torch.Tensor | None" = None,
) -> "torch.Tensor":
    """The student's loss on one batch of gold and synthetic rows.

    With z the student logits, y the label, q the teacher's soft label, T the temperature and N
    the batch size (or ``num_items``: the rows of the whole accumulated/distributed batch)::

        gold row:                 CE_i = -log softmax(z_i)[y_i]
        synthetic, paper form:    KL_i = KL(q_i || softmax(z_i / T))
        synthetic, standard form: KL_i = T^2 * KL(q_i^T || softmax(z_i / T)),  q_i^T = softmax(log q_i / T)
        synthetic, hard/prompt:   CE_i = -log softmax(z_i)[y_i]  (``labels`` holds the hard label)

        loss = (gold_weight * sum_gold CE_i + synthetic_weight * sum_synthetic KL_i) / N

    The paper form (arXiv 2407.10582, "Teacher and student") puts T on the student only and divides the sums
    by the batch size; the standard form (Hinton et al.) tempers both sides and scales the KL by
    T^2 so its gradients keep their size, and its batchmean is also over the N rows of the batch.
    In the hard-label modes the loss form does not matter: every row takes plain cross-entropy.
    """
    import torch
    import torch.nn.functional as F

    if loss_form not in LOSS_FORMS:
        raise ValueError(f"loss_form must be one of {list(LOSS_FORMS)}, got {loss_form!r}")
    if label_mode not in LABEL_MODES:
        raise ValueError(f"label_mode must be one of {list(LABEL_MODES)}, got {label_mode!r}")
    logits = logits.float()  # bf16/fp16 logits: the log-softmax and KL in float32
    n = logits.shape[0]
    gold = torch.ones(n, dtype=torch.bool, device=logits.device) if is_gold is None else is_gold.to(logits.device).bool()
    synthetic = ~gold
    # cross-entropy of every row on `labels`: used by the gold rows, and by the synthetic rows in
    # the hard-label modes. Masking by multiplication (not indexing) avoids a device sync.
    ce = F.cross_entropy(logits, labels.to(logits.device).long(), reduction="none")
    total = gold_weight * (ce * gold).sum()
    if label_mode == "soft" and soft_labels is None:
        if is_gold is not None:
            raise ValueError("label_mode 'soft' needs soft_labels for the synthetic rows")
        # no flags and no soft labels: an all-gold batch (e.g. a dev set), plain cross-entropy
    elif label_mode == "soft":
        q = soft_labels.to(logits.device).float()
        # gold rows carry no teacher distribution: give them a harmless uniform one, masked below
        q = torch.where(synthetic[:, None], q, torch.full_like(q, 1.0 / q.shape[-1]))
        log_student = F.log_softmax(logits / temperature, dim=-1)
        if loss_form == "standard":
            q = F.softmax(torch.log(q) / temperature, dim=-1)
        kl = F.kl_div(log_student, q, reduction="none").sum(-1)  # q log q - q log p; 0 log 0 = 0
        if loss_form == "standard":
            kl = kl * temperature**2
        total = total + synthetic_weight * (kl * synthetic).sum()
    else:
        total = total + synthetic_weight * (ce * synthetic).sum()
    denominator = num_items if num_items is not None else n
    if torch.is_tensor(denominator):
        denominator = denominator.to(logits.device)
    return total / denominator


# ---------------------------------------------------------------------------------------------
# config and trainer (built lazily: they subclass transformers classes)


def _build_distill_config():
    from transformers import TrainingArguments

    @dataclass
    class DistillConfig(TrainingArguments):
        """How students are distilled: the student model, the loss, and every TrainingArguments option.

        Defaults follow the paper (arXiv 2407.10582, "Teacher and student"): 15 epochs, lr 5e-6, AdamW
        (eps 1e-8, no weight decay), linear decay without warm-up, gradient clipping 1.0, best
        epoch by dev accuracy, T = 1.5 on the student only."""

        model: str = field(default="FacebookAI/xlm-roberta-large", metadata={
            "help": "Student base encoder (Hub id, local folder or hfaug://tiny/encoder); a fresh "
                    "pretrained encoder, never the teacher."})
        model_revision: str | None = field(default=None, metadata={"help": "Hub revision of the student base."})
        temperature: float = field(default=1.5, metadata={"help": "Softmax temperature T of the distillation term."})
        loss_form: Literal["paper", "standard"] = field(default="paper", metadata={
            "help": "'paper': T on the student only, sums over the batch divided by its size; "
                    "'standard': T on both sides, KL scaled by T^2 (batchmean)."})
        label_mode: Literal["soft", "hard", "prompt"] = field(default="soft", metadata={
            "help": "Synthetic rows' target: 'soft' the teacher's probabilities (KL), 'hard' the teacher's "
                    "argmax (cross-entropy), 'prompt' the label the generation prompt asked for."})
        gold_weight: float = field(default=1.0, metadata={"help": "Weight of the gold rows' cross-entropy."})
        synthetic_weight: float = field(default=1.0, metadata={"help": "Weight of the synthetic rows' term."})
        max_length: int = field(default=128, metadata={"help": "Max tokens per row."})
        subsets: list[str] | None = field(default=None, metadata={
            "help": "Select outputs to train a student on each (e.g. [hi-divk-2500, hi-all]); null: all."})
        train_on_translated_source: list[str] = field(default_factory=list, metadata={
            "help": "Languages whose translated source (translate-source train-<lang>/dev-<lang>) is the gold "
                    "data instead of the English source; empty: the English source."})
        trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom model code from the Hub."})
        seeds: list[int] | None = field(default=None, metadata={
            "help": "The experiment grid's seeds (the paper: [42, 12, 100]): one student per subset and seed, "
                    "named <subset>-seed<N>; null: one student per subset with `seed`."})
        baseline: bool | None = field(default=None, metadata={
            "help": "Also train the source-only student (gold rows, no synthetic rows), the baseline of the "
                    "results; null: with `seeds` (every grid has it)."})
        estimate_rows_per_second: float = field(default=120.0, metadata={
            "help": "Training rows per second of one student on one GPU, for the GPU-hour estimate of "
                    "`hfaug run RECIPE --dry-run` (a trained student's metrics.json has the measured value)."})
        # TrainingArguments defaults changed to the paper's and to the stage's needs
        output_dir: str | None = field(default=DEFAULT_OUTPUT_DIR, metadata={
            "help": "Trainer checkpoints (the distill stage uses its cache folder instead)."})
        num_train_epochs: float = field(default=15.0, metadata={"help": "Training epochs (paper: 15)."})
        learning_rate: float = field(default=5e-6, metadata={"help": "Peak AdamW learning rate (paper: 5e-6)."})
        per_device_train_batch_size: int = field(default=32, metadata={"help": "Rows per device per step."})
        per_device_eval_batch_size: int = field(default=64, metadata={"help": "Rows per device per evaluation step."})
        eval_strategy: str = field(default="epoch", metadata={"help": "When to evaluate on dev: 'epoch', 'steps', 'no'."})
        save_strategy: str = field(default="epoch", metadata={
            "help": "When to save a checkpoint (must match eval_strategy for best-checkpoint selection)."})
        logging_strategy: str = field(default="epoch", metadata={"help": "When to log the training loss."})
        load_best_model_at_end: bool = field(default=True, metadata={"help": "Keep the best checkpoint by dev accuracy."})
        metric_for_best_model: str | None = field(default="accuracy", metadata={"help": "Dev metric selecting the best checkpoint."})
        save_total_limit: int | None = field(default=1, metadata={
            "help": "Checkpoints kept on disk (the best is always kept)."})
        save_only_model: bool = field(default=True, metadata={
            "help": "Checkpoints hold weights only (no optimizer state): small, but a killed student restarts."})
        report_to: str | list[str] | None = field(default="none", metadata={
            "help": "Experiment trackers (tensorboard, wandb, ...); 'none' for none."})
        remove_unused_columns: bool = field(default=False, metadata={
            "help": "Must stay false: the loss reads the soft_labels and is_gold columns."})
        seed: int | None = field(default=None, metadata={
            "help": "Seed of the head's initialisation, the mixing and the data order (default: the run's seed)."})

        def __post_init__(self):
            if self.temperature <= 0:
                raise ValueError(f"distill.temperature must be positive, got {self.temperature}")
            if self.loss_form not in LOSS_FORMS:
                raise ValueError(f"distill.loss_form must be one of {list(LOSS_FORMS)}, got {self.loss_form!r}")
            if self.label_mode not in LABEL_MODES:
                raise ValueError(f"distill.label_mode must be one of {list(LABEL_MODES)}, got {self.label_mode!r}")
            if self.gold_weight < 0 or self.synthetic_weight < 0 or self.gold_weight + self.synthetic_weight == 0:
                raise ValueError("distill.gold_weight and synthetic_weight must be >= 0 and not both 0")
            if self.seeds is not None and (not self.seeds or len(set(self.seeds)) != len(self.seeds)):
                raise ValueError(f"distill.seeds must be distinct and not empty (e.g. [42, 12, 100]), got {self.seeds}")
            if self.estimate_rows_per_second <= 0:
                raise ValueError("distill.estimate_rows_per_second must be positive")
            if self.max_length < 8:
                raise ValueError(f"distill.max_length must be at least 8, got {self.max_length}")
            if self.remove_unused_columns:
                raise ValueError("distill.remove_unused_columns must stay false: the loss needs the soft_labels "
                                 "and is_gold columns")
            if self.hub_token or getattr(self, "push_to_hub_token", None):
                raise ValueError("distill.hub_token must not be in a recipe: log in with `hf auth login` or set HF_TOKEN")
            # TrainingArguments would put a timestamp and host name into logging_dir, which would
            # change the config's hash on every load (and so rerun an unchanged stage)
            if self.logging_dir is None and self.output_dir is not None:
                self.logging_dir = os.path.join(self.output_dir, "logs")
            super().__post_init__()

    DistillConfig.__module__ = __name__
    DistillConfig.__qualname__ = "DistillConfig"
    return DistillConfig


def _build_soft_label_trainer():
    from transformers import Trainer

    class SoftLabelTrainer(Trainer):
        """A ``transformers.Trainer`` whose loss is :func:`distill_loss`; nothing else changes.

        Batches carry ``labels`` (gold label, or the hard label of a synthetic row),
        ``soft_labels`` (teacher probabilities) and ``is_gold``; a batch without the last two is
        all gold (plain cross-entropy). The loss settings are read from ``args`` (a
        :class:`DistillConfig`; plain TrainingArguments get the paper's defaults).
        """

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            inputs = dict(inputs)  # prediction_step reads the labels from the original dict afterwards
            labels = inputs.pop("labels")
            soft_labels = inputs.pop("soft_labels", None)
            is_gold = inputs.pop(IS_GOLD, None)
            outputs = model(**inputs)
            logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
            # with loss kwargs the Trainer does not divide by the accumulation steps: the sum is then
            # divided by the rows of the whole accumulated (and gathered) batch instead
            counted = num_items_in_batch is not None and self.model_accepts_loss_kwargs
            args = self.args
            loss = distill_loss(
                logits, labels, soft_labels, is_gold,
                temperature=getattr(args, "temperature", 1.5),
                loss_form=getattr(args, "loss_form", "paper"),
                label_mode=getattr(args, "label_mode", "soft"),
                gold_weight=getattr(args, "gold_weight", 1.0),
                synthetic_weight=getattr(args, "synthetic_weight", 1.0),
                num_items=num_items_in_batch if counted else None,
            )
            if counted and args.average_tokens_across_devices:
                loss = loss * (self.accelerator.num_processes if args.n_gpu <= 1 else args.n_gpu)
            return (loss, outputs) if return_outputs else loss

    SoftLabelTrainer.__module__ = __name__
    SoftLabelTrainer.__qualname__ = "SoftLabelTrainer"
    return SoftLabelTrainer


__getattr__ = lazy_attributes(globals(), {"DistillConfig": _build_distill_config,
                                           "SoftLabelTrainer": _build_soft_label_trainer})


# ---------------------------------------------------------------------------------------------
# data


def _soft_labels(dataset: "datasets.Dataset", task: "Task", where: str) -> list[list[float]]:
    """Teacher probabilities, checked: one per label, non-negative, summing to 1."""
    import numpy as np

    values = list(dataset[schema.SOFT_LABEL])
    missing = sum(1 for v in values if v is None)
    if missing:
        raise HfaugError(f"{where}: {missing} synthetic rows have no soft_label; soft labels are written by the "
                         "label stage (run `hfaug label`)")
    array = np.asarray(values, dtype=np.float64) if values else np.zeros((0, task.num_labels))
    if array.ndim != 2 or array.shape[1] != task.num_labels:
        raise HfaugError(f"{where}: soft_label vectors must have {task.num_labels} values ({list(task.labels)}), "
                         f"got shape {array.shape}; they are written by the label stage")
    if len(array) and ((array < 0).any() or np.abs(array.sum(1) - 1.0).max() > 1e-3):
        raise HfaugError(f"{where}: soft_label rows must be probabilities (non-negative, sum 1); "
                         "they are written by the label stage")
    return (array / array.sum(1, keepdims=True)).astype(np.float32).tolist() if len(array) else []


def mix(gold: "datasets.Dataset", synthetic: "datasets.Dataset | None", task: "Task", *,
        label_mode: str = "soft", seed: int = 42) -> "datasets.Dataset":
    """Gold and synthetic rows in one shuffled training set.

    Output columns: the task's text column(s), ``label`` (int: the gold label; for a synthetic row
    the teacher's argmax, or the prompt's label with ``label_mode: prompt``), ``soft_label``
    (teacher probabilities; a gold row's one-hot label), ``is_gold`` (1 gold, 0 synthetic), ``lang``.
    """
    import datasets
    import numpy as np

    if label_mode not in LABEL_MODES:
        raise ValueError(f"label_mode must be one of {list(LABEL_MODES)}, got {label_mode!r}")
    schema.require_columns(gold, [*task.text_columns, schema.LABEL], "distill (gold rows)")
    gold_labels = schema.label_ids(gold, task, "distill gold rows")
    eye = np.eye(task.num_labels, dtype=np.float32)
    columns: dict[str, list] = {c: list(gold[c]) for c in task.text_columns}
    columns[schema.LABEL] = gold_labels
    columns[schema.SOFT_LABEL] = eye[gold_labels].tolist() if gold_labels else []
    columns[IS_GOLD] = [1] * len(gold)
    columns[schema.LANG] = list(gold[schema.LANG]) if schema.LANG in gold.column_names else ["en"] * len(gold)
    if synthetic is not None and len(synthetic):
        needed = [*task.text_columns, schema.PROMPT_LABEL if label_mode == "prompt" else schema.SOFT_LABEL]
        schema.require_columns(synthetic, needed, "distill (synthetic rows)")
        if label_mode == "prompt":
            soft = None
            hard = schema.label_ids(synthetic, task, "distill synthetic rows", schema.PROMPT_LABEL)
        else:
            soft = _soft_labels(synthetic, task, "distill synthetic rows")
            hard = np.asarray(soft).argmax(1).tolist()
        for c in task.text_columns:
            columns[c] += list(synthetic[c])
        columns[schema.LABEL] += hard
        columns[schema.SOFT_LABEL] += soft if soft is not None else eye[hard].tolist()
        columns[IS_GOLD] += [0] * len(synthetic)
        columns[schema.LANG] += (list(synthetic[schema.LANG]) if schema.LANG in synthetic.column_names
                                 else ["unknown"] * len(synthetic))
    features = datasets.Features({
        **{c: datasets.Value("string") for c in task.text_columns},
        schema.LABEL: datasets.Value("int64"),
        schema.SOFT_LABEL: datasets.Sequence(datasets.Value("float32")),
        IS_GOLD: datasets.Value("int8"),
        schema.LANG: datasets.Value("string"),
    })
    return datasets.Dataset.from_dict(columns, features=features).shuffle(seed=seed).flatten_indices()


def encode(dataset: "datasets.Dataset", tokenizer, task: "Task", max_length: int) -> "datasets.Dataset":
    """Tokenized training rows: input_ids, attention_mask, labels, soft_labels, is_gold."""
    import datasets

    cols = [list(dataset[c]) for c in task.text_columns]
    enc = tokenizer(*cols, truncation=True, max_length=max_length)
    data = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
            "labels": list(dataset[schema.LABEL])}
    if schema.SOFT_LABEL in dataset.column_names:
        data["soft_labels"] = list(dataset[schema.SOFT_LABEL])
    data[IS_GOLD] = list(dataset[IS_GOLD]) if IS_GOLD in dataset.column_names else [1] * len(dataset)
    return datasets.Dataset.from_dict(data)


class Collator:
    """Pads input_ids/attention_mask to the batch's longest row; stacks every other column."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = int(pad_token_id)

    def __call__(self, features: list[dict]) -> dict:
        import torch

        length = max(len(f["input_ids"]) for f in features)
        ids = torch.full((len(features), length), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(features), length), dtype=torch.long)
        for i, f in enumerate(features):
            n = len(f["input_ids"])
            ids[i, :n] = torch.as_tensor(f["input_ids"])
            mask[i, :n] = 1
        batch = {"input_ids": ids, "attention_mask": mask}
        for key in features[0]:
            if key in batch or key == "token_type_ids":
                continue
            dtype = torch.float32 if key in ("soft_labels", IS_GOLD) else torch.long
            batch[key] = torch.tensor([f[key] for f in features], dtype=dtype)
        return batch


# ---------------------------------------------------------------------------------------------
# training


@dataclass
class DistillOutput:
    """A trained student and what its training measured."""

    model: Any
    tokenizer: Any
    metrics: dict[str, Any]
    log_history: list[dict] = field(default_factory=list)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        self.model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
        return path


def load_student(config, task: "Task", seed: int = 42):
    """(model, tokenizer): the pretrained base with a fresh head named with the task's labels."""
    return load_for_fine_tuning(config.model, task, "distill.model", seed=seed, revision=config.model_revision,
                                trust_remote_code=config.trust_remote_code)


def distill(gold: "datasets.Dataset", synthetic: "datasets.Dataset | None", config, task: "Task", *,
            dev: "datasets.Dataset | None" = None, seed: int = 42, callbacks: list | None = None) -> DistillOutput:
    """Train a student on ``gold`` rows plus ``synthetic`` rows; keep the best epoch on ``dev``.

    ``config`` is a :class:`DistillConfig` (its ``output_dir`` holds the checkpoints; its ``seed``,
    when set, wins over ``seed``). Without dev rows the last epoch is kept. Rows with empty text are
    skipped (counted in ``metrics["dropped"]``).
    """
    import dataclasses

    config_cls = globals().get("DistillConfig") or __getattr__("DistillConfig")
    trainer_cls = globals().get("SoftLabelTrainer") or __getattr__("SoftLabelTrainer")
    if not isinstance(config, config_cls):
        raise TypeError(f"config must be a DistillConfig, got {type(config).__name__}")
    seed = config.seed if config.seed is not None else seed
    dropped: Counter = Counter()
    gold, n = schema.drop_empty(gold, task)
    dropped["gold.empty_text"] += n
    if synthetic is not None:
        synthetic, n = schema.drop_empty(synthetic, task)
        dropped["synthetic.empty_text"] += n
    train_rows = mix(gold, synthetic, task, label_mode=config.label_mode, seed=seed)
    if len(train_rows) == 0:
        raise HfaugError("distill: no training rows (the gold and synthetic data are empty)")
    dev_rows = None
    if dev is not None and len(dev):
        dev, n = schema.drop_empty(dev, task)
        dropped["dev.empty_text"] += n
        dev_rows = mix(dev, None, task, seed=seed) if len(dev) else None

    model, tokenizer = load_student(config, task, seed)
    train_ds = encode(train_rows, tokenizer, task, config.max_length)
    dev_ds = encode(dev_rows, tokenizer, task, config.max_length) if dev_rows is not None else None
    overrides: dict[str, Any] = {"seed": seed}
    if dev_ds is None:
        logger.warning("distill: no dev rows; training runs to the end and keeps the last epoch")
        overrides.update(eval_strategy="no", load_best_model_at_end=False, save_strategy="no")
    args = dataclasses.replace(config, **overrides)
    trainer = trainer_cls(
        model=model, args=args, train_dataset=train_ds, eval_dataset=dev_ds,
        data_collator=Collator(tokenizer.pad_token_id), processing_class=tokenizer,
        compute_metrics=accuracy if dev_ds is not None else None, callbacks=callbacks,
    )
    quiet_progress(trainer)
    resume = None
    if not args.save_only_model and args.output_dir and Path(args.output_dir).is_dir():
        from transformers.trainer_utils import get_last_checkpoint

        resume = get_last_checkpoint(args.output_dir)  # a killed run with full checkpoints goes on
    result = trainer.train(resume_from_checkpoint=resume)

    evals = [e for e in trainer.state.log_history if "eval_accuracy" in e]
    best = max(evals, key=lambda e: e["eval_accuracy"]) if evals else None
    n_synthetic = int(sum(1 for g in train_ds[IS_GOLD] if not g))
    metrics = {
        "dev_accuracy": float(best["eval_accuracy"]) if best else None,
        "best_epoch": best.get("epoch") if best else None,
        "best_step": best.get("step") if best else None,
        "dev_accuracy_by_epoch": {str(round(e["epoch"], 3)): float(e["eval_accuracy"]) for e in evals},
        "train_rows": len(train_ds),
        "gold_rows": len(train_ds) - n_synthetic,
        "synthetic_rows": n_synthetic,
        "dev_rows": len(dev_ds) if dev_ds is not None else 0,
        "train_loss": float(result.training_loss),
        "train_samples_per_second": float(result.metrics.get("train_samples_per_second", 0.0)),
        "seed": seed,
        "dropped": {k: v for k, v in dropped.items() if v},
    }
    model = trainer.model
    model.eval()
    return DistillOutput(model=model, tokenizer=tokenizer, metrics=metrics, log_history=trainer.state.log_history)


# ---------------------------------------------------------------------------------------------
# stage


def _gold_data(ctx: StageContext, languages: list[str] | None = None,
               ) -> tuple["datasets.Dataset", "datasets.Dataset", str]:
    """(train, dev, description) of the gold rows: the source, or the translated source (of
    ``languages``, default distill.train_on_translated_source)."""
    import datasets

    langs = list(languages if languages is not None else ctx.config.train_on_translated_source)
    if not langs:
        return ctx.input("source", "train"), ctx.input("source", "dev"), "source"
    if ctx.run.manifest("translate-source") is None:
        raise HfaugError("distill: training on the translated source needs the translate-source stage; add a "
                         "translate section with source: true and run it")
    names = ctx.run.outputs("translate-source")
    available = sorted({n.split("-", 1)[1] for n in names if n.startswith("train-")})
    for lang in langs:
        if lang not in available:
            raise HfaugError(f"distill.train_on_translated_source: no translated source for '{lang}'"
                             f"{did_you_mean(lang, available)}")
    train = datasets.concatenate_datasets([ctx.input("translate-source", f"train-{lang}") for lang in langs])
    devs = [ctx.input("translate-source", f"dev-{lang}") for lang in langs if f"dev-{lang}" in names]
    dev = datasets.concatenate_datasets(devs) if devs else train.select([])
    return train, dev, "translate-source " + ", ".join(langs)


def _student_gold(ctx: StageContext, student: "Student", subsets: dict, default: tuple, golds: dict) -> tuple:
    """(train, dev, description) of a student's gold rows: ``default`` (the source, or
    distill.train_on_translated_source), or in the translated-teacher setting the translated source
    of the student's subset language (train_ST_as.sh; a baseline takes the first target language)."""
    from .config import TRANSLATED_TEACHER

    if ctx.recipe.setting != TRANSLATED_TEACHER:
        return default
    if student.subset:
        lang = _subset_lang(student.subset, subsets[student.subset])
    else:
        lang = ctx.recipe.translate.languages[0]
    if lang not in golds:
        golds[lang] = _gold_data(ctx, [lang])
    return golds[lang]


def _subset_lang(name: str, data: "datasets.Dataset") -> str:
    """The language of a select subset: its rows' ``lang``, else the prefix of its name."""
    if schema.LANG in data.column_names and len(data):
        return data[0][schema.LANG]
    match = _SUBSET_NAME.match(name)
    return match.group("lang") if match else name.split("-", 1)[0]


def _subset_info(name: str, data: "datasets.Dataset", task: "Task") -> dict[str, Any]:
    """Language, strategy and budget of a select output (from its columns, else its name)."""
    match = _SUBSET_NAME.match(name)
    info: dict[str, Any] = {"name": name, "rows": len(data)}
    langs = sorted(set(data[schema.LANG])) if schema.LANG in data.column_names else []
    strategies = sorted(set(data[schema.STRATEGY])) if schema.STRATEGY in data.column_names else []
    info["lang"] = ", ".join(langs) if langs else (match.group("lang") if match else None)
    info["strategy"] = ", ".join(strategies) if strategies else (match.group("strategy") if match else None)
    info["budget_per_class"] = int(match.group("budget")) if match and match.group("budget") else None
    if schema.SOFT_LABEL in data.column_names and len(data):
        import numpy as np

        arg = np.asarray(list(data[schema.SOFT_LABEL])).argmax(1)
        info["rows_per_class"] = {task.labels[i]: int((arg == i).sum()) for i in range(task.num_labels)}
    return info


def _published(ctx: StageContext) -> dict[str, Any]:
    """Repo id and revision of the published dataset, when the publish stage ran."""
    manifest = ctx.run.manifest("publish") or {}
    found: dict[str, Any] = {}

    def walk(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("repo_id", "repo", "tag", "revision", "commit", "url") and isinstance(value, str):
                    found.setdefault(key, value)
                else:
                    walk(value)

    walk({"extra": manifest.get("extra"), "metrics": manifest.get("metrics")})
    return found


def _test_sets(ctx: StageContext) -> list[tuple[str, Any]]:
    """(key, DataSpec) of the evaluate section's test sets (key: the language, made unique as the
    evaluate stage does); empty without the section."""
    config = ctx.recipe.sections.get("evaluate")
    sets = list(getattr(config, "test_sets", None) or []) if config is not None else []
    langs = Counter(getattr(spec, "lang", "") for spec in sets)
    return [(spec.lang if langs[spec.lang] == 1 else f"{spec.lang}:{spec.name or Path(spec.path).stem}", spec)
            for spec in sets]


def _load_test_sets(ctx: StageContext) -> dict[str, "datasets.Dataset"]:
    from .loading import load_labelled

    return {key: load_labelled(spec, ctx.task, seed=ctx.seed, where=f"evaluate.test_sets[{i}]")[0]
            for i, (key, spec) in enumerate(_test_sets(ctx))}


def _evaluate(ctx: StageContext, model_dir: Path, test_sets: dict[str, "datasets.Dataset"]) -> dict[str, dict]:
    """Per-language test metrics ({"accuracy", "macro_f1", "n"}) of a saved student."""
    from .inference import load_classifier, score

    if not test_sets:
        return {}
    evaluate = ctx.recipe.sections["evaluate"]
    classifier = load_classifier(model_dir, max_length=getattr(evaluate, "max_length", None) or ctx.config.max_length,
                                 batch_size=getattr(evaluate, "batch_size", None) or ctx.config.per_device_eval_batch_size)
    # the predictions are kept for the paired comparisons of the results (not written to metrics.json)
    return {key: score(classifier, data, ctx.task, with_predictions=True) for key, data in test_sets.items()}


def _training_parameters(config) -> dict[str, Any]:
    keys = ("num_train_epochs", "learning_rate", "per_device_train_batch_size", "gradient_accumulation_steps",
            "max_length", "temperature", "loss_form", "label_mode", "gold_weight", "synthetic_weight",
            "weight_decay", "adam_epsilon", "lr_scheduler_type", "warmup_ratio", "warmup_steps", "max_grad_norm",
            "metric_for_best_model")
    out = {}
    for key in keys:
        value = getattr(config, key)
        out[key] = getattr(value, "value", value)
    return out


def _card_data(ctx: StageContext, subset: dict, metrics: dict, note: str | None, gold_desc: str,
               grid: dict | None = None, name: str | None = None) -> ModelCardData:
    """What the student's card says, as far as this stage knows it (no repo id, tag or ONNX yet)."""
    config = ctx.config
    source = ctx.recipe.sections.get("source")
    published = _published(ctx)
    datasets_used = [{
        "name": "source (gold)", "path": getattr(source, "path", None), "revision": getattr(source, "revision", None),
        "description": gold_desc, "synthetic": False,
    }]
    if subset["name"] != BASELINE_NAME:  # the source-only baseline has no synthetic rows
        datasets_used.append({
            "name": f"{subset['name']} (synthetic, teacher soft labels)",
            "path": published.get("repo_id") or published.get("repo") or f"{ctx.run.root}/select/{subset['name']}",
            "revision": published.get("tag") or published.get("revision") or published.get("commit"),
            "description": f"select output '{subset['name']}'", "synthetic": True,
        })
    return ModelCardData(
        name=name or subset["name"],
        title=f"{ctx.recipe.run.name}-{name or subset['name']}",
        base_model=config.model,
        task=ctx.task.name,
        labels=list(ctx.task.labels),
        languages=sorted({*(subset["lang"] or "").replace(" ", "").split(","), "en",
                          *(k.split(":")[0] for k in metrics.get("test", {}))} - {""}),
        datasets=datasets_used,
        subset=None if subset["name"] == BASELINE_NAME else subset["name"],
        strategy=subset.get("strategy"),
        budget=subset.get("budget_per_class"),
        dev_accuracy=metrics.get("dev_accuracy"),
        test_metrics=metrics.get("test", {}),
        metrics_note=note,
        training={"setting": ctx.recipe.setting, **_training_parameters(config)},
        seed=metrics.get("seed"),
        description=ctx.recipe.run.description,
        grid=grid,
    )


#: keys that say which students to train, not how to train one: they stay out of a student's cache key
_PLAN_KEYS = ("output_dir", "logging_dir", "subsets", "seeds", "baseline", "seed", "estimate_rows_per_second")


def _student_key(ctx: StageContext, student: "Student") -> str:
    """Hash of what determines one student: its subset, its seed, how it is trained, its inputs.
    Which other students the grid has does not enter, so adding a seed or a subset retrains none
    of the existing students."""
    from .config import to_dict

    config = {k: v for k, v in to_dict(ctx.config).items() if k not in _PLAN_KEYS}
    stages = ("source", "translate-source") + (() if student.is_baseline else ("select",))
    upstream = {s: (ctx.run.manifest(s) or {}).get("run_id") for s in stages}
    return stable_hash({"subset": student.subset, "seed": student.seed, "config": config, "task": ctx.task.name,
                        "inputs": upstream})


def _prepare(ctx: StageContext):
    """(gold train, gold dev, gold description, subsets by name, students): everything checked
    before the first student trains."""
    from .grid import plan

    config = ctx.config
    task = ctx.task
    gold_train, gold_dev, gold_desc = _gold_data(ctx)
    ctx.input_dir("select")
    available = ctx.run.outputs("select")
    names = list(config.subsets) if config.subsets else available
    for name in names:
        if name not in available:
            raise HfaugError(f"distill.subsets: the select stage wrote no subset '{name}'{did_you_mean(name, available)}")
    if not names:
        raise HfaugError("distill: the select stage wrote no subsets; check the select section")
    subsets = {name: ctx.input("select", name) for name in names}
    needed = [*task.text_columns, schema.PROMPT_LABEL if config.label_mode == "prompt" else schema.SOFT_LABEL]
    for name, data in subsets.items():  # fail before any training, not after the first student
        schema.require_columns(data, needed, f"distill (select subset '{name}')")
        if config.label_mode != "prompt":
            _soft_labels(data, task, f"distill (select subset '{name}')")
    return gold_train, gold_dev, gold_desc, subsets, plan(names, config, ctx.seed)


def _train(ctx: StageContext, student: "Student", gold_train, gold_dev, synthetic) -> tuple[Path, dict, bool]:
    """(folder, training metrics, trained now) of one student: from the cache when it finished
    before (in this process or another), else trained now. The folder appears complete or not at
    all (saved aside, then renamed), so processes sharing the run directory never see half a model."""
    import dataclasses

    key = _student_key(ctx, student)
    work = ctx.cache_dir / student.name / key
    student_dir = work / "student"
    if (work / _DONE).is_file():
        logger.info("distill: student '%s' already trained (cache), reused", student.name)
        return student_dir, json.loads((work / _DONE).read_text(encoding="utf-8")), False
    previous = ctx.run.stage_dir(ctx.stage) / STUDENTS_DIR / student.name
    saved = json.loads((previous / METRICS_JSON).read_text(encoding="utf-8")) \
        if (previous / METRICS_JSON).is_file() else {}
    if saved.get(CACHE_KEY) == key:
        # the last finished stage has this very student (a grid that grew by a seed or a subset):
        # linked, not copied, and not moved, so that stage's folder stays whole until it is replaced
        logger.info("distill: student '%s' unchanged since the last run, reused", student.name)
        with atomic_folder(student_dir) as aside:
            shutil.copytree(previous, aside, copy_function=_link_or_copy, dirs_exist_ok=True)
        trained = {k: v for k, v in saved.items() if k not in _EVALUATED}
        write_json_atomic(work / _DONE, trained)
        return student_dir, trained, False
    logger.info("distill: training student '%s' (seed %d) on %d gold + %d synthetic rows", student.name,
                student.seed, len(gold_train), len(synthetic) if synthetic is not None else 0)
    args = dataclasses.replace(ctx.config, output_dir=str(work / WORK_CHECKPOINTS), logging_dir=str(work / WORK_LOGS),
                               seed=student.seed)
    result = distill(gold_train, synthetic, args, ctx.task, dev=gold_dev, seed=student.seed)
    # a student folder without done.json is a killed attempt's leftovers: replaced; with it, another
    # process (a rank of accelerate launch) saved the same weights a moment ago: kept
    with atomic_folder(student_dir, replace=not (work / _DONE).is_file()) as aside:
        result.save(aside)
    write_json_atomic(work / _DONE, result.metrics)
    shutil.rmtree(work / WORK_CHECKPOINTS, ignore_errors=True)  # the best is saved; free the disk
    return student_dir, result.metrics, True


def _link_or_copy(source: str, target: str) -> str:
    """A hard link (same file system: no second copy of the weights), else a copy."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
    return target


def train_shard(run, index: int, count: int) -> str:
    """``hfaug distill --shard i/n``: train the i-th of n shares of the grid's students into the
    run's cache, and nothing else (no stage folder, no manifest). Shards run as separate processes
    (one per GPU) on the same run directory: they train disjoint students, each into its own cache
    folder. A final ``hfaug distill`` (or ``hfaug run``) collects every student and aggregates."""
    from tqdm.auto import tqdm

    from .grid import shard

    ctx = StageContext(run=run, stage="distill", config=run.recipe.sections["distill"],
                       out_dir=run.root / f".distill.shard-{index}-of-{count}")  # never written
    gold_train, gold_dev, _, subsets, students = _prepare(ctx)
    mine = shard(students, index, count)
    trained = 0
    golds: dict[str, tuple] = {}
    for student in tqdm(mine, desc=f"distill shard {index}/{count}", unit="student"):
        synthetic = subsets[student.subset] if student.subset else None
        gold = _student_gold(ctx, student, subsets, (gold_train, gold_dev, ""), golds)
        trained += _train(ctx, student, gold[0], gold[1], synthetic)[2]
    return (f"distill shard {index}/{count}: {len(mine)} of {len(students)} students "
            f"({trained} trained, {len(mine) - trained} already in the cache) in {stage_cache_dir(run.root, 'distill')}\n"
            f"next: when every shard has finished, `hfaug distill --config {run.recipe.ref}` (or `hfaug run`) "
            "collects the students and aggregates the results")


def _records(student: "Student", info: dict, metrics: dict, setting: str) -> list[dict]:
    """The student's rows of the results: one per test set of its language (the baseline: every
    test set); without test sets, one on the source dev set."""
    from .grid import BASELINE

    strategy = BASELINE if student.is_baseline else str(info.get("strategy") or "")
    try:
        from .strategies import canonical_strategy

        strategy = canonical_strategy(strategy) if strategy != BASELINE else strategy
    except HfaugError:
        pass  # a subset of several strategies, or a name hfaug did not write: kept as it is
    langs = {x.strip() for x in str(info.get("lang") or "").split(",") if x.strip()}
    base = {"student": student.name, "setting": setting, "strategy": strategy,
            "budget": None if student.is_baseline else info.get("budget_per_class"), "seed": student.seed}
    test = metrics.get("test") or {}
    if not test:
        return [{**base, "lang": "dev", "accuracy": metrics.get("dev_accuracy"), "macro_f1": None}]
    return [{**base, "lang": key, "accuracy": m["accuracy"], "macro_f1": m["macro_f1"]}
            for key, m in test.items() if student.is_baseline or key.split(":")[0] in langs]


def _default_budget(ctx: StageContext) -> int | None:
    budgets = getattr(ctx.recipe.sections.get("select"), "budgets", None) or []
    return int(budgets[0]) if budgets else None


def run(ctx: StageContext) -> StageResult:
    from tqdm.auto import tqdm

    from . import results as R

    task = ctx.task
    gold_train, gold_dev, gold_desc, subsets, students = _prepare(ctx)
    test_sets = _load_test_sets(ctx)  # read before training: a bad test set fails fast
    setting = ctx.recipe.setting
    finished: dict[str, Path] = {}
    metrics: dict[str, Any] = {}
    saved: dict[str, dict] = {}
    infos: dict[str, dict] = {}
    records: list[dict] = []
    predictions: dict[tuple[str, str], list[int]] = {}
    dropped: Counter = Counter()
    trained = 0
    golds: dict[str, tuple] = {}
    gold_descs: dict[str, str] = {}
    for student in tqdm(students, desc="distill", unit="student", disable=len(students) < 2):
        synthetic = subsets[student.subset] if student.subset else None
        gold = _student_gold(ctx, student, subsets, (gold_train, gold_dev, gold_desc), golds)
        gold_descs[student.name] = gold[2]
        student_dir, student_metrics, fresh = _train(ctx, student, gold[0], gold[1], synthetic)
        trained += fresh
        for key, value in student_metrics.get("dropped", {}).items():
            dropped[f"{student.name}.{key}"] += value
        test = _evaluate(ctx, student_dir, test_sets)
        for key, m in test.items():
            predictions[(student.name, key)] = m.pop("predictions")
        note = None if test else "no evaluate section in the recipe: dev metrics only"
        student_metrics = {**student_metrics, "test": test, CACHE_KEY: _student_key(ctx, student)}
        if note:
            student_metrics["note"] = note
        if student.subset:
            info = _subset_info(student.subset, synthetic, task)
        else:
            info = {"name": BASELINE_NAME, "rows": 0, "lang": None, "strategy": BASELINE_NAME, "budget_per_class": None}
        student_metrics["subset"] = info
        records += _records(student, info, student_metrics, setting)
        saved[student.name], infos[student.name], finished[student.name] = student_metrics, info, student_dir
        metrics[student.name] = {"dev_accuracy": student_metrics["dev_accuracy"],
                                 "best_epoch": student_metrics["best_epoch"],
                                 **({"test": {key: {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"]}
                                              for key, m in test.items()}} if test else {})}

    # the grid's results: aggregated over seeds, compared, drawn
    rows = R.aggregate(records, predictions=predictions,
                       gold={key: list(schema.label_ids(data, task, f"test set {key}")) for key, data in test_sets.items()},
                       seed=ctx.seed)
    out = R.write(rows, ctx.out_dir / GRID_DIR, default_budget=_default_budget(ctx),
                  title=f"Results of {ctx.recipe.run.name} ({task.name})")
    figures = [out["budgets"], out["strategies"]]
    is_grid = len(students) > 1  # a lone student's card has nothing to compare it with
    for name, student_dir in finished.items():
        if is_grid:
            (student_dir / FIGURES_DIR).mkdir(exist_ok=True)
            for figure in figures:  # a model repo shows only images it holds
                (student_dir / FIGURES_DIR / figure.name).unlink(missing_ok=True)  # maybe a link: never write through
                shutil.copy2(figure, student_dir / FIGURES_DIR / figure.name)
        write_json_atomic(student_dir / METRICS_JSON, saved[name])
        grid = {"figures": [f"{FIGURES_DIR}/{f.name}" for f in figures], "students": len(students),
                "seed": saved[name].get("seed"), "table": R.markdown(rows)} if is_grid else None
        card = _card_data(ctx, infos[name], saved[name], saved[name].get("note"), gold_descs[name], grid=grid,
                          name=name)
        # publish-model renders the card again from card.json once the repo id and the tag are known;
        # through new files: README.md may be a hard link into the previous stage folder
        write_text(student_dir / CARD_DATA, card.to_json())
        write_text(student_dir / CARD, model_card(card))

    # moved only once every student is trained, so a killed stage keeps them all in the cache
    for name, student_dir in finished.items():
        target = ctx.out_dir / STUDENTS_DIR / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(student_dir), str(target))
        shutil.rmtree(student_dir.parent, ignore_errors=True)
    final = ctx.run.root / ctx.stage
    hints = [f"students: {final / STUDENTS_DIR}/<name>/ (model, tokenizer, README.md, metrics.json)",
             f"results: {final / GRID_DIR / GRID_MD} (dataset: {final / RESULTS_DATASET})",
             f"figures: {final / GRID_DIR / FIGURES_DIR / R.FIGURE_BUDGETS}, "
             f"{final / GRID_DIR / FIGURES_DIR / R.FIGURE_STRATEGIES}"]
    gold_rows = sum(len(g[0]) for g in golds.values()) if golds else len(gold_train)
    return StageResult(datasets={RESULTS_DATASET: R.to_dataset(rows)}, dropped=dropped,
                       rows_in=gold_rows + sum(len(d) for d in subsets.values()),
                       metrics=metrics, extra={"next": hints, "students": sorted(finished),
                                               "trained": trained, "reused": len(students) - trained,
                                               "figures": [str(final / GRID_DIR / FIGURES_DIR / f.name) for f in figures]})

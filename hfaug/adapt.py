"""Adapt stage: LoRA-fine-tune the generator LLM on the source data, so its generations look like it.

The labelled source rows become chat instruction/response pairs with the generate stage's own
prompt wording (the paper's): "Write a single review ... indicating positive sentiment." ->
a positive source review; for NLI, 'Sentence: "<premise>" Write one short sentence that is
implied by ...' -> the source hypothesis of that relation. TRL's ``SFTTrainer`` trains a peft
LoRA adapter on them, with the loss on the response only (prompt-completion data).

Input datasets: ``source`` ``train``.
Input columns: text (or premise + hypothesis), label.

Output folder::

    adapter/     adapter_config.json, adapter_model.safetensors, tokenizer files, README.md
                 (model card: base model, data, LoRA settings, loading with peft, serving with TGI);
                 a model repo as it stands (``hf upload <user>/<name> adapter/``)
    adapt.json   {"adapter": "adapter", "base_model": <recipe ref>, "base_model_path": <resolved>,
                  "lora": {...}, "task": ..., "metrics": {...}}
    pairs/       the instruction/response pairs trained on (dataset: prompt, completion, label, source_id)

:class:`AdaptConfig` subclasses TRL's ``SFTConfig`` (and so ``transformers.TrainingArguments``):
every TRL and Trainer option works in the recipe's ``adapt:`` section. It is built on first
access (PEP 562 module ``__getattr__``) so importing this module stays cheap.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import schema
from .cards import adapter_card
from .config import lazy_attributes, resolve
from .errors import HfaugError, did_you_mean
from .layout import ADAPT_JSON, ADAPTER_DIR, CARD, WORK_CHECKPOINTS, WORK_LOGS
from .prompts import base_key, check_templates, instruction, templates_for
from .runs import StageContext, StageResult, stable_hash, write_json_atomic
from .training import quiet_progress

if TYPE_CHECKING:
    import datasets

    from .tasks import Task

logger = logging.getLogger(__name__)

PAIRS = "pairs"
DEFAULT_MODEL = "meta-llama/Llama-2-7b-chat-hf"

#: the generate templates an adapter is trained on, per task: the system turn and one per label
INSTRUCTION_KEYS = {"sentiment": ("system", "positive", "negative", "neutral"),
                    "nli": ("hypothesis_system", "entailment", "neutral", "contradiction")}
TEMPLATE_KEYS = sorted({k for keys in INSTRUCTION_KEYS.values() for k in keys})


def instruction_templates(task: "Task", overrides: dict[str, str] | None = None,
                          prompt_set: str = "paper") -> dict[str, str]:
    """The generate stage's templates for ``task`` (its ``prompt_set``, e.g. the news reviews) with
    ``overrides``; a key this task's instructions do not use, or a placeholder its key may not use,
    is a one-line user error."""
    keys = _instruction_keys(task)
    for key in overrides or {}:
        if base_key(key) not in keys:
            raise HfaugError(f"adapt.templates: '{key}' is not a {task.name} template key{did_you_mean(key, keys)}")
    try:
        check_templates(overrides or {})
    except ValueError as e:
        raise HfaugError(f"adapt.templates: {e}") from None
    return templates_for(task, overrides, prompt_set)


def _instruction_keys(task: "Task") -> tuple[str, ...]:
    """The system turn and one user turn per label of the task (its own labels, not the preset's)."""
    return (INSTRUCTION_KEYS[task.family][0], *task.labels)


def training_templates(task: "Task", generate_templates: dict[str, str] | None,
                       overrides: dict[str, str] | None) -> dict[str, str]:
    """The templates an adapter trains on: the generate section's (only the keys these
    instructions use: premise prompts are not trained on), then ``adapt.templates`` over them."""
    inherited = {k: v for k, v in (generate_templates or {}).items()
                 if base_key(k) in _instruction_keys(task)}
    return {**inherited, **(overrides or {})}


# ---------------------------------------------------------------------------------------------
# config (built lazily: it subclasses trl.SFTConfig)


def _bf16_supported() -> bool:
    try:
        from transformers.utils import is_torch_bf16_gpu_available

        return bool(is_torch_bf16_gpu_available())
    except Exception:  # an exotic device or an old transformers: stay in float32
        return False


def _build_adapt_config():
    from trl import SFTConfig

    @dataclass
    class AdaptConfig(SFTConfig):
        """LoRA fine-tuning of the generator LLM on the source data: every ``trl.SFTConfig`` (and
        ``transformers.TrainingArguments``) option, plus the base model, the LoRA adapter and the
        instruction templates."""

        model: str = field(default=DEFAULT_MODEL, metadata={
            "help": "Causal LM to adapt: a Hub id, a local folder or hfaug://tiny/chat-lm. Use the model the "
                    "generate stage serves, so the adapter fits it."})
        lora_r: int = field(default=16, metadata={"help": "LoRA rank r."})
        lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling alpha (the update is scaled by alpha/r)."})
        lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA path during training."})
        lora_target_modules: str | list[str] = field(default_factory=lambda: ["q_proj", "v_proj"], metadata={
            "help": "Modules that get LoRA weights: names (Llama: q_proj, k_proj, v_proj, o_proj, gate_proj, "
                    "up_proj, down_proj) or 'all-linear'. TGI serves adapters on the attention projections."})
        templates: dict[str, str] = field(default_factory=dict, metadata={
            "help": "Override, for training only, the generate templates the instructions are built from "
                    "(sentiment: system, positive, negative, neutral; nli: hypothesis_system, entailment, "
                    "neutral, contradiction). Empty: the recipe's generate.templates and generate.domains, so "
                    "the adapter learns exactly the requests generate sends."})
        max_train_rows: int | None = field(default=None, metadata={
            "help": "Train on at most this many source rows (a seeded sample, balanced by class); null: all."})
        # SFTConfig / TrainingArguments defaults changed for LoRA and for the stage
        learning_rate: float = field(default=2e-4, metadata={"help": "Peak AdamW learning rate (LoRA: ~1e-4 to 3e-4)."})
        num_train_epochs: float = field(default=3.0, metadata={"help": "Epochs over the instruction pairs."})
        logging_first_step: bool = field(default=True, metadata={
            "help": "Log the loss of the first step too (the stage reports the first and last logged loss)."})
        report_to: str | list[str] | None = field(default="none", metadata={
            "help": "Experiment trackers (tensorboard, wandb, ...); 'none' for none."})
        bf16: bool | None = field(default=None, metadata={
            "help": "bfloat16 mixed precision; null: on where the GPU supports it, off on CPU."})
        seed: int | None = field(default=None, metadata={
            "help": "Seed of the LoRA initialisation and data order (default: the run's seed)."})

        def __post_init__(self):
            for name in ("lora_r", "lora_alpha"):
                if getattr(self, name) < 1:
                    raise HfaugError(f"adapt.{name} must be at least 1, got {getattr(self, name)}")
            if not 0.0 <= self.lora_dropout < 1.0:
                raise HfaugError(f"adapt.lora_dropout must be in [0, 1), got {self.lora_dropout}")
            if isinstance(self.lora_target_modules, list) and not self.lora_target_modules:
                raise HfaugError("adapt.lora_target_modules must name at least one module (or 'all-linear')")
            if self.max_train_rows is not None and self.max_train_rows < 1:
                raise HfaugError(f"adapt.max_train_rows must be at least 1 or null, got {self.max_train_rows}")
            for key in self.templates:
                if base_key(key) not in TEMPLATE_KEYS:
                    raise HfaugError(f"adapt.templates: unknown key '{key}'{did_you_mean(key, TEMPLATE_KEYS)}")
            try:
                check_templates(self.templates)
            except ValueError as e:
                raise HfaugError(f"adapt.templates: {e}") from None
            if self.hub_token or getattr(self, "push_to_hub_token", None):
                raise HfaugError("adapt.hub_token must not be in a recipe: log in with `hf auth login` or set HF_TOKEN")
            if self.bf16 is None and not self.fp16:
                # TRL turns bf16 on by default, which TrainingArguments refuses on a CPU
                self.bf16 = _bf16_supported()
            # TrainingArguments would put a timestamp and host name into logging_dir, which would
            # change the config's hash on every load (and so rerun an unchanged stage)
            if self.logging_dir is None:
                self.logging_dir = os.path.join(self.output_dir or "trainer_output", "logs")
            super().__post_init__()

        def lora_config(self):
            """The peft ``LoraConfig`` these settings describe (causal LM, no bias)."""
            from peft import LoraConfig

            return LoraConfig(r=self.lora_r, lora_alpha=self.lora_alpha, lora_dropout=self.lora_dropout,
                              target_modules=self.lora_target_modules, bias="none", task_type="CAUSAL_LM")

    AdaptConfig.__module__ = __name__
    AdaptConfig.__qualname__ = "AdaptConfig"
    return AdaptConfig


__getattr__ = lazy_attributes(globals(), {"AdaptConfig": _build_adapt_config})


def _config_class():
    return globals().get("AdaptConfig") or __getattr__("AdaptConfig")


# ---------------------------------------------------------------------------------------------
# data


def instruction_pairs(dataset: "datasets.Dataset", task: "Task", templates: dict[str, str] | None = None,
                      *, domains: list[str] | None = None, max_rows: int | None = None,
                      seed: int = 42, prompt_set: str = "paper") -> tuple["datasets.Dataset", Counter]:
    """Source rows as conversational prompt/completion pairs (TRL's prompt-completion format).

    Each prompt is the request the generate stage sends for the row's label
    (:func:`hfaug.prompts.instruction`, with ``templates`` over the ``prompt_set``'s and the
    sentiment ``domains``), and the completion is the row's own text.

    Returns (pairs, dropped): pairs has ``prompt`` (system + user messages), ``completion``
    (the assistant message: the source text, or the hypothesis for NLI), ``label`` and
    ``source_id``. Rows with an empty text are dropped (counted as ``empty_text``); with
    ``max_rows``, a seeded class-balanced sample is kept (the rest counted as ``over_max_train_rows``).
    """
    import random

    import datasets

    schema.require_columns(dataset, [*task.text_columns, schema.LABEL], "adapt")
    templates = instruction_templates(task, templates, prompt_set)
    names = [task.labels[i] for i in schema.label_ids(dataset, task, "adapt")]
    columns = {c: list(dataset[c]) for c in task.text_columns}
    ids = list(dataset[schema.ID]) if schema.ID in dataset.column_names else [None] * len(dataset)
    dropped: Counter = Counter()
    keep = []
    for i in range(len(dataset)):
        if all(isinstance(columns[c][i], str) and columns[c][i].strip() for c in task.text_columns):
            keep.append(i)
        else:
            dropped["empty_text"] += 1
    if max_rows is not None and len(keep) > max_rows:
        # round-robin over the classes of a seeded shuffle: balanced while every class lasts
        rng = random.Random(seed)
        by_class: dict[str, list[int]] = {}
        for i in keep:
            by_class.setdefault(names[i], []).append(i)
        for rows in by_class.values():
            rng.shuffle(rows)
        chosen: list[int] = []
        while len(chosen) < max_rows:
            for label in task.labels:
                if by_class.get(label) and len(chosen) < max_rows:
                    chosen.append(by_class[label].pop())
        dropped["over_max_train_rows"] += len(keep) - len(chosen)
        keep = sorted(chosen)
    out: dict[str, list] = {"prompt": [], "completion": [], "label": [], "source_id": []}
    for i in keep:
        label = names[i]
        premise = columns["premise"][i].strip() if task.is_pair else None
        system, user = instruction(task.family, label, templates, domains=domains, premise=premise)
        answer = columns[task.text_columns[-1]][i].strip()  # the text, or the hypothesis
        prompt = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
        out["prompt"].append(prompt)
        out["completion"].append([{"role": "assistant", "content": answer}])
        out["label"].append(task.label2id[label])
        out["source_id"].append(ids[i] or schema.make_id(task.name, *(columns[c][i] for c in task.text_columns)))
    # a list of dicts, as TRL's chat format expects (Sequence of a dict would become a dict of lists)
    message = datasets.List({"role": datasets.Value("string"), "content": datasets.Value("string")})
    features = datasets.Features({"prompt": message, "completion": message,
                                  "label": datasets.ClassLabel(names=list(task.labels)),
                                  "source_id": datasets.Value("string")})
    return datasets.Dataset.from_dict(out, features=features), dropped


# ---------------------------------------------------------------------------------------------
# training


@dataclass
class AdaptResult:
    """A trained adapter: where it is and how training went."""

    adapter_dir: Path
    metrics: dict[str, Any]
    pairs: "datasets.Dataset"
    dropped: Counter


def _loss_metrics(log_history: list[dict], train_output) -> dict[str, Any]:
    losses = [(entry["step"], entry["loss"]) for entry in log_history if "loss" in entry]
    metrics: dict[str, Any] = {}
    if losses:
        metrics["loss_first"] = float(losses[0][1])
        metrics["loss_last"] = float(losses[-1][1])
        metrics["loss_first_step"] = int(losses[0][0])
        metrics["loss_last_step"] = int(losses[-1][0])
    if train_output is not None:
        metrics["train_loss"] = float(train_output.training_loss)
        metrics["steps"] = int(train_output.global_step)
        runtime = train_output.metrics.get("train_runtime")
        if runtime is not None:
            metrics["train_runtime_s"] = round(float(runtime), 2)
    return metrics


def adapt(source: "datasets.Dataset", config, task: "Task", out_dir: str | Path, *, seed: int = 42,
          resume: bool = True, templates: dict[str, str] | None = None,
          domains: list[str] | None = None, prompt_set: str = "paper") -> AdaptResult:
    """Fine-tune ``config.model`` with a LoRA adapter on ``source`` turned into instruction pairs.

    ``templates``, ``domains`` and ``prompt_set`` are the generate stage's (its recipe section's), so
    the adapter trains on the requests it will answer; ``config.templates`` overrides them for training.

    ``config`` is an :class:`AdaptConfig`; its ``output_dir`` holds the Trainer checkpoints (a
    later call with ``resume`` continues from the last one). The adapter, its tokenizer and a model
    card are saved to ``out_dir``.
    """
    import copy

    from transformers import AutoTokenizer
    from trl import SFTTrainer

    cls = _config_class()
    if not isinstance(config, cls):
        raise TypeError(f"config must be an AdaptConfig, got {type(config).__name__}")
    out_dir = Path(out_dir)
    seed = config.seed if config.seed is not None else seed
    pairs, dropped = instruction_pairs(source, task, training_templates(task, templates, config.templates),
                                       domains=domains, max_rows=config.max_train_rows, seed=seed,
                                       prompt_set=prompt_set)
    if len(pairs) == 0:
        raise HfaugError("adapt: the source train data has no usable rows (every text is empty); check source.path")

    model_path = resolve(config.model)
    # the trainer changes its arguments (gradient checkpointing kwargs, accelerator config): give it a copy
    args = copy.deepcopy(config)
    args.seed = seed
    tokenizer_kwargs = {"trust_remote_code": config.trust_remote_code}
    init_kwargs = config.model_init_kwargs if isinstance(config.model_init_kwargs, dict) else {}
    revision = init_kwargs.get("revision")
    if revision:
        tokenizer_kwargs["revision"] = revision
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_path, **tokenizer_kwargs)
    except OSError as e:
        raise HfaugError(f"adapt.model: cannot load '{config.model}' ({str(e).splitlines()[0]}); use a Hub id, "
                         "a local folder or hfaug://tiny/chat-lm") from None
    if not tokenizer.chat_template:
        raise HfaugError(f"adapt.model: '{config.model}' has no chat template; use a chat model, or set "
                         "adapt.chat_template_path to a tokenizer or .jinja file with one")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token  # Llama-2 has none; padding is masked anyway

    checkpoint = _last_checkpoint(args.output_dir) if resume else None
    if checkpoint:
        logger.info("adapt: resuming from %s", checkpoint)
    logger.info("adapt: LoRA r=%d on %s of %s, %d instruction pairs", config.lora_r, config.lora_target_modules,
                config.model, len(pairs))
    trainer = SFTTrainer(
        model=model_path,
        args=args,
        train_dataset=pairs.select_columns(["prompt", "completion"]),
        processing_class=tokenizer,
        peft_config=config.lora_config(),
    )
    quiet_progress(trainer)
    train_output = trainer.train(resume_from_checkpoint=checkpoint)
    metrics = {"pairs": len(pairs), **_loss_metrics(trainer.state.log_history, train_output)}
    if trainer.is_world_process_zero():
        if out_dir.exists():
            shutil.rmtree(out_dir)
        trainer.save_model(str(out_dir))
        # the arguments are in the run's manifest; a pickle would tie the repo to hfaug
        (out_dir / "training_args.bin").unlink(missing_ok=True)
    return AdaptResult(adapter_dir=out_dir, metrics=metrics, pairs=pairs, dropped=dropped)


def _last_checkpoint(output_dir: str | None) -> str | None:
    if not output_dir or not Path(output_dir).is_dir():
        return None
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(output_dir)


# ---------------------------------------------------------------------------------------------
# stage


def _work_key(ctx: StageContext) -> str:
    from .config import to_dict

    config = {k: v for k, v in to_dict(ctx.config).items() if k not in ("output_dir", "logging_dir")}
    return stable_hash({"config": config, "task": ctx.task.name, "seed": ctx.seed,
                        "source": (ctx.run.manifest("source") or {}).get("run_id")})


def run(ctx: StageContext) -> StageResult:
    config = ctx.config
    task = ctx.task
    source = ctx.input("source", "train")
    if config.output_dir not in (None, "trainer_output"):
        logger.info("adapt: output_dir is set by the stage (checkpoints go to the run's cache folder)")
    # checkpoints live in the cache, keyed by config and input, so a killed run resumes and a
    # changed one starts afresh
    work = ctx.cache_dir / _work_key(ctx)
    args = _replace_dirs(config, work)
    generate = ctx.recipe.sections.get("generate")  # the requests the adapter will answer
    result = adapt(source, args, task, ctx.out_dir / ADAPTER_DIR, seed=ctx.seed,
                   templates=generate.templates if generate else None, domains=generate.domains if generate else None,
                   prompt_set=generate.prompt_set(task) if generate else "paper")
    lora = {"r": config.lora_r, "alpha": config.lora_alpha, "dropout": config.lora_dropout,
            "target_modules": config.lora_target_modules}
    data = f"the source data ({ctx.recipe.source.path})" if ctx.recipe.has("source") else "the source data"
    card = adapter_card(base_model=config.model, task=task, lora=lora, metrics=result.metrics, rows=len(result.pairs),
                        data=data, description=ctx.recipe.run.description)
    if result.adapter_dir.is_dir():  # under `accelerate launch` only the main process saves
        (result.adapter_dir / CARD).write_text(card, encoding="utf-8")
    write_json_atomic(ctx.out_dir / ADAPT_JSON, {
        "adapter": ADAPTER_DIR, "base_model": config.model, "base_model_path": resolve(config.model),
        "task": task.name, "lora": lora, "metrics": result.metrics,
    })
    shutil.rmtree(work, ignore_errors=True)  # the adapter is saved; checkpoints only served resuming
    hints = [f"adapter: {ctx.run.stage_dir(ctx.stage) / ADAPTER_DIR} (load with peft; serve with TGI --lora-adapters)"]
    return StageResult(datasets={PAIRS: result.pairs}, dropped=result.dropped, rows_in=len(source),
                       metrics=result.metrics, extra={"next": hints})


def _replace_dirs(config, work: Path):
    import copy

    args = copy.deepcopy(config)
    args.output_dir = str(work / WORK_CHECKPOINTS)
    args.logging_dir = str(work / WORK_LOGS)
    return args

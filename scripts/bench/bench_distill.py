"""Distillation training throughput: hfaug's SoftLabelTrainer (gold cross-entropy + soft-label KL,
the paper's loss) against a plain ``transformers.Trainer`` with the model's own cross-entropy, on
the same model shape, data, batch size and optimizer, on the CPU.

The model is XLM-R-shaped with random weights (nothing downloaded): by default hidden 128, 2
layers, 4 heads, the tiny encoder's tokenizer. Half of the rows are gold, half synthetic with
soft labels. Runs alternate between the two trainers (ABBA order) and each run is timed from the
end of its warm-up steps to its last step (a TrainerCallback), so model building, optimizer set-up
and the first slow steps are left out; the figure is the median of the per-pair ratios of samples
per CPU second of the (single-threaded) training process, which on a shared machine is far steadier
than the wall clock and equals it on an idle one (the wall-clock ratios are in the notes).

A small model is the harsh case: the loss's extra work (a tempered log-softmax and a KL per row)
weighs more next to a small forward/backward than next to XLM-R large's.

Run: ``python scripts/bench/bench_distill.py [--repeats 8] [--steps 25] [--hidden 128] [--layers 2]``.
The machine is shared: absolute samples/s are noisy; the ratio (same run, interleaved) is the figure.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from _common import write_result  # noqa: E402


def make_data(tokenizer, rows: int, max_length: int, seed: int = 0):
    """(ours, plain): the same tokenized rows; ours adds soft_labels and is_gold."""
    import datasets
    import numpy as np

    from hfaug.testing import corpus

    rng = np.random.default_rng(seed)
    words = " ".join(corpus()).split()
    texts = [" ".join(rng.choice(words, size=int(rng.integers(8, 60)))) for _ in range(rows)]
    enc = tokenizer(texts, truncation=True, max_length=max_length)
    soft = rng.dirichlet([1.0, 1.0, 1.0], size=rows).astype("float32")
    is_gold = (np.arange(rows) % 2 == 0).astype("int64")
    labels = soft.argmax(1).astype("int64")
    plain = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": labels.tolist()}
    ours = {**plain, "soft_labels": soft.tolist(), "is_gold": is_gold.tolist()}
    return datasets.Dataset.from_dict(ours), datasets.Dataset.from_dict(plain)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=8, help="ABBA pairs of runs")
    parser.add_argument("--steps", type=int, default=25, help="training steps per run")
    parser.add_argument("--warmup", type=int, default=5, help="steps per run left out of the timing")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=48)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier on a shared machine)")
    args = parser.parse_args(argv)

    import torch
    from transformers import (
        AutoTokenizer,
        Trainer,
        TrainerCallback,
        TrainingArguments,
        XLMRobertaConfig,
        XLMRobertaForSequenceClassification,
    )
    from transformers.trainer_callback import PrinterCallback
    from transformers.utils import logging as hf_logging

    from hfaug.distill import Collator, DistillConfig, SoftLabelTrainer
    from hfaug.testing import tiny_model

    hf_logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model("encoder"))
    config = XLMRobertaConfig(
        vocab_size=len(tokenizer), hidden_size=args.hidden, num_hidden_layers=args.layers, num_attention_heads=4,
        intermediate_size=4 * args.hidden, max_position_embeddings=514, type_vocab_size=1, pad_token_id=1,
        bos_token_id=0, eos_token_id=2, num_labels=3,
    )
    rows = args.steps * args.batch_size
    ours_data, plain_data = make_data(tokenizer, rows, args.max_length)
    collator = Collator(tokenizer.pad_token_id)

    class Clock(TrainerCallback):
        def __init__(self):
            self.start = self.end = None

        def on_step_end(self, targs, state, control, **kw):
            if state.global_step == args.warmup:
                self.start = (time.perf_counter(), time.process_time())
            if state.global_step == args.steps:
                self.end = (time.perf_counter(), time.process_time())

    common = dict(max_steps=args.steps, per_device_train_batch_size=args.batch_size, learning_rate=5e-5,
                  save_strategy="no", eval_strategy="no", logging_strategy="no", report_to="none",
                  disable_tqdm=True, use_cpu=True, seed=0, data_seed=0, remove_unused_columns=False)

    def once(kind: str, tmp: str) -> tuple[float, float]:
        """(samples per CPU second, samples per wall second) of one run's timed steps."""
        torch.manual_seed(0)
        model = XLMRobertaForSequenceClassification(config)
        clock = Clock()
        if kind == "ours":
            targs = DistillConfig(output_dir=tmp, load_best_model_at_end=False, **common)
            trainer = SoftLabelTrainer(model=model, args=targs, train_dataset=ours_data, data_collator=collator,
                                       callbacks=[clock])
        else:
            targs = TrainingArguments(output_dir=tmp, **common)
            trainer = Trainer(model=model, args=targs, train_dataset=plain_data, data_collator=collator,
                              callbacks=[clock])
        trainer.remove_callback(PrinterCallback)  # no per-run log lines
        trainer.train()
        samples = (args.steps - args.warmup) * args.batch_size
        return samples / (clock.end[1] - clock.start[1]), samples / (clock.end[0] - clock.start[0])

    ours, plain, ratios, wall_ratios = [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        once("ours", tmp), once("plain", tmp)  # warm caches and allocators
        for i in range(args.repeats):
            order = ("ours", "plain") if i % 2 == 0 else ("plain", "ours")
            got = {kind: once(kind, tmp) for kind in order}
            ours.append(got["ours"][0])
            plain.append(got["plain"][0])
            ratios.append(got["ours"][0] / got["plain"][0])
            wall_ratios.append(got["ours"][1] / got["plain"][1])
            print(f"  pair {i + 1}: ours {got['ours'][0]:.1f}, plain {got['plain'][0]:.1f} samples per CPU second, "
                  f"ratio {ratios[-1]:.3f} (wall clock: {wall_ratios[-1]:.3f})", flush=True)
    notes = (f"XLM-R-shaped random model, hidden {args.hidden}, {args.layers} layers, batch {args.batch_size}, "
             f"max length {args.max_length}, half gold / half soft rows, {args.steps - args.warmup} timed steps per "
             f"run, {args.repeats} interleaved (ABBA) pairs, median of per-pair ratios. Samples per CPU second of "
             f"the training process (torch threads {args.threads}): on this shared CPU wall-clock time mostly "
             f"measures the other jobs; it equals wall-clock throughput on an idle machine. Figures are noisy. "
             f"Per-pair ratios {[round(r, 3) for r in ratios]}; wall-clock ratios {[round(r, 3) for r in wall_ratios]} "
             f"(median {statistics.median(wall_ratios):.3f}).")
    write_result("distill", "training throughput", statistics.median(ours), statistics.median(plain),
                 statistics.median(ratios), 0.95, "samples/s (CPU time)", notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())

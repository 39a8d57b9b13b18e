"""Export stage: students to ONNX with Optimum (optionally dynamic int8), behind a parity gate.

Each student written by ``distill`` (``<run>/distill/students/<name>/``: model, tokenizer, card)
is exported with Optimum to ``<run>/export/onnx/<name>/`` and, with ``quantize: true``, quantised
with ONNX Runtime's dynamic int8 (``ORTQuantizer``) to ``<run>/export/int8/<name>/``. Both are
checked against the PyTorch student on held-out rows (the source ``dev`` split): the share of rows
where the predicted label agrees, and the largest difference of any class probability. An export
below the gate raises :class:`~hfaug.errors.HfaugError` (the run stops with exit code 2); the
figures go into the stage metrics and into the model card copied next to each ONNX model.

Input: the ``distill`` students; the source ``dev`` dataset.
Input columns (dev): text, or premise + hypothesis.
Output: ``onnx/<name>/`` and ``int8/<name>/`` folders (model.onnx, config.json, tokenizer, README.md,
hfaug.json: the student's languages, example texts and test metrics for the Space).
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from .cards import write_onnx_card
from .errors import HfaugError, did_you_mean
from .extras import missing
from .layout import EXPORT_DIRS, INT8_DIR, ONNX_DIR, ONNX_FILE, STUDENTS_DIR, student_dirs
from .runs import StageContext, StageResult
from .space_info import student_info, write_info

if TYPE_CHECKING:
    import numpy as np

logger = logging.getLogger(__name__)



@dataclass
class ExportConfig:
    """ONNX export of the students, dynamic int8 quantisation and the parity gate."""

    quantize: bool = field(default=True, metadata={
        "help": "Also write a dynamically quantised int8 model (ONNX Runtime, weights int8, activations "
                "quantised at run time): about 3x faster on CPU, checked by the same parity gate."})
    quantization: Literal["avx512_vnni", "avx512", "avx2", "arm64"] = field(default="avx512_vnni", metadata={
        "help": "Optimum's AutoQuantizationConfig preset for the target CPU (avx512_vnni: recent x86 servers; "
                "arm64: Graviton / Apple silicon)."})
    per_channel: bool = field(default=False, metadata={
        "help": "Quantise weights per output channel (more accurate, a little slower)."})
    opset: int | None = field(default=None, metadata={"help": "ONNX opset; default: Optimum's choice for the model."})
    min_agreement: float = field(default=0.99, metadata={
        "help": "Parity gate: least share of held-out rows on which the ONNX model predicts the same label "
                "as the PyTorch student (fp32 and int8)."})
    max_prob_diff: float = field(default=1e-3, metadata={
        "help": "Parity gate for fp32: largest allowed difference of any class probability against PyTorch."})
    int8_max_prob_diff: float | None = field(default=None, metadata={
        "help": "Parity gate for int8: largest allowed probability difference (default: reported, not gated; "
                "quantisation moves probabilities by design, the label agreement is what is gated)."})
    parity_rows: int = field(default=512, metadata={
        "help": "Held-out rows (source dev) used for the parity check; 0 uses them all."})
    max_length: int = field(default=128, metadata={"help": "Tokens per input (longer inputs are truncated)."})
    batch_size: int = field(default=32, metadata={"help": "Rows per batch in the parity check."})
    students: list[str] = field(default_factory=list, metadata={
        "help": "Names of the students to export (folders under distill/students/); empty exports all."})

    def __post_init__(self):
        if not 0.0 < self.min_agreement <= 1.0:
            raise ValueError(f"export.min_agreement must be in (0, 1], got {self.min_agreement}")
        if self.max_prob_diff < 0 or (self.int8_max_prob_diff is not None and self.int8_max_prob_diff < 0):
            raise ValueError("export.max_prob_diff and export.int8_max_prob_diff must be >= 0")
        if self.parity_rows < 0:
            raise ValueError(f"export.parity_rows must be >= 0 (0 = all), got {self.parity_rows}")
        if self.max_length < 8 or self.batch_size < 1:
            raise ValueError("export.max_length must be >= 8 and export.batch_size >= 1")


class ParityError(HfaugError):
    """An exported model disagrees with its PyTorch student beyond the gate."""


# ---------------------------------------------------------------------------------------------
# the steps, each usable on its own


def export_onnx(student: str | Path, out_dir: str | Path, opset: int | None = None) -> Path:
    """Export a ``*ForSequenceClassification`` folder to ``out_dir/model.onnx`` (+ config, tokenizer)."""
    try:
        from optimum.exporters.onnx import main_export
    except ImportError as e:
        raise missing("export", e, prefer="export") from None
    out_dir = Path(out_dir)
    try:
        # our own parity check below is stricter than Optimum's validation, and runs once
        main_export(str(student), output=str(out_dir), task="text-classification", opset=opset,
                    do_validation=False, library_name="transformers")
    except (ValueError, KeyError) as e:
        raise HfaugError(f"export: Optimum cannot export {student} to ONNX: {e}") from None
    return out_dir


def quantize_onnx(onnx_dir: str | Path, out_dir: str | Path, quantization: str = "avx512_vnni",
                  per_channel: bool = False) -> Path:
    """Dynamic int8 quantisation of ``onnx_dir/model.onnx`` into ``out_dir`` (with config and tokenizer)."""
    try:
        from optimum.onnxruntime import ORTQuantizer
        from optimum.onnxruntime.configuration import AutoQuantizationConfig
    except ImportError as e:
        raise missing("quantisation", e, prefer="export") from None
    onnx_dir, out_dir = Path(onnx_dir), Path(out_dir)
    preset = getattr(AutoQuantizationConfig, quantization)
    qconfig = preset(is_static=False, per_channel=per_channel)
    quantizer = ORTQuantizer.from_pretrained(onnx_dir, file_name=ONNX_FILE)
    quantizer.quantize(qconfig, save_dir=out_dir, file_suffix=None)  # keeps the name model.onnx
    for item in onnx_dir.iterdir():  # tokenizer and config travel with the model
        # not the fp32 graph's external data (model.onnx_data, GBs): the int8 model is one file
        if (item.is_file() and item.suffix != ".onnx" and not item.name.endswith(("_data", ".data"))
                and not (out_dir / item.name).exists()):
            shutil.copy2(item, out_dir / item.name)
    return out_dir


def torch_proba(student: str | Path, texts: list[str], pairs: list[str] | None = None, *,
                max_length: int = 128, batch_size: int = 32) -> "np.ndarray":
    """Probabilities of the PyTorch student, batched exactly as :class:`~hfaug.predict.OnnxClassifier` does."""
    from .inference import TorchClassifier

    return TorchClassifier(student, max_length=max_length, batch_size=batch_size, device="cpu").predict_proba(
        texts, pairs)


def parity(reference: "np.ndarray", probs: "np.ndarray") -> dict:
    """Agreement of the argmax and the probability differences of ``probs`` against ``reference``."""
    import numpy as np

    if reference.shape != probs.shape:
        raise ValueError(f"shapes differ: {reference.shape} vs {probs.shape}")
    if not len(reference):
        return {"rows": 0, "agreement": 1.0, "max_prob_diff": 0.0, "mean_prob_diff": 0.0, "disagreements": 0}
    diff = np.abs(reference.astype(np.float64) - probs.astype(np.float64))
    same = reference.argmax(-1) == probs.argmax(-1)
    return {
        "rows": int(len(reference)),
        "agreement": float(same.mean()),
        "disagreements": int((~same).sum()),
        "max_prob_diff": float(diff.max()),
        "mean_prob_diff": float(diff.mean()),
    }


def gate_failures(variant: str, figures: dict, config: ExportConfig) -> list[str]:
    """Why ``figures`` fail the gate (empty when they pass)."""
    failures = []
    if figures["agreement"] < config.min_agreement:
        failures.append(f"{variant} label agreement {figures['agreement']:.2%} < {config.min_agreement:.2%} "
                        f"({figures['disagreements']} of {figures['rows']} rows differ)")
    limit = config.max_prob_diff if variant == "fp32" else config.int8_max_prob_diff
    if limit is not None and figures["max_prob_diff"] > limit:
        failures.append(f"{variant} max probability difference {figures['max_prob_diff']:.3g} > {limit:g}")
    return failures


def export(student: str | Path, out_dir: str | Path, config: ExportConfig | None = None, *,
           texts: list[str], pairs: list[str] | None = None, name: str | None = None,
           rows_from: str = "held-out rows") -> dict:
    """Export one student to ``out_dir/onnx/<name>`` (and ``out_dir/int8/<name>``), check parity.

    ``texts`` (and ``pairs`` for NLI) are the held-out rows of the parity check. Returns the
    parity figures per variant (``{"fp32": {...}, "int8": {...}}``); raises :class:`ParityError`
    when a variant fails the gate, after writing everything so the failed export can be inspected.
    """
    from .predict import OnnxClassifier, read_labels

    config = config or ExportConfig()
    student, out_dir = Path(student), Path(out_dir)
    name = name or student.name
    try:
        labels = read_labels(student)
    except (OSError, ValueError) as e:
        raise HfaugError(f"export: student '{name}' at {student} is not a classifier folder: {e}") from None

    reference = torch_proba(student, texts, pairs, max_length=config.max_length, batch_size=config.batch_size)
    variants = {"fp32": export_onnx(student, out_dir / ONNX_DIR / name, config.opset)}
    if config.quantize:
        variants["int8"] = quantize_onnx(variants["fp32"], out_dir / INT8_DIR / name, config.quantization,
                                         config.per_channel)
    figures, failures, failed = {}, [], {}
    for variant, folder in variants.items():
        clf = OnnxClassifier(folder, max_length=config.max_length, batch_size=config.batch_size)
        if clf.labels != labels:
            raise HfaugError(f"export: {variant} model of '{name}' has labels {clf.labels}, the student {labels}")
        probs = clf.predict_proba(texts, pairs)
        figures[variant] = parity(reference, probs)
        variant_failures = gate_failures(variant, figures[variant], config)
        failures += variant_failures
        if variant_failures:
            failed[variant] = _flip_margin(reference, probs)
        logger.info("export %s %s: agreement %.2f%%, max prob diff %.2g on %d rows", name, variant,
                    100 * figures[variant]["agreement"], figures[variant]["max_prob_diff"], len(texts))
    for variant, folder in variants.items():
        write_onnx_card(student, folder, name=name, variant=variant, figures=figures, config=config,
                   rows_from=rows_from, passed=not failures)
    if failures:
        raise ParityError(f"export: student '{name}' fails the parity gate on {len(texts)} {rows_from}: "
                          + "; ".join(failures) + ". " + gate_hint(failed, figures, config))
    return figures


def _flip_margin(reference: "np.ndarray", probs: "np.ndarray") -> float | None:
    """Median gap between the student's top two probabilities on the rows whose label flips."""
    import numpy as np

    flips = reference.argmax(-1) != probs.argmax(-1)
    if not flips.any():
        return None
    top2 = np.sort(reference[flips], axis=-1)[:, -2:]
    return float(np.median(top2[:, 1] - top2[:, 0]))


def gate_hint(failed: dict[str, float | None], figures: dict, config: ExportConfig) -> str:
    """Only the fixes that can help the variants that failed (``failed``: variant -> median top-2
    gap of the student on its flipped rows). Quantisation settings cannot fix an fp32 failure; a
    setting already in place is not suggested again; and rows the student scores as near-ties
    (a gap within twice int8's largest probability shift) flip on any rounding, which finer
    per-channel scales do not change, while a better-trained student does."""
    hints = []
    if "fp32" in failed:
        # the traced graph itself differs: quantisation is not involved
        hints.append("fp32: the ONNX graph differs from PyTorch; try another export.opset (now "
                     f"{config.opset or 'Optimum default'})")
        if config.max_prob_diff < figures["fp32"]["max_prob_diff"] < 1e-2:
            hints.append(f"raise export.max_prob_diff (now {config.max_prob_diff:g}) if "
                         f"{figures['fp32']['max_prob_diff']:.2g} is acceptable float noise")
    if "int8" in failed:
        int8 = figures["int8"]
        margin = failed["int8"]
        near_ties = margin is not None and margin <= 2 * int8["max_prob_diff"]
        fixes = []
        if int8["agreement"] < config.min_agreement and near_ties:
            fixes.append(f"train the student longer (distill.num_train_epochs): the flipped rows are near-ties for "
                         f"it (median top-2 gap {margin:.2g}, within int8's largest probability shift "
                         f"{int8['max_prob_diff']:.2g})")
            fixes.append(f"export.min_agreement {int8['agreement']:.3f} to accept those")
        elif not config.per_channel:
            fixes.append("export.per_channel: true (finer weight scales)")
        if config.int8_max_prob_diff is not None and int8["max_prob_diff"] > config.int8_max_prob_diff:
            fixes.append(f"raise or unset export.int8_max_prob_diff (int8 moved a probability by "
                         f"{int8['max_prob_diff']:.2g})")
        fixes.append("export.quantize: false (serve the fp32 model only)")
        hints.append("int8: " + ", or ".join(fixes))
    return "; ".join(hints)


# ---------------------------------------------------------------------------------------------
# the stage


def find_students(distill_dir: Path, names: list[str] | None = None) -> dict[str, Path]:
    """Student folders written by distill (``students/<name>/config.json``), by name."""
    root = Path(distill_dir) / STUDENTS_DIR
    found = student_dirs(distill_dir)
    if not found:
        raise HfaugError(f"export: no students in {root} (expected <name>/config.json folders written by "
                         "the distill stage); run `hfaug distill` first")
    if names:
        for n in names:
            if n not in found:
                raise HfaugError(f"export.students: no student named '{n}' in {root}{did_you_mean(n, found)}")
        found = {n: found[n] for n in names}
    return found


def parity_rows(ctx: StageContext) -> tuple[list[str], list[str] | None, str]:
    """Texts (and hypotheses) of the held-out rows: the source dev split, else train."""
    from .schema import require_columns

    split = "dev"
    rows = ctx.input("source", "dev")
    if len(rows) == 0:
        # no dev data: the parity gate is about the runtime, not accuracy, so seen rows still judge it
        logger.warning("export: source has no dev rows; checking parity on source train rows")
        split, rows = "train", ctx.input("source", "train")
    require_columns(rows, ctx.task.text_columns, "export")
    n = ctx.config.parity_rows
    if n and len(rows) > n:
        rows = rows.shuffle(seed=ctx.seed).select(range(n))
    from .inference import task_inputs

    texts, pairs = task_inputs(rows, ctx.task)
    return texts, pairs, f"source {split} rows"


def run(ctx: StageContext) -> StageResult:
    config: ExportConfig = ctx.config
    students = find_students(ctx.input_dir("distill"), config.students)
    texts, pairs, rows_from = parity_rows(ctx)
    if not texts:
        raise HfaugError("export: the source data has no rows to check parity on; give source.dev")
    metrics: dict = {}
    for name, folder in students.items():
        metrics[name] = export(folder, ctx.out_dir, config, texts=texts, pairs=pairs, name=name, rows_from=rows_from)
        # what the Space shows about the student (languages, examples, metrics), beside each ONNX model
        info = student_info(ctx.run, name)
        for kind in EXPORT_DIRS:
            if (ctx.out_dir / kind / name).is_dir():
                write_info(ctx.out_dir / kind / name, info)
    variant = INT8_DIR if config.quantize else ONNX_DIR
    recipe = ctx.recipe.ref
    return StageResult(rows_in=len(texts), metrics=metrics, extra={
        "students": sorted(students),
        "next": [f"ONNX students: {ctx.run.stage_dir(ctx.stage)}/{variant}/<name>/ (hfaug.predict.OnnxClassifier)",
                 f"try them in the browser: hfaug serve --config {recipe}"],
    })

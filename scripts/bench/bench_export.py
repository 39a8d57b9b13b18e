"""Export benchmark: ONNX fp32 and dynamic int8 against PyTorch eager (and PyTorch's own dynamic
int8) on an XLM-R-base-shaped student, on the CPU; and the Space's latency under 8 concurrent callers.

The student has random weights from ``XLMRobertaConfig()`` (12 layers, hidden 768: XLM-R base's
shape; nothing is downloaded), since only speed is measured here; parity is judged on trained
students by the tests. Every variant gets the same token ids, and the variants take turns in each
round, so load from other processes hits them alike (ratios hold on a noisy machine; absolute
milliseconds do not).

    python scripts/bench/bench_export.py            # about 3-4 minutes on 2 cores
"""

from __future__ import annotations

import os
import socket
import statistics
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
warnings.filterwarnings("ignore")

from _common import write_result  # noqa: E402

SEQ_LEN = 64  # tokens per row: a typical review or NLI pair
# one thread per runtime by default: on a CPU shared with other jobs, multi-threaded runtimes spin
# and wait on each other's cores, which punishes whichever uses its threads hardest (torch eager)
THREADS = int(os.environ.get("HFAUG_BENCH_THREADS", "1"))
NOISE = "CPU shared with other jobs while measured: absolute times are noisy, the ratios less so"


def build_student(folder: Path) -> None:
    """An XLM-R-base-shaped classifier with random weights, saved with the tiny tokenizer (ids < its vocab)."""
    import torch
    from transformers import AutoTokenizer, XLMRobertaConfig, XLMRobertaForSequenceClassification

    from hfaug.testing import tiny_model

    torch.manual_seed(0)
    config = XLMRobertaConfig(num_labels=3, id2label={0: "negative", 1: "neutral", 2: "positive"},
                              label2id={"negative": 0, "neutral": 1, "positive": 2})
    XLMRobertaForSequenceClassification(config).eval().save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_model("encoder")).save_pretrained(folder)


def timed_rounds(fns: dict, rounds: int, warmup: int = 2) -> dict[str, float]:
    """Median seconds per call of each function; the functions take turns within each round."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def bench_runtimes(work: Path) -> None:
    import numpy as np
    import onnxruntime as ort
    import torch

    from hfaug.export import export_onnx, quantize_onnx

    student = work / "student"
    t0 = time.perf_counter()
    build_student(student)
    export_onnx(student, work / "onnx")
    quantize_onnx(work / "onnx", work / "int8", "avx512_vnni")
    print(f"built, exported and quantised an XLM-R-base-shaped student in {time.perf_counter() - t0:.0f}s", flush=True)

    from transformers import AutoModelForSequenceClassification

    torch.set_num_threads(THREADS)
    eager = AutoModelForSequenceClassification.from_pretrained(student).eval()
    torch_int8 = torch.ao.quantization.quantize_dynamic(eager, {torch.nn.Linear}, dtype=torch.qint8)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = THREADS
    options.inter_op_num_threads = 1
    sessions = {v: ort.InferenceSession(str(work / v / "model.onnx"), options, providers=["CPUExecutionProvider"])
                for v in ("onnx", "int8")}
    rng = np.random.default_rng(0)

    for batch, rounds, warmup in ((1, 20, 2), (32, 3, 1)):
        ids = rng.integers(5, 1500, size=(batch, SEQ_LEN), dtype=np.int64)
        ids[:, 0], ids[:, -1] = 0, 2  # <s> ... </s>
        feed = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
        tfeed = {k: torch.from_numpy(v) for k, v in feed.items()}

        def run_torch(model):
            with torch.inference_mode():
                return model(**tfeed).logits

        fns = {"eager": lambda: run_torch(eager), "torch_int8": lambda: run_torch(torch_int8),
               "onnx_fp32": lambda: sessions["onnx"].run(None, feed), "onnx_int8": lambda: sessions["int8"].run(None, feed)}
        med = timed_rounds(fns, rounds, warmup)
        ms = {k: 1000 * v for k, v in med.items()}
        print(f"batch {batch} x {SEQ_LEN} tokens, median ms: " + ", ".join(f"{k} {v:.1f}" for k, v in ms.items()), flush=True)
        shape = f"XLM-R-base shape (12 layers, hidden 768), random weights, batch {batch} x {SEQ_LEN} tokens, " \
                f"{THREADS} thread(s) each; median of {rounds} interleaved rounds; {NOISE}"
        write_result(f"export_int8_vs_eager_b{batch}", f"ONNX Runtime int8 latency, batch {batch}",
                     ms["onnx_int8"], ms["eager"], ms["eager"] / ms["onnx_int8"], 2.5 if batch == 1 else 1.0,
                     "ms", f"baseline: PyTorch eager fp32. {shape}")
        write_result(f"export_int8_vs_torch_int8_b{batch}", f"ONNX Runtime int8 latency, batch {batch}",
                     ms["onnx_int8"], ms["torch_int8"], ms["torch_int8"] / ms["onnx_int8"], 1.0,
                     "ms", f"baseline: PyTorch dynamic int8 (quantize_dynamic on Linear; {ms['eager'] / ms['torch_int8']:.2f}x "
                           f"eager). {shape}")
        write_result(f"export_fp32_vs_eager_b{batch}", f"ONNX Runtime fp32 latency, batch {batch}",
                     ms["onnx_fp32"], ms["eager"], ms["eager"] / ms["onnx_fp32"], 1.0,
                     "ms", f"baseline: PyTorch eager fp32. {shape}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bench_space(work: Path, callers: int = 8, per_caller: int = 12) -> None:
    import numpy as np
    import torch
    from gradio_client import Client
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from hfaug.export import export_onnx
    from hfaug.serve import build_demo, launch, load_models
    from hfaug.testing import tiny_model

    folder = work / "tiny-student"
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_pretrained(
        tiny_model("encoder"), num_labels=3, id2label={0: "negative", 1: "neutral", 2: "positive"},
        label2id={"negative": 0, "neutral": 1, "positive": 2}).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_model("encoder")).save_pretrained(folder)
    export_onnx(folder, work / "tiny-onnx")
    demo = build_demo(load_models({"student": str(work / "tiny-onnx")}), concurrency_limit=4)
    url = launch(demo, port=free_port())
    text = "The staff were friendly and the room was spotless, a wonderful stay."
    try:
        def caller(n: int, out: list[float]) -> None:
            client = Client(url, verbose=False)
            client.predict(text, "student", api_name="/predict")  # connect and warm up
            for _ in range(n):
                start = time.perf_counter()
                client.predict(text, "student", api_name="/predict")
                out.append(time.perf_counter() - start)

        single: list[float] = []
        caller(per_caller * 2, single)
        loaded: list[float] = []
        threads = [threading.Thread(target=caller, args=(per_caller, loaded)) for _ in range(callers)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - start
    finally:
        demo.close()
    p50_1, p95_1 = (1000 * float(np.percentile(single, q)) for q in (50, 95))
    p50, p95 = (1000 * float(np.percentile(loaded, q)) for q in (50, 95))
    print(f"Space, 1 caller: p50 {p50_1:.1f} ms p95 {p95_1:.1f} ms; {callers} callers: p50 {p50:.1f} ms "
          f"p95 {p95:.1f} ms ({len(loaded) / wall:.1f} requests/s)", flush=True)
    notes = (f"gradio_client round trips to the Space app on 127.0.0.1 (tiny ONNX student, queue concurrency 4), "
             f"{callers} concurrent callers x {per_caller} requests, {len(loaded) / wall:.1f} requests/s; baseline: "
             f"the same percentile with one caller; target: latency grows at most {callers}x under {callers}x load; {NOISE}")
    write_result("serve_latency_p50_8_callers", "Space p50 latency, 8 concurrent callers", p50, p50_1, p50_1 * callers / p50,
                 1.0, "ms", notes)
    write_result("serve_latency_p95_8_callers", "Space p95 latency, 8 concurrent callers", p95, p95_1, p95_1 * callers / p95,
                 1.0, "ms", notes)


def main() -> int:
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hfaug-bench-export-") as tmp:
        bench_runtimes(Path(tmp))
        bench_space(Path(tmp))
    print(f"bench_export done in {time.perf_counter() - start:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The whole flow at the paper's scale: `make bench-scale` (not part of `make bench`: it takes long).

The paper's sentiment and NLI recipes (paper/sentiment-hi, paper/xnli-hi) run stage by stage, each
as its own `python -m hfaug <stage>` process, with the LLM behind a fast TGI-protocol server
(scale_server.py) answering LLM-like reviews with realistic overlap (scale_corpus.py), and tiny
models (hfaug://tiny/...) as teacher, translator, embedder and student, at 10,000, 50,000 and
200,000 generations. Per stage: wall seconds, peak RSS of its process, disk written (stage folder
and its cache), and the growth exponent of the seconds between consecutive sizes (1.0: linear).

What scales with the number of generations: generate (requests, cleaning, near-duplicates), label
(the teacher's per-epoch probabilities on the pool), translate (the pool into Hindi), select (five
strategies, embeddings, k-means) and publish (the candidate pool and subsets). What does not, by
design of the paper: teacher (trained on the source data), distill (on the selected budget of
2,500 rows per class), export and evaluate; they run at every size with capped epochs/steps so the
table shows they stay flat. The pool is 65% of the generations (the paper: 130,000 of 200,000).

Side by side in the same run (--compare, at 10,000 requests, 50 ms latency, concurrency 32): the
generate stage's wall time against a bare aiohttp loop and against distilabel's Pipeline
(TextGeneration, same server), the latter in its own venv (/tmp/hfaug-bench-distilabel, made on
first use; skipped with a note when it cannot be installed).

    python scripts/bench/bench_scale.py [--sizes 10000 50000 200000] [--tasks sentiment nli]
                                        [--stages generate label ...] [--compare] [--no-flow]
                                        [--fresh] [--work runs/bench-scale]

Progressive and resumable: after every stage the table (bench/results/scale.json, scale.md and
BENCHMARKS.md) is written again, so an interrupted run keeps its figures; a rerun keeps the
(task, size, stage) cells measured before whose outputs are still in the work folder and runs the
rest, unless --fresh (the side-by-side comparison likewise).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import RESULTS, ROOT, machine  # noqa: E402

RECIPES = {"sentiment": "paper/sentiment-hi", "nli": "paper/xnli-hi"}
# in the paper setting's order (translated-teacher: the teacher labels the translations)
STAGES = ["generate", "translate-source", "teacher", "translate", "label", "select", "publish", "distill", "export", "evaluate"]
DISTILABEL_VENV = Path(os.environ.get("HFAUG_BENCH_DISTILABEL_VENV", "/tmp/hfaug-bench-distilabel"))
# One intra-op thread per stage process: on a machine shared with other jobs, torch's OpenMP workers
# spin at every barrier while a sibling thread waits for a core, and that spinning is counted as the
# stage's CPU time (translate at 10,000 rows under load average ~5 on 2 cores: 15 CPU s with one
# thread, 97 with two, 195 s wall against 57), so the exponents would measure the machine's load.
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_XET": "1",
       "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT),
       "OMP_NUM_THREADS": os.environ.get("HFAUG_BENCH_THREADS", "1"),
       "MKL_NUM_THREADS": os.environ.get("HFAUG_BENCH_THREADS", "1")}


def start_server(latency: float) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, str(HERE / "scale_server.py"), "--latency", str(latency)],
                            stdout=subprocess.PIPE, text=True, env=ENV)
    line = proc.stdout.readline()
    if not line.startswith("READY "):
        proc.kill()
        raise RuntimeError(f"scale server did not start: {line!r}")
    return proc, line.split()[1]


def recipe(task: str, n: int, url: str, out: Path, concurrency: int = 64) -> dict:
    """The paper recipe, scaled to n generations, on the local server and tiny models."""
    import yaml

    from hfaug.config import find_recipe

    data = yaml.safe_load(find_recipe(RECIPES[task]).read_text())
    demo = "hfaug://data/demo/sentiment" if task == "sentiment" else "hfaug://data/demo/nli"
    data.update(name=f"scale-{task}-{n}", output_dir=str(out))
    data["source"] = {"path": f"{demo}_en.jsonl", "dev": {"path": f"{demo}_en_dev.jsonl"}}
    gen = data["generate"]
    gen.update(endpoints=[url], concurrency=concurrency, progress=False, held_out=n // 20, max_rows=int(0.65 * n))
    if task == "sentiment":
        # n requests in all: the paper's extra strictly-neutral reviews (200,000) are left out
        gen.update(n_per_class=n // 3, n_by_label={}, n_strict_neutral=0)
    else:
        gen.update(n_premises=n // 3)  # three hypotheses per premise
    data["teacher"] = {"model": "hfaug://tiny/encoder", "epochs": 2, "learning_rate": 5.0e-3, "batch_size": 16,
                       "gradient_accumulation_steps": 1, "eval_steps": None, "max_length": 64}
    data["label"] = {"dynamics": True, "batch_size": 256, "max_length": 64}
    # the translated-teacher setting (the paper's) trains the teacher on the translated source
    translate_source = data.get("setting") == "translated-teacher"
    # Sampled, short: greedy decoding by the random-weight tiny model gives every text the same
    # output, and select's duplicate filter then leaves a pool of one row (select, publish and
    # distill would measure nothing); sampling gives each row its own "translation" at the cost of
    # greedy decoding (one sample, 4-8 new tokens; a real model's cost is in its size, not hfaug's).
    data["translate"] = {"model": "hfaug://tiny/mt", "languages": ["hi"], "source": translate_source, "batch_size": 64,
                         "num_beams": 1, "split_sentences": False, "max_new_tokens": 8, "min_new_tokens": 4,
                         "no_repeat_ngram_size": 2, "checks": [], "do_sample": True, "temperature": 1.0}
    data["select"].update(embedder="hfaug://tiny/embedder", embed_batch_size=256, min_words=0, figures=False)
    data["distill"] = {"model": "hfaug://tiny/encoder", "num_train_epochs": 1, "max_steps": 40,
                       "learning_rate": 3.0e-3, "per_device_train_batch_size": 32, "max_length": 64,
                       "subsets": ["hi-divk-2500", "hi-randk-2500"]}
    data["publish"] = {"repo_id": None, "local_dir": str(out / "published"), "models": False}
    data["export"] = {"quantize": False}  # a barely trained tiny student fails the int8 parity gate
    test = f"{demo}_hi.jsonl" if task == "sentiment" else "hfaug://data/demo/nli_hi.jsonl"
    data["evaluate"] = {"test_sets": [{"path": test, "lang": "hi"}]}
    return data


def run_stage(recipe_path: Path, stage: str) -> dict:
    """One stage in its own process: wall seconds and the process's peak RSS."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "hfaug", "-q", stage, "--config", str(recipe_path)],
                            cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    if proc.returncode:
        raise RuntimeError(f"hfaug {stage} failed ({proc.returncode}):\n{output[-3000:]}")
    return {"seconds": round(wall, 2), "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}


def disk_mb(*paths: Path) -> float:
    total = 0
    for path in paths:
        if path.is_file():
            total += path.stat().st_size
        elif path.is_dir():
            total += sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return round(total / 2**20, 1)


def measured(cell: dict | None) -> bool:
    """A cell measured in full by this benchmark (CPU seconds came later: older cells lack them)."""
    return bool(cell) and "failed" not in cell and "cpu_s" in cell


def flow(task: str, n: int, stages: list[str], work: Path, done: dict, record) -> dict:
    """The stages of one (task, size), each recorded (``record(stage, figures)``) as soon as it ends.

    A stage already measured (in ``done``) whose output is still in ``work`` is not run again, so
    a rerun resumes where an interrupted one stopped."""
    import yaml

    from hfaug.config import load_recipe
    from hfaug.pipeline import planned
    from hfaug.runs import Run

    server, url = start_server(latency=0.0)
    try:
        data = recipe(task, n, url, work / f"{task}-{n}")
        path = work / f"{task}-{n}.yaml"
        path.write_text(yaml.safe_dump(data))
        run = Run(load_recipe(str(path)))
        run_stage(path, "source")
        out = {}
        # the recipe's setting decides the stages and their order (translated-teacher: translate-source
        # before teacher)
        for stage in [s.name for s in planned(run.recipe) if s.name in stages]:
            if measured(done.get(stage)) and run.manifest(stage):
                print(f"  {task} {n:>7} {stage:<10} measured before, kept", flush=True)
                out[stage] = done[stage]
                continue
            try:
                figures = run_stage(path, stage)
            except RuntimeError as e:  # recorded; the later stages need this one
                print(f"  {task} {n:>7} {stage}: {e}", flush=True)
                out[stage] = {"failed": str(e).splitlines()[-1][:300]}
                record(stage, out[stage])
                break
            figures["disk_mb"] = disk_mb(run.stage_dir(stage), run.root / "cache" / stage)
            metrics = (run.manifest(stage) or {}).get("metrics") or {}
            manifest = run.manifest(stage) or {}
            figures["rows_in"] = manifest.get("rows_in")
            if stage == "select":  # the candidate pool after select's filters (duplicates, lengths)
                figures["pool_rows"] = sum(p.get("rows", 0) for p in (metrics.get("pool") or {}).values())
            if stage == "generate":
                figures.update({k: metrics.get(k) for k in ("request_phase_s", "dedupe_s", "stage_s",
                                                             "requests_per_s", "rows_kept")})
                figures["rows_in"] = run.manifest(stage)["rows_in"]
            out[stage] = figures
            record(stage, figures)
            print(f"  {task} {n:>7} {stage:<10} {figures}", flush=True)
        return out
    finally:
        server.kill()
        server.wait()


# ---------------------------------------------------------------------------------------------
# generate side by side: hfaug's stage, a bare aiohttp loop, distilabel's Pipeline


DISTILABEL_SCRIPT = r'''
import sys, time
from distilabel.models import InferenceEndpointsLLM
from distilabel.pipeline import Pipeline
from distilabel.steps import LoadDataFromDicts
from distilabel.steps.tasks import TextGeneration

url, n, concurrency = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
with Pipeline(name="bench") as pipeline:
    load = LoadDataFromDicts(data=[{"instruction": f"Write a positive review number {i}."} for i in range(n)],
                             batch_size=max(n // 16, 50))
    gen = TextGeneration(llm=InferenceEndpointsLLM(base_url=url, tokenizer_id=None, api_key="not-needed",
                                                   generation_kwargs={"max_new_tokens": 64}),
                         input_batch_size=concurrency, use_system_prompt=False)
    load >> gen
start = time.perf_counter()
distiset = pipeline.run(use_cache=False)
wall = time.perf_counter() - start
rows = len(distiset["default"]["train"])
print(f"DISTILABEL {wall:.3f} {rows}")
'''


def distilabel_python() -> tuple[str | None, str]:
    python = DISTILABEL_VENV / "bin" / "python"
    if not python.exists():
        try:
            subprocess.run([sys.executable, "-m", "venv", str(DISTILABEL_VENV)], check=True)
            subprocess.run([str(python), "-m", "pip", "install", "-q", "distilabel==1.5.3",
                            "huggingface_hub>=0.36,<0.37"], check=True, timeout=1200)
        except (subprocess.SubprocessError, OSError) as e:
            shutil.rmtree(DISTILABEL_VENV, ignore_errors=True)
            return None, f"distilabel could not be installed ({e})"
    version = subprocess.run([str(python), "-c", "import distilabel, huggingface_hub as h; "
                              "print(distilabel.__version__, h.__version__)"], capture_output=True, text=True)
    if version.returncode:
        return None, f"distilabel venv is broken: {version.stderr.strip()[-300:]}"
    return str(python), "distilabel {} (huggingface_hub {})".format(*version.stdout.split())


def compare(n: int, work: Path, latency: float = 0.05, concurrency: int = 32) -> dict:
    import yaml
    from bench_generate import run_raw

    from hfaug.config import load_recipe
    from hfaug.runs import Run

    result = {"requests": n, "latency_s": latency, "concurrency": concurrency}
    server, url = start_server(latency)
    try:
        result["bare_aiohttp_s"] = round(n / run_raw(url, n), 2)
        data = recipe("sentiment", n, url, work / f"compare-{n}", concurrency=concurrency)
        data["generate"]["concurrency"] = concurrency
        path = work / f"compare-{n}.yaml"
        path.write_text(yaml.safe_dump(data))
        figures = run_stage(path, "generate")
        metrics = Run(load_recipe(str(path))).manifest("generate")["metrics"]
        result["hfaug_stage_s"] = metrics["stage_s"]
        result["hfaug_request_phase_s"] = metrics["request_phase_s"]
        result["hfaug_process_s"] = figures["seconds"]
        python, note = distilabel_python()
        result["distilabel"] = note
        if python:
            env = {k: v for k, v in ENV.items() if k != "PYTHONPATH"}
            env["DISTILABEL_CACHE_DIR"] = str(work / "distilabel-cache")
            done = subprocess.run([python, "-c", DISTILABEL_SCRIPT, url, str(n), str(concurrency)],
                                  capture_output=True, text=True, env=env, cwd=work)
            line = next((x for x in done.stdout.splitlines() if x.startswith("DISTILABEL ")), None)
            if line:
                result["distilabel_s"] = float(line.split()[1])
                result["distilabel_rows"] = int(line.split()[2])
            else:
                result["distilabel"] += f"; its run failed: {(done.stderr or done.stdout).strip()[-400:]}"
    finally:
        server.kill()
        server.wait()
    result["hfaug_vs_bare"] = round(result["hfaug_stage_s"] / result["bare_aiohttp_s"], 3)
    if "distilabel_s" in result:
        result["distilabel_vs_hfaug"] = round(result["distilabel_s"] / result["hfaug_stage_s"], 3)
    print(f"  compare {result}", flush=True)
    return result


# ---------------------------------------------------------------------------------------------
# the report


def exponent(t1: float, t2: float, n1: int, n2: int) -> float:
    return math.log(max(t2, 1e-3) / max(t1, 1e-3)) / math.log(n2 / n1)


def table(results: dict, comparison: dict | None) -> str:
    lines = ["## Scale (`make bench-scale`)", "",
             f"Written by scripts/bench/bench_scale.py on {machine()}. Each stage is its own process "
             "(`python -m hfaug <stage>`); a cell is wall seconds / CPU seconds (user + system of the stage "
             "process) / peak RSS MB / disk MB (output folder and cache). Stage processes run with one "
             "intra-op thread (OMP_NUM_THREADS=1; HFAUG_BENCH_THREADS changes it): the machine is shared "
             "with other jobs, so wall seconds are noisy, and with two threads torch's OpenMP spin-waits "
             "would be counted as CPU time. The growth exponent log(t2/t1)/log(n2/n1) is taken on CPU "
             "seconds (target <= 1.15), which also include a fixed ~7-10 s of start-up (imports, models), "
             "so small sizes understate it. Translate-source, teacher, distill, export and evaluate do not "
             "depend on the number of generations (the source data, capped epochs/steps, a fixed budget of "
             "2,500 per class).", ""]
    for task, by_size in results.items():
        sizes = sorted(by_size, key=int)
        lines += [f"### {task} ({RECIPES[task]})", "",
                  "| stage | " + " | ".join(f"{int(n):,}: wall / CPU s / RSS MB / disk MB" for n in sizes)
                  + " | " + " | ".join(f"exp {int(a) // 1000}k-{int(b) // 1000}k" for a, b in zip(sizes, sizes[1:]))
                  + " |",
                  "|---|" + "---|" * (2 * len(sizes) - 1)]
        stages = [s for s in STAGES if any(s in by_size[n] for n in sizes)]
        for stage in stages:
            cells = []
            for n in sizes:
                f = by_size[n].get(stage)
                f = None if f and "failed" in f else f
                cpu = f"{f['cpu_s']:.0f}" if f and "cpu_s" in f else "-"
                cells.append(f"{f['seconds']:.0f} / {cpu} / {f['peak_rss_mb']:.0f} / {f['disk_mb']:.0f}"
                             if f else "not run")
            exps = []
            for a, b in zip(sizes, sizes[1:]):
                fa, fb = by_size[a].get(stage), by_size[b].get(stage)
                if fa and fb and "cpu_s" in fa and "cpu_s" in fb:
                    e = exponent(fa["cpu_s"], fb["cpu_s"], int(a), int(b))
                    exps.append(f"{e:.2f}" + (" **over**" if e > 1.15 else ""))
                else:
                    exps.append("-")
            lines.append(f"| {stage} | " + " | ".join(cells) + " | " + " | ".join(exps) + " |")
        gen = {n: by_size[n]["generate"] for n in sizes if "rows_in" in by_size[n].get("generate", {})}
        failed = [f"{stage} at {int(n):,}: {f['failed']}" for n in sizes for stage, f in by_size[n].items()
                  if "failed" in f]
        if failed:
            lines += ["", "failed: " + "; ".join(failed)]
        rows = [f"{int(n):,}: " + ", ".join(f"{stage} {by_size[n][stage]['rows_in']:,}" for stage in stages
                                            if (by_size[n].get(stage) or {}).get("rows_in"))
                + (f"; select's pool after its filters {by_size[n]['select']['pool_rows']:,}"
                   if "pool_rows" in by_size[n].get("select", {}) else "") for n in sizes]
        if any(":" in r for r in rows):
            lines += ["", "rows in per stage: " + "; ".join(rows)]
        if gen:
            lines += ["", "generate in detail: " + "; ".join(
                f"{int(n):,}: {g['rows_in']:,} rows asked, {g['rows_kept']:,} kept, request phase {g['request_phase_s']} s "
                f"({g['requests_per_s']} req/s), near-duplicates {g['dedupe_s']} s, stage {g['stage_s']} s"
                for n, g in gen.items())]
        lines.append("")
    if comparison:
        c = comparison
        lines += [f"### generate side by side ({c['requests']:,} requests, {c['latency_s'] * 1000:.0f} ms latency, "
                  f"concurrency {c['concurrency']})", "",
                  "| client | wall s | vs hfaug stage |", "|---|---|---|",
                  f"| hfaug generate stage (request phase {c['hfaug_request_phase_s']} s; process incl. start-up "
                  f"{c['hfaug_process_s']} s) | {c['hfaug_stage_s']} | 1.00 |",
                  f"| bare aiohttp loop | {c['bare_aiohttp_s']} | {c['bare_aiohttp_s'] / c['hfaug_stage_s']:.2f} |"]
        if "distilabel_s" in c:
            lines.append(f"| {c['distilabel']} Pipeline, TextGeneration | {c['distilabel_s']} | "
                         f"{c['distilabel_vs_hfaug']:.2f} |")
        lines += ["", f"Targets: hfaug / bare <= 1.3 (measured {c['hfaug_vs_bare']}); distilabel / hfaug >= 2 "
                  f"(measured {c.get('distilabel_vs_hfaug', 'n/a')}). {c['distilabel']}.", ""]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000, 200_000])
    parser.add_argument("--tasks", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--stages", nargs="+", default=STAGES, choices=STAGES)
    parser.add_argument("--compare", action="store_true", help="also generate side by side (10,000 requests)")
    parser.add_argument("--compare-requests", type=int, default=10_000)
    parser.add_argument("--no-flow", action="store_true", help="only the side-by-side comparison")
    parser.add_argument("--note", default=None, help="a note on this measurement for the table (kept)")
    parser.add_argument("--store", default="scale.json", help="results file under bench/results (merged into)")
    parser.add_argument("--work", default=None, help="where the runs go and stay, so a rerun resumes "
                        "(default: runs/bench-scale)")
    parser.add_argument("--fresh", action="store_true", help="measure the chosen (task, size, stage) cells "
                        "again instead of keeping those measured before")
    args = parser.parse_args(argv)

    RESULTS.mkdir(parents=True, exist_ok=True)
    store = RESULTS / args.store

    def load() -> dict:
        return json.loads(store.read_text()) if store.exists() else {"flow": {}, "compare": None}

    def publish(saved: dict) -> None:
        """scale.json, then scale.md and BENCHMARKS.md from it: a partial run keeps its figures."""
        tmp = store.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(saved, indent=2))
        tmp.replace(store)
        text = table(saved["flow"], saved["compare"])
        if saved.get("note"):
            text += "\n" + saved["note"] + "\n"
        (RESULTS / "scale.md").write_text(text)
        import run_all

        run_all.write_report()

    saved = load()
    if args.note is not None:
        saved["note"] = args.note
    work = Path(args.work) if args.work else ROOT / "runs" / "bench-scale"
    work.mkdir(parents=True, exist_ok=True)
    if args.fresh and not args.no_flow:  # forget the chosen cells, their outputs and caches
        for task in args.tasks:
            for n in args.sizes:
                cells = saved["flow"].get(task, {}).get(str(n), {})
                root = work / f"{task}-{n}" / f"scale-{task}-{n}"  # output_dir / the recipe's name
                for stage in args.stages:
                    cells.pop(stage, None)
                    shutil.rmtree(root / stage, ignore_errors=True)
                    shutil.rmtree(root / "cache" / stage, ignore_errors=True)
    if args.compare and saved.get("compare") and not args.fresh:
        print("  compare: measured before, kept (--fresh measures it again)", flush=True)
    elif args.compare:
        saved["compare"] = compare(args.compare_requests, work)
        publish(saved)
    if not args.no_flow:
        for task in args.tasks:
            for n in args.sizes:
                print(f"== {task} at {n:,} generations", flush=True)
                cells = saved["flow"].setdefault(task, {}).setdefault(str(n), {})

                def record(stage: str, figures: dict, cells=cells) -> None:
                    cells[stage] = figures
                    publish(saved)  # after every stage

                flow(task, n, args.stages, work, dict(cells), record)
    publish(saved)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

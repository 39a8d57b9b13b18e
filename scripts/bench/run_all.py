"""`make bench`: run every scripts/bench/bench_*.py, then rewrite BENCHMARKS.md from the results."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from _common import RESULTS, ROOT, machine

HERE = Path(__file__).resolve().parent
# run only when named (`make bench-scale`): they take far longer than the rest together
LONG = {"bench_scale"}


def main(argv: list[str]) -> int:
    only = set(argv)
    failed = []
    for script in sorted(HERE.glob("bench_*.py")):
        if only and script.stem not in only and script.stem.removeprefix("bench_") not in only:
            continue
        if not only and script.stem in LONG:
            continue
        print(f"== {script.name}", flush=True)
        start = time.perf_counter()
        code = subprocess.call([sys.executable, str(script)], cwd=ROOT)
        print(f"   ({time.perf_counter() - start:.0f}s, exit {code})", flush=True)
        if code:
            failed.append(script.name)
    write_report()
    if failed:
        print("benchmarks that failed to run: " + ", ".join(failed))
    return 1 if failed else 0


def write_report() -> None:
    rows = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.json"))]
    rows = [r for r in rows if "ratio" in r]  # scale.json holds the scale table's data
    lines = [
        "# Benchmarks",
        "",
        "Written by `make bench` (scripts/bench/). Each figure is measured side by side with its baseline",
        "in one run; `ratio` is oriented so that higher is better and `target` is the least acceptable ratio.",
        "",
        "| figure | value | baseline | ratio | target | met | machine | notes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        met = "yes" if r["ratio"] >= r["target"] else "**no**"
        lines.append(
            f"| {r['name']}: {r['metric']} | {r['value']:g} {r['unit']} | {r['baseline']:g} {r['unit']} | "
            f"{r['ratio']:.3f} | {r['target']:g} | {met} | {r.get('machine', machine())} | {r.get('notes', '')} |"
        )
    scale = RESULTS / "scale.md"  # the whole-flow scale table (bench_scale.py)
    if scale.is_file():
        lines += ["", scale.read_text().rstrip()]
    (ROOT / "BENCHMARKS.md").write_text("\n".join(lines) + "\n")
    print(f"wrote BENCHMARKS.md ({len(rows)} figures)")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

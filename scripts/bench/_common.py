"""Shared by the benchmarks: where results go and their one JSON shape.

Each benchmark measures a figure side by side with its baseline in one run (ratios hold on noisy
machines, absolute seconds don't) and calls :func:`write_result`.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results"


def machine() -> str:
    cores = os.cpu_count()
    return f"{platform.machine()} {cores} cores, {platform.python_implementation()} {platform.python_version()}"


def write_result(name: str, metric: str, value: float, baseline: float, ratio: float, target: float,
                 unit: str, notes: str = "") -> dict:
    """Write bench/results/<name>.json. ``ratio`` is oriented so that higher is better and
    ``target`` is the least acceptable ratio."""
    result = {
        "name": name, "metric": metric, "value": round(float(value), 4), "baseline": round(float(baseline), 4),
        "ratio": round(float(ratio), 4), "target": float(target), "unit": unit, "notes": notes,
        "machine": machine(), "passed": bool(ratio >= target),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"{name}: {metric} = {value:.4g} {unit} vs baseline {baseline:.4g} -> ratio {ratio:.3f} (target {target})")
    return result

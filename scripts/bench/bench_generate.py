"""Generation throughput against the TGI-protocol test server (tests/tgi_server.py).

2,000 requests at a fixed 50 ms server latency with concurrency 32: achieved requests/s as a
ratio of the ideal 32 / 0.05 s = 640 req/s (target 0.9), through hfaug's TGI backend (the
huggingface_hub AsyncInferenceClient on one shared aiohttp session) with the request cache on.
Side by side: a bare aiohttp loop on one session (the floor of any client here), the same
huggingface_hub client used naively (a new HTTP session per request), and a run with 10% injected
429/503 faults (every row must complete, none twice; its ratio is throughput kept against the
fault-free run, target 0.8).

    python scripts/bench/bench_generate.py [--requests 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from _common import write_result  # noqa: E402

CONCURRENCY = 32
LATENCY = 0.05


def start_server(fault_rate: float = 0.0) -> tuple[subprocess.Popen, str]:
    # a separate process, so the server does not share the client's interpreter lock
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "tgi_server.py"), "--latency", str(LATENCY),
                             "--fault-rate", str(fault_rate), "--faults", "429,503"],
                            stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if not line.startswith("READY "):
        proc.kill()
        raise RuntimeError(f"test server did not start: {line!r}")
    return proc, line.split()[1]


def requests(n: int):
    from hfaug.prompts import Request

    return [Request("review", "positive", i, (("user", f"Write review number {i}."),), 1000 + i) for i in range(n)]


def run_ours(url: str, n: int, *, backoff: float = 0.05) -> tuple[float, dict, int]:
    from hfaug.generate import GenerateConfig
    from hfaug.generate.backends import make_backend
    from hfaug.generate.cache import RequestCache
    from hfaug.generate.engine import RetryPolicy, run_requests

    async def go():
        config = GenerateConfig(backend="tgi", endpoints=[url], prompt_format="plain", concurrency=CONCURRENCY,
                                timeout=30)
        backend = make_backend(config, model="bench")
        await backend.start()
        with tempfile.TemporaryDirectory() as tmp:
            cache = RequestCache(Path(tmp) / "requests.sqlite")
            try:
                start = time.perf_counter()
                outcome = await run_requests(backend, requests(n), {"max_new_tokens": 32}, cache=cache,
                                             concurrency=CONCURRENCY, retry=RetryPolicy(10, backoff, 1.0),
                                             progress=False)
                wall = time.perf_counter() - start
                stored = cache.counts().get("ok", 0)
            finally:
                cache.close()
                await backend.close()
        return wall, outcome, stored

    wall, outcome, stored = asyncio.run(go())
    return n / wall, dict(outcome.stats), len(outcome.results) if stored == len(outcome.results) else -1


def run_naive(url: str, n: int) -> float:
    from huggingface_hub import AsyncInferenceClient

    async def go():
        client = AsyncInferenceClient(model=url, timeout=30)
        sem = asyncio.Semaphore(CONCURRENCY)

        async def one(i):
            async with sem:
                return await client.text_generation(f"Write review number {i}.", seed=1000 + i, max_new_tokens=32)

        start = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        return time.perf_counter() - start

    return n / asyncio.run(go())


def run_raw(url: str, n: int) -> float:
    """The floor of the client side: a bare aiohttp loop on one session, no client library."""
    import aiohttp

    async def go():
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CONCURRENCY * 2)) as session:
            sem = asyncio.Semaphore(CONCURRENCY)

            async def one(i):
                async with sem:
                    body = {"inputs": f"Write review number {i}.", "parameters": {"seed": 1000 + i, "max_new_tokens": 32}}
                    async with session.post(url, json=body) as r:
                        return await r.json()

            start = time.perf_counter()
            await asyncio.gather(*(one(i) for i in range(n)))
            return time.perf_counter() - start

    return n / asyncio.run(go())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    n = args.requests
    ideal = CONCURRENCY / LATENCY

    proc, url = start_server()
    try:
        run_ours(url, 200)  # warm up imports and the server
        raw = run_raw(url, n)
        naive = run_naive(url, n)
        ours, stats, rows = run_ours(url, n)
    finally:
        proc.kill()
        proc.wait()
    write_result("generate_throughput", "requests/s, 50 ms latency, concurrency 32", ours, ideal, ours / ideal, 0.9,
                 "req/s", f"{n} requests through the tgi backend with the sqlite cache on; naive "
                          f"AsyncInferenceClient (new session per request): {naive:.0f} req/s "
                          f"({naive / ideal:.3f} of ideal); bare aiohttp loop on one session: {raw:.0f} req/s "
                          f"({raw / ideal:.3f}); ours/bare {ours / raw:.3f}; rows {rows}/{n}")

    proc, url = start_server(fault_rate=0.1)
    try:
        ours_f, stats_f, rows_f = run_ours(url, n)
    finally:
        proc.kill()
        proc.wait()
    complete = rows_f == n and stats_f.get("failed", 0) == 0
    write_result("generate_throughput_faults", "requests/s with 10% 429/503 faults vs without", ours_f, ours,
                 ours_f / ours if complete else 0.0, 0.8, "req/s",
                 f"{n} requests, {stats_f.get('retries', 0)} retries (backoff 50 ms doubling, jitter), "
                 f"{rows_f}/{n} rows completed, failed {stats_f.get('failed', 0)}, none duplicated "
                 f"(one cache row per key); {ours_f / ideal:.3f} of the ideal 640 req/s; ratio 0 if any row "
                 f"is missing")


if __name__ == "__main__":
    main()

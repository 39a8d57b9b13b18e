"""The TGI-protocol test server (tests/tgi_server.py) answering with LLM-like reviews from
scale_corpus.py instead of random words: ``python scripts/bench/scale_server.py --latency 0.05``
prints ``READY <url>``."""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1] / "tests"))

import tgi_server  # noqa: E402
from scale_corpus import review_for  # noqa: E402

if __name__ == "__main__":
    tgi_server.text_for = review_for
    tgi_server.main()

#!/usr/bin/env python
"""Rerun the hfaug recipe that made a published dataset.

Uploaded into every dataset repo hfaug publishes, next to ``recipe.yaml``::

    # first install hfaug: it is not on PyPI; the dataset card (Reproducing) says how
    python reproduce.py USER/DATASET --revision v1 --output-dir reproduced
    python reproduce.py                      # in a downloaded copy of the repo: uses ./recipe.yaml

It downloads ``recipe.yaml`` at that revision (``HF_ENDPOINT`` and ``HF_TOKEN`` are honoured, as
everywhere in huggingface_hub) and reruns it in a clean folder with ``hfaug.pipeline.reproduce``, the
same code as ``hfaug reproduce``: the publish step writes the layout locally and never pushes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repo", nargs="?", help="dataset repo id (user/name) or a local copy of the repo")
    parser.add_argument("--revision", default="main", help="tag, branch or commit (default: main)")
    parser.add_argument("--output-dir", help="clean folder for the rerun (default: reproduce/<repo>-<revision>)")
    args = parser.parse_args(argv)

    from hfaug.errors import HfaugError
    from hfaug.pipeline import reproduce, summary

    # without a repo id, this script sits in a downloaded copy of the repo, beside recipe.yaml
    repo = args.repo or str(Path(__file__).resolve().parent)
    try:
        run = reproduce(repo, args.revision, args.output_dir)
    except HfaugError as e:
        print(f"reproduce: {e}", file=sys.stderr)
        return e.exit_code
    print(summary(run))
    return 0


if __name__ == "__main__":
    sys.exit(main())

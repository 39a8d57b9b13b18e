#!/usr/bin/env python
"""Rerun the hfaug recipe that made a published dataset.

Uploaded into every dataset repo hfaug publishes, next to ``recipe.yaml``::

    pip install hfaug
    python reproduce.py USER/DATASET --revision v1 --output-dir reproduced
    python reproduce.py                      # in a downloaded copy of the repo: uses ./recipe.yaml

It downloads ``recipe.yaml`` at that revision (``HF_ENDPOINT`` and ``HF_TOKEN`` are honoured, as
everywhere in huggingface_hub), drops its ``publish`` section so a reproduction never pushes, and
runs every stage with ``hfaug.pipeline`` in a clean folder. ``hfaug reproduce`` does the same.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

RECIPE_FILE = "recipe.yaml"


def fetch_recipe(repo: str | None, revision: str) -> Path:
    """recipe.yaml of a Hub dataset repo at ``revision``, a local repo folder, or beside this script."""
    if repo is None:
        here = Path(__file__).resolve().parent / RECIPE_FILE
        if not here.is_file():
            sys.exit(f"reproduce: no {RECIPE_FILE} beside this script; pass the dataset repo id")
        return here
    if Path(repo).is_dir():
        return Path(repo) / RECIPE_FILE
    from huggingface_hub import hf_hub_download

    endpoint = os.environ.get("HF_ENDPOINT")
    return Path(hf_hub_download(repo, RECIPE_FILE, repo_type="dataset", revision=revision, endpoint=endpoint))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repo", nargs="?", help="dataset repo id (user/name) or a local copy of the repo")
    parser.add_argument("--revision", default="main", help="tag, branch or commit (default: main)")
    parser.add_argument("--output-dir", help="clean folder for the rerun (default: reproduce/<repo>-<revision>)")
    args = parser.parse_args(argv)

    import yaml

    from hfaug.config import load_recipe
    from hfaug.pipeline import run_pipeline, summary

    path = fetch_recipe(args.repo, args.revision)
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    data.pop("publish", None)  # reproduce the data; never push it again
    name = re.sub(r"[^\w.\-]+", "-", f"{args.repo or 'local'}-{args.revision}").strip("-")
    out = Path(args.output_dir or Path("reproduce") / name)
    if out.exists() and any(out.iterdir()):
        sys.exit(f"reproduce: {out} is not empty; give a clean --output-dir")
    data["output_dir"] = str(out)
    recipe = load_recipe(data)
    run = run_pipeline(recipe, root=out / recipe.run.name)
    print(summary(run))
    return 0


if __name__ == "__main__":
    sys.exit(main())

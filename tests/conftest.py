"""Shared fixtures: an offline environment, tiny models, and recipes writing into tmp_path.

Every test runs with HF_HUB_OFFLINE=1 and reaches only 127.0.0.1. Tiny models are built once
into the hfaug cache (HFAUG_HOME) and loaded through the real from_pretrained.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_DISABLE_XET", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "tests" / "artifacts"


@pytest.fixture(autouse=True)
def _isolated_hf_home(tmp_path, monkeypatch):
    """No test sees a real login or a real cache."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)


@pytest.fixture(scope="session")
def tiny():
    """Folders of the tiny models, by kind: encoder, chat-lm, mt, embedder."""
    from hfaug.testing import BUILDERS, tiny_model

    return {kind: tiny_model(kind) for kind in BUILDERS}


@pytest.fixture
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture
def demo_recipe(tmp_path):
    """The packaged demo recipe as a dict, writing into tmp_path. Tests trim or override it."""
    import yaml

    from hfaug.config import find_recipe

    data = yaml.safe_load(find_recipe("demo").read_text())
    data["output_dir"] = str(tmp_path / "runs")
    return data

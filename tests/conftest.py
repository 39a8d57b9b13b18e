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
#: the fake Hub token of the tests: never a real one, and scanned for in every output
TOKEN = "hf_test-fake-token-s3cr3t-0123456789"
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


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A Hub on 127.0.0.1, with the clients pointed at it (their import-time constants patched)."""
    import datasets
    import huggingface_hub.constants as hf_constants
    import huggingface_hub.file_download
    from hub_server import HubServer

    server = HubServer().start()
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hf_constants, "ENDPOINT", server.url)
    template = server.url + "/{repo_id}/resolve/{revision}/{filename}"
    monkeypatch.setattr(hf_constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)
    monkeypatch.setattr(huggingface_hub.file_download, "HUGGINGFACE_CO_URL_TEMPLATE", template)  # imported by name
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.setattr(hf_constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(datasets.config, "HF_ENDPOINT", server.url)
    monkeypatch.setattr(datasets.config, "HUB_DATASETS_URL", server.url + "/datasets/{repo_id}/resolve/{revision}/{path}")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_UPDATE_DOWNLOAD_COUNTS", False)
    monkeypatch.setattr(datasets.config, "USE_PARQUET_EXPORT", False)  # no datasets-server here
    yield server
    server.stop()

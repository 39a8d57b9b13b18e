"""Shared fixtures: an offline environment, tiny models, and recipes writing into tmp_path.

Every test runs with HF_HUB_OFFLINE=1 and reaches only 127.0.0.1. The whole session, and every
process it starts, has homes of its own (HF_HOME, HFAUG_HOME, ...) in one temp folder, set here
before any test module imports datasets or huggingface_hub (which read them once, at import): no
cache, lock or login left on the machine by an earlier run can reach a test. Tiny models are built
once per session into that HFAUG_HOME and loaded through the real from_pretrained.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path

import pytest

SESSION_HOME = Path(tempfile.mkdtemp(prefix="hfaug-tests-"))
atexit.register(shutil.rmtree, SESSION_HOME, ignore_errors=True)
for _var, _sub in (("HF_HOME", "hf_home"), ("HF_DATASETS_CACHE", "hf_home/datasets"), ("HFAUG_HOME", "hfaug"),
                   ("XDG_CACHE_HOME", "xdg"), ("MPLCONFIGDIR", "matplotlib"), ("GRADIO_TEMP_DIR", "gradio")):
    os.environ[_var] = str(SESSION_HOME / _sub)
# a distributed launcher's variables in the caller's shell would turn every stage into a non-main
# rank (which writes nothing); proxies would take the tests' 127.0.0.1 requests elsewhere (tokens:
# the autouse fixture below)
for _var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "HF_ENDPOINT"):
    os.environ.pop(_var, None)
os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost,::1"
# nothing leaves 127.0.0.1, in this process and in every Python process a test starts (netguard/)
NETGUARD_LOG = SESSION_HOME / "netguard.log"
os.environ["HFAUG_NETGUARD_LOG"] = str(NETGUARD_LOG)
_NETGUARD = str(Path(__file__).resolve().parent / "netguard")
os.environ["PYTHONPATH"] = os.pathsep.join([_NETGUARD, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))])

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_DISABLE_XET", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

ROOT = Path(__file__).resolve().parents[1]
# Each test has a timeout (pyproject: pytest-timeout); this caps the whole suite, so a machine on
# which tests hang one after another still ends with the report of what hung, inside CI's time.
BUDGET_S = float(os.environ.get("HFAUG_TEST_BUDGET_S", "2700"))
_START = time.monotonic()
#: the fake Hub token of the tests: never a real one, and scanned for in every output
TOKEN = "hf_test-fake-token-s3cr3t-0123456789"
ARTIFACTS = ROOT / "tests" / "artifacts"


def free_port() -> int:
    """A port on 127.0.0.1 that is free now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(autouse=True)
def _no_network_outside_localhost():
    """Fail the test that tried to reach anything but 127.0.0.1 (itself, or a process it started)."""
    from importlib import util

    spec = util.spec_from_file_location("hfaug_netguard", Path(_NETGUARD) / "sitecustomize.py")
    guard = util.module_from_spec(spec)
    spec.loader.exec_module(guard)
    guard.install()  # once per process: later calls find it installed
    start = NETGUARD_LOG.stat().st_size if NETGUARD_LOG.exists() else 0
    yield
    if NETGUARD_LOG.exists() and NETGUARD_LOG.stat().st_size > start:
        with NETGUARD_LOG.open(encoding="utf-8") as f:
            f.seek(start)
            pytest.fail("network access outside 127.0.0.1:\n" + f.read()[-4000:], pytrace=False)


@pytest.fixture(autouse=True)
def _isolated_hf_home(tmp_path, monkeypatch):
    """No test sees a real login or a real cache."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models train fastest on one thread; on a shared CPU two threads spin against each
    other (several times slower). Modules that train use it with ``pytestmark``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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
    import huggingface_hub.utils
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
    # a session made while offline (e.g. by an earlier test loading a model) carries the offline
    # adapter for good: start from fresh ones, and leave fresh ones behind
    huggingface_hub.utils.reset_sessions()
    yield server
    server.stop()
    huggingface_hub.utils.reset_sessions()


def pytest_runtest_setup(item):
    if time.monotonic() - _START > BUDGET_S:
        pytest.exit(f"the suite ran past its {BUDGET_S:.0f} s budget (HFAUG_TEST_BUDGET_S) before {item.nodeid}; "
                    "the failures above say which tests hung", returncode=3)

"""The package surface: the docstring example runs, stages load lazily, install hints name the right extra."""

from __future__ import annotations

import doctest
import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest

import hfaug
from hfaug.errors import HfaugError
from hfaug.extras import install_hint, missing

ROOT = Path(__file__).resolve().parents[1]


def test_package_docstring_example_runs():
    result = doctest.testmod(hfaug, verbose=False)
    assert result.attempted >= 3
    assert result.failed == 0


def test_every_stage_is_in_the_lazy_map():
    from hfaug.pipeline import PIPELINE

    modules = {stage.entry.split(":")[0].rsplit(".", 1)[-1] for stage in PIPELINE}
    assert modules <= set(hfaug._STAGE_MODULES)
    assert hfaug.adapt.__name__ == "hfaug.adapt"


def test_import_hfaug_stays_light():
    code = "import sys, hfaug; print(sorted(m for m in ('torch', 'transformers', 'datasets') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def _pairs(requirements, extra=None):
    from packaging.requirements import Requirement

    found = set()
    for text in requirements:
        req = Requirement(text)
        marker = str(req.marker) if req.marker else ""
        name = marker.split("==")[-1].strip().strip('"') if "extra" in marker else extra
        found.add((req.name.lower(), name))
    return found


def test_hints_name_the_extra_that_carries_the_package():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = _pairs(project["dependencies"])
    for extra, requirements in project["optional-dependencies"].items():
        declared |= _pairs(requirements, extra)
    # the hints read the installed metadata: it must say what this tree's pyproject says
    assert _pairs(importlib.metadata.requires("hfaug") or []) == declared, "stale metadata: reinstall hfaug"
    assert install_hint("peft", prefer="generate") == "pip install 'hfaug[generate]'"
    assert install_hint("sentence_transformers") == "pip install 'hfaug[train]'"
    assert install_hint("onnxruntime", prefer="serve") == "pip install 'hfaug[serve]'"
    assert install_hint("IndicTransToolkit") == "pip install 'hfaug[indic]'"
    assert install_hint("not_a_real_package") == "pip install not_a_real_package"
    # jinja2 renders every card and prompt: a core dependency, not an extra
    assert ("jinja2", None) in declared


def test_missing_package_is_one_line_naming_the_extra():
    with pytest.raises(ImportError) as info:
        import sentence_transformers_not_installed  # noqa: F401
    error = missing("div-k", info.value)
    assert isinstance(error, HfaugError) and "\n" not in str(error)
    assert str(error).startswith("div-k needs sentence_transformers_not_installed")
    info.value.name = "sentence_transformers"
    assert str(missing("div-k", info.value)).endswith("pip install 'hfaug[train]'")

"""One place for "this needs a package that is not installed" messages.

The hint names the extra that really carries the package, read from hfaug's own installed metadata
(``Requires-Dist: peft>=0.13; extra == "train"``), so it cannot drift from pyproject.toml.
"""

from __future__ import annotations

import re
from functools import lru_cache

from .errors import HfaugError
from .retry import short

# import name -> distribution name, where they differ
_DISTRIBUTIONS = {
    "sentence_transformers": "sentence-transformers",
    "sklearn": "scikit-learn",
    "optimum": "optimum-onnx",
    "yaml": "pyyaml",
}


@lru_cache(maxsize=1)
def _extras_by_distribution() -> dict[str, list[str]]:
    """Normalised distribution name -> the extras that list it, in pyproject order."""
    import importlib.metadata

    try:
        requires = importlib.metadata.requires("hfaug") or []
    except importlib.metadata.PackageNotFoundError:  # a source tree on sys.path, not installed
        return {}
    found: dict[str, list[str]] = {}
    for requirement in requires:
        extra = re.search(r"""extra\s*==\s*["']([^"']+)["']""", requirement)
        name = re.match(r"[A-Za-z0-9_.\-]+", requirement)
        if extra and name and extra.group(1) not in ("all", "dev"):
            found.setdefault(_normalise(name.group(0)), []).append(extra.group(1))
    return found


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def distribution(module: str) -> str:
    """The pip name of an importable top-level module (``sklearn`` -> ``scikit-learn``)."""
    top = module.split(".")[0]
    return _DISTRIBUTIONS.get(top, top)


def install_hint(package: str, prefer: str | None = None) -> str:
    """``pip install 'hfaug[<extra>]'`` for the extra carrying ``package`` (``prefer`` when it is one
    of several), or ``pip install <package>`` when no extra carries it."""
    dist = distribution(package)
    extras = _extras_by_distribution().get(_normalise(dist), [])
    if prefer in extras:
        return f"pip install 'hfaug[{prefer}]'"
    if extras:
        return f"pip install 'hfaug[{extras[0]}]'"
    return f"pip install {dist}"


def missing(what: str, error: ImportError, prefer: str | None = None) -> HfaugError:
    """The one-line error for ``what`` (e.g. "div-k") failing to import a package; raise it ``from None``."""
    module = getattr(error, "name", None) or _module_in(str(error)) or "a package"
    return HfaugError(f"{what} needs {distribution(module)}, which is not installed or fails to import "
                      f"({short(error)}); {install_hint(module, prefer)}")


def _module_in(text: str) -> str | None:
    match = re.search(r"No module named '([^']+)'", text)
    return match.group(1) if match else None

"""The run-folder layout is stated once (hfaug/layout.py) and the stages do not reach into each other.

Static checks on the source (no models, no datasets): fast, and they fail the moment a stage
spells another stage's path or imports another stage.
"""

from __future__ import annotations

import ast
import importlib.util
import sys
from pathlib import Path

import pytest

from hfaug import layout
from hfaug.errors import HfaugError

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "hfaug"
SPACE = ROOT / "spaces" / "hfaug_space.py"

#: the pipeline's stages: each reads the others' outputs through hfaug.layout (and the run), never
#: by importing them
STAGES = ("source", "generate", "teacher", "label", "translate", "select", "publish", "distill", "evaluate",
          "export", "serve", "adapt")
#: the driver modules: they reach every stage, so a stage importing one reaches them all
DRIVERS = ("hfaug.pipeline", "hfaug.plan", "hfaug.cli", "hfaug.__main__")
#: known import circles (one edge each), to be removed as they are broken; none today (tasks and
#: config both build dataclasses with hfaug.typed, so tasks no longer imports config)
KNOWN_CIRCLES: set[tuple[str, str]] = set()


# ---------------------------------------------------------------------------------------------
# the import graph of hfaug, from the source


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str, path: Path) -> set[str]:
    """hfaug modules ``name`` imports anywhere: at the top, in functions (lazy imports hide a
    dependency, they do not remove it) and under TYPE_CHECKING."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # `from . import schema` imports the module hfaug.schema; `from .x import f` imports hfaug.x
            found.update(f"{target}.{a.name}" if f"{target}.{a.name}" in MODULES else target for a in node.names)
    # importing a module imports its parent packages anyway, so `from . import __version__` adds
    # nothing (the package's __init__ imports its stages only on first use)
    parents = {".".join(name.split(".")[:i]) for i in range(1, len(name.split(".")))}
    return {m for m in found if m in MODULES and m != name and m not in parents}


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _stage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in STAGES else None


def test_the_import_graph_sees_lazy_and_relative_imports():
    assert "hfaug.layout" in GRAPH["hfaug.label"]  # top-level, relative
    assert "hfaug.engine" not in GRAPH["hfaug.generate"]
    assert "hfaug.generate.engine" in GRAPH["hfaug.generate"]  # in a function
    assert "hfaug.schema" in GRAPH["hfaug.generate.classify"]  # from .. import schema
    assert "hfaug.pipeline" in GRAPH["hfaug.cli"]


def test_no_stage_imports_another_stage():
    """Directly or through shared modules: a stage reaches only itself, never another stage or the driver."""
    found = []
    for module in GRAPH:
        stage = _stage(module)
        if stage is None:
            continue
        seen, todo = {module}, [(module, [module])]
        while todo:
            current, path = todo.pop()
            for target in sorted(GRAPH[current] - seen):
                seen.add(target)
                other = _stage(target)
                if (other is not None and other != stage) or target in DRIVERS:
                    found.append(" -> ".join([*path, target]))
                    continue
                todo.append((target, [*path, target]))
    assert not found, "stages reaching other stages (share through hfaug.layout or a small module):\n" + \
        "\n".join(found)


def test_no_import_circle():
    graph = {m: {t for t in targets if (m, t) not in KNOWN_CIRCLES} for m, targets in GRAPH.items()}
    circles = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                circles.append(" -> ".join([*path[path.index(target):], target]))
            elif target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not circles, "import circles among hfaug modules:\n" + "\n".join(circles)


def _reaches(source: str, target: str) -> bool:
    seen, todo = {source}, [source]
    while todo:
        for module in GRAPH[todo.pop()] - seen:
            if module == target:
                return True
            seen.add(module)
            todo.append(module)
    return False


def test_known_circles_still_exist():
    """A circle that is broken leaves KNOWN_CIRCLES, so it cannot come back unseen."""
    stale = [(a, b) for a, b in KNOWN_CIRCLES if b not in GRAPH[a] or not _reaches(b, a)]
    assert not stale, f"remove these from KNOWN_CIRCLES, the circle is gone: {stale}"


# ---------------------------------------------------------------------------------------------
# the paths are named in layout.py only

#: layout's names that are specific enough that a string equal to one is that path
SPECIFIC = {name: getattr(layout, name) for name in (
    "MANIFEST", "RECIPE_FILE", "REQUESTS_DB", "RELEASE_FILE", "ADAPT_JSON", "TEACHER_JSON", "BEST_DIR",
    "STUDENTS_DIR", "METRICS_JSON", "GRID_MD", "GRID_JSON", "ONNX_FILE", "INFO_FILE", "HUB_LAYOUT_DIR",
    "REPO_INT8_FILE", "EVAL_MD")}


def _path_literals(path: Path) -> list[str]:
    """String constants of a module equal to a layout path, except docstrings, dict keys and
    subscripts (metrics named like a folder), and the Space's own module-level constants (which
    test_space_names_equal_the_layout checks)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            skip.add(id(node.value))  # a docstring or a bare string
        elif isinstance(node, ast.Dict):
            skip.update(id(k) for k in node.keys if k is not None)  # a key of metrics, not a path
        elif isinstance(node, ast.Subscript):
            skip.add(id(node.slice))
        elif isinstance(node, ast.keyword) and node.arg == "elem_id":
            skip.add(id(node.value))  # an HTML id of the app
    if path == SPACE:
        for node in tree.body:
            if isinstance(node, (ast.Assign, ast.AnnAssign)):
                skip.update(id(n) for n in ast.walk(node))
    values = set(SPECIFIC.values())
    return [f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}" for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in values
            and id(node) not in skip]


def test_run_folder_paths_are_spelled_only_in_layout():
    files = [p for p in MODULES.values() if p.name != "layout.py"] + sorted((ROOT / "spaces").glob("*.py"))
    found = [hit for p in files for hit in _path_literals(p)]
    assert not found, "use hfaug.layout's names for these paths:\n" + "\n".join(found)


def test_space_names_equal_the_layout(monkeypatch):
    """The Space runs without hfaug, so it keeps its own names; they are the ones publish-model writes."""
    spec = importlib.util.spec_from_file_location("hfaug_space_names", SPACE)
    space = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, space)  # its dataclasses look their module up
    spec.loader.exec_module(space)
    assert space.ONNX_SUBFOLDER == layout.REPO_ONNX_DIR
    assert space.ONNX_FILES == {"int8": layout.REPO_INT8_FILE, "fp32": layout.REPO_FP32_FILE}
    assert layout.REPO_FP32_FILE == layout.ONNX_FILE  # a local export folder serves as it is
    assert space.INFO_FILE == layout.INFO_FILE
    assert layout.INFO_FILE in space.SIDE_FILES and layout.MODEL_CONFIG in space.SIDE_FILES


# ---------------------------------------------------------------------------------------------
# the readers


def test_readers_find_finished_folders_only(tmp_path):
    distill, export = tmp_path / "distill", tmp_path / "export"
    for name in ("b", "a"):
        (distill / layout.STUDENTS_DIR / name).mkdir(parents=True)
        (distill / layout.STUDENTS_DIR / name / layout.MODEL_CONFIG).write_text("{}")
        (export / layout.INT8_DIR / name).mkdir(parents=True)
        (export / layout.INT8_DIR / name / layout.ONNX_FILE).write_bytes(b"")
    (distill / layout.STUDENTS_DIR / "half").mkdir()  # no config.json: not a student (yet)
    assert list(layout.student_dirs(distill)) == ["a", "b"]
    assert layout.student_dirs(distill)["a"] == distill / "students" / "a"
    assert list(layout.export_dirs(export, layout.INT8_DIR)) == ["a", "b"]
    assert layout.export_dirs(export) == {}  # no fp32 exports
    assert layout.student_metrics_path(distill, "a") == distill / "students" / "a" / "metrics.json"
    assert layout.stage_cache_dir(tmp_path, "generate") == tmp_path / "cache" / "generate"


def test_teacher_and_adapt_readers(tmp_path):
    with pytest.raises(HfaugError, match="not a teacher folder.*hfaug teacher"):
        layout.read_teacher(tmp_path)
    epochs = [{"epoch": n, "path": layout.checkpoint_path(n)} for n in (1, 2)]
    (tmp_path / layout.TEACHER_JSON).write_text('{"epochs": %s}' % str(epochs).replace("'", '"'))
    assert layout.checkpoint_dirs(tmp_path) == [tmp_path / "checkpoints" / "epoch-1", tmp_path / "checkpoints" / "epoch-2"]
    assert layout.read_adapt(tmp_path)["adapter"] == str(tmp_path / "adapter")  # no adapt.json: the default
    (tmp_path / layout.ADAPT_JSON).write_text('{"adapter": "lora", "base_model": "m"}')
    assert layout.read_adapt(tmp_path) == {"adapter": str(tmp_path / "lora"), "base_model": "m"}

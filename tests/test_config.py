"""Recipes: packaged names, validation errors with one line and exit code 2, overrides."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

import pytest
import yaml

from hfaug.cli import main
from hfaug.config import check_type, from_dict, load_recipe, packaged_recipes, resolve
from hfaug.errors import HfaugError

SOURCE = {"path": "hfaug://data/demo/sentiment_en.jsonl"}


def test_packaged_demo_recipe_loads():
    assert "demo" in packaged_recipes()
    recipe = load_recipe("demo")
    assert recipe.run.name == "demo"
    assert recipe.source.path.startswith("hfaug://data/")
    assert recipe.source_path.endswith("demo.yaml")


def test_overrides_take_types_from_yaml():
    recipe = load_recipe({"task": "nli", "source": SOURCE}, {"source.limit": 5, "name": "x"})
    assert recipe.source.limit == 5 and recipe.run.name == "x" and recipe.run.task == "nli"
    with pytest.raises(HfaugError, match="'recipe.seed' must be int"):
        load_recipe({"source": SOURCE}, {"seed": "seven"})
    recipe = load_recipe({"source": SOURCE}, ["seed=7", "source.dev_fraction=0.25"])
    assert recipe.run.seed == 7 and recipe.source.dev_fraction == 0.25


@pytest.mark.parametrize(
    "data, expected",
    [
        ({"source": {**SOURCE, "pathh": "x"}}, "unknown key 'source.pathh' in recipe (did you mean 'path'?)"),
        ({"sorce": SOURCE}, "unknown recipe section 'sorce'"),
        ({"source": {**SOURCE, "dev_fraction": "lots"}}, "'source.dev_fraction' must be float"),
        ({"source": {}}, "missing required key 'source.path'"),
        ({"task": "ner", "source": SOURCE}, "unknown task 'ner'"),
        ({"source": {**SOURCE, "dev_fraction": 2.0}}, "dev_fraction must be in [0, 1)"),
    ],
)
def test_bad_recipes_are_one_line_user_errors(data, expected):
    with pytest.raises(HfaugError) as e:
        load_recipe(data)
    assert expected in str(e.value)
    assert "\n" not in str(e.value)


def test_misspelt_key_exits_2_with_one_line(tmp_path, capsys):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"name": "t", "output_dir": str(tmp_path), "source": {**SOURCE, "limt": 3}}))
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["hfaug: error: unknown key 'source.limt' in recipe (did you mean 'limit'?)"]


def test_invalid_yaml_names_the_line(tmp_path, capsys):
    path = tmp_path / "r.yaml"
    path.write_text("source:\n  path: [unclosed\n")
    assert main(["source", "--config", str(path)]) == 2
    assert "is not valid YAML" in capsys.readouterr().err


def test_unknown_packaged_recipe_suggests_the_closest():
    with pytest.raises(HfaugError, match="did you mean 'demo'"):
        load_recipe("dmeo")


@dataclass
class _Example:
    name: str = field(default="x", metadata={"help": "a name"})
    k: int = 1
    ratio: float = 0.5
    flag: bool = False
    tags: list[str] = field(default_factory=list)
    mode: Literal["soft", "hard"] = "soft"
    maybe: int | None = None


def test_type_checks_and_harmless_conversions():
    cfg = from_dict(_Example, {"ratio": 1, "tags": "one", "maybe": None, "mode": "hard"}, "ex")
    assert cfg.ratio == 1.0 and isinstance(cfg.ratio, float)
    assert cfg.tags == ["one"]  # a single value where a list is expected
    assert cfg.mode == "hard"
    assert from_dict(_Example, {"ratio": "5e-6"}, "ex").ratio == 5e-6  # YAML reads 5e-6 as a string
    with pytest.raises(HfaugError, match="'ex.mode' must be one of"):
        from_dict(_Example, {"mode": "sofft"}, "ex")
    with pytest.raises(HfaugError, match="'ex.flag' must be true or false"):
        from_dict(_Example, {"flag": "yes"}, "ex")
    with pytest.raises(HfaugError, match="'ex.k' must be an integer"):
        check_type(True, int, "ex.k")
    assert dataclasses.asdict(from_dict(_Example, {}, "ex"))["name"] == "x"


def test_package_references_resolve_to_local_paths(tmp_path):
    path = resolve("hfaug://data/demo/sentiment_en.jsonl")
    assert path.endswith("sentiment_en.jsonl")
    assert resolve("FacebookAI/xlm-roberta-large") == "FacebookAI/xlm-roberta-large"
    with pytest.raises(HfaugError, match="unknown tiny model"):
        resolve("hfaug://tiny/gpt5")
    with pytest.raises(HfaugError, match="does not exist"):
        resolve("hfaug://data/nope.jsonl")

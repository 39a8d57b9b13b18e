"""The packaged recipes: each parses, validates and resolves offline, with the paper's values."""

from __future__ import annotations

import socket

import pytest

from hfaug.config import load_recipe, packaged_recipes, reference_markdown, resolve
from hfaug.languages import FLORES200, INDICTRANS2, get_language
from hfaug.pipeline import planned

PAPER = [name for name in packaged_recipes() if name.startswith("paper/")]


@pytest.fixture
def no_network(monkeypatch):
    """Any connection attempt fails the test: resolving a recipe must not download anything."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access while resolving a recipe: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)


def test_the_paper_settings_are_packaged():
    assert set(PAPER) == {"paper/sentiment-mr", "paper/sentiment-hi", "paper/xnli-hi", "paper/xnli-ur", "paper/xnli-sw"}


@pytest.mark.parametrize("name", PAPER)
def test_paper_recipe_parses_and_resolves_offline(name, no_network):
    recipe = load_recipe(name)
    assert [s.name for s in planned(recipe)][:2] == ["source", "generate"]
    # every model and data reference resolves to itself (a Hub id), without a download
    refs = [recipe.generate.model, recipe.teacher.model, recipe.translate.model, recipe.select.embedder,
            recipe.distill.model, recipe.source.path, *[t.path for t in recipe.evaluate.test_sets]]
    assert [resolve(r) for r in refs] == refs

    # the paper's hyperparameters (PAPER.md)
    assert recipe.generate.backend == "tgi" and "Llama-2" in recipe.generate.model
    assert (recipe.generate.top_p, recipe.generate.no_repeat_ngram_size) == (0.9, 2)
    assert recipe.teacher.model == recipe.distill.model == "FacebookAI/xlm-roberta-large"
    assert (recipe.teacher.epochs, recipe.teacher.learning_rate, recipe.teacher.batch_size,
            recipe.teacher.gradient_accumulation_steps, recipe.teacher.max_length) == (15, 5e-6, 32, 4, 128)
    assert recipe.label.dynamics
    assert recipe.select.budgets[0] == 2500 and recipe.select.n_clusters == 25
    # the experiment grid: budgets 2.5k to 22.5k per class, every strategy and all, the paper's seeds
    assert recipe.select.budgets == [2500, 7500, 12500, 17500, 22500] and "all" in recipe.select.strategies
    assert recipe.distill.seeds == [42, 12, 100]
    assert recipe.select.embedder == "sentence-transformers/LaBSE"
    assert (recipe.distill.temperature, recipe.distill.loss_form, recipe.distill.label_mode) == (1.5, "paper", "soft")
    assert recipe.distill.num_train_epochs == 15

    # IndicTrans2 for the Indic languages, NLLB for Swahili; the language is covered by the model
    (lang,) = recipe.translate.languages
    flores = get_language(lang).flores
    if lang in ("hi", "mr", "ur"):
        assert "indictrans2" in recipe.translate.model and recipe.translate.trust_remote_code
        assert flores in INDICTRANS2
    else:
        assert "nllb" in recipe.translate.model and not recipe.translate.trust_remote_code
        assert flores in FLORES200
    assert {t.lang for t in recipe.evaluate.test_sets} == {lang}
    if recipe.run.task == "nli":
        assert recipe.generate.domain_mix == {"travel": 0.4, "government": 0.4, "fiction": 0.2}
        assert recipe.generate.premise_temperature == 1.7
    else:
        assert recipe.generate.temperature == 1.5 and recipe.generate.max_new_tokens == 256
    assert (recipe.generate.held_out, recipe.generate.max_rows) == (10000, 130000)


def test_recipe_reference_documents_every_section():
    text = reference_markdown()
    for section in ("source", "generate", "teacher", "label", "translate", "select", "publish", "distill",
                    "export", "evaluate", "serve", "adapt"):
        assert f"## {section}" in text
    assert "not available" not in text


def test_docs_recipe_reference_is_current():
    """docs/recipes.md is generated; `make docs` rewrites it after a config changes."""
    from pathlib import Path

    docs = Path(__file__).resolve().parents[1] / "docs" / "recipes.md"
    assert docs.read_text(encoding="utf-8").rstrip("\n") == reference_markdown().rstrip("\n")

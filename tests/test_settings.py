"""The paper's two settings as stage orders: what each stage reads, end to end on tiny models."""

from __future__ import annotations

import json

import pytest
import yaml

from hfaug.config import find_recipe, load_recipe
from hfaug.errors import HfaugError
from hfaug.pipeline import STAGES, planned, run_pipeline, stage_inputs


def tiny_recipe(out, setting: str) -> dict:
    """The demo trimmed to what shows the data flow: one language, one student, few rows."""
    data = yaml.safe_load(find_recipe("demo").read_text())
    data.update(name=f"tiny-{setting}", output_dir=str(out), setting=setting)
    data["generate"].update(n_per_class=8, llm_labels=False)
    data["teacher"].update(epochs=2)
    data["source"].update(limit=36)
    data["source"]["dev"].update(limit=12)
    data["translate"].update(languages=["hi"], max_new_tokens=12, min_new_tokens=4, batch_size=64)
    data["select"].update(strategies=["top-k", "random"], budgets=[3], figures=False)
    lang = "hi" if setting == "translated-teacher" else "en"
    data["distill"].update(subsets=[f"{lang}-topk-3"], num_train_epochs=1, seeds=[42], baseline=False)
    data["publish"] = {"license": "cc-by-4.0", "models": False}
    for section in ("export", "evaluate"):
        data.pop(section)
    return data


def names(recipe) -> list[str]:
    return [s.name for s in planned(recipe)]


def test_each_setting_has_its_stage_order_and_inputs(demo_recipe):
    translated = load_recipe(demo_recipe)
    assert translated.setting == "translated-teacher"
    order = names(translated)
    # the generations are translated before the teacher (trained on the translated source) labels them
    assert order.index("translate-source") < order.index("teacher")
    assert order.index("generate") < order.index("translate") < order.index("label") < order.index("select")
    assert stage_inputs(translated, STAGES["translate"]) == ["generate"]
    assert stage_inputs(translated, STAGES["label"]) == ["translate", "teacher"]
    assert stage_inputs(translated, STAGES["select"]) == ["label"]

    english = load_recipe(demo_recipe, {"setting": "english-teacher"})
    assert "translate" not in names(english) and "translate-source" not in names(english)
    assert stage_inputs(english, STAGES["label"]) == ["generate", "teacher"]

    hybrid = load_recipe(demo_recipe, {"setting": "hybrid"})
    order = names(hybrid)
    assert order.index("label") < order.index("translate")
    # unstated: English-only recipes are the english-teacher setting; translating ones the hybrid
    demo_recipe.pop("setting")
    assert load_recipe(demo_recipe).setting == "hybrid"
    demo_recipe.pop("translate")
    assert load_recipe(demo_recipe).setting == "english-teacher"


def test_setting_errors_name_the_fix(demo_recipe):
    with pytest.raises(HfaugError, match="must be one of .*did you mean 'english-teacher'"):
        load_recipe(demo_recipe, {"setting": "english-teachr"})
    with pytest.raises(HfaugError, match="remove translate.source: false"):
        load_recipe(demo_recipe, {"translate.source": False})
    demo_recipe.pop("translate")
    with pytest.raises(HfaugError, match="needs a translate section"):
        load_recipe(demo_recipe)


def test_every_packaged_paper_recipe_runs_one_of_the_paper_settings():
    from hfaug.config import packaged_recipes

    settings = {}
    for name in packaged_recipes():
        if not name.startswith(("paper/", "demo-english-teacher")) and name != "demo":
            continue
        recipe = load_recipe(name)
        assert recipe.run.setting in ("english-teacher", "translated-teacher"), name
        settings.setdefault(name.removesuffix("-english-teacher"), set()).add(recipe.setting)
    for both in ("paper/sentiment-mr", "paper/xnli-hi", "demo"):
        assert settings[both] == {"english-teacher", "translated-teacher"}, both


@pytest.mark.slow
def test_both_settings_end_to_end(tmp_path):
    """One run folder, first in the translated-teacher setting, then switched to english-teacher:
    the source and the generations are reused, every setting-dependent stage reruns."""
    import datasets

    run = run_pipeline(load_recipe(tiny_recipe(tmp_path, "translated-teacher")))
    teacher = json.loads((run.stage_dir("teacher") / "teacher.json").read_text())
    source_hi = run.load("translate-source", "train-hi")
    assert teacher["train_on"] == "translated" and teacher["train_rows"] == len(source_hi)
    translated = run.load("translate", "hi")
    labelled = run.load("label")
    # the teacher's soft labels and dynamics are on the Hindi text, not copied from English rows
    assert set(labelled["lang"]) == {"hi"}
    assert sorted(labelled["text"]) == sorted(translated["text"])
    assert len(labelled[0]["checkpoint_probs"]) == 2
    generated = run.load("generate")
    chosen = run.load("select", "hi-topk-3")
    assert chosen["text"] and not set(chosen["text"]) & set(generated["text"])
    assert set(chosen["id"]) <= set(labelled["id"])
    # the student: translated source + translated selection
    assert run.manifest("distill")["rows_in"] == len(source_hi) + len(chosen)
    for stage in ("teacher", "label", "select", "distill"):
        assert run.manifest(stage)["setting"] == "translated-teacher"
    card = (run.stage_dir("publish") / "hub-layout" / "README.md").read_text()
    assert "| setting | `translated-teacher`" in card
    model_card = (run.stage_dir("distill") / "students" / "hi-topk-3-seed42" / "README.md").read_text()
    assert "`translated-teacher`" in model_card

    data = tiny_recipe(tmp_path, "english-teacher")
    data["name"] = "tiny-translated-teacher"  # the same run folder
    run = run_pipeline(load_recipe(data))
    status = {name: state for name, state, _, _ in run.report}
    assert status == {"source": "skipped", "generate": "skipped", "teacher": "ran", "label": "ran",
                      "select": "ran", "publish": "ran", "distill": "ran"}
    teacher = json.loads((run.stage_dir("teacher") / "teacher.json").read_text())
    assert teacher["train_on"] == "source" and teacher["train_rows"] == len(run.load("source", "train"))
    assert sorted(run.load("label")["text"]) == sorted(generated["text"])
    assert set(run.outputs("select")) == {"en-topk-3", "en-randk-3"}
    assert set(run.load("select", "en-topk-3")["text"]) <= set(generated["text"])
    distill = run.manifest("distill")
    assert distill["setting"] == "english-teacher"
    assert distill["rows_in"] == len(run.load("source", "train")) + len(run.load("select", "en-topk-3"))
    card = (run.stage_dir("publish") / "hub-layout" / "README.md").read_text()
    assert "| setting | `english-teacher`" in card
    assert datasets.load_from_disk(str(run.stage_dir("label") / "data")).num_rows == len(generated)


def test_run_dry_run_prints_setting_stage_order_and_prompts(tmp_path, capsys, monkeypatch):
    from hfaug import cli

    monkeypatch.chdir(tmp_path)
    assert cli.main(["run", "paper/xnli-hi", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "setting: translated-teacher" in out
    order = [line.split()[1] for line in out.splitlines() if line.strip()[:3].strip(". ").isdigit()]
    assert order.index("translate") < order.index("label")
    assert "label            <- translate, teacher" in out
    assert "premise (travel):" in out and "    user: Please generate a single and short sentence.\n" in out
    assert "    user: Sentence: {premise}" in out
    assert not list(tmp_path.iterdir())  # nothing written

    assert cli.main(["run", "paper/sentiment-mr", "--setting", "english-teacher", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "setting: english-teacher" in out and "translate" not in out.split("prompts:")[0].split("stages:")[1]
    assert "neutral (strict, x200000):" in out and "fact-based, and non-opinionated" in out

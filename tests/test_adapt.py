"""The adapt stage (LoRA SFT of the generator with TRL) and few-shot example sampling.

One short training run (the CLI path, module fixture) feeds the training, loading and card tests.
"""

from __future__ import annotations

import json
from collections import Counter

import pytest
import yaml

from hfaug import cli
from hfaug.errors import HfaugError
from hfaug.tasks import get_task

ADAPT_SECTION = {
    "model": "hfaug://tiny/chat-lm",
    "max_steps": 24,  # the random tiny LM needs ~20 steps before greedy decoding changes
    "per_device_train_batch_size": 4,
    "learning_rate": 1e-2,
    "lr_scheduler_type": "constant",
    "logging_steps": 1,
    "lora_r": 8,
    "lora_alpha": 16,
    "lora_dropout": 0.0,
    "lora_target_modules": "all-linear",  # the tiny model learns visibly in a few steps
    "gradient_checkpointing": False,  # nothing to save on a tiny model; only slower
    "disable_tqdm": True,
}


def _recipe(root, task="sentiment", **adapt):
    path = f"hfaug://data/demo/{'sentiment' if task == 'sentiment' else 'nli'}_en.jsonl"
    return {"name": "adapt-test", "task": task, "seed": 7, "output_dir": str(root / "runs"),
            "source": {"path": path, "limit": 24, "dev_fraction": 0.0},
            # the adapter trains on the requests this section will send
            "generate": {"backend": "transformers", "model": "hfaug://tiny/chat-lm", "domains": ["hotels", "trains"]},
            "adapt": {**ADAPT_SECTION, **adapt}}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """`hfaug source` then `hfaug adapt` through the CLI on a recipe file; the run folder."""
    from hfaug.testing import tiny_model

    tiny_model("chat-lm")
    root = tmp_path_factory.mktemp("adapt")
    recipe = root / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(_recipe(root)), encoding="utf-8")
    assert cli.main(["-q", "source", "--config", str(recipe)]) == 0
    code = cli.main(["-q", "adapt", "--config", str(recipe)])
    return {"code": code, "recipe": recipe, "run": root / "runs" / "adapt-test"}


def _source_train(task: str, limit: int | None = None):
    from hfaug.loading import DataSpec, load_labelled

    name = "sentiment_en" if task == "sentiment" else "nli_en"
    ds, _ = load_labelled(DataSpec(path=f"hfaug://data/demo/{name}.jsonl", limit=limit), get_task(task))
    return ds


# ---------------------------------------------------------------------------------------------
# training through the CLI


def test_cli_adapt_writes_adapter_and_lowers_loss(trained):
    assert trained["code"] == 0
    stage = trained["run"] / "adapt"
    adapter = stage / "adapter"
    for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer_config.json", "README.md"):
        assert (adapter / name).is_file(), name
    assert not (adapter / "training_args.bin").exists()
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["r"] == 8 and config["lora_alpha"] == 16 and config["peft_type"] == "LORA"
    manifest = json.loads((stage / "manifest.json").read_text())
    metrics = manifest["metrics"]
    assert metrics["steps"] == 24 and metrics["loss_first_step"] == 1 and metrics["loss_last_step"] == 24
    assert metrics["loss_last"] < metrics["loss_first"] - 0.1
    assert manifest["rows_out"] == {"pairs": 24}
    import datasets

    prompts = datasets.load_from_disk(str(stage / "pairs"))["prompt"]
    assert all("hotels and trains" in p[0]["content"] for p in prompts)  # generate's system turns
    assert manifest["config"]["report_to"] == []
    info = json.loads((stage / "adapt.json").read_text())
    assert info["adapter"] == "adapter" and info["base_model"] == "hfaug://tiny/chat-lm"
    assert not list((trained["run"] / "cache" / "adapt").iterdir())  # checkpoints removed after success


def test_cli_adapt_again_is_skipped(trained, capsys):
    # the config hashes the same on a second load (no timestamped logging_dir), so nothing reruns
    assert cli.main(["-q", "adapt", "--config", str(trained["recipe"])]) == 0
    assert "skipped" in capsys.readouterr().out


def test_adapter_loads_with_peft_and_changes_generation(trained):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hfaug.config import resolve

    adapter = trained["run"] / "adapt" / "adapter"
    base_path = resolve("hfaug://tiny/chat-lm")
    tokenizer = AutoTokenizer.from_pretrained(adapter)
    messages = [{"role": "user", "content": "Write a single review of at most two short sentences indicating "
                                            "positive sentiment."}]
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                           return_dict=True)

    def generate(model):
        torch.manual_seed(0)
        out = model.generate(**inputs, do_sample=False, min_new_tokens=10, max_new_tokens=10)
        return out[0, inputs["input_ids"].shape[1]:].tolist()

    base = generate(AutoModelForCausalLM.from_pretrained(base_path))
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_path), str(adapter))
    adapted = generate(model)
    assert len(base) == len(adapted) == 10
    assert adapted != base
    with model.disable_adapter():
        assert generate(model) == base


def test_generate_with_transformers_backend_uses_the_adapter(trained, capsys):
    """Acceptance: `hfaug generate` (transformers backend) after `hfaug adapt` loads the adapter;
    few-shot prompts draw their examples from the source data through hfaug.fewshot."""
    import datasets

    data = yaml.safe_load(trained["recipe"].read_text())
    data["generate"] = {"backend": "transformers", "model": "hfaug://tiny/chat-lm", "n_per_class": 2,
                        "min_new_tokens": 6, "max_new_tokens": 6, "threads": 1, "few_shot": 1,
                        "clean": {"min_chars": 1, "near_duplicates": False}}
    recipe = trained["recipe"].with_name("with-generate.yaml")
    recipe.write_text(yaml.safe_dump(data), encoding="utf-8")
    stage = trained["run"] / "generate"
    assert cli.main(["-q", "generate", "--config", str(recipe)]) == 0
    manifest = json.loads((stage / "manifest.json").read_text())
    assert manifest["metrics"]["adapter"] == str(trained["run"] / "adapt" / "adapter")
    adapted = datasets.load_from_disk(str(stage / "raw"))["output"]
    params = [json.loads(p) for p in datasets.load_from_disk(str(stage / "raw"))["gen_params"]]
    source_ids = set(datasets.load_from_disk(str(trained["run"] / "source" / "train"))["id"])
    assert all(len(p["few_shot_ids"]) == 3 and set(p["few_shot_ids"]) <= source_ids for p in params)
    assert cli.main(["-q", "generate", "--config", str(recipe), "--generate.use_adapter", "false"]) == 0
    plain = datasets.load_from_disk(str(stage / "raw"))["output"]
    assert len(adapted) == len(plain) == 6 and adapted != plain


def test_model_card_says_how_to_load_and_serve(trained):
    card = (trained["run"] / "adapt" / "adapter" / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: peft")
    for needle in ("hfaug://tiny/chat-lm", "r=8, alpha=16", "all-linear", "24 instruction/response pairs",
                   "--lora-adapters", "adapter_id", "AutoPeftModelForCausalLM", "training loss:"):
        assert needle in card, needle


# ---------------------------------------------------------------------------------------------
# config


def test_adapt_reruns_when_the_generate_prompts_change_and_only_then(tmp_path):
    from hfaug.config import load_recipe
    from hfaug.pipeline import get_stage, stage_reads

    def reads(**generate):
        data = _recipe(tmp_path)
        data["generate"].update(generate)
        return stage_reads(load_recipe(data), get_stage("adapt"))

    base = reads()
    assert base["generate.domains"] == ["hotels", "trains"]
    assert reads(n_per_class=500, temperature=0.3) == base  # how much is generated: not what was asked
    assert reads(domains=["films"]) != base
    assert reads(templates={"positive": "Praise a hotel."}) != base
    assert reads(prompts="news") != base


def test_config_through_recipe_is_typed_and_hash_stable():
    from hfaug.config import load_recipe, to_dict
    from hfaug.runs import stable_hash

    section = {"max_steps": 3, "learning_rate": "3e-4", "lora_target_modules": ["q_proj"]}
    data = {"source": {"path": "x"}, "adapt": section}
    first, second = load_recipe(data).adapt, load_recipe(data).adapt
    assert first.learning_rate == 3e-4 and first.max_steps == 3 and first.lora_target_modules == ["q_proj"]
    assert first.report_to == [] and first.model == "meta-llama/Llama-2-7b-chat-hf"
    defaults = load_recipe({"source": {"path": "x"}, "adapt": {}}).adapt
    assert defaults.lora_r == 16 and defaults.lora_alpha == 32 and defaults.lora_target_modules == ["q_proj", "v_proj"]
    assert defaults.logging_dir == "trainer_output/logs"  # no timestamp: the hash holds across processes
    assert stable_hash(to_dict(first)) == stable_hash(to_dict(second))
    json.dumps(to_dict(first), default=str)
    lora = first.lora_config()
    assert lora.r == 16 and set(lora.target_modules) == {"q_proj"} and lora.task_type == "CAUSAL_LM"


@pytest.mark.parametrize("adapt, needle", [
    ({"lora_dropout": 1.5}, "adapt.lora_dropout"),
    ({"templates": {"postive": "x"}}, "did you mean 'positive'"),
    ({"hub_token": "hf_secret"}, "HF_TOKEN"),
    ({"lora_r": "many"}, "adapt.lora_r"),
])
def test_bad_adapt_section_exits_2_with_one_line(tmp_path, capsys, adapt, needle):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"output_dir": str(tmp_path), "source": {"path": "x"}, "adapt": adapt}))
    assert cli.main(["adapt", "--config", str(recipe)]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and "\n" not in err and "hf_secret" not in err


# ---------------------------------------------------------------------------------------------
# instruction pairs


def test_sentiment_pairs_ask_for_the_rows_label_as_generate_does():
    from hfaug.adapt import instruction_pairs
    from hfaug.prompts import sentiment_requests, templates_for

    task = get_task("sentiment")
    source = _source_train("sentiment", limit=30)
    domains = ["hotels", "trains"]
    pairs, dropped = instruction_pairs(source, task, domains=domains)
    assert len(pairs) == 30 and not dropped
    # the request generate sends for each label, built by generate's own code
    sent = {r.label: r.chat for r in sentiment_requests(task.labels, 1, templates_for("sentiment"), domains, seed=0)}
    assert "hotels and trains" in sent["positive"][0]["content"]
    for row, src in zip(pairs, source):
        assert row["prompt"] == sent[task.labels[src["label"]]]
        assert row["completion"] == [{"role": "assistant", "content": src["text"]}]
        assert row["label"] == src["label"] and row["source_id"] == src["id"]


def test_pairs_follow_the_generate_prompt_set():
    """With generate.prompts: news the adapter trains on the news requests generate will send."""
    from hfaug.adapt import instruction_pairs
    from hfaug.prompts import sentiment_requests, templates_for

    task = get_task("sentiment")
    source = _source_train("sentiment", limit=9)
    pairs, _ = instruction_pairs(source, task, prompt_set="news")
    sent = {r.label: r.chat for r in sentiment_requests(task.labels, 1, templates_for("sentiment", None, "news"),
                                                        None, seed=0)}
    assert "reviews on news" in sent["positive"][0]["content"]
    for row, src in zip(pairs, source):
        assert row["prompt"] == sent[task.labels[src["label"]]]
    assert pairs[0]["prompt"] != instruction_pairs(source, task)[0][0]["prompt"]


def test_nli_pairs_put_the_premise_in_the_prompt_and_max_rows_balances():
    from hfaug.adapt import instruction_pairs
    from hfaug.prompts import hypothesis_requests, templates_for

    task = get_task("nli")
    source = _source_train("nli")
    overrides = {"hypothesis_system": "", "neutral": "P: {premise} (neither)"}
    pairs, dropped = instruction_pairs(source, task, overrides, max_rows=12, seed=3)
    assert len(pairs) == 12 and dropped["over_max_train_rows"] == len(source) - 12
    assert Counter(pairs["label"]) == {0: 4, 1: 4, 2: 4}
    by_id = {row["id"]: row for row in source}
    templates = templates_for("nli", overrides)
    for row in pairs:
        src = by_id[row["source_id"]]
        label = task.labels[row["label"]]
        sent = {r.label: r.chat for r in hypothesis_requests([(0, "travel", src["premise"])], [label], templates, 0)}
        assert row["prompt"] == sent[label] and len(row["prompt"]) == 1  # no system turn: it was emptied
        assert row["completion"][0]["content"] == src["hypothesis"]
        if label == "neutral":
            assert row["prompt"][0]["content"] == f"P: {src['premise']} (neither)"
    with pytest.raises(HfaugError, match="'positive' is not a nli template key"):
        instruction_pairs(source, task, {"positive": "x"})
    # the generate section's premise prompts are not trained on; adapt.templates wins over generate's
    from hfaug.adapt import training_templates

    generate = {"premise": "About {domain}.", "entailment": "E {premise}", "contradiction": "C {premise}"}
    merged = training_templates(task, generate, {"contradiction": "c {premise}"})
    assert merged == {"entailment": "E {premise}", "contradiction": "c {premise}"}
    assert instruction_pairs(source, task, merged, max_rows=3)[0].num_rows == 3
    with pytest.raises(HfaugError, match=r"template 'entailment' uses \{domain\}"):
        instruction_pairs(source, task, {"entailment": "{domain}"})


# ---------------------------------------------------------------------------------------------
# few-shot examples


def test_shots_have_k_per_class_and_rotate_across_requests():
    from hfaug.fewshot import ShotSampler, sample_shots

    task = get_task("sentiment")
    source = _source_train("sentiment")  # 40 rows per class
    sampler = ShotSampler(source, task, k_per_class=3, seed=11)
    requests = [sampler.shots(i) for i in range(20)]
    for shots in requests:
        assert Counter(s["label"] for s in shots) == {"negative": 3, "neutral": 3, "positive": 3}
        assert len({s["id"] for s in shots}) == 9
        for s in shots:
            assert s["text"] and s["id"]
    ids = [frozenset(s["id"] for s in shots) for shots in requests]
    assert len(set(ids)) == 20
    # one round (13 blocks of 3 of 40 rows) shows disjoint examples
    assert not ids[0] & ids[1] and not ids[0] & ids[12]
    seen = set().union(*ids)
    assert len(seen) > 100  # rotation covers most of the data
    # deterministic per (seed, request), whoever asks
    assert sample_shots(source, "sentiment", 3, 11, 5) == requests[5]
    assert sample_shots(source, "sentiment", 3, 12, 5) != requests[5]
    assert ShotSampler(source, task, 0, 11).shots(3) == []


def test_format_shots_renders_every_example():
    from hfaug.fewshot import ShotSampler, format_shots

    sentiment = ShotSampler(_source_train("sentiment"), "sentiment", 2, seed=1).shots(0)
    text = format_shots(sentiment, "sentiment")
    lines = text.splitlines()
    assert len(lines) == 1 + 6 and lines[0].startswith("Here are examples")
    for shot in sentiment:
        assert f'Review ({shot["label"]}): "{shot["text"]}"' in text
    nli = ShotSampler(_source_train("nli"), "nli", 1, seed=1).shots(4)
    text = format_shots(nli, "nli")
    for shot in nli:
        assert f'Sentence: "{shot["premise"]}"' in text
        assert f'Second sentence ({shot["label"]}): "{shot["hypothesis"]}"' in text
    premises = format_shots(nli, "nli", kind="premise", header="Some sentences:")
    assert premises.splitlines()[0] == "Some sentences:"
    assert len(premises.splitlines()) == 1 + len({s["premise"] for s in nli})
    assert format_shots([], "nli") == ""


def test_too_many_shots_is_a_one_line_error():
    from hfaug.fewshot import sample_shots

    source = _source_train("sentiment", limit=12)
    fewest = min(Counter(source["label"]).values())
    with pytest.raises(HfaugError) as e:
        sample_shots(source, "sentiment", fewest + 1, 42, 0)
    message = str(e.value)
    assert "\n" not in message and f"{fewest + 1} examples per class" in message
    assert f"at most {fewest}" in message and "generate.few_shot" in message
    assert len(sample_shots(source, "sentiment", fewest, 42, 0)) == 3 * fewest
    with pytest.raises(HfaugError, match="no 'label' column"):
        sample_shots(source.remove_columns("label"), "sentiment", 1, 42, 0)

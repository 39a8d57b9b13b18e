"""Distill: the loss against hand-computed values, the config through recipes, the mixing, a
learning test (student agrees with a fixed teacher), the stage in a run, and its user errors."""

from __future__ import annotations

import json
import math
import random

import pytest
import yaml

from hfaug.config import load_recipe, to_dict
from hfaug.errors import HfaugError
from hfaug.runs import Run, StageResult, execute, stable_hash
from hfaug.tasks import get_task

torch = pytest.importorskip("torch")
datasets = pytest.importorskip("datasets")

from hfaug import distill as D  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SENTIMENT = get_task("sentiment")
SOURCE = {"path": "hfaug://data/demo/sentiment_en.jsonl", "dev": {"path": "hfaug://data/demo/sentiment_en_dev.jsonl"}}

# ---------------------------------------------------------------------------------------------
# the loss: a batch of 2 gold and 2 synthetic rows, 3 classes, T = 1.5, N = 4

LOGITS = [[1.0, 0.0, 2.0], [0.5, -0.5, 0.0], [0.0, 1.0, -1.0], [-1.0, 0.5, 1.5]]
IS_GOLD = [1, 0, 1, 0]
LABELS = [2, 0, 0, 2]  # gold labels; synthetic rows: the teacher argmax
PROMPT_LABELS = [2, 1, 0, 0]  # synthetic rows: what the generation prompt asked for
SOFT = [[0, 0, 1], [0.7, 0.2, 0.1], [1, 0, 0], [0.0, 0.25, 0.75]]  # a zero probability on purpose
T = 1.5

# worked out by hand (see _log_softmax below for the arithmetic):
#   CE gold rows:  row0 -log_softmax([1,0,2])[2] = 0.40760596, row2 -log_softmax([0,1,-1])[0] = 1.40760596
#   paper KL:      row1 KL([.7,.2,.1] || softmax([.5,-.5,0]/1.5)) = 0.16682657, row3 = 0.13630752
#   standard KL:   q^T = softmax(log q / 1.5): row1 [0.58580, 0.25412, 0.16008], row3 [0, 0.32467, 0.67533];
#                  T^2 * KL: row1 0.15764550, row3 0.26568745
PAPER = (0.40760596444438 + 1.40760596444438 + 0.16682657359090 + 0.13630752440871) / 4
STANDARD = (0.40760596444438 + 1.40760596444438 + 0.15764550391500 + 0.26568745328797) / 4
HARD = (0.40760596444438 + 1.40760596444438 + 0.68026967064173 + 0.37153903185268) / 4
PROMPT = (0.40760596444438 + 1.40760596444438 + 1.68026967064173 + 2.87153903185268) / 4


def _log_softmax(z):
    m = max(z)
    s = m + math.log(sum(math.exp(x - m) for x in z))
    return [x - s for x in z]


def _kl(q, log_p):
    return sum(qi * (math.log(qi) - lp) for qi, lp in zip(q, log_p) if qi > 0)


def _loss(**kw):
    labels = kw.pop("labels", LABELS)
    return D.distill_loss(torch.tensor(LOGITS), torch.tensor(labels), torch.tensor(SOFT), torch.tensor(IS_GOLD),
                          temperature=T, **kw).item()


def test_loss_of_each_row_is_the_formula():
    # the formulas in plain Python (math, no torch), row by row
    ce = [-_log_softmax(z)[y] for z, y in zip(LOGITS, LABELS)]
    kl_paper = [_kl(q, _log_softmax([x / T for x in z])) for z, q in zip(LOGITS, SOFT)]
    tempered = [[qi ** (1 / T) / sum(qj ** (1 / T) for qj in q) for qi in q] for q in SOFT]
    kl_std = [T * T * _kl(q, _log_softmax([x / T for x in z])) for z, q in zip(LOGITS, tempered)]
    for form, kl in (("paper", kl_paper), ("standard", kl_std)):
        # each row alone (N = 1): a gold row takes CE, a synthetic row its form's KL
        for i in range(4):
            one = D.distill_loss(torch.tensor([LOGITS[i]]), torch.tensor([LABELS[i]]), torch.tensor([SOFT[i]]),
                                 torch.tensor([IS_GOLD[i]]), temperature=T, loss_form=form).item()
            assert one == pytest.approx(ce[i] if IS_GOLD[i] else kl[i], abs=1e-6), (form, i)
        # the whole batch: the sum of the rows' terms over N = 4
        assert _loss(loss_form=form) == pytest.approx((ce[0] + ce[2] + kl[1] + kl[3]) / 4, abs=1e-6), form
    # the constants the other tests use are these formulas' values
    assert PAPER == pytest.approx((ce[0] + ce[2] + kl_paper[1] + kl_paper[3]) / 4, abs=1e-12)
    assert STANDARD == pytest.approx((ce[0] + ce[2] + kl_std[1] + kl_std[3]) / 4, abs=1e-12)


def test_paper_form_equals_hand_computed_value():
    assert _loss(loss_form="paper") == pytest.approx(PAPER, abs=1e-6)
    assert _loss() == pytest.approx(PAPER, abs=1e-6)  # the default


def test_standard_form_equals_hand_computed_value():
    assert _loss(loss_form="standard") == pytest.approx(STANDARD, abs=1e-6)
    assert STANDARD != pytest.approx(PAPER, abs=1e-3)


def test_hard_and_prompt_labels_take_cross_entropy():
    # hard: the teacher argmax is the label of a synthetic row; the loss form no longer matters
    assert _loss(label_mode="hard") == pytest.approx(HARD, abs=1e-6)
    assert _loss(label_mode="hard", loss_form="standard") == pytest.approx(HARD, abs=1e-6)
    assert _loss(label_mode="prompt", labels=PROMPT_LABELS) == pytest.approx(PROMPT, abs=1e-6)
    assert HARD != pytest.approx(PAPER, abs=1e-3)


def test_weights_and_normaliser():
    ce_gold = 0.40760596444438 + 1.40760596444438
    kl = 0.16682657359090 + 0.13630752440871
    assert _loss(gold_weight=2.0, synthetic_weight=0.5) == pytest.approx((2 * ce_gold + 0.5 * kl) / 4, abs=1e-6)
    assert _loss(synthetic_weight=0.0) == pytest.approx(ce_gold / 4, abs=1e-6)
    # rows of an accumulated batch: the same sums over 8 instead of 4
    assert _loss(num_items=torch.tensor(8)) == pytest.approx(PAPER / 2, abs=1e-6)


def test_all_gold_batch_is_mean_cross_entropy_and_soft_gradient_is_analytic():
    z = torch.tensor(LOGITS, requires_grad=True)
    loss = D.distill_loss(z, torch.tensor(LABELS))  # no soft labels, no flags: every row gold
    assert loss.item() == pytest.approx(torch.nn.functional.cross_entropy(torch.tensor(LOGITS),
                                                                          torch.tensor(LABELS)).item(), abs=1e-6)
    # d/dz KL(q || softmax(z/T)) / N = (softmax(z/T) - q) / (T N) for a synthetic row
    z = torch.tensor(LOGITS, requires_grad=True)
    D.distill_loss(z, torch.tensor(LABELS), torch.tensor(SOFT), torch.tensor(IS_GOLD), temperature=T).backward()
    expected = (torch.softmax(torch.tensor(LOGITS[1]) / T, -1) - torch.tensor(SOFT[1])) / (T * 4)
    assert torch.allclose(z.grad[1], expected, atol=1e-6)


def test_loss_rejects_unknown_modes():
    with pytest.raises(ValueError, match="loss_form"):
        _loss(loss_form="hinton")
    with pytest.raises(ValueError, match="label_mode"):
        _loss(label_mode="argmax")


# ---------------------------------------------------------------------------------------------
# config


def test_config_through_recipe_has_paper_defaults_and_stable_hash():
    recipe = load_recipe({"source": SOURCE, "distill": {"model": "hfaug://tiny/encoder", "learning_rate": "1e-3",
                                                        "subsets": "hi-all", "num_train_epochs": 2}})
    config = recipe.distill
    assert isinstance(config, D.DistillConfig)
    assert config.subsets == ["hi-all"] and config.learning_rate == 1e-3 and config.num_train_epochs == 2
    default = load_recipe({"source": SOURCE, "distill": {}}).distill
    assert default.model == "FacebookAI/xlm-roberta-large"
    assert (default.temperature, default.loss_form, default.label_mode, default.max_length) == (1.5, "paper", "soft", 128)
    assert (default.num_train_epochs, default.learning_rate, default.adam_epsilon, default.weight_decay,
            default.warmup_ratio, default.warmup_steps, default.max_grad_norm) == (15, 5e-6, 1e-8, 0.0, 0.0, 0, 1.0)
    assert default.lr_scheduler_type.value == "linear" and default.load_best_model_at_end
    assert default.metric_for_best_model == "accuracy" and default.save_only_model and default.report_to == []
    first = to_dict(config)
    json.dumps(first)  # plain data
    again = to_dict(load_recipe({"source": SOURCE, "distill": {"model": "hfaug://tiny/encoder", "learning_rate": "1e-3",
                                                               "subsets": "hi-all", "num_train_epochs": 2}}).distill)
    assert stable_hash(first) == stable_hash(again)  # no timestamps (logging_dir) in the hash
    assert stable_hash(first) != stable_hash(to_dict(default))


@pytest.mark.parametrize("section, message", [
    ({"loss_form": "papr"}, "did you mean 'paper'"),
    ({"label_mode": "argmax"}, "'distill.label_mode' must be one of"),
    ({"num_train_epoch": 3}, "did you mean 'num_train_epochs'"),
    ({"temperature": 0}, "temperature must be positive"),
    ({"hub_token": "hf_x"}, "must not be in a recipe"),
    ({"remove_unused_columns": True}, "must stay false"),
])
def test_config_errors_are_user_errors(section, message):
    with pytest.raises(HfaugError, match=message):
        load_recipe({"source": SOURCE, "distill": section})


# ---------------------------------------------------------------------------------------------
# data


def _synthetic(texts, task=SENTIMENT, lang="hi", with_soft=True):
    rows = {"text": list(texts), "lang": [lang] * len(texts),
            "prompt_label": [i % task.num_labels for i in range(len(texts))]}
    if with_soft:
        rows["soft_label"] = [_teacher(t).tolist() for t in texts]
        rows["label"] = [int(_teacher(t).argmax()) for t in texts]
    features = datasets.Features({
        "text": datasets.Value("string"), "lang": datasets.Value("string"),
        "prompt_label": datasets.ClassLabel(names=list(task.labels)),
        **({"soft_label": datasets.Sequence(datasets.Value("float32")),
            "label": datasets.ClassLabel(names=list(task.labels))} if with_soft else {}),
    })
    return datasets.Dataset.from_dict(rows, features=features)


def test_mix_flags_gold_and_synthetic_rows_and_picks_the_target():
    gold = datasets.Dataset.from_dict({"text": ["good one", "bad one"], "label": ["positive", "negative"]})
    synthetic = _synthetic(["a wonderful trip", "a terrible room", "the museum opens"])
    mixed = D.mix(gold, synthetic, SENTIMENT, seed=1)
    assert sorted(mixed["is_gold"]) == [0, 0, 0, 1, 1]
    assert mixed["text"] == D.mix(gold, synthetic, SENTIMENT, seed=1)["text"]  # seeded shuffle
    by_text = {r["text"]: r for r in mixed}
    assert by_text["good one"]["label"] == 2 and by_text["good one"]["soft_label"] == [0, 0, 1]
    assert by_text["a terrible room"]["soft_label"] == pytest.approx(_teacher("a terrible room").tolist())
    assert by_text["a terrible room"]["label"] == 0  # the teacher argmax
    prompt = {r["text"]: r for r in D.mix(gold, synthetic, SENTIMENT, label_mode="prompt")}
    assert prompt["a terrible room"]["label"] == 1  # prompt_label of row 1 (neutral), not the argmax
    no_soft = _synthetic(["a wonderful trip"], with_soft=False)
    with pytest.raises(HfaugError, match="no 'soft_label' column; it is written by the label stage"):
        D.mix(gold, no_soft, SENTIMENT)
    bad = synthetic.cast_column("soft_label", datasets.Sequence(datasets.Value("float32"))).map(
        lambda r: {"soft_label": [2.0, 0.0, 0.0]})
    with pytest.raises(HfaugError, match="must be probabilities"):
        D.mix(gold, bad, SENTIMENT)


def test_encode_pairs_and_collate(tiny_encoder):
    from transformers import AutoTokenizer

    nli = get_task("nli")
    tokenizer = AutoTokenizer.from_pretrained(tiny_encoder)
    gold = datasets.Dataset.from_dict({"premise": ["A man plays.", "It rains."], "hypothesis": ["He plays.", "Dry."],
                                       "label": ["entailment", "contradiction"]})
    enc = D.encode(D.mix(gold, None, nli, seed=0), tokenizer, nli, max_length=32)
    batch = D.Collator(tokenizer.pad_token_id)([enc[0], enc[1]])
    assert batch["input_ids"].shape == batch["attention_mask"].shape
    assert batch["soft_labels"].shape == (2, 3) and batch["is_gold"].tolist() == [1.0, 1.0]
    assert (batch["input_ids"][0] == tokenizer.sep_token_id).sum() >= 2  # both texts of the pair


# ---------------------------------------------------------------------------------------------
# learning: a fixed teacher, a fresh tiny student

CUES = {0: ["terrible", "broken", "dirty"], 1: ["museum", "weekdays", "nine"], 2: ["wonderful", "warmly", "great"]}
FILLER = "the hotel room was and our staff trip with a on in of to at".split()


def _teacher(text: str):
    """A fixed teacher: soft labels that are a deterministic function of the cue words in the text."""
    import numpy as np

    words = set(text.split())
    logits = np.array([2.0 * sum(w in words for w in CUES[c]) for c in range(3)])
    p = np.exp(logits - logits.max())
    return (p / p.sum()).astype(np.float32)


def _texts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = [rng.choice(FILLER) for _ in range(rng.randint(4, 9))]
        words.insert(rng.randrange(len(words) + 1), rng.choice(CUES[rng.randrange(3)]))
        out.append(" ".join(words))
    return out


@pytest.fixture(scope="module")
def tiny_encoder():
    from hfaug.testing import tiny_model

    return tiny_model("encoder")


def _config(tmp_path, **kw):
    base = dict(model="hfaug://tiny/encoder", output_dir=str(tmp_path / "out"), num_train_epochs=6.0,
                learning_rate=2e-3, per_device_train_batch_size=16, disable_tqdm=True, use_cpu=True)
    base.update(kw)
    return D.DistillConfig(**base)


@pytest.mark.slow
def test_student_learns_the_teacher_from_soft_labels(tmp_path, tiny_encoder):
    import numpy as np

    synthetic = _synthetic(_texts(240, seed=1))
    gold_texts = _texts(30, seed=2)
    gold = datasets.Dataset.from_dict({"text": gold_texts, "label": [int(_teacher(t).argmax()) for t in gold_texts]})
    dev_texts = _texts(40, seed=4)
    dev = datasets.Dataset.from_dict({"text": dev_texts, "label": [int(_teacher(t).argmax()) for t in dev_texts]})
    held = _texts(200, seed=3)
    teacher = np.array([_teacher(t).argmax() for t in held])

    def agreement(model, tokenizer) -> float:
        enc = tokenizer(held, padding=True, return_tensors="pt")
        with torch.no_grad():
            return float((model(**enc).logits.argmax(-1).numpy() == teacher).mean())

    from transformers import TrainerCallback

    class Snapshots(TrainerCallback):
        """The student's weights at each dev evaluation, keyed like dev_accuracy_by_epoch."""

        def __init__(self):
            self.weights = {}

        def on_evaluate(self, args, state, control, model=None, **kwargs):
            self.weights[str(round(state.epoch, 3))] = {k: v.detach().clone() for k, v in model.state_dict().items()}

    # the student's head is initialised from the seed, so this run is the same on every machine
    config = _config(tmp_path, eval_strategy="epoch", save_strategy="epoch", num_train_epochs=10.0)
    snapshots = Snapshots()
    out = D.distill(gold, synthetic, config, SENTIMENT, dev=dev, seed=0, callbacks=[snapshots])
    assert agreement(out.model, out.tokenizer) >= 0.95
    assert out.metrics["synthetic_rows"] == 240 and out.metrics["gold_rows"] == 30
    # the returned model's own dev accuracy, recomputed here, is the best of the per-epoch log
    by_epoch = out.metrics["dev_accuracy_by_epoch"]
    enc = out.tokenizer(dev_texts, padding=True, truncation=True, max_length=config.max_length, return_tensors="pt")
    with torch.no_grad():
        dev_accuracy = float((out.model(**enc).logits.argmax(-1) == torch.tensor(dev["label"])).float().mean())
    assert set(by_epoch) == set(snapshots.weights) and len(by_epoch) == 10
    assert dev_accuracy == pytest.approx(max(by_epoch.values()), abs=1e-6)
    assert dev_accuracy == pytest.approx(out.metrics["dev_accuracy"], abs=1e-6)
    # and its weights are those of the reported best epoch; here the best is not the last epoch, so
    # a student left at the end of training (best not loaded back) would fail this
    best = str(round(out.metrics["best_epoch"], 3))
    assert by_epoch[best] == max(by_epoch.values()) and best != list(snapshots.weights)[-1]
    kept = out.model.state_dict()
    assert all(torch.equal(kept[k], v) for k, v in snapshots.weights[best].items())
    untrained, tok = D.load_student(_config(tmp_path), SENTIMENT)
    assert agreement(untrained.eval(), tok) < 0.8  # the agreement is learnt, not given


def test_trainer_compute_loss_is_distill_loss(tmp_path, tiny_encoder):
    config = _config(tmp_path, label_mode="soft", loss_form="standard", seed=0, eval_strategy="no",
                     save_strategy="no", load_best_model_at_end=False)
    model, tokenizer = D.load_student(config, SENTIMENT)
    model.eval()  # no dropout: two forward passes agree
    rows = D.encode(D.mix(datasets.Dataset.from_dict({"text": ["good one"], "label": [2]}),
                          _synthetic(["a terrible room", "the museum"]), SENTIMENT), tokenizer, SENTIMENT, 32)
    batch = D.Collator(tokenizer.pad_token_id)([rows[i] for i in range(3)])
    trainer = D.SoftLabelTrainer(model=model, args=config, data_collator=D.Collator(tokenizer.pad_token_id))
    keys = set(batch)
    loss = trainer.compute_loss(model, batch)
    assert set(batch) == keys  # the caller's dict is left whole (prediction_step reads labels from it)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    expected = D.distill_loss(logits, batch["labels"], batch["soft_labels"], batch["is_gold"], temperature=1.5,
                              loss_form="standard")
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)


# ---------------------------------------------------------------------------------------------
# the stage in a run


def _recipe(tmp_path, **distill):
    section = {"model": "hfaug://tiny/encoder", "num_train_epochs": 3, "learning_rate": 2e-3,
               "per_device_train_batch_size": 16, "use_cpu": True, "disable_tqdm": True, **distill}
    return {"name": "t", "task": "sentiment", "seed": 3, "output_dir": str(tmp_path / "runs"),
            "source": SOURCE, "select": {}, "distill": section}


def _prepare(tmp_path, data: dict, subsets: dict):
    from hfaug.pipeline import run_stage

    recipe = load_recipe(data)
    run = Run(recipe, tmp_path / "runs" / "t")
    run_stage(run, "source")
    execute(run, "select", lambda ctx: StageResult(datasets=subsets), None, [])
    return run


def _hi_texts() -> list[str]:
    from hfaug.config import resolve

    rows = [json.loads(line) for line in open(resolve("hfaug://data/demo/sentiment_hi.jsonl"), encoding="utf-8")]
    return [r["text"] for r in rows]


TEST_SETS = [{"path": "hfaug://data/demo/sentiment_hi.jsonl", "lang": "hi"},
             {"path": "hfaug://data/demo/sentiment_mr.jsonl", "lang": "mr"}]


@pytest.mark.slow
def test_stage_trains_students_keeps_best_and_writes_card(tmp_path, tiny_encoder):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from hfaug.pipeline import run_stage

    texts = _hi_texts()
    data = {**_recipe(tmp_path), "evaluate": {"test_sets": TEST_SETS}}
    run = _prepare(tmp_path, data, {"hi-topk-5": _synthetic(texts[:15]), "hi-all": _synthetic(texts)})
    manifest, skipped = run_stage(run, "distill")
    assert not skipped
    assert set(manifest["metrics"]) == {"hi-topk-5", "hi-all"}
    folder = run.stage_dir("distill") / "students" / "hi-topk-5"
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["synthetic_rows"] == 15 and metrics["gold_rows"] == len(run.load("source", "train"))
    assert metrics["subset"]["lang"] == "hi" and metrics["subset"]["strategy"] == "topk"
    assert metrics["subset"]["budget_per_class"] == 5
    assert manifest["metrics"]["hi-topk-5"]["dev_accuracy"] == metrics["dev_accuracy"]
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert model.config.id2label == {0: "negative", 1: "neutral", 2: "positive"}
    dev = run.load("source", "dev")
    enc = tokenizer(list(dev["text"]), padding=True, truncation=True, max_length=128, return_tensors="pt")
    with torch.no_grad():
        accuracy = float((model(**enc).logits.argmax(-1) == torch.tensor(dev["label"])).float().mean())
    # the saved student is the best epoch by dev accuracy: the saved model's own accuracy, recomputed,
    # is the best in the per-epoch log, and is what metrics.json reports
    assert len(metrics["dev_accuracy_by_epoch"]) == 3
    assert accuracy == pytest.approx(max(metrics["dev_accuracy_by_epoch"].values()), abs=1e-6)
    assert accuracy == pytest.approx(metrics["dev_accuracy"], abs=1e-6)
    card = (folder / "README.md").read_text()
    assert "hfaug://tiny/encoder" in card and "hi-topk-5" in card and "topk" in card and "temperature" in card
    # per-language test metrics (the evaluate section's test sets), in metrics.json, manifest and card
    assert set(metrics["test"]) == {"hi", "mr"} and metrics["test"]["mr"]["n"] == 30
    assert 0.0 <= metrics["test"]["hi"]["accuracy"] <= 1.0
    assert manifest["metrics"]["hi-all"]["test"]["mr"]["accuracy"] == pytest.approx(
        json.loads((folder.parent / "hi-all" / "metrics.json").read_text())["test"]["mr"]["accuracy"])
    assert any(line.startswith("| mr |") for line in card.splitlines())
    assert yaml.safe_load(card.split("---")[1])["pipeline_tag"] == "text-classification"
    assert not list((run.root / "cache" / "distill").glob("*/*/checkpoints"))  # checkpoints freed
    # unchanged: skipped
    _, skipped = run_stage(run, "distill")
    assert skipped
    # the evaluate section enters distill's hash (the cards carry its metrics): dropping it reruns
    untested, skipped = run_stage(Run(load_recipe(_recipe(tmp_path)), run.root), "distill")
    assert not skipped
    card = (run.stage_dir("distill") / "students" / "hi-all" / "README.md").read_text()
    assert "test" not in untested["metrics"]["hi-all"] and "dev metrics only" in card


def test_missing_soft_labels_exit_2_naming_the_label_stage(tmp_path, capsys):
    from hfaug.cli import main

    data = _recipe(tmp_path)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    _prepare(tmp_path, data, {"hi-topk-5": _synthetic(_hi_texts()[:5], with_soft=False)})
    capsys.readouterr()
    assert main(["distill", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "soft_label" in err[0] and "label stage" in err[0]
    assert main(["distill", "--config", str(path), "--distill.subsets", "hi-topk-6"]) == 2
    assert "did you mean 'hi-topk-5'" in capsys.readouterr().err


def test_translated_source_replaces_the_gold_rows(tmp_path):
    from hfaug.runs import StageContext

    data = _recipe(tmp_path, train_on_translated_source="hi")
    run = _prepare(tmp_path, data, {"hi-all": _synthetic(_hi_texts()[:3])})
    translated = {
        "train-hi": datasets.Dataset.from_dict({"text": ["अच्छा", "बुरा"], "label": [2, 0], "lang": ["hi", "hi"]}),
        "dev-hi": datasets.Dataset.from_dict({"text": ["ठीक"], "label": [1], "lang": ["hi"]}),
    }
    execute(run, "translate-source", lambda ctx: StageResult(datasets=translated), None, [])
    ctx = StageContext(run=run, stage="distill", config=run.recipe.distill, out_dir=tmp_path / "o")
    train, dev, description = D._gold_data(ctx)
    assert list(train["text"]) == ["अच्छा", "बुरा"] and list(dev["text"]) == ["ठीक"] and "hi" in description
    ctx.config = load_recipe(_recipe(tmp_path, train_on_translated_source=["mr"])).distill
    with pytest.raises(HfaugError, match="no translated source for 'mr'"):
        D._gold_data(ctx)


def test_dev_evaluation_every_n_optimiser_steps_with_gradient_accumulation(tmp_path, tiny_encoder):
    """The paper's cadence (train_ST_as.sh): batch x gradient accumulation, dev evaluation and best
    checkpoint every N optimiser steps (100 in the paper recipes; 2 here)."""
    texts = _texts(32, seed=5)
    gold = datasets.Dataset.from_dict({"text": texts, "label": [int(_teacher(t).argmax()) for t in texts]})
    dev = datasets.Dataset.from_dict({"text": texts[:8], "label": gold["label"][:8]})
    config = _config(tmp_path, num_train_epochs=1.0, per_device_train_batch_size=4, gradient_accumulation_steps=2,
                     eval_strategy="steps", eval_steps=2, save_strategy="steps", save_steps=2)
    out = D.distill(gold, None, config, SENTIMENT, dev=dev, seed=1)
    steps = [e["step"] for e in out.log_history if "eval_accuracy" in e]
    assert steps == [2, 4]  # 32 rows / (4 x 2) = 4 optimiser steps, evaluated every 2
    assert out.metrics["best_step"] in (2, 4)

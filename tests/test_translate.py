"""The translate stage on the tiny MT model (NLLB-shaped, random weights).

Greedy decoding of a random model says the same thing for every input, so these tests sample
(seeded per batch): every row then gets its own output, and a row carrying another row's text
would show. A spy wraps ``Translator.generate`` (the model-call boundary) to record what the real
model returned for each input, count calls, and inject faults.
"""

from __future__ import annotations

import json
from collections import Counter

import pytest

from hfaug import schema
from hfaug.errors import HfaugError
from hfaug.languages import get_language, script_share
from hfaug.translate import (
    TranslateConfig,
    Translator,
    has_loop,
    quality_issue,
    split_sentences,
    translate,
)

FAST = dict(model="hfaug://tiny/mt", num_beams=1, do_sample=True, no_repeat_ngram_size=2,
            max_new_tokens=16, min_new_tokens=6, batch_size=8, min_script_ratio=0.0)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


REAL_GENERATE = Translator.generate


class Killed(BaseException):
    """Stands in for SIGINT/SIGKILL: not an Exception, so no retry may swallow it."""


class Spy:
    """Wraps the real Translator.generate: records outputs per input, counts calls, injects faults."""

    def __init__(self, monkeypatch, fail_on: set[str] = frozenset(), kill_after: int | None = None):
        self.real = REAL_GENERATE
        self.calls = 0
        self.inputs: list[list[str]] = []
        self.outputs: dict[tuple[str, str], str] = {}
        self.fail_on = set(fail_on)
        self.kill_after = kill_after
        spy = self

        def generate(translator, texts, code):
            spy.calls += 1
            if spy.kill_after is not None and spy.calls > spy.kill_after:
                raise Killed()
            spy.inputs.append(list(texts))
            if spy.fail_on & set(texts):
                raise RuntimeError("CUDA error: device-side assert triggered (injected)")
            out = spy.real(translator, texts, code)
            for text, o in zip(texts, out):
                spy.outputs[(code, text)] = o
            return out

        monkeypatch.setattr(Translator, "generate", generate)

    @property
    def texts(self) -> list[str]:
        return [t for batch in self.inputs for t in batch]


def _rows(name: str, n: int | None = None) -> list[dict]:
    from importlib import resources
    from pathlib import Path

    path = Path(str(resources.files("hfaug") / "data" / "demo" / name))
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return rows[:n] if n else rows


def _labelled(task_name: str = "sentiment", n: int = 24):
    """What the label stage writes: candidates with soft labels, dynamics and provenance."""
    import datasets

    from hfaug.tasks import get_task

    task = get_task(task_name)
    src = _rows("sentiment_en.jsonl" if task_name == "sentiment" else "nli_en.jsonl", n)
    records = []
    for i, r in enumerate(src):
        texts = [r[c] for c in task.text_columns]
        soft = [[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.05, 0.15, 0.8]][i % 3]
        records.append({
            "id": schema.make_id(task.name, *texts), "task": task.name,
            **{c: r[c] for c in task.text_columns}, "lang": "en", "origin": "synthetic",
            "prompt_label": (i + 1) % 3, "label": i % 3, "soft_label": soft, "confidence": max(soft),
            "checkpoint_probs": [soft, soft], "variability": 0.01 * i, "mean_confidence": max(soft),
            "gen_model": "tiny-chat", "gen_params": json.dumps({"i": i}),
        })
    return schema.cast_contract(datasets.Dataset.from_list(records), task)


def _run(tmp_path, translate_section: dict, task: str = "sentiment"):
    from hfaug.config import load_recipe
    from hfaug.runs import Run

    recipe = load_recipe({
        "name": "t", "task": task, "output_dir": str(tmp_path / "runs"),
        "source": {"path": f"hfaug://data/demo/{'sentiment' if task == 'sentiment' else 'nli'}_en.jsonl"},
        "translate": translate_section,
    })
    return Run(recipe, tmp_path / "runs" / "t")


def _with_label(run, ds):
    from hfaug.runs import StageResult, execute

    execute(run, "label", lambda ctx: StageResult(datasets={"data": ds}), None, [])


# ---------------------------------------------------------------------------------------------
# languages and checks


def test_language_codes_and_scripts():
    assert [get_language(c).flores for c in ("hi", "mr", "ur", "sw", "swh", "hin", "fa", "zh")] == [
        "hin_Deva", "mar_Deva", "urd_Arab", "swh_Latn", "swh_Latn", "hin_Deva", "pes_Arab", "zho_Hans"]
    assert get_language("brx").flores == "brx_Deva"  # IndicTrans2 has it, NLLB does not
    with pytest.raises(HfaugError, match="did you mean 'hi'"):
        get_language("hindi")
    with pytest.raises(HfaugError, match="did you mean 'hin'"):
        get_language("hin_Deva")
    assert script_share("यह अच्छा है", "Deva") == 1.0
    assert script_share("यह good है", "Deva") == pytest.approx(3 / 7)  # vowel signs are not letters
    assert script_share("123 !!", "Deva") is None


def test_quality_checks_each_reason():
    cfg = TranslateConfig(languages=["hi"])
    hi = get_language("hi")
    src = "The room was clean and the staff were friendly."
    assert quality_issue(src, "कमरा साफ़ था और कर्मचारी मिलनसार थे।", hi, cfg) is None
    assert quality_issue(src, None, hi, cfg) == "failed"
    assert quality_issue(src, "  ", hi, cfg) == "empty"
    assert quality_issue(src, src.upper(), hi, cfg) == "untranslated"
    assert quality_issue(src, "कमरा", hi, cfg) == "length_ratio"
    assert quality_issue(src, "कमरा साफ़ था था था था था और कर्मचारी", hi, cfg) == "repetition"
    assert quality_issue(src, "The room was very clean, and staff were nice.", hi, cfg) == "wrong_script"
    off = TranslateConfig(languages=["hi"], checks=[])
    assert quality_issue(src, "  ", hi, off) is None
    assert has_loop("iteiteiteite", 4) and not has_loop("ha ha ha", 4)
    assert split_sentences("One. Two! Three? चार। Five") == ["One.", "Two!", "Three?", "चार।", "Five"]


def test_config_errors():
    with pytest.raises(HfaugError, match="did you mean 'hi'"):
        TranslateConfig(languages=["hindi"])
    with pytest.raises(HfaugError, match="empty"):
        TranslateConfig(languages=[])
    with pytest.raises(HfaugError, match="did you mean 'script'"):
        TranslateConfig(languages=["hi"], checks=["scrpt"])
    with pytest.raises(HfaugError, match="trust_remote_code"):
        Translator("ai4bharat/indictrans2-en-indic-1B", TranslateConfig(languages=["hi"]),
                   [get_language("hi")], get_language("en"))


# ---------------------------------------------------------------------------------------------
# translating


def test_alignment_columns_and_lineage(tiny, monkeypatch):
    spy = Spy(monkeypatch)
    data = _labelled("sentiment", 24)
    out, dropped, metrics = translate(data, TranslateConfig(languages=["hi", "mr"], **FAST), "sentiment",
                                      progress=False)
    english = {row["id"]: row for row in data}
    assert set(out) == {"hi", "mr"}
    for code, ds in out.items():
        assert len(ds) + sum(n for k, n in dropped.items() if k.startswith(f"{code}.")) == len(data)
        assert len(ds) >= 20
        assert ds.column_names == data.column_names + ["source_id"]
        assert ds.features["label"] == data.features["label"]
        assert len(set(ds["text"])) == len(ds)  # each row its own output: misalignment would show
        for row in ds:
            src = english[row["source_id"]]
            assert row["lang"] == code
            assert row["text"] == spy.outputs[(get_language(code).flores, src["text"])]
            assert row["id"] == schema.make_id("sentiment", code, row["text"]) != src["id"]
            for col in data.column_names:
                if col not in ("id", "text", "lang"):
                    assert row[col] == src[col], col
    # translated text keeps its non-ASCII characters
    assert any(not t.isascii() for t in out["hi"]["text"])
    assert metrics["hi"]["translated"] == 24 and metrics["hi"]["family"] == "nllb"


def test_nli_translates_premise_and_hypothesis_separately(tiny, monkeypatch):
    spy = Spy(monkeypatch)
    data = _labelled("nli", 12)
    out, dropped, _ = translate(data, TranslateConfig(languages=["sw"], **FAST), "nli", progress=False)
    sent = Counter(spy.texts)
    unique = set(data["premise"]) | set(data["hypothesis"])
    assert set(sent) == unique and max(sent.values()) == 1  # a shared premise is translated once
    for row in out["sw"]:
        src = data[[r for r in data["id"]].index(row["source_id"])]
        assert row["premise"] == spy.outputs[("swh_Latn", src["premise"])]
        assert row["hypothesis"] == spy.outputs[("swh_Latn", src["hypothesis"])]
        assert row["label"] == src["label"] and row["soft_label"] == src["soft_label"]


def test_long_texts_split_into_sentences_and_batches_sorted(tiny, monkeypatch):
    import datasets

    spy = Spy(monkeypatch)
    texts = [r["text"] for r in _rows("sentiment_en.jsonl", 12)]
    long_text = " ".join(texts[:6])
    rows = [{"id": schema.make_id("sentiment", t), "text": t, "label": 0} for t in [long_text, *texts[6:]]]
    # no quality checks: no row is dropped, so the long row's join is always checked
    cfg = TranslateConfig(languages=["hi"], **{**FAST, "max_length": 48, "batch_size": 2, "checks": []})
    out, dropped, metrics = translate(datasets.Dataset.from_list(rows), cfg, "sentiment", progress=False)
    assert metrics["hi"]["split"] == 1
    assert long_text not in spy.texts and all(t in " ".join(spy.texts) for t in texts[:6])
    kept = {r["source_id"]: r["text"] for r in out["hi"]}
    assert not dropped and set(kept) == {r["id"] for r in rows}
    # joined from its chunks' translations, in order
    chunks = sorted((t for t in spy.texts if t in long_text), key=long_text.index)
    assert len(chunks) > 1
    assert kept[rows[0]["id"]] == " ".join(spy.outputs[("hin_Deva", c)] for c in chunks)
    # length-sorted batches: each batch is no longer than the previous one
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny["mt"])
    longest = [max(len(tok(t)["input_ids"]) for t in batch) for batch in spy.inputs]
    assert longest == sorted(longest, reverse=True)


def test_lengths_are_counted_in_chunks_with_the_same_result(tiny, monkeypatch):
    """Token counts come from bounded tokenizer calls (a call on a whole 130,000-row pool held
    every text's full Encoding at once), and chunking changes no count."""
    from hfaug import translate as translate_module
    from hfaug.translate import open_translators

    translator = open_translators(TranslateConfig(languages=["hi"], **FAST))["hi"]
    code = translator.codes["hi"]
    texts = [r["text"] for r in _rows("sentiment_en.jsonl", 11)]
    whole = [len(translator.tokenizer(t)["input_ids"]) for t in translator.prepare(texts, code)]
    sizes: list[int] = []
    real = translator.tokenizer

    class Counting:
        def __call__(self, batch, **kwargs):
            sizes.append(len(batch))
            return real(batch, **kwargs)

    monkeypatch.setattr(translate_module, "LENGTH_CHUNK", 4)
    monkeypatch.setattr(translator, "tokenizer", Counting())
    assert translator.lengths(texts, code) == whole
    assert sizes == [4, 4, 3]


def test_each_segment_is_tokenised_once_for_its_length(tiny, monkeypatch):
    """The split plan and the length sort share one count per segment: at the paper's 130,000
    texts a second tokenizer pass over every text is a fixed share of the stage for nothing."""
    import datasets

    counted: list[str] = []
    real = Translator.lengths

    def lengths(translator, texts, code):
        counted.extend(texts)
        return real(translator, texts, code)

    monkeypatch.setattr(Translator, "lengths", lengths)
    spy = Spy(monkeypatch)
    texts = [r["text"] for r in _rows("sentiment_en.jsonl", 12)]
    long_text = " ".join(texts[:6])
    rows = [{"id": schema.make_id("sentiment", t), "text": t, "label": 0} for t in [long_text, *texts[6:]]]
    cfg = TranslateConfig(languages=["hi"], **{**FAST, "max_length": 48, "batch_size": 2, "checks": []})
    out, _, metrics = translate(datasets.Dataset.from_list(rows), cfg, "sentiment", progress=False)
    assert metrics["hi"]["split"] == 1 and len(out["hi"]) == len(rows)
    assert len(counted) == len(set(counted))  # no text counted twice
    # the batches still come longest first
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny["mt"])
    longest = [max(len(tok(t)["input_ids"]) for t in batch) for batch in spy.inputs]
    assert longest == sorted(longest, reverse=True)


# ---------------------------------------------------------------------------------------------
# in a run: failures, resume, refusal


def test_injected_failure_loses_only_that_row(tmp_path, tiny, monkeypatch):
    data = _labelled("sentiment", 24)
    bad = data[5]["text"]
    spy = Spy(monkeypatch, fail_on={bad})
    run = _run(tmp_path, {"languages": ["hi"], **FAST})
    _with_label(run, data)
    from hfaug.pipeline import run_stage

    manifest, skipped = run_stage(run, "translate")
    out = run.load("translate", "hi")
    assert manifest["dropped"].get("hi.failed") == 1
    assert len(out) + sum(manifest["dropped"].values()) == len(data)
    assert data[5]["id"] not in out["source_id"]
    for row in out:
        src = data[data["id"].index(row["source_id"])]
        assert row["text"] == spy.outputs[("hin_Deva", src["text"])]
        assert row["label"] == src["label"] and row["soft_label"] == src["soft_label"]
    assert manifest["metrics"]["hi"]["bisections"] >= 1
    assert spy.calls < 30  # bisection, not one call per row


def test_killed_run_resumes_with_only_the_rest(tmp_path, tiny, monkeypatch):
    from hfaug.pipeline import run_stage

    data = _labelled("sentiment", 24)
    section = {"languages": ["hi", "mr"], **FAST, "batch_size": 4}  # 6 batches per language
    run = _run(tmp_path, section)
    _with_label(run, data)

    first = Spy(monkeypatch, kill_after=3)
    with pytest.raises(Killed):
        run_stage(run, "translate")
    assert run.manifest("translate") is None  # nothing half-written
    done_before = first.texts  # three batches of hi reached the cache
    assert len(done_before) == 12

    second = Spy(monkeypatch)
    manifest, _ = run_stage(run, "translate")
    assert second.calls == 3 + 6
    assert Counter(second.texts) == Counter([t for t in data["text"] if t not in done_before] + list(data["text"]))
    assert manifest["metrics"]["hi"]["cache_hits"] == 12 and manifest["metrics"]["mr"]["cache_hits"] == 0
    for code in ("hi", "mr"):
        out = run.load("translate", code)
        english = {r["id"]: r for r in data}
        assert all(english[r["source_id"]]["soft_label"] == r["soft_label"] for r in out)

    # a fresh run over the same cache translates nothing
    third = Spy(monkeypatch)
    run_stage(run, "translate", force=True)
    assert third.calls == 0


def test_translate_source_writes_train_and_dev_per_language(tmp_path, tiny, monkeypatch):
    from hfaug.pipeline import planned, run_stage

    run = _run(tmp_path, {"languages": ["hi", "mr"], **FAST})
    run_stage(run, "source")
    manifest, _ = run_stage(run, "translate-source")
    assert set(manifest["rows_out"]) == {"train-hi", "dev-hi", "train-mr", "dev-mr"}
    train, train_hi = run.load("source", "train"), run.load("translate-source", "train-hi")
    assert set(train_hi["source_id"]) <= set(train["id"]) and set(train_hi["lang"]) == {"hi"}
    assert sum(manifest["rows_out"].values()) + sum(manifest["dropped"].values()) == manifest["rows_in"]
    gold = dict(zip(train["id"], train["label"]))
    assert all(gold[s] == label for s, label in zip(train_hi["source_id"], train_hi["label"]))
    off = _run(tmp_path / "off", {"languages": ["hi"], "source": False, **FAST})
    assert "translate-source" not in [s.name for s in planned(off.recipe)]


def test_uncovered_language_refused_before_any_work(tmp_path, tiny, monkeypatch, capsys):
    import yaml

    from hfaug import cli

    spy = Spy(monkeypatch)
    loads = []
    monkeypatch.setattr(Translator, "load_model", lambda self: loads.append(self))
    run = _run(tmp_path, {"languages": ["hi"], **FAST})
    _with_label(run, _labelled("sentiment", 4))
    recipe = {"name": "t", "task": "sentiment", "output_dir": str(tmp_path / "runs"),
              "source": {"path": "hfaug://data/demo/sentiment_en.jsonl"},
              "translate": {"languages": ["hi", "brx"], **FAST}}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    capsys.readouterr()
    assert cli.main(["translate", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "does not cover target language 'brx' (Bodo)" in err and "close matches it covers: hi, mr" in err
    assert spy.calls == 0 and not loads
    assert cli.main(["translate", "--config", str(path), "--translate.languages", "[hi, xx]"]) == 2
    assert "unknown language 'xx'" in capsys.readouterr().err


def test_empty_input_and_remote_code_is_logged(tiny, caplog):
    import logging

    data = _labelled("sentiment", 4).select([])
    with caplog.at_level(logging.WARNING, logger="hfaug.translate"):
        out, dropped, _ = translate(data, TranslateConfig(languages=["hi"], trust_remote_code=True, **FAST),
                                    "sentiment", progress=False)
    assert "trust_remote_code is enabled" in caplog.text
    assert len(out["hi"]) == 0 and not dropped
    assert out["hi"].features["text"].dtype == "string" and out["hi"].features["source_id"].dtype == "string"

"""IndicTrans2 as it is: refused where its model code fails, its toolkit's placeholder queue kept
in step with the batches, and a language whose texts all fail failing the stage.

IndicTransToolkit is an optional extra (not installed in the test environment); the stand-in
below has its 1.1.1 processor's queue semantics: ``preprocess_batch`` puts one placeholder map
per text on a FIFO queue, ``postprocess_batch`` takes one per output in order, then clears the
queue.
"""

from __future__ import annotations

import queue
import re

import pytest

from hfaug.errors import HfaugError
from hfaug.languages import get_language
from hfaug.translate import TranslateConfig, Translator, translate, translate_texts

ENTITY = re.compile(r"\d+|\S+@\S+")
KEYS = "abcdefghij"


class ToolkitStandIn:
    """IndicTransToolkit 1.1.1's IndicProcessor, reduced to its placeholder queue."""

    def __init__(self):
        self._placeholder_entity_maps: queue.Queue = queue.Queue()

    def preprocess_batch(self, batch, src_lang="eng_Latn", tgt_lang="hin_Deva", is_target=False, visualize=False):
        out = []
        for text in batch:
            found: dict[str, str] = {}

            def hide(match, found=found):
                key = f"<ID{KEYS[len(found)]}>"
                found[key] = match.group(0)
                return key

            self._placeholder_entity_maps.put(found)
            out.append(f"{src_lang} {tgt_lang} {ENTITY.sub(hide, text)}")
        return out

    def postprocess_batch(self, sents, lang="hin_Deva", visualize=False, num_return_sequences=1):
        maps = [self._placeholder_entity_maps.get_nowait() for _ in sents]  # the real one blocks when empty
        out = []
        for sent, found in zip(sents, maps):
            for key, value in found.items():
                sent = re.sub(rf"<?\s*{key[1:-1]}\s*>?", value, sent)
            out.append(sent)
        self._placeholder_entity_maps.queue.clear()
        return out


class Echo:
    """A model that answers with its input: the placeholders come back where they went in."""

    def __init__(self, fail_first: int = 0):
        self.calls = 0
        self.fail_first = fail_first

    def generate(self, input_ids=None, attention_mask=None, **kwargs):
        self.calls += 1
        if self.calls <= self.fail_first:
            raise RuntimeError("CUDA out of memory")
        return input_ids


def indic_translator(tiny, **config) -> Translator:
    translator = Translator(str(tiny["mt"]), TranslateConfig(languages=["hi"], **config), [get_language("hi")],
                            get_language("en"))
    translator.family = "indictrans2"  # the tiny model stands in for IndicTrans2's weights
    translator.indic = ToolkitStandIn()
    translator.model, translator.device = Echo(), "cpu"
    translator.tokenizer.tgt_lang = "hin_Deva"  # IndicTrans2's decoding switches to the target tokenizer
    return translator


# longer and longer rows: batches go longest first, so batch order is not row order
ROWS = [f"call the desk at {n} or write to guest{n}@hotel.example" + " today" * i
        for i, n in enumerate((5551234, 777, 42, 9000, 31, 808))]


@pytest.mark.parametrize("batch_size", [2, 4])
def test_each_row_gets_back_its_own_placeholders(tiny, batch_size):
    translator = indic_translator(tiny, batch_size=batch_size, retries=0)
    out = translate_texts(translator, ROWS, get_language("hi"), progress=False)
    for row, text in zip(ROWS, out):
        number = re.search(r"\d+", row).group(0)
        assert number in text and f"guest{number}@hotel.example" in text, (row, text)


def test_a_failed_batch_leaves_no_maps_for_the_next(tiny):
    translator = indic_translator(tiny, batch_size=4, retries=1)
    translator.model = Echo(fail_first=1)
    out = translate_texts(translator, ROWS, get_language("hi"), progress=False)
    assert all(re.search(r"\d+", r).group(0) in t for r, t in zip(ROWS, out))


def test_indictrans2_is_refused_up_front_under_this_transformers():
    import transformers

    with pytest.raises(HfaugError, match=r"transformers 4\.53\.x.*#128.*PR #130.*NLLB") as err:
        Translator("ai4bharat/indictrans2-en-indic-1B", TranslateConfig(languages=["hi"], trust_remote_code=True),
                   [get_language("hi")], get_language("en"))
    assert transformers.__version__ in str(err.value) and "\n" not in str(err.value)


def test_the_toolkit_is_required_by_default(tiny, monkeypatch):
    monkeypatch.setattr(Translator, "_family", lambda self: "indictrans2")
    monkeypatch.setattr(Translator, "_code", lambda self, lang, source=False: "hin_Deva" if not source else "eng_Latn")
    monkeypatch.setattr(Translator, "_indic_processor", lambda self: None)
    cfg = dict(languages=["hi"], indictrans2_any_transformers=True)
    with pytest.raises(HfaugError, match=r"pip install 'hfaug\[indic\]'"):
        Translator(str(tiny["mt"]), TranslateConfig(**cfg), [get_language("hi")], get_language("en"))
    plain = Translator(str(tiny["mt"]), TranslateConfig(**cfg, indic_toolkit=False), [get_language("hi")],
                       get_language("en"))
    assert plain.indic is None


def test_a_language_whose_texts_all_fail_fails_the_stage(tiny, monkeypatch):
    import datasets

    from hfaug import schema

    def broken(self, texts, code):  # what IndicTrans2's code raises under transformers 4.57
        raise TypeError("expected Tensor as element 0 in argument 0, but got NoneType")

    monkeypatch.setattr(Translator, "generate", broken)
    data = datasets.Dataset.from_dict({"id": ["a", "b", "c"], "text": ["One room.", "Two rooms.", "Three rooms."],
                                       "label": [0, 1, 2]})
    data = data.cast_column("label", datasets.ClassLabel(names=["negative", "neutral", "positive"]))
    assert schema.ID == "id"
    with pytest.raises(HfaugError, match=r"translate hi: all 3 texts failed.*expected Tensor.*nothing was written"):
        translate(data, TranslateConfig(languages=["hi"], model=str(tiny["mt"]), retries=0), "sentiment",
                  progress=False)

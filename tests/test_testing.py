"""The tiny offline models load through the real Auto classes, and the CLI stays light."""

from __future__ import annotations

import subprocess
import sys

import torch


def test_encoder_takes_sentence_pairs_and_gets_a_head(tiny):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny["encoder"])
    model = AutoModelForSequenceClassification.from_pretrained(tiny["encoder"], num_labels=3)
    enc = tok(["a premise here"], ["a hypothesis"], return_tensors="pt")
    tokens = tok.convert_ids_to_tokens(enc["input_ids"][0])
    assert tokens[0] == "<s>" and tokens.count("</s>") == 3  # <s> A </s></s> B </s>
    assert "token_type_ids" not in enc
    assert model(**enc).logits.shape == (1, 3)


def test_chat_lm_applies_its_template_and_generates(tiny):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny["chat-lm"])
    model = AutoModelForCausalLM.from_pretrained(tiny["chat-lm"])
    prompt = tok.apply_chat_template([{"role": "user", "content": "Write a review."}],
                                     add_generation_prompt=True, tokenize=False)
    assert prompt.endswith("<|assistant|>\n")
    ids = tok(prompt, return_tensors="pt")
    torch.manual_seed(0)
    out = model.generate(**ids, do_sample=True, min_new_tokens=5, max_new_tokens=8)
    assert out.shape[1] - ids["input_ids"].shape[1] >= 5


def test_mt_model_has_flores_codes_and_forces_the_target_language(tiny):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny["mt"], src_lang="eng_Latn")
    model = AutoModelForSeq2SeqLM.from_pretrained(tiny["mt"])
    hin = tok.convert_tokens_to_ids("hin_Deva")
    assert hin != tok.unk_token_id and tok.convert_tokens_to_ids("swh_Latn") != tok.unk_token_id
    enc = tok(["A short sentence."], return_tensors="pt")
    assert enc["input_ids"][0][0] == tok.convert_tokens_to_ids("eng_Latn")
    out = model.generate(**enc, forced_bos_token_id=hin, min_new_tokens=3, max_new_tokens=5)
    assert out[0][1] == hin


def test_embedder_loads_in_sentence_transformers(tiny):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(tiny["embedder"]), device="cpu")
    emb = model.encode(["hello", "नमस्ते"], normalize_embeddings=True)
    assert emb.shape == (2, 64)


def test_cli_import_does_not_pull_heavy_packages():
    code = "import sys, hfaug.cli; print(sorted(m for m in ('torch','transformers','datasets') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    help_out = subprocess.run([sys.executable, "-m", "hfaug", "--help"], capture_output=True, text=True, check=True)
    assert "run" in help_out.stdout and "generate" in help_out.stdout


def test_tiny_models_are_identical_on_every_build(tmp_path):
    """Reproduction across machines needs the same tokenizer and weights from every build."""
    from hfaug.testing import tiny_model

    a, b = tiny_model("mt", root=tmp_path / "a"), tiny_model("mt", root=tmp_path / "b")
    for name in ("tokenizer.json", "model.safetensors"):
        assert (a / name).read_bytes() == (b / name).read_bytes()

"""Tiny offline models for tests and the demo, built from configs with locally trained tokenizers.

Nothing here downloads anything. Each builder saves a model with ``save_pretrained`` so the
product code loads it the real way (``AutoModel*.from_pretrained(path)``). Recipes refer to them
as ``hfaug://tiny/<kind>``; :func:`tiny_model` builds one on first use into the hfaug cache
(``$HFAUG_HOME``, default ``~/.cache/hfaug``) and returns its folder.

Kinds:
    encoder    XLM-R-shaped masked LM (a base for teachers and students; heads are added by
               AutoModelForSequenceClassification, as with xlm-roberta-large)
    chat-lm    Llama-shaped causal LM with a chat template (the in-process generator)
    mt         NLLB-shaped seq2seq (M2M100 architecture, FLORES-200 language tokens)
    embedder   sentence-transformers model on the tiny encoder (stands in for LaBSE)

Weights are random but seeded, so every machine builds the same model.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable
from functools import lru_cache
from importlib import resources
from pathlib import Path

from .atomic import atomic_folder

TINY_VERSION = "2"

CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def hfaug_home() -> Path:
    return Path(os.environ.get("HFAUG_HOME", Path.home() / ".cache" / "hfaug"))


def corpus() -> list[str]:
    """Every text of the packaged demo data, in a fixed order: what the tiny tokenizers learn."""
    root = Path(str(resources.files("hfaug") / "data" / "demo"))
    texts: list[str] = []
    for path in sorted(root.glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                texts += [v for k, v in row.items() if k in ("text", "premise", "hypothesis")]
    # the generator's prompts and scaffolding, so the chat LM can tokenize them compactly
    texts += ["Write a short review of a movie, a trip or a gadget.", "Review: The answer is"] * 4
    return texts


def _seed(seed: int = 0) -> None:
    import torch

    torch.manual_seed(seed)


def _subword_tokenizer(texts: Iterable[str], vocab_size: int, special: list[str]):
    """A Metaspace BPE tokenizer (SentencePiece-like). BPE training is deterministic, unlike
    the Unigram trainer, so every machine builds the same tiny models (reproduction needs it)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    texts = list(texts)
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    alphabet = sorted({ch for text in texts for ch in text})
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special, initial_alphabet=alphabet,
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def build_encoder(path: Path) -> None:
    """An XLM-R-shaped masked LM: RoBERTa pair template, ``<s> A </s></s> B </s>``."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast, XLMRobertaConfig, XLMRobertaForMaskedLM

    special = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # XLM-R's ids 0..3, then mask
    tok = _subword_tokenizer(corpus(), 1500, special)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", 0), ("</s>", 2)],
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", sep_token="</s>", cls_token="<s>",
        unk_token="<unk>", pad_token="<pad>", mask_token="<mask>", model_max_length=512,
        model_input_names=["input_ids", "attention_mask"],
    )
    _seed()
    config = XLMRobertaConfig(
        vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=128, max_position_embeddings=514, type_vocab_size=1, pad_token_id=1,
        bos_token_id=0, eos_token_id=2, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
    )
    XLMRobertaForMaskedLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)


def build_chat_lm(path: Path) -> None:
    """A Llama-shaped causal LM with a chat template. Random weights: set ``min_new_tokens``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    special = ["<unk>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    english = [t for t in corpus() if t.isascii()]
    tok.train_from_iterator(english, trainer=trainers.BpeTrainer(
        vocab_size=1200, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="</s>",
        model_input_names=["input_ids", "attention_mask"], chat_template=CHAT_TEMPLATE, model_max_length=512,
    )
    _seed()
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)


def build_mt(path: Path) -> None:
    """An NLLB-shaped translation model: M2M100 architecture, NllbTokenizerFast with FLORES codes."""
    from transformers import M2M100Config, M2M100ForConditionalGeneration, NllbTokenizerFast

    special = ["<s>", "<pad>", "</s>", "<unk>"]
    tok = _subword_tokenizer(corpus(), 2000, special)
    tokenizer = NllbTokenizerFast(tokenizer_object=tok, src_lang="eng_Latn", model_max_length=256)
    _seed()
    config = M2M100Config(
        vocab_size=len(tokenizer), d_model=64, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128,
        max_position_embeddings=256, pad_token_id=tokenizer.pad_token_id, bos_token_id=0,
        eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.eos_token_id,
        scale_embedding=True,
    )
    model = M2M100ForConditionalGeneration(config)
    model.generation_config.decoder_start_token_id = tokenizer.eos_token_id
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)


def build_embedder(path: Path) -> None:
    """A sentence-transformers model (transformer + mean pooling + normalize) on the tiny encoder."""
    from sentence_transformers import SentenceTransformer, models

    encoder = tiny_model("encoder")
    transformer = models.Transformer(str(encoder), max_seq_length=128)
    pooling = models.Pooling(transformer.get_embedding_dimension(), pooling_mode="mean")
    # no model card: writing one looks the base model up on the Hub (a request, with the token if set)
    SentenceTransformer(modules=[transformer, pooling, models.Normalize()], device="cpu").save(
        str(path), create_model_card=False)


BUILDERS: dict[str, Callable[[Path], None]] = {
    "encoder": build_encoder,
    "chat-lm": build_chat_lm,
    "mt": build_mt,
    "embedder": build_embedder,
}


@lru_cache(maxsize=1)
def _build_digest() -> str:
    """What the tiny models are built from: the corpus and the builders' own source (so a cache
    built by other code is never reused). Once per process: every hfaug://tiny/ reference asks."""
    builders = Path(__file__).read_text(encoding="utf-8")
    return hashlib.sha256("\n".join([*corpus(), builders]).encode()).hexdigest()[:8]


def tiny_model(kind: str, root: str | Path | None = None) -> Path:
    """The folder of tiny model ``kind``, built on first use (atomically: tmp folder + rename)."""
    from .errors import HfaugError, did_you_mean

    if kind not in BUILDERS:
        raise HfaugError(f"unknown tiny model 'hfaug://tiny/{kind}'{did_you_mean(kind, BUILDERS)}")
    base = Path(root) if root else hfaug_home() / "tiny"
    path = base / f"{kind}-v{TINY_VERSION}-{_build_digest()}"
    if (path / "config.json").exists() or (path / "modules.json").exists():
        return path
    # replace=False: when another process won the race, its copy (identical) stays
    with atomic_folder(path, replace=False) as tmp:
        BUILDERS[kind](tmp)
    return path

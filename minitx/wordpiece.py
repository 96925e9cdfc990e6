"""WordPiece tokenization as BERT does it, written from the published rules.

Two stages, applied to every input string:

1. **Basic tokenization** (Devlin et al. 2019, "BERT", arXiv 1810.04805, section A.2 and the
   released BERT code's description): clean the text (drop NUL, U+FFFD and control characters,
   map every kind of whitespace to a space), put spaces around CJK ideographs so each becomes its
   own word, strip accents (NFD, then drop combining marks) and lowercase when the vocabulary is
   uncased, split on whitespace, and make every punctuation character a word of its own.
2. **WordPiece** (Wu et al. 2016, "Google's NMT system", arXiv 1609.08144, section 4.1; Schuster &
   Nakajima 2012): split each word greedily, longest match first, into vocabulary pieces;
   pieces after the first carry the prefix ``##``. A word with no full split, or longer than
   ``max_input_chars_per_word`` characters, becomes the single token ``[UNK]``.

Special tokens written literally in the text (``[MASK]``, ``[SEP]``, ...) are matched before the
normalisation and map straight to their ids, as the Hugging Face fast tokenizer does. The order
"strip accents, then lowercase" also follows that tokenizer, which is what sentence-transformers
runs; the two orders agree on every character we know of.

Known difference: the character classes come from Python's ``unicodedata`` (Unicode 14 on Python
3.11), while the fast tokenizer's punctuation and combining-mark tables predate Unicode 9, so a
character added to Unicode since then (a new combining mark, a new punctuation sign) can split
differently. Differential fuzzing against that tokenizer found no other disagreement.

The encoder input is ``[CLS] pieces [SEP]``, truncated so the whole stays within ``max_length``,
right-padded with ``[PAD]`` to the longest sequence of a batch.
"""
from __future__ import annotations

import json
import os
import re
import unicodedata

import numpy as np

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")

# CJK Unified Ideographs and their extensions, plus the compatibility ideographs: the blocks that
# BERT splits into single characters. Hiragana, katakana and hangul are NOT in these blocks, so
# Japanese kana and Korean words go through WordPiece like any other script.
# Extension E really starts at U+2B820; the Hugging Face fast tokenizer starts it at U+2B920
# (the 256 ideographs between stay glued to their neighbours), and we follow it so that ids match.
_CJK_RANGES = (
    (0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F), (0x2B920, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F),
)


def is_whitespace(ch: str) -> bool:
    """True for a word separator: space, tab, newline, CR, or any Unicode White_Space."""
    if ch in " \t\n\r":
        return True
    # str.isspace() is the Unicode White_Space property plus the ASCII separators 0x1C-0x1F;
    # those four are control characters and are removed before this test is reached.
    return ch.isspace()


# Control (Cc), format (Cf), private-use (Co) and surrogate (Cs) characters are removed.
# Unassigned code points (Cn) are kept, as the Hugging Face fast tokenizer keeps them: they then
# fail WordPiece and become [UNK] (the original Python BERT code dropped them instead).
_REMOVED_CATEGORIES = frozenset({"Cc", "Cf", "Co", "Cs"})


def is_control(ch: str) -> bool:
    """True for a character the cleanup removes: Cc/Cf/Co/Cs other than tab, newline, CR."""
    if ch in "\t\n\r":
        return False
    return unicodedata.category(ch) in _REMOVED_CATEGORIES


def is_punctuation(ch: str) -> bool:
    """True for ASCII non-alphanumeric printable characters and Unicode category P*."""
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True  # ASCII: treats $ + < = > ^ ` | ~ as punctuation too, as BERT does
    return unicodedata.category(ch).startswith("P")


def is_cjk(ch: str) -> bool:
    """True for a CJK ideograph (see ``_CJK_RANGES``)."""
    cp = ord(ch)
    return any(lo <= cp <= hi for lo, hi in _CJK_RANGES)


def normalize(text: str, *, lowercase: bool = True, strip_accents: bool | None = None,
              tokenize_chinese_chars: bool = True) -> str:
    """BERT's normaliser: clean, space out CJK ideographs, strip accents, lowercase.

    Args:
        text: raw input.
        lowercase: lowercase everything (uncased vocabularies).
        strip_accents: remove combining marks after NFD; ``None`` means "same as lowercase".
        tokenize_chinese_chars: surround every CJK ideograph with spaces.
    Returns:
        The normalised string.
    """
    out = []
    for ch in text:
        cp = ord(ch)
        if cp == 0 or cp == 0xFFFD or is_control(ch):
            continue  # step 1a: drop NUL, replacement char and control chars
        if is_whitespace(ch):
            out.append(" ")  # step 1b: every whitespace becomes a plain space
        elif tokenize_chinese_chars and is_cjk(ch):
            out.append(" " + ch + " ")  # step 2: one word per ideograph
        else:
            out.append(ch)
    text = "".join(out)
    if strip_accents is None:
        strip_accents = lowercase
    if strip_accents:  # step 3: é -> e + U+0301 -> e
        text = "".join(c for c in unicodedata.normalize("NFD", text)
                       if unicodedata.category(c) != "Mn")
    if lowercase:  # step 4, one character at a time: 'ΟΔΟΣ' -> 'οδοσ' (str.lower gives 'οδος')
        text = "".join(c.lower() for c in text)
    return text


def split_words(text: str) -> list[str]:
    """BERT pre-tokenizer: split a normalised string on whitespace and isolate punctuation.

    Args:
        text: output of :func:`normalize`.
    Returns:
        The list of words; each punctuation character is a word of its own.
    """
    words: list[str] = []
    current: list[str] = []
    for ch in text:
        if is_whitespace(ch) or is_punctuation(ch):
            if current:
                words.append("".join(current))
                current = []
            if not is_whitespace(ch):
                words.append(ch)
        else:
            current.append(ch)
    if current:
        words.append("".join(current))
    return words


def load_vocab(path: str) -> dict[str, int]:
    """Read a ``vocab.txt`` (one token per line, the line number is the id)."""
    vocab: dict[str, int] = {}
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            token = line.rstrip("\n")
            if token in vocab:
                raise ValueError(f"{path}: token {token!r} on line {i + 1} repeats line "
                                 f"{vocab[token] + 1}")
            vocab[token] = i
    return vocab


class WordPieceTokenizer:
    """BERT tokenizer: basic tokenization + greedy longest-match-first WordPiece.

    Args:
        vocab: token -> id mapping; must contain the five special tokens.
        do_lower_case: lowercase (and, unless ``strip_accents`` says otherwise, strip accents).
        strip_accents: ``None`` follows ``do_lower_case``.
        tokenize_chinese_chars: split CJK ideographs into single-character words.
        max_input_chars_per_word: longer words become ``[UNK]`` without trying WordPiece.
        model_max_length: default ``max_length`` for truncation (includes [CLS] and [SEP]).
    """

    def __init__(self, vocab: dict[str, int], *, do_lower_case: bool = True,
                 strip_accents: bool | None = None, tokenize_chinese_chars: bool = True,
                 max_input_chars_per_word: int = 100, model_max_length: int = 512):
        missing = [t for t in SPECIAL_TOKENS if t not in vocab]
        if missing:
            raise ValueError(f"vocab lacks special tokens {missing}")
        if model_max_length < 2:
            raise ValueError(f"model_max_length must be >= 2 for [CLS] and [SEP], "
                             f"got {model_max_length}")
        self.vocab = dict(vocab)
        self.ids_to_tokens = {i: t for t, i in self.vocab.items()}
        self.do_lower_case = do_lower_case
        self.strip_accents = strip_accents
        self.tokenize_chinese_chars = tokenize_chinese_chars
        self.max_input_chars_per_word = max_input_chars_per_word
        self.model_max_length = model_max_length
        self.unk_id, self.cls_id, self.sep_id = (vocab["[UNK]"], vocab["[CLS]"], vocab["[SEP]"])
        self.pad_id = vocab["[PAD]"]
        # longest first, so that no special token is matched as part of a shorter one
        alternatives = sorted(SPECIAL_TOKENS, key=len, reverse=True)
        self._special_re = re.compile("(" + "|".join(re.escape(t) for t in alternatives) + ")")

    @classmethod
    def from_pretrained(cls, directory: str, **overrides) -> "WordPieceTokenizer":
        """Load ``vocab.txt`` and, when present, ``tokenizer_config.json`` from a directory.

        Args:
            directory: a Hugging Face model directory.
            overrides: keyword arguments that take precedence over the config file.
        """
        vocab_path = os.path.join(directory, "vocab.txt")
        if not os.path.isfile(vocab_path):
            raise FileNotFoundError(f"no vocab.txt in {directory!r}")
        kwargs = {}
        config_path = os.path.join(directory, "tokenizer_config.json")
        if os.path.isfile(config_path):
            with open(config_path, encoding="utf-8") as f:
                config = json.load(f)
            for key in ("do_lower_case", "strip_accents", "tokenize_chinese_chars",
                        "model_max_length"):
                if config.get(key) is not None:
                    kwargs[key] = config[key]
        kwargs.update(overrides)
        return cls(load_vocab(vocab_path), **kwargs)

    def wordpiece(self, word: str) -> list[str]:
        """Greedy longest-match-first split of one word into vocabulary pieces.

        Args:
            word: a single word from :func:`split_words`.
        Returns:
            The pieces (``"##"`` before every piece but the first), or ``["[UNK]"]``.
        """
        if len(word) > self.max_input_chars_per_word:
            return ["[UNK]"]
        pieces = []
        start = 0
        while start < len(word):
            end = len(word)
            piece = None
            while start < end:  # shrink from the right until the substring is in the vocab
                candidate = word[start:end] if start == 0 else "##" + word[start:end]
                if candidate in self.vocab:
                    piece = candidate
                    break
                end -= 1
            if piece is None:
                return ["[UNK]"]  # no split exists: the whole word is unknown
            pieces.append(piece)
            start = end
        return pieces

    def tokenize(self, text: str) -> list[str]:
        """Text -> WordPiece tokens, without [CLS]/[SEP] and without truncation."""
        if not isinstance(text, str):
            raise TypeError(f"text must be str, got {type(text).__name__}")
        tokens: list[str] = []
        for chunk in self._special_re.split(text):  # odd positions are literal special tokens
            if chunk in SPECIAL_TOKENS:
                tokens.append(chunk)
                continue
            normed = normalize(chunk, lowercase=self.do_lower_case,
                               strip_accents=self.strip_accents,
                               tokenize_chinese_chars=self.tokenize_chinese_chars)
            for word in split_words(normed):
                tokens.extend(self.wordpiece(word))
        return tokens

    def convert_tokens_to_ids(self, tokens: list[str]) -> list[int]:
        """Tokens -> ids; tokens outside the vocabulary map to the [UNK] id."""
        return [self.vocab.get(t, self.unk_id) for t in tokens]

    def convert_ids_to_tokens(self, ids) -> list[str]:
        """Ids -> tokens."""
        return [self.ids_to_tokens[int(i)] for i in ids]

    def encode(self, text: str, max_length: int | None = None) -> list[int]:
        """``[CLS] pieces [SEP]`` ids, keeping the first ``max_length - 2`` pieces.

        Args:
            text: one string.
            max_length: total length cap including [CLS] and [SEP]; default model_max_length.
        Returns:
            A list of ints of length <= max_length.
        """
        max_length = self.model_max_length if max_length is None else max_length
        if not isinstance(max_length, int) or max_length < 2:
            raise ValueError(f"max_length must be an int >= 2, got {max_length!r}")
        ids = self.convert_tokens_to_ids(self.tokenize(text))[: max_length - 2]
        return [self.cls_id] + ids + [self.sep_id]

    def __call__(self, texts: list[str], max_length: int | None = None) -> dict[str, np.ndarray]:
        """Batch-encode, right-padding to the longest sequence.

        Args:
            texts: list of B strings.
            max_length: as in :meth:`encode`.
        Returns:
            ``input_ids``, ``token_type_ids``, ``attention_mask``: int64 arrays of shape (B, T),
            T the longest encoded length; the mask is 1 on real tokens and 0 on padding.
        """
        if isinstance(texts, str):
            raise TypeError("texts must be a list of str, got a single str; wrap it in a list")
        encoded = [self.encode(t, max_length) for t in texts]
        if not encoded:
            raise ValueError("texts is empty")
        T = max(len(e) for e in encoded)
        input_ids = np.full((len(encoded), T), self.pad_id, dtype=np.int64)  # (B, T)
        attention_mask = np.zeros((len(encoded), T), dtype=np.int64)  # (B, T)
        for b, ids in enumerate(encoded):
            input_ids[b, : len(ids)] = ids
            attention_mask[b, : len(ids)] = 1
        return {"input_ids": input_ids, "token_type_ids": np.zeros_like(input_ids),
                "attention_mask": attention_mask}

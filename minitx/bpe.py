"""Byte-level BPE, the tokenizer of GPT-2 and of SmolLM2 (read from a GGUF file's metadata).

Papers: Sennrich, Haddow & Birch 2016, "Neural Machine Translation of Rare Words with Subword
Units" (arXiv 1508.07909): byte-pair encoding; Radford et al. 2019, "Language Models are
Unsupervised Multitask Learners" (GPT-2), section 2.2: BPE over bytes, not characters.

``encode(text)`` runs five steps:

1. **Special tokens.** Control tokens written literally in the text (ChatML's ``<|im_start|>``,
   ``<|im_end|>``, ``<|endoftext|>``, ...) are cut out first, longest match first, and map
   straight to their ids. The rest is plain text.
2. **Pre-tokenizer** (a GGUF file names it in ``tokenizer.ggml.pre``). ``"smollm"`` first makes
   every number character (``\\p{N}``) a piece of its own, then splits each stretch between them
   with the GPT-2 pattern::

       's|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+

   (contractions; a word with its leading space; a number; a run of other symbols; a whitespace
   run that leaves its last space to the next word). ``"gpt2"`` is the pattern alone.
3. **Bytes to symbols.** The UTF-8 bytes of each piece are spelled with one printable character
   per byte (``bytes_to_unicode``: the space byte 0x20 is ``'Ġ'``), so tokens are strings.
4. **BPE** (``bpe_merge``): repeatedly join the adjacent pair of symbols that comes first in the
   merge list (lowest rank; the leftmost one on a tie) until no adjacent pair is in the list.
5. **Ids.** Every final symbol is a vocabulary token. A byte with no token of its own (SmolLM2's
   vocabulary lacks 21 of the 256, among them 0x04 and the lead bytes 0xF1/0xF2) is dropped, as
   the reference tokenizer drops it.

Chat prompts come from the file's Jinja chat template, rendered without Jinja by
``minitx.chat_template`` (``render_chat`` is re-exported here).

``decode(ids)`` concatenates the tokens' bytes and decodes UTF-8 (an invalid sequence becomes
U+FFFD); ``StreamDecoder`` does the same one token at a time, holding back a character whose
bytes are split across tokens until it is complete.

**Unicode classes** come from the running Python's ``unicodedata``: ``\\p{L}`` is category L*,
``\\p{N}`` is Nd, Nl or No, and ``\\s`` is the Unicode White_Space property (a fixed list; not
``str.isspace``, which also counts U+001C-U+001F). Python 3.10 ships Unicode 13.0, 3.11 14.0,
3.12 15.0 and 3.13 15.1: their category tables differ on 5,955 code points, the 5,954 assigned
after 13.0 (unassigned on 3.10, hence neither letter nor number there) and U+1734 (Mn to Mc,
which changes nothing here). The reference tokenizer carries its own, newer tables, so a character
newer than the running Python's Unicode can split differently (U+0870, an Arabic letter of
Unicode 14, is a letter from Python 3.11 on, so "a\\u0870b" is one piece there and three on
3.10); every other string gets the reference's ids (tests/test_bpe.py checks this on stored
reference data, which all four Pythons match id for id).
"""
from __future__ import annotations

import codecs
import functools
import heapq
import re
import sys
import unicodedata

from minitx.chat_template import parse_chat_template, render_chat  # noqa: F401 (re-exported)

# GGUF tokenizer.ggml.token_type values (llama.cpp's llama_token_type)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

WHITE_SPACE = "\t\n\x0b\x0c\r \x85\xa0\u1680" + "".join(map(chr, range(0x2000, 0x200B))) \
    + "\u2028\u2029\u202f\u205f\u3000"  # the Unicode White_Space property (stable since 6.3)

PRE_TOKENIZERS = ("smollm", "gpt2", "gpt-2")      # "gpt-2": llama.cpp's name for "gpt2"


@functools.lru_cache(maxsize=1)
def bytes_to_unicode():
    """GPT-2's printable spelling of the 256 byte values.

    Bytes that are printable Latin-1 characters (``!``..``~``, ``¡``..``¬``, ``®``..``ÿ``) stand
    for themselves; the other 68 (controls, space, DEL, NBSP, soft hyphen, ...) are shifted to
    U+0100 and up in byte order, so 0x00 is ``'Ā'`` and the space 0x20 is ``'Ġ'``.

    Returns:
        dict int -> str of 256 entries, one character each, all distinct.
    """
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
            *range(ord("®"), ord("ÿ") + 1)]
    table, shifted = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + shifted)
            shifted += 1
    return table


def bpe_merge(word, ranks, steps=None):
    """Byte-pair encode one word: merge the best-ranked adjacent pair until none is left.

    The plain loop a course exercise starts from (``BPETokenizer`` runs the same rule with a heap).

    Args:
        word: sequence of str, the starting symbols (for byte-level BPE, one per byte).
        ranks: dict (str, str) -> int, the merge list's order; lower merges first.
        steps: optional list; each merge appends (rank, symbols after it), to watch the merges.
    Returns:
        list of str: the merged symbols, whose concatenation is ``"".join(word)``.
    """
    symbols = list(word)
    while len(symbols) > 1:
        best, best_rank = None, None
        for i in range(len(symbols) - 1):
            rank = ranks.get((symbols[i], symbols[i + 1]))
            if rank is not None and (best_rank is None or rank < best_rank):
                best, best_rank = i, rank            # strict '<': the leftmost wins a tie
        if best is None:
            break
        symbols[best:best + 2] = [symbols[best] + symbols[best + 1]]
        if steps is not None:
            steps.append((best_rank, list(symbols)))
    return symbols


def bpe_merge_heap(word, ranks):
    """``bpe_merge`` in O(n log n): a heap of (rank, position) over a linked list of symbols.

    A heap entry goes stale when a neighbour merges; it is skipped when popped if the two
    symbols it names are no longer adjacent at that position. Same args and result as
    ``bpe_merge`` (tests/test_bpe.py checks they agree).
    """
    sym = list(word)
    n = len(sym)
    nxt = list(range(1, n + 1))                  # nxt[i] == n: i is the last symbol
    prv = list(range(-1, n - 1))
    heap = []

    def push(i):
        j = nxt[i]
        if j < n:
            rank = ranks.get((sym[i], sym[j]))
            if rank is not None:
                heapq.heappush(heap, (rank, i, sym[i], sym[j]))

    for i in range(n - 1):
        push(i)
    while heap:
        _, i, a, b = heapq.heappop(heap)
        j = nxt[i]
        if sym[i] != a or j >= n or sym[j] != b:
            continue                             # stale: i or its neighbour changed
        sym[i], sym[j] = a + b, None             # j is absorbed into i
        nxt[i] = nxt[j]
        if nxt[i] < n:
            prv[nxt[i]] = i
        if prv[i] >= 0:
            push(prv[i])
        push(i)
    return [s for s in sym if s is not None]


# ---------------------------------------------------------------- pre-tokenizer

def _ranges_to_class(ranges):
    return "".join(f"\\U{a:08x}" if a == b else f"\\U{a:08x}-\\U{b:08x}" for a, b in ranges)


@functools.lru_cache(maxsize=1)
def unicode_classes():
    """The regex bodies of \\p{L}, \\p{N} and \\s, built from this Python's ``unicodedata``.

    Returns:
        dict with keys "L", "N", "S": character-class bodies (without brackets) for ``re``.
    """
    runs = {"L": [], "N": []}
    for cp in range(sys.maxunicode + 1):
        cat = unicodedata.category(chr(cp))
        key = "L" if cat[0] == "L" else "N" if cat in ("Nd", "Nl", "No") else None
        if key is not None:
            rs = runs[key]
            if rs and rs[-1][1] == cp - 1:
                rs[-1][1] = cp
            else:
                rs.append([cp, cp])
    spaces = [(ord(c), ord(c)) for c in WHITE_SPACE]
    return {"L": _ranges_to_class(runs["L"]), "N": _ranges_to_class(runs["N"]),
            "S": _ranges_to_class(spaces)}


@functools.lru_cache(maxsize=1)
def _patterns():
    c = unicode_classes()
    L, N, S = c["L"], c["N"], c["S"]
    gpt2 = (rf"'s|'t|'re|'ve|'m|'ll|'d| ?[{L}]+| ?[{N}]+| ?[^{S}{L}{N}]+"
            rf"|[{S}]+(?![^{S}])|[{S}]+")
    return re.compile(gpt2), re.compile(f"[{N}]")


def pretokenize(text, pre="smollm"):
    """Split text (without special tokens) into the pieces BPE works on.

    Args:
        text: str.
        pre: "smollm" (each number character alone, then the GPT-2 pattern) or "gpt2".
    Returns:
        list of str whose concatenation is ``text``.
    """
    if pre not in PRE_TOKENIZERS:
        raise ValueError(f"unknown pre-tokenizer {pre!r}; supported: {PRE_TOKENIZERS}")
    gpt2, number = _patterns()
    stretches = [text]
    if pre == "smollm":
        stretches, start = [], 0
        for m in number.finditer(text):
            stretches += [text[start:m.start()], m.group()]
            start = m.end()
        stretches.append(text[start:])
    return [p for s in stretches if s for p in gpt2.findall(s)]


# ---------------------------------------------------------------- the tokenizer

class BPETokenizer:
    """Byte-level BPE tokenizer built from plain lists (a GGUF file's tokenizer metadata).

    Args:
        tokens: list of str, the vocabulary in id order, spelled with ``bytes_to_unicode``.
        merges: list of "left right" str (or (left, right) pairs), best first.
        token_types: list of int per token (GGUF ``token_type``; CONTROL and USER_DEFINED
            tokens are matched whole in the text); None: all NORMAL.
        pre: pre-tokenizer name, "smollm" or "gpt2".
        bos_id, eos_id: special token ids or None; add_bos: prepend bos_id in ``encode``.
        chat_template: the Jinja chat template string or None (see ``render_chat``).
    """

    def __init__(self, tokens, merges, token_types=None, *, pre="smollm", bos_id=None,
                 eos_id=None, add_bos=False, chat_template=None):
        tokens = list(tokens)
        if not tokens or not all(isinstance(t, str) for t in tokens):
            raise TypeError("tokens must be a non-empty list of str")
        if pre not in PRE_TOKENIZERS:
            raise ValueError(f"unknown pre-tokenizer {pre!r}; supported: {PRE_TOKENIZERS}")
        types = [NORMAL] * len(tokens) if token_types is None else [int(t) for t in token_types]
        if len(types) != len(tokens):
            raise ValueError(f"{len(types)} token types for {len(tokens)} tokens")
        self.tokens, self.token_types, self.pre = tokens, types, pre
        self.vocab = {t: i for i, t in enumerate(tokens)}
        if len(self.vocab) != len(tokens):
            raise ValueError("duplicate tokens in the vocabulary")
        for name, tid in (("bos_id", bos_id), ("eos_id", eos_id)):
            if tid is not None and not 0 <= tid < len(tokens):
                raise ValueError(f"{name}={tid} out of range for {len(tokens)} tokens")
        if add_bos and bos_id is None:
            raise ValueError("add_bos=True needs a bos_id")
        self.bos_id, self.eos_id, self.add_bos = bos_id, eos_id, add_bos
        self.chat_template = chat_template
        self.ranks = self._check_merges(merges)
        self.byte_symbol = bytes_to_unicode()
        symbol_byte = {s: b for b, s in self.byte_symbol.items()}
        self.special = {t: i for i, t in enumerate(tokens) if types[i] in (CONTROL, USER_DEFINED)}
        # each token's bytes: byte-level spelling undone; special tokens are their own UTF-8 text
        self.token_bytes = [bytes(symbol_byte[c] for c in t)
                            if types[i] not in (CONTROL, USER_DEFINED)
                            and all(c in symbol_byte for c in t) else t.encode("utf-8")
                            for i, t in enumerate(tokens)]
        alternatives = sorted(self.special, key=len, reverse=True)   # longest match first
        self._special_re = re.compile("|".join(map(re.escape, alternatives))) if alternatives \
            else None
        self._cache = {}

    def _check_merges(self, merges):
        ranks = {}
        for rank, m in enumerate(merges):
            pair = tuple(m.split(" ")) if isinstance(m, str) else tuple(m)
            if len(pair) != 2 or not all(pair):
                raise ValueError(f"merge {rank} is {m!r}; expected 'left right'")
            for part in (*pair, pair[0] + pair[1]):
                if part not in self.vocab:
                    raise ValueError(f"merge {rank} {m!r}: {part!r} is not in the vocabulary")
            ranks.setdefault(pair, rank)
        return ranks

    @property
    def vocab_size(self):
        """Number of tokens (ids are 0 .. vocab_size - 1)."""
        return len(self.tokens)

    def _encode_piece(self, piece):
        ids = self._cache.get(piece)
        if ids is None:
            symbols = [self.byte_symbol[b] for b in piece.encode("utf-8")]
            symbols = [s for s in symbols if s in self.vocab]   # bytes with no token: dropped
            ids = [self.vocab[s] for s in bpe_merge_heap(symbols, self.ranks)]
            if len(self._cache) >= 200_000:
                self._cache.clear()
            self._cache[piece] = ids
        return ids

    def encode(self, text, allow_special=True):
        """Text -> token ids.

        Args:
            text: str.
            allow_special: match special tokens written in the text (``<|im_start|>`` -> 1);
                False spells them as plain text (for untrusted input).
        Returns:
            list of int ids (with bos_id first when ``add_bos``).
        """
        if not isinstance(text, str):
            raise TypeError(f"encode expects str, got {type(text).__name__}")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ValueError(f"text has a lone surrogate U+{ord(text[e.start]):04X} at index "
                             f"{e.start}; it has no UTF-8 bytes") from None
        ids = [self.bos_id] if self.add_bos else []
        chunks, start = [], 0
        if allow_special and self._special_re is not None:
            for m in self._special_re.finditer(text):
                chunks += [text[start:m.start()], self.special[m.group()]]
                start = m.end()
        chunks.append(text[start:])
        for chunk in chunks:
            if isinstance(chunk, int):
                ids.append(chunk)
            elif chunk:
                for piece in pretokenize(chunk, self.pre):
                    ids += self._encode_piece(piece)
        return ids

    def _check_ids(self, ids):
        ids = [int(i) for i in ids]
        for i in ids:
            if not 0 <= i < len(self.tokens):
                raise ValueError(f"token id {i} out of range [0, {len(self.tokens)})")
        return ids

    def decode_bytes(self, ids, skip_special=False):
        """Ids -> the raw bytes they stand for.

        Args:
            ids: iterable of int in [0, vocab_size).
            skip_special: leave control tokens out (otherwise they are their own UTF-8 text).
        Returns:
            bytes, possibly ending (or broken) in the middle of a UTF-8 character.
        """
        return b"".join(self.token_bytes[i] for i in self._check_ids(ids)
                        if not (skip_special and self.token_types[i] == CONTROL))

    def decode(self, ids, skip_special=False):
        """Ids -> str; invalid UTF-8 (a character cut mid-way) decodes to U+FFFD.

        Args:
            ids: iterable of int (list or 1-D array).
            skip_special: leave control tokens (``<|im_end|>``, ...) out.
        """
        return self.decode_bytes(ids, skip_special).decode("utf-8", errors="replace")

    def stream_decoder(self, skip_special=False):
        """A ``StreamDecoder`` for this tokenizer (text of generated tokens as they come)."""
        return StreamDecoder(self, skip_special)

    def render_chat(self, messages, add_generation_prompt=True):
        """The prompt text for ``messages`` by this tokenizer's chat template (see ``render_chat``)."""
        if self.chat_template is None:
            raise ValueError("this tokenizer has no chat template")
        return render_chat(messages, self.chat_template, add_generation_prompt)

    @classmethod
    def from_gguf_metadata(cls, meta):
        """Build from a GGUF file's metadata dict (keys as in the file, values as Python lists/ints).

        Needs ``tokenizer.ggml.model == "gpt2"``, ``tokenizer.ggml.tokens`` and
        ``tokenizer.ggml.merges``; uses ``token_type``, ``pre``, ``bos_token_id``,
        ``eos_token_id``, ``add_bos_token`` and ``tokenizer.chat_template`` when present.
        """
        model = meta.get("tokenizer.ggml.model")
        if model != "gpt2":
            raise ValueError(f"tokenizer.ggml.model is {model!r}; only byte-level BPE 'gpt2' "
                             "is supported")
        for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges"):
            if key not in meta:
                raise ValueError(f"GGUF metadata has no {key}")
        g = "tokenizer.ggml."
        return cls(meta[g + "tokens"], meta[g + "merges"], meta.get(g + "token_type"),
                   pre=meta.get(g + "pre", "gpt2"), bos_id=meta.get(g + "bos_token_id"),
                   eos_id=meta.get(g + "eos_token_id"),
                   add_bos=bool(meta.get(g + "add_bos_token", False)),
                   chat_template=meta.get("tokenizer.chat_template"))


class StreamDecoder:
    """Decode ids one at a time, for printing tokens as a model generates them.

    A token can end in the middle of a UTF-8 character (an emoji is 4 bytes, often 2-3 tokens).
    ``push`` returns only complete characters and keeps the incomplete tail (at most 3 bytes)
    for the next call; ``flush`` ends the stream, turning a leftover tail into U+FFFD. Joined, the
    outputs equal ``decode`` of all the ids. (Python's incremental UTF-8 decoder does the holding
    back, with the same replacement rules as ``bytes.decode``.)
    """

    def __init__(self, tokenizer, skip_special=False):
        self.tokenizer, self.skip_special = tokenizer, skip_special
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id):
        """One id -> the newly completed text (possibly "")."""
        return self._utf8.decode(self.tokenizer.decode_bytes([token_id], self.skip_special))

    def flush(self):
        """End of stream -> what is left ("" or U+FFFD for a cut-off character)."""
        return self._utf8.decode(b"", final=True)

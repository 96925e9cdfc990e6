"""Training text: the embedded default corpus, user files, the split, and batches.

The default corpus needs no download on any machine: it is the English prose that ships with
every Python installation, namely the docstrings and comments of the standard library, read with
`ast` and `tokenize` (the modules are parsed, never imported or run). Files are visited in sorted
order and the text is cut at `DEFAULT_CORPUS_BYTES`, so a given Python version always yields
the same corpus; the first build is cached under `~/.cache/minitx/` (or `$MINITX_CACHE`).
"""
import ast
import hashlib
import io
import os
import sys
import sysconfig
import tokenize

import numpy as np

DEFAULT_CORPUS_BYTES = 4 * 1024 * 1024
MIN_CORPUS_BYTES = 1024 * 1024


class DataError(ValueError):
    """A data file cannot be used for training (missing, empty, binary, not UTF-8, too short)."""


# ============================== the default corpus ===========================================
def _stdlib_files():
    root = sysconfig.get_paths()["stdlib"]
    skip = ("site-packages", "test", "tests", "idlelib", "lib2to3", "__pycache__", "turtledemo",
            "encodings")
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in skip)
        out.extend(os.path.join(dirpath, f) for f in sorted(filenames) if f.endswith(".py"))
    return root, out


def _prose_of(source):
    """Docstrings (module, class, function) and comment lines of one Python source, in order."""
    pieces = []
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return pieces
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=True)
            if doc and len(doc) > 40:
                pieces.append(doc.strip())
    comments = []
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.COMMENT:
                text = tok.string.lstrip("#").strip()
                if (len(text.split()) >= 5 and not text.isupper()
                        and not text.startswith(("!", "-*-", "type:", "noqa"))):
                    comments.append(text)
    except (tokenize.TokenError, IndentationError, SyntaxError):
        pass
    if comments:
        pieces.append("\n".join(comments))
    return pieces


def build_stdlib_corpus(max_bytes=DEFAULT_CORPUS_BYTES):
    """Gather the standard library's docstrings and comments into one text.

    Returns:
        str of at most `max_bytes` UTF-8 bytes (cut at a paragraph boundary).
    """
    _, files = _stdlib_files()
    parts, size = [], 0
    for path in files:
        try:
            with open(path, encoding="utf-8") as f:
                source = f.read()
        except (UnicodeDecodeError, OSError):
            continue
        for piece in _prose_of(source):
            n = len(piece.encode("utf-8")) + 2
            if size + n > max_bytes:
                return "\n\n".join(parts) + "\n"
            parts.append(piece)
            size += n
    return "\n\n".join(parts) + "\n"


def default_corpus():
    """The default training text (>= 1 MB), built once per Python version and cached."""
    cache_dir = os.environ.get("MINITX_CACHE") or os.path.join(os.path.expanduser("~"),
                                                               ".cache", "minitx")
    tag = f"{sys.implementation.name}{sys.version_info[0]}{sys.version_info[1]}"
    path = os.path.join(cache_dir, f"stdlib-corpus-{tag}-{DEFAULT_CORPUS_BYTES}.txt")
    if os.path.exists(path):
        try:
            return load_text(path)
        except DataError:
            pass                                    # a damaged cache is simply rebuilt
    text = build_stdlib_corpus()
    if len(text.encode("utf-8")) < MIN_CORPUS_BYTES:
        raise DataError(f"the standard library yielded only {len(text)} characters of prose; "
                        "pass --data FILE with your own text")
    try:
        os.makedirs(cache_dir, exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError:
        pass                                        # a read-only home only costs a rebuild
    return text


# ============================== user files ===================================================
MAX_DATA_BYTES = 2 << 30          # byte ids are int64 in memory: 8x the file


def load_text(path, min_chars=2):
    """Read a UTF-8 text file for training, rejecting what cannot be trained on.

    Raises:
        DataError naming the file and the problem: missing, a directory, empty, binary (NUL
        bytes), not valid UTF-8 (with the byte offset), or shorter than `min_chars`.
    """
    if not os.path.exists(path):
        raise DataError(f"data file not found: {path}")
    if os.path.isdir(path):
        raise DataError(f"data path is a directory, expected a UTF-8 text file: {path}")
    if not os.path.isfile(path):
        raise DataError(f"data path is not a regular file (a device or a pipe?): {path}")
    size = os.path.getsize(path)
    if size > MAX_DATA_BYTES:
        raise DataError(f"data file has {size:,} bytes, more than minitx reads "
                        f"({MAX_DATA_BYTES:,}): {path}")
    with open(path, "rb") as f:
        raw = f.read(MAX_DATA_BYTES + 1)
    if not raw:
        raise DataError(f"data file is empty: {path}")
    nul = raw.find(b"\x00")
    if nul >= 0:
        raise DataError(f"data file looks binary (a NUL byte at offset {nul}): {path}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"data file is not valid UTF-8 (byte {e.start}: {raw[e.start:e.start+4]!r}"
                        f"): {path}") from None
    if len(text) < min_chars:
        raise DataError(f"data file has only {len(text)} characters, need at least {min_chars}: "
                        f"{path}")
    return text


# ============================== split and batches ============================================
def train_val_split(ids, val_fraction=0.1, chunk=8192):
    """Deterministic split: the ids are cut into chunks and every k-th chunk goes to
    validation (k = round(1 / val_fraction)), so both halves sample the whole corpus.

    Args:
        ids: (N,) token ids.
    Returns:
        (train_ids, val_ids) 1-D arrays.
    """
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    n_chunks = max(1, len(ids) // chunk)
    k = max(2, round(1 / val_fraction))
    pieces = np.array_split(ids, n_chunks)
    val = [p for i, p in enumerate(pieces) if i % k == k - 1]
    train = [p for i, p in enumerate(pieces) if i % k != k - 1]
    if not val:                                      # short text: the tail is validation
        cut = int(len(ids) * (1 - val_fraction))
        return ids[:cut], ids[cut:]
    return np.concatenate(train), np.concatenate(val)


def get_batch(ids, batch_size, block_size, rng):
    """Random windows of `block_size + 1` tokens: inputs and next-token targets.

    Returns:
        x, y: (batch_size, block_size) int64 arrays, y shifted by one position.
    """
    if len(ids) < block_size + 1:
        raise DataError(f"split of {len(ids)} tokens is shorter than block_size + 1 = "
                        f"{block_size + 1}; use more text or a smaller block size")
    starts = rng.integers(0, len(ids) - block_size, size=batch_size)      # (B,)
    offsets = np.arange(block_size + 1)                                   # (T+1,)
    window = ids[starts[:, None] + offsets[None, :]].astype(np.int64)     # (B, T+1)
    return window[:, :-1], window[:, 1:]


def unigram_loss(train_ids, val_ids, vocab_size):
    """Cross-entropy (nats/token) on val of the unigram model fitted on train, with add-one
    smoothing: the baseline a language model must beat."""
    counts = np.bincount(train_ids, minlength=vocab_size).astype(np.float64) + 1.0
    logp = np.log(counts / counts.sum())
    return float(-logp[val_ids].mean())


def fingerprint(text):
    """A short hash of the training text, stored in checkpoints to detect a changed corpus."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]

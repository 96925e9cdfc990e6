"""The byte-level tokenizer: token id = UTF-8 byte value (256 ids), as in Karpathy's
nanoGPT char models and llama2.c's byte fallback. Every string round-trips exactly."""
import numpy as np


class ByteTokenizer:
    vocab_size = 256

    def encode(self, text):
        """str -> (N,) uint8 ids, the UTF-8 bytes of `text`."""
        if not isinstance(text, str):
            raise TypeError(f"encode expects str, got {type(text).__name__}")
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).copy()

    def decode(self, ids):
        """Ids -> str; a multi-byte character cut mid-way decodes to U+FFFD."""
        ids = np.asarray(ids)
        if ids.size and (ids.min() < 0 or ids.max() > 255):
            raise ValueError(f"byte ids must be in [0, 255], got range [{ids.min()}, {ids.max()}]")
        return ids.astype(np.uint8).tobytes().decode("utf-8", errors="replace")

"""Exercises for tutorial 02: exact attention and FlashAttention. Grade: `python -m minitx grade 02`.

Replace each `raise NotImplementedError` with your code; NumPy only. The answer key is
minitx/attention/ (naive.py, masks.py, flash2.py) and minitx/kernels/fused.py.
"""
import numpy as np  # noqa: F401  (you will need it)


def attention(q, k, v, is_causal):
    """Naive attention O = softmax(q k^T / sqrt(d) + mask) v for one head.

    Causal masking is aligned bottom-right (as FlashAttention >= 2.1 and a KV cache need): query
    i sits at key position i + Nk - Nq and sees keys 0 .. i + Nk - Nq.

    Args:
        q: (Nq, d) float64; k, v: (Nk, d) float64 with Nk >= Nq.
        is_causal: bool.
    Returns:
        o: (Nq, d) float64.
    """
    raise NotImplementedError


def causal_mask(Nq, Nk, window):
    """Which keys each query may attend to: causal, bottom-right aligned, optionally windowed.

    Query i is at key position p = i + Nk - Nq; it sees key j when j <= p and, with a window,
    j >= p - window (a sliding window of `window` keys to the left, plus itself).

    Args:
        Nq, Nk: ints, Nk >= Nq >= 1.
        window: None (unbounded to the left) or an int >= 0.
    Returns:
        mask: (Nq, Nk) bool, True where query i may attend to key j.
    """
    raise NotImplementedError


def online_softmax(x, chunk):
    """Softmax statistics of one row in one streaming pass (Milakov & Gimelshein 2018).

    Read x in consecutive chunks of `chunk` values (the last may be shorter) keeping a running
    max m and running sum l = sum exp(x_j - m). When a chunk raises the max from m to m', rescale
    l by exp(m - m') first. Do not look at the whole row at once.

    Args:
        x: (n,) float64, n >= 1.
        chunk: int >= 1.
    Returns:
        (m, l): floats, m = max(x) and l = sum_j exp(x_j - m), so softmax(x) = exp(x - m) / l.
    """
    raise NotImplementedError


def flash2_forward_block(Qi, K, V, Bc, scale):
    """FlashAttention-2's forward for one Q block (Dao 2023, Algorithm 1, lines 4-13).

    Loop over K/V in blocks of Bc rows (the last may be shorter): S = scale * Qi K_j^T,
    m_new = max(m, rowmax S), P = exp(S - m_new), l = exp(m - m_new) l + rowsum P,
    O = exp(m - m_new) O + P V_j. At the end O / l and L = m + log l. Never form Qi K^T whole.

    Args:
        Qi: (Br, d) float64, one block of queries; K, V: (Nk, d) float64.
        Bc: int >= 1, keys per block. scale: float, usually d ** -0.5.
    Returns:
        (O_i (Br, d), L_i (Br,)), float64: the attention output and each row's logsumexp.
    """
    raise NotImplementedError

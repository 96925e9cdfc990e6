"""An IO model of attention: how many floats move between slow memory (HBM / DRAM) and a fast
memory (SRAM / cache) of M floats.

FlashAttention's Theorem 2 (Dao et al. 2022, arXiv 2205.14135, Section 3.2): standard attention
makes Theta(N d + N^2) slow-memory accesses, FlashAttention Theta(N^2 d^2 / M). The functions below
count accesses by walking the algorithms' own loops tile by tile, so the counts are exact for this
model (not just the asymptotics):
  - naive: Algorithm 0 -- write S, read S, write P, read P, each an N x N matrix;
  - flash1: Algorithm 1 -- Bc = ceil(M / 4d), Br = min(Bc, d); K_j, V_j read once each, and every
    inner step reads Q_i, O_i, l_i, m_i and writes O_i, l_i, m_i back;
  - flash2: FA-2's order -- Q_i read once and O_i, L_i written once, K_j, V_j read for every Q
    block; the outer loop is now over Q, so the roles swap: Br = ceil(M / 4d), Bc = min(Br, d).
Causal masking skips tiles above the diagonal (`masks.tile_kind`), exactly as the kernels do.
"""
from minitx.attention.masks import resolve_window, tile_kind


def _check(N, d, M=None):
    for name, x in (("N", N), ("d", d)):
        if not isinstance(x, int) or x < 1:
            raise ValueError(f"{name} must be an int >= 1, got {x!r}")
    if M is not None and (not isinstance(M, int) or M < 4 * d):
        raise ValueError(f"fast memory M must be an int >= 4 d = {4 * d} floats, got {M!r}")


def block_sizes(N, d, M):
    """FA-1's block sizes for a fast memory of M floats: Bc = ceil(M / 4d), Br = min(Bc, d),
    both capped at N. Returns (Br, Bc)."""
    _check(N, d, M)
    Bc = min(-(-M // (4 * d)), N)
    return min(Bc, d), Bc


def naive_io(N, d):
    """Slow-memory floats read and written by standard attention (Algorithm 0).

    Returns:
        dict(reads=..., writes=..., total=...) in floats: reads 2Nd (Q, K) + N^2 (S) + N^2 (P)
        + Nd (V); writes N^2 (S) + N^2 (P) + Nd (O).
    """
    _check(N, d)
    reads = 2 * N * d + N * N + N * N + N * d
    writes = N * N + N * N + N * d
    return dict(reads=reads, writes=writes, total=reads + writes)


def _tiles(N, Br, Bc, is_causal):
    left, right = resolve_window(is_causal, None)
    for r0 in range(0, N, Br):
        for c0 in range(0, N, Bc):
            r1, c1 = min(r0 + Br, N), min(c0 + Bc, N)
            if tile_kind(r0, r1, c0, c1, N, N, left, right) != "skip":
                yield r1 - r0, c1 - c0


def flash1_io(N, d, M, is_causal=False):
    """Slow-memory floats moved by FlashAttention-1 (Algorithm 1) with fast memory M.

    Returns:
        dict(reads, writes, total, Br, Bc).
    """
    Br, Bc = block_sizes(N, d, M)
    reads = 2 * N * d                                  # l.6: K_j, V_j, once each
    writes = 0
    for nr, _ in _tiles(N, Br, Bc, is_causal):
        reads += 2 * nr * d + 2 * nr                   # l.8: Q_i, O_i, l_i, m_i
        writes += nr * d + 2 * nr                      # l.12-13: O_i, l_i, m_i
    return dict(reads=reads, writes=writes, total=reads + writes, Br=Br, Bc=Bc)


def flash2_io(N, d, M, is_causal=False):
    """Slow-memory floats moved by FlashAttention-2's loop order with fast memory M.

    Returns:
        dict(reads, writes, total, Br, Bc).
    """
    Bc, Br = block_sizes(N, d, M)                      # outer loop over Q: the big block is Br
    reads = N * d                                      # Alg1 l.4: Q_i, once each
    writes = N * d + N                                 # Alg1 l.14-15: O_i, L_i, once each
    for _, nc in _tiles(N, Br, Bc, is_causal):
        reads += 2 * nc * d                            # Alg1 l.7: K_j, V_j per Q block
    return dict(reads=reads, writes=writes, total=reads + writes, Br=Br, Bc=Bc)


def theorem2_flash(N, d, M):
    """The Theta(N^2 d^2 / M) scaling of FlashAttention's IO (Theorem 2), without constants."""
    return N * N * d * d / M


def theorem2_naive(N, d):
    """The Theta(N d + N^2) scaling of standard attention's IO (Theorem 2), without constants."""
    return N * d + N * N

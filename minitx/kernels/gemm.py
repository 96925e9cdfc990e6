"""BLIS-style matrix multiplication, written in NumPy on tiles so that every loop can be stepped
through. `minitx_c/gemm.pyx` is the fast twin: same loops, same names, same block sizes.

C = A @ B with A (M, K), B (K, N) is computed by five loops around a tiny "micro-kernel"
(Goto & van de Geijn 2008, "Anatomy of High-Performance Matrix Multiplication", ACM TOMS 34:3;
Van Zee & van de Geijn 2015, "BLIS: A Framework for Rapidly Instantiating BLAS Functionality",
ACM TOMS 41:3, Fig. 2):

    for jc in range(0, N, NC):          # 5th loop: an NC-wide panel of B and C          (L3)
      for pc in range(0, K, KC):        # 4th loop: a KC-deep slice; pack B -> Bp        (L3)
        for ic in range(0, M, MC):      # 3rd loop: an MC-tall block; pack A -> Ap       (L2)
          for jr in range(0, nc, NR):   # 2nd loop: one NR-wide micro-panel of Bp        (L1)
            for ir in range(0, mc, MR): # 1st loop: one MR-tall micro-panel of Ap
              C[ic+ir : +MR, jc+jr : +NR] += micro_kernel(Ap panel, Bp panel)   (registers)

Packing copies a block into the exact order the micro-kernel reads it, so the hot loop streams
contiguous memory; edge blocks are zero-padded to whole MR x NR tiles, so no loop assumes that
a block size divides M, N or K. The micro-kernel is kc rank-1 updates of an MR x NR tile of C
(the outer product of one column of A and one row of B per step), which the Cython twin keeps
in 12 AVX registers.

This file is slow on purpose: it is the specification. Use `minitx.backend.matmul` to run fast.
"""
import numpy as np

# Block sizes (see minitx_c/gemm.pyx for the cache each one targets).
MR, NR = 6, 16            # micro-tile of C held in registers
MC, KC, NC = 144, 256, 4080


def pack_a(A_blk):
    """Pack an (mc, kc) block of A into MR-tall micro-panels.

    Args:
        A_blk: (mc, kc), any strides.
    Returns:
        Ap: (ceil(mc / MR), kc, MR): Ap[ip, p, i] = A_blk[ip * MR + i, p], zero past row mc.
    """
    mc, kc = A_blk.shape
    n_panels = -(-mc // MR)
    Ap = np.zeros((n_panels * MR, kc), dtype=A_blk.dtype)        # (mc rounded up, kc)
    Ap[:mc] = A_blk
    return np.ascontiguousarray(Ap.reshape(n_panels, MR, kc).transpose(0, 2, 1))


def pack_b(B_blk):
    """Pack a (kc, nc) block of B into NR-wide micro-panels.

    Args:
        B_blk: (kc, nc), any strides.
    Returns:
        Bp: (ceil(nc / NR), kc, NR): Bp[jp, p, j] = B_blk[p, jp * NR + j], zero past column nc.
    """
    kc, nc = B_blk.shape
    n_panels = -(-nc // NR)
    Bp = np.zeros((kc, n_panels * NR), dtype=B_blk.dtype)        # (kc, nc rounded up)
    Bp[:, :nc] = B_blk
    return np.ascontiguousarray(Bp.reshape(kc, n_panels, NR).transpose(1, 0, 2))


def micro_kernel(a_panel, b_panel):
    """The register tile: kc rank-1 updates, sum_p outer(a_panel[p], b_panel[p]).

    Args:
        a_panel: (kc, MR) one packed micro-panel of A.
        b_panel: (kc, NR) one packed micro-panel of B.
    Returns:
        (MR, NR) float32 tile of A @ B.
    """
    return (a_panel[:, :, None] * b_panel[:, None, :]).sum(axis=0)   # (MR, NR)


def macro_kernel(Ap, Bp, C_blk, beta):
    """Loops 2 and 1: C_blk (+)= (packed A block) @ (packed B panel), tile by tile.

    Args:
        Ap: (ceil(mc / MR), kc, MR); Bp: (ceil(nc / NR), kc, NR).
        C_blk: (mc, nc) view of C, written in place.
        beta: 0 to overwrite C_blk, 1 to add to it.
    """
    mc, nc = C_blk.shape
    for jr in range(0, nc, NR):                                   # 2nd loop
        nr = min(NR, nc - jr)
        for ir in range(0, mc, MR):                               # 1st loop
            mr = min(MR, mc - ir)
            tile = micro_kernel(Ap[ir // MR], Bp[jr // NR])       # (MR, NR)
            c = C_blk[ir:ir + mr, jr:jr + nr]                     # (mr, nr) edge-trimmed
            c[...] = tile[:mr, :nr] + (c if beta else 0)


def gemm(A, B, C, accumulate=False):
    """C (+)= A @ B for 2-D float32 arrays, by the five BLIS loops.

    Args:
        A: (M, K); B: (K, N); C: (M, N) written in place; any strides.
        accumulate: add to C instead of overwriting it.
    """
    M, K = A.shape
    N = B.shape[1]
    if K == 0:
        if not accumulate:
            C[...] = 0
        return
    for jc in range(0, N, NC):                                    # 5th loop
        nc = min(NC, N - jc)
        for pc in range(0, K, KC):                                # 4th loop
            kc = min(KC, K - pc)
            Bp = pack_b(B[pc:pc + kc, jc:jc + nc])                # (nc/NR, kc, NR)
            beta = 1 if (accumulate or pc > 0) else 0
            for ic in range(0, M, MC):                            # 3rd loop (threads in C)
                mc = min(MC, M - ic)
                Ap = pack_a(A[ic:ic + mc, pc:pc + kc])            # (mc/MR, kc, MR)
                macro_kernel(Ap, Bp, C[ic:ic + mc, jc:jc + nc], beta)


_SWAPPED_F32 = np.dtype(np.float32).newbyteorder()           # '>f4' on little-endian machines


def _check_operand(name, x):
    if not isinstance(x, np.ndarray):
        raise TypeError(f"matmul: {name} must be a numpy.ndarray, got {type(x).__name__}")
    if x.dtype != np.float32:
        if x.dtype == _SWAPPED_F32:
            raise TypeError(f"matmul: {name} must be float32 in native byte order, got "
                            f"{x.dtype.str} (convert with .astype(np.float32))")
        raise TypeError(f"matmul: {name} must be float32, got {x.dtype} "
                        "(use np.matmul for other dtypes)")
    if x.ndim < 1:
        raise ValueError(f"matmul: {name} must have at least 1 dimension, got a scalar")


def check_matmul(a, b, out=None, accumulate=False):
    """Validate matmul's arguments; `minitx_c.gemm.matmul` calls this too, so the NumPy and the
    Cython matmul raise the same errors for the same input.

    Returns:
        (lead, M, K, N, result_shape): broadcast batch dims, the matrix sizes, and the shape
        of the result (with the vector dims of 1-D `a` / `b` dropped).
    """
    _check_operand("a", a)
    _check_operand("b", b)
    a2 = a[None, :] if a.ndim == 1 else a                         # (..., M, K)
    b2 = b[:, None] if b.ndim == 1 else b                         # (..., K, N)
    if a2.shape[-1] != b2.shape[-2]:
        raise ValueError(f"matmul: inner dims differ: a {a.shape} @ b {b.shape}")
    lead = ()                                                     # batch dims
    if a2.ndim > 2 or b2.ndim > 2:
        try:
            lead = tuple(np.broadcast_shapes(a2.shape[:-2], b2.shape[:-2]))
        except ValueError:
            raise ValueError(f"matmul: batch dims do not broadcast: a {a.shape} @ b {b.shape}")
    M, K, N = a2.shape[-2], a2.shape[-1], b2.shape[-1]
    result_shape = lead + ((M,) if a.ndim > 1 else ()) + ((N,) if b.ndim > 1 else ())
    if accumulate and out is None:
        raise ValueError("matmul: accumulate=True needs an `out` array to accumulate into")
    if out is not None:
        if not isinstance(out, np.ndarray) or out.dtype != np.float32:
            raise TypeError(f"matmul: out must be a float32 ndarray in native byte order, got "
                            f"{getattr(out, 'dtype', type(out).__name__)}")
        if out.shape != result_shape:
            raise ValueError(f"matmul: out has shape {out.shape}, expected {result_shape}")
        if not out.flags.writeable:
            raise ValueError("matmul: out is read-only")
    return lead, M, K, N, result_shape


def matmul(a, b, out=None, accumulate=False):
    """Matrix product with np.matmul semantics, float32, by `gemm` on each matrix of the batch.

    Args:
        a: (..., M, K) float32, or (K,) (treated as one row, dim dropped from the result).
        b: (..., K, N) float32, or (K,) (one column, dim dropped). Leading dims broadcast.
        out: optional writable float32 array of the result's shape, written in place.
        accumulate: if True, out += a @ b (out required) instead of out = a @ b.
    Returns:
        (..., M, N) float32 (`out` itself when given).
    """
    lead, M, K, N, result_shape = check_matmul(a, b, out, accumulate)
    a2 = a[None, :] if a.ndim == 1 else a                         # (..., M, K)
    b2 = b[:, None] if b.ndim == 1 else b                         # (..., K, N)
    C = np.empty(lead + (M, N), dtype=np.float32)                 # (..., M, N)
    if accumulate:
        C[...] = out.reshape(C.shape)
    a_full = np.broadcast_to(a2, lead + a2.shape[-2:])            # (..., M, K)
    b_full = np.broadcast_to(b2, lead + b2.shape[-2:])            # (..., K, N)
    for idx in np.ndindex(*lead):                                 # one GEMM per batch matrix
        gemm(a_full[idx], b_full[idx], C[idx], accumulate)
    if out is None:
        return C.reshape(result_shape)
    out[...] = C.reshape(result_shape)
    return out


# ------------------------------------------------- the textbook loops (tutorial 03, steps 2-3)
def check_matmul_loops(a, b, order, block):
    """Validate matmul_loops' arguments (shared with minitx_c.gemm_loops). Returns block as int."""
    for name, x in (("a", a), ("b", b)):
        if not isinstance(x, np.ndarray) or x.dtype != np.float32:
            raise TypeError(f"matmul_loops: {name} must be a float32 ndarray (native byte "
                            f"order), got {getattr(x, 'dtype', type(x).__name__)}")
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(f"matmul_loops needs (M, K) @ (K, N), got {a.shape} @ {b.shape}")
    if order not in ("ijk", "ikj"):
        raise ValueError(f"order must be 'ijk' or 'ikj', got {order!r}")
    block = int(block)
    if block < 0:
        raise ValueError(f"block must be >= 0, got {block}")
    return block


def matmul_loops(a, b, order="ikj", block=0):
    """The textbook loops before packing (twin of `minitx_c.gemm_loops.matmul_loops`).

    Args:
        a: (M, K) float32; b: (K, N) float32.
        order: "ijk" (a dot product per C[i, j]) or "ikj" (row updates C[i, :] += a[i, k] b[k, :]).
        block: with order="ikj", tile size for cache blocking (0 = no blocking).
    Returns:
        (M, N) float32.
    """
    block = check_matmul_loops(a, b, order, block)
    (M, K), N = a.shape, b.shape[1]
    C = np.zeros((M, N), dtype=np.float32)                        # (M, N)
    if order == "ijk":
        for i in range(M):
            for j in range(N):
                C[i, j] = np.dot(a[i, :], b[:, j])                # B read down a column
        return C
    bs = block if block > 0 else max(1, M, K, N)
    for i0 in range(0, M, bs):                                    # bs x bs x bs tiles
        for k0 in range(0, K, bs):
            for j0 in range(0, N, bs):
                for i in range(i0, min(i0 + bs, M)):
                    for k in range(k0, min(k0 + bs, K)):          # C row += a[i, k] * B row
                        C[i, j0:j0 + bs] += a[i, k] * b[k, j0:j0 + bs]
    return C

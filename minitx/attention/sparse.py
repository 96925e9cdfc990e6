"""Block-sparse attention layouts: which (query block, key block) tiles are computed.

A layout is a bool matrix over blocks of `block_size` positions: layout[i, j] is True when the
queries of block i may attend to the keys of block j. Pass it to the one attention entry point,
    F.scaled_dot_product_attention(q, k, v, block_layout=layout, block_size=bs, impl=...)
where naive applies it as a dense mask and the tiled kernels (flash1, flash2, Cython) use `bs`
as their tile and never read a tile outside it, so their work scales with `live_tiles(layout)`
instead of n^2. Causal, window, padding masks and GQA compose with it (masks.py). A 3-D layout
(H, n, n) gives each query head its own pattern (e.g. the two factorised heads of the Sparse
Transformer, or BigBird's random blocks drawn per head).

Patterns, at block granularity (every builder takes `n`, the number of blocks per side):
    sliding_window   local band (Beltagy, Peters, Cohan 2020, "Longformer", arXiv 2004.05150)
    dilated_window   band with gaps of `dilation` blocks (Longformer's dilated sliding window)
    global_blocks    blocks that see and are seen by every block (Longformer's global attention)
    longformer       dilated window + global blocks
    strided, fixed   the two factorised patterns of the Sparse Transformer (Child, Gray, Radford,
                     Sutskever 2019, "Generating Long Sequences with Sparse Transformers",
                     arXiv 1904.10509), as a union or split into one layout per head
    bigbird          window + global + random blocks (Zaheer et al. 2020, "Big Bird: Transformers
                     for Longer Sequences", arXiv 2007.14062)
In the pictures '#' is a live tile, '.' a skipped one; rows are query blocks, columns key blocks.
"""
import numpy as np

__all__ = ["n_blocks", "sliding_window", "dilated_window", "global_blocks", "longformer",
           "strided", "fixed", "bigbird", "union", "live_tiles", "draw"]


def n_blocks(N, block_size):
    """Number of blocks covering N positions: ceil(N / block_size)."""
    _check_int("N", N, 1)
    _check_int("block_size", block_size, 1)
    return -(-N // block_size)


def _check_int(name, x, lo):
    if isinstance(x, bool) or not isinstance(x, (int, np.integer)) or x < lo:
        raise ValueError(f"{name} must be an int >= {lo}, got {x!r}")


def _grid(n):
    """Query-block and key-block indices as broadcasting columns/rows: (n, 1) and (1, n)."""
    _check_int("n", n, 1)
    return np.arange(n)[:, None], np.arange(n)[None, :]


def _causal(ok, causal):
    i, j = _grid(ok.shape[-1])
    return ok & (j <= i) if causal else ok


def sliding_window(n, w, causal=False):
    """Each block sees the w blocks on either side (only the left ones if causal).

    Example: sliding_window(8, 1)
        ##......
        ###.....
        .###....
        ..###...
        ...###..
        ....###.
        .....###
        ......##
    Args:
        n: blocks per side; w: half-width in blocks (>= 0); causal: keep j <= i only.
    Returns:
        (n, n) bool layout; about n (2w + 1) live tiles.
    """
    _check_int("w", w, 0)
    i, j = _grid(n)
    return _causal(np.abs(i - j) <= w, causal)


def dilated_window(n, w, dilation, causal=False):
    """Sliding window with gaps: block i sees blocks i + k dilation for |k| <= w (Longformer's
    dilated sliding window: the receptive field grows with the dilation at the same cost).

    Example: dilated_window(8, 2, 2, causal=True)
        #.......
        .#......
        #.#.....
        .#.#....
        #.#.#...
        .#.#.#..
        ..#.#.#.
        ...#.#.#
    Args:
        n: blocks per side; w: taps per side (>= 0); dilation: gap in blocks (>= 1).
    Returns:
        (n, n) bool layout.
    """
    _check_int("w", w, 0)
    _check_int("dilation", dilation, 1)
    i, j = _grid(n)
    ok = ((i - j) % dilation == 0) & (np.abs(i - j) <= w * dilation)
    return _causal(ok, causal)


def global_blocks(n, blocks, causal=False):
    """The given blocks attend to every block and every block attends to them (Longformer's
    global tokens, e.g. a [CLS] block or the question in QA).

    Example: global_blocks(8, [0, 5])
        ########
        #....#..
        #....#..
        #....#..
        #....#..
        ########
        #....#..
        #....#..
    Args:
        n: blocks per side; blocks: indices of the global blocks; causal: keep j <= i only.
    Returns:
        (n, n) bool layout.
    """
    i, j = _grid(n)
    g = np.zeros(n, dtype=bool)
    idx = np.asarray(blocks, dtype=np.int64).reshape(-1)
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        raise ValueError(f"global blocks must lie in [0, {n}), got {list(idx)}")
    g[idx] = True
    return _causal(g[:, None] | g[None, :], causal)


def longformer(n, w, blocks, dilation=1, causal=False):
    """Longformer's pattern: a (dilated) sliding window plus global blocks.

    Example: longformer(8, 1, [0])
        ########
        ###.....
        ####....
        #.###...
        #..###..
        #...###.
        #....###
        #.....##
    Args:
        n, w, dilation: as in dilated_window; blocks: global block indices; causal: j <= i.
    Returns:
        (n, n) bool layout.
    """
    return union(dilated_window(n, w, dilation, causal), global_blocks(n, blocks, causal))


def strided(n, stride, causal=True, split=False):
    """Sparse Transformer, strided pattern: head 1 sees the previous `stride` blocks, head 2
    every stride-th block before (i - j = 0 mod stride); together every block reaches every
    earlier one in two steps. Suits data with a period (images by rows, audio).

    Example: strided(8, 3)
        #.......
        ##......
        ###.....
        ####....
        .####...
        ..####..
        #..####.
        .#..####
    Args:
        n: blocks per side; stride: in blocks (>= 1); causal: keep j <= i (the paper's
            autoregressive setting); split: return the two heads' layouts (2, n, n) instead of
            their union.
    Returns:
        (n, n) or (2, n, n) bool layout.
    """
    _check_int("stride", stride, 1)
    i, j = _grid(n)
    local = _causal(np.abs(i - j) < stride, causal)
    periodic = _causal((i - j) % stride == 0, causal)
    return np.stack([local, periodic]) if split else local | periodic


def fixed(n, stride, c=1, causal=True, split=False):
    """Sparse Transformer, fixed pattern: head 1 sees its own stride-long chunk, head 2 the last
    c blocks of every chunk ("summary" blocks that carry information forward). Suits text.

    Example: fixed(8, 4)
        #.......
        ##......
        ###.....
        ####....
        ...##...
        ...###..
        ...####.
        ...#####
    Args:
        n: blocks per side; stride: chunk length l in blocks; c: summary blocks per chunk
            (1 <= c <= stride); causal: keep j <= i; split: (2, n, n), one layout per head.
    Returns:
        (n, n) or (2, n, n) bool layout.
    """
    _check_int("stride", stride, 1)
    _check_int("c", c, 1)
    if c > stride:
        raise ValueError(f"c must be <= stride ({stride}), got {c}")
    i, j = _grid(n)
    chunk = _causal(i // stride == j // stride, causal)
    summary = _causal(np.broadcast_to(j % stride >= stride - c, (n, n)), causal)
    return np.stack([chunk, summary]) if split else chunk | summary


def bigbird(n, w, n_global, n_random, seed=0, heads=None, causal=False):
    """BigBird: a sliding window of w blocks per side, the first n_global blocks global, and
    n_random random key blocks per query block (drawn among those not yet live).

    Example: bigbird(8, 1, 1, 1, seed=0)
        ########
        ###....#
        ####..#.
        #.###.#.
        #.####..
        #.#.###.
        ##...###
        ##....##
    Args:
        n: blocks per side; w: window half-width; n_global: leading global blocks;
        n_random: random blocks per row; seed: the layout is a function of it;
        heads: None for one (n, n) layout, or H for (H, n, n) with random blocks per head;
        causal: keep j <= i (random blocks drawn among earlier blocks).
    Returns:
        (n, n) or (heads, n, n) bool layout.
    """
    _check_int("n_global", n_global, 0)
    _check_int("n_random", n_random, 0)
    if n_global > n:
        raise ValueError(f"n_global must be <= n ({n}), got {n_global}")
    base = union(sliding_window(n, w, causal), global_blocks(n, np.arange(n_global), causal))
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(1 if heads is None else heads):
        lay = base.copy()
        for i in range(n):
            free = np.flatnonzero(~lay[i, : i + 1] if causal else ~lay[i])
            if free.size:
                lay[i, rng.choice(free, size=min(n_random, free.size), replace=False)] = True
        out.append(lay)
    return out[0] if heads is None else np.stack(out)


def union(*layouts):
    """Elementwise OR of layouts of the same shape (a pattern made of several)."""
    out = np.zeros(np.broadcast_shapes(*(np.shape(x) for x in layouts)), dtype=bool)
    for lay in layouts:
        out = out | np.asarray(lay, dtype=bool)
    return out


def live_tiles(layout):
    """Number of live tiles (summed over heads for a 3-D layout): the kernels' work unit."""
    return int(np.count_nonzero(layout))


def draw(layout):
    """The picture used in the docstrings: one line per query block, '#' live, '.' skipped."""
    lay = np.asarray(layout, dtype=bool)
    if lay.ndim == 3:
        return "\n\n".join(draw(x) for x in lay)
    return "\n".join("".join("#" if x else "." for x in row) for row in lay)

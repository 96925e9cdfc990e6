"""Make tests/data/attention_nan_torch.npz: NaN through attention, computed by PyTorch.

Run in a throwaway virtualenv outside the repository (PyTorch is never a minitx dependency):
    python -m venv /work/venvs/torch-attn && /work/venvs/torch-attn/bin/pip install \
        torch==2.13.0 numpy
    /work/venvs/torch-attn/bin/python benchmarks/make_attention_nan.py

The rule under test (issue 14): NaN spreads from every (query, key) pair the mask allows, as in
PyTorch's math path, and never from a masked pair. PyTorch's own `scaled_dot_product_attention`
also spreads NaN from *masked* pairs (its math path adds the -inf mask to a NaN score, giving NaN,
and multiplies P = 0 by a NaN value; checked with torch 2.13: a NaN key that causal masking hides
from rows 0-2 still makes those rows NaN). So the reference here is PyTorch's arithmetic on the
allowed pairs only: each query row's softmax and weighted sum are taken over the keys it may see
(gathered with index_select), and autograd gives dq, dk, dv of sum(o * do). Rows that may see no
key give 0 with zero gradient (minitx's documented convention).

Each case stores q, k, v, do (float64), is_causal, window (left, right; -1 unbounded), an optional
bool mask (True = may attend) and the reference o, dq, dk, dv, under keys "<case>/<name>".
"""
import os

import numpy as np
import torch

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "data", "attention_nan_torch.npz")
NAN = float("nan")


def allowed(Nq, Nk, is_causal, window, mask):
    """(Nq, Nk) bool: minitx's bottom-right causal and window rule, and the bool mask."""
    left, right = window
    if is_causal:
        right = 0 if right < 0 else min(right, 0)
    i = np.arange(Nq)[:, None] + (Nk - Nq)
    j = np.arange(Nk)[None, :]
    ok = np.ones((Nq, Nk), dtype=bool)
    if left >= 0:
        ok &= j >= i - left
    if right >= 0:
        ok &= j <= i + right
    return ok if mask is None else ok & mask


def reference(q, k, v, do, ok):
    """PyTorch attention over the allowed pairs of each row; returns o, dq, dk, dv (numpy)."""
    qt, kt, vt = (torch.tensor(a, requires_grad=True) for a in (q, k, v))
    B, Hq, Nq, d = q.shape
    G = Hq // k.shape[1]
    rows = []
    for b in range(B):
        for h in range(Hq):
            for i in range(Nq):
                idx = torch.tensor(np.flatnonzero(ok[i]), dtype=torch.long)
                if len(idx) == 0:
                    rows.append(torch.zeros(d, dtype=torch.float64))
                    continue
                kj = kt[b, h // G].index_select(0, idx)              # (n, d)
                vj = vt[b, h // G].index_select(0, idx)
                s = (kj @ qt[b, h, i]) / np.sqrt(d)                  # (n,)
                rows.append(torch.softmax(s, dim=0) @ vj)            # (d,)
    o = torch.stack(rows).reshape(B, Hq, Nq, d)
    (o * torch.tensor(do)).sum().backward()
    return [o.detach().numpy(), qt.grad.numpy(), kt.grad.numpy(), vt.grad.numpy()]


def cases():
    """name -> (shape q, shape k, is_causal, window, mask or None, where the NaN goes)."""
    rng = np.random.default_rng(14)
    keep = rng.random((7, 7)) < 0.6
    keep[:, 4] = [True, False, False, True, False, False, True]     # key 4: rows 0, 3, 6
    return {
        "k_allowed_everywhere": ((1, 2, 6, 4), (1, 2, 6, 4), False, (-1, -1), None, ("k", 0, 1, 2)),
        "k_causal": ((1, 2, 8, 4), (1, 2, 8, 4), True, (-1, -1), None, ("k", 0, 0, 5)),
        "v_causal": ((1, 2, 8, 4), (1, 2, 8, 4), True, (-1, -1), None, ("v", 0, 1, 5)),
        "q_causal": ((1, 2, 8, 4), (1, 2, 8, 4), True, (-1, -1), None, ("q", 0, 0, 3)),
        "k_window": ((1, 1, 8, 4), (1, 1, 8, 4), False, (2, 0), None, ("k", 0, 0, 2)),
        "v_window_both_sides": ((1, 1, 9, 4), (1, 1, 9, 4), False, (1, 2), None, ("v", 0, 0, 7)),
        "v_bool_mask": ((1, 1, 7, 4), (1, 1, 7, 4), False, (-1, -1), keep, ("v", 0, 0, 4)),
        "k_bool_mask": ((1, 1, 7, 4), (1, 1, 7, 4), False, (-1, -1), keep, ("k", 0, 0, 4)),
        "k_gqa_causal": ((1, 4, 8, 4), (1, 2, 8, 4), True, (-1, -1), None, ("k", 0, 1, 6)),
        "v_gqa_window": ((1, 4, 8, 4), (1, 2, 8, 4), False, (3, 0), None, ("v", 0, 0, 1)),
        "q_dead_row": ((1, 1, 6, 4), (1, 1, 3, 4), True, (-1, -1), None, ("q", 0, 0, 1)),
        "q_live_row_dead_rows": ((1, 1, 6, 4), (1, 1, 3, 4), True, (-1, -1), None, ("q", 0, 0, 4)),
        "do_causal": ((1, 1, 8, 4), (1, 1, 8, 4), True, (-1, -1), None, ("do", 0, 0, 2)),
        "k_decode": ((1, 2, 1, 4), (1, 2, 9, 4), True, (-1, -1), None, ("k", 0, 0, 3)),
    }


def main():
    rng = np.random.default_rng(0)
    out = {}
    for name, (sq, sk, causal, window, mask, (where, b, h, n)) in cases().items():
        arrays = {"q": rng.standard_normal(sq), "k": rng.standard_normal(sk),
                  "v": rng.standard_normal(sk), "do": rng.standard_normal(sq)}
        arrays[where][b, h, n, 1] = NAN                              # one NaN entry
        ok = allowed(sq[2], sk[2], causal, window, mask)
        ref = reference(arrays["q"], arrays["k"], arrays["v"], arrays["do"], ok)
        for key, a in [*arrays.items(), *zip(("o", "dq", "dk", "dv"), ref)]:
            out[f"{name}/{key}"] = a
        out[f"{name}/is_causal"] = np.array(causal)
        out[f"{name}/window"] = np.array(window)
        if mask is not None:
            out[f"{name}/mask"] = mask
        print(f"{name:24s} NaN in {where}[{b},{h},{n}]: o NaN rows "
              f"{sorted(set(np.argwhere(np.isnan(ref[0]))[:, 2].tolist()))}")
    np.savez_compressed(OUT, **out)
    print("wrote", os.path.normpath(OUT))


if __name__ == "__main__":
    main()

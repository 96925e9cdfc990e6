"""Attention implementations. TEMPORARY placeholder (naive, composed of autograd ops) until the
attention issue lands naive / flash1 / flash2 / c with their own backward passes."""
import math

import numpy as np


def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0,
                                 is_causal=False, scale=None, enable_gqa=False, impl="naive",
                                 window=None):
    from minitx.nn import functional as F
    d = query.shape[-1]
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    s = (query @ key.transpose(-1, -2)) * scale                  # (..., Nq, Nk)
    Nq, Nk = query.shape[-2], key.shape[-2]
    if is_causal:
        i = np.arange(Nq)[:, None] + (Nk - Nq)                   # bottom-right aligned
        s = s.masked_fill(np.arange(Nk)[None, :] > i, -np.inf)
    p = F.softmax(s, dim=-1)
    return p @ value

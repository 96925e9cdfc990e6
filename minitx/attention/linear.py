"""Linear-time attention: kernelised attention with prefix sums, and Performer's random features.

Katharopoulos, Vyas, Pappas, Fleuret 2020, "Transformers are RNNs: Fast Autoregressive
Transformers with Linear Attention" (arXiv 2006.16236): replace exp(q.k) by phi(q).phi(k) with a
positive feature map phi (their elu(x) + 1); then, eq. (4)-(6),
    out_i = phi(q_i)^T S_i / (phi(q_i)^T z_i),   S_i = sum_{j<=i} phi(k_j) v_j^T,  z_i = sum_{j<=i} phi(k_j)
so causal attention costs O(N m dv) time and, decoding, O(m dv) state per step: the RNN form
(`LinearAttentionState`). Non-causal attention uses the full sums S = phi(K)^T V, z = phi(K)^T 1.

Choromanski et al. 2020, "Rethinking Attention with Performers" (arXiv 2009.14794), FAVOR+:
positive orthogonal random features phi(x) = exp(w_r.x - |x|^2 / 2) / sqrt(m), w_r ~ N(0, I) made
orthogonal in blocks of d (rows of a QR factor, rescaled to Gaussian norms), give an unbiased
estimate E[phi(q).phi(k)] = exp(q.k) of the softmax kernel (q, k pre-scaled by d^(-1/4) so that
q.k carries the 1/sqrt(d)); its error shrinks as m^(-1/2) (tests/test_attention_linear.py).

Everything runs through one differentiable core, `_LinearAttention`: with V~ = [V, 1] and
prefix_dot(A, B, C)_i = sum_{j<=i} (A_i.B_j) C_j (all j without causality), the forward is
num~ = prefix_dot(Q', K', V~) (numerator and denominator in one) and the backward is the same
operation three times: dQ' = prefix_dot(G~, V~, K'), and dK', dV~ the reversed-time
prefix_dot with the roles swapped (G~ = [dnum, dden]). `prefix_dot` works chunk by chunk:
a masked C x C product inside a chunk plus the running state (S, z) from the chunks before it.
"""
import numpy as np

from minitx.autograd import Function, Tensor

__all__ = ["elu_feature_map", "linear_attention", "orthogonal_gaussian", "PerformerFeatures",
           "performer_attention", "LinearAttentionState"]


# ---------------------------------------------------------------- feature maps
class _EluPlusOne(Function):
    """phi(x) = elu(x) + 1 = x + 1 (x > 0), exp(x) (x <= 0): positive, smooth at 0."""

    @staticmethod
    def forward(ctx, x):
        ex = np.exp(np.minimum(x, 0))                          # exp(x) for x <= 0, 1 above
        ctx.save_for_backward(x > 0, ex)
        return np.where(x > 0, x + 1, ex)

    @staticmethod
    def backward(ctx, g):
        pos, ex = ctx.saved_tensors
        return (g * np.where(pos, 1, ex),)


def elu_feature_map(x):
    """Katharopoulos et al.'s feature map elu(x) + 1 (elementwise). x: Tensor or ndarray."""
    return _EluPlusOne.apply(_tensor(x))


def orthogonal_gaussian(m, d, rng):
    """m random features in d dims, orthogonal in blocks of d (Performer's ORF).

    Args:
        m: number of features; d: dimension; rng: a numpy Generator (the draw is a function of it).
    Returns:
        W (m, d): each block of d rows is orthogonal; row norms are chi(d)-distributed, like
        those of i.i.d. Gaussian vectors, so every row is marginally N(0, I).
    """
    blocks = []
    for start in range(0, m, d):
        Qm, _ = np.linalg.qr(rng.standard_normal((d, d)))     # (d, d) orthogonal
        blocks.append(Qm.T[: min(d, m - start)])
    W = np.concatenate(blocks, axis=0)                         # (m, d) unit rows
    return W * np.linalg.norm(rng.standard_normal((m, d)), axis=1, keepdims=True)


class PerformerFeatures:
    """FAVOR+ positive random features phi(x) = exp(W x' - |x'|^2/2 - c) / sqrt(m), x' = x d^(-1/4).

    For queries, c is the row max of the logits: it cancels between numerator and denominator
    of each row (up to the eps of the denominator; it is differentiated like any op). Keys need
    none (and must share one c for it to cancel, which decoding token by token cannot know):
    w.x' - |x'|^2 / 2 <= |w|^2 / 2, about d / 2, so exp stays finite for d up to ~128 in float32.
    Args:
        head_dim: d; n_features: m; seed: W is a function of it; orthogonal: ORF (else i.i.d.).
    """

    def __init__(self, head_dim, n_features, seed=0, orthogonal=True):
        for name, val in (("head_dim", head_dim), ("n_features", n_features)):
            if isinstance(val, bool) or not isinstance(val, (int, np.integer)) or val < 1:
                raise ValueError(f"{name} must be an int >= 1, got {val!r}")
        rng = np.random.default_rng(seed)
        self.d, self.m = int(head_dim), int(n_features)
        self.W = (orthogonal_gaussian(self.m, self.d, rng) if orthogonal
                  else rng.standard_normal((self.m, self.d)))  # (m, d)

    def __call__(self, x, is_query):
        """x (..., N, d) Tensor -> phi(x) (..., N, m) Tensor."""
        x = _tensor(x)
        if x.shape[-1] != self.d:
            raise ValueError(f"features were drawn for head_dim {self.d}, got {x.shape}")
        xs = x * (self.d ** -0.25)                                     # (..., N, d)
        proj = xs @ Tensor(self.W.T.astype(x.dtype))                   # (..., N, m)
        logits = proj - (xs * xs).sum(dim=-1, keepdim=True) * 0.5      # log of the features
        if is_query:
            logits = logits - logits.max(dim=-1, keepdim=True)             # stabiliser c
        return logits.exp() * (1.0 / np.sqrt(self.m))


# ---------------------------------------------------------------- the core
def _prefix_dot(A, B, C, causal, chunk):
    """out_i = sum_j (A_i . B_j) C_j over j <= i (causal) or all j.

    Args:
        A: (Z, N, m); B: (Z, N, m); C: (Z, N, p); chunk: rows per chunk (causal only).
    Returns:
        (Z, N, p).
    """
    if not causal:
        return A @ (B.swapaxes(-1, -2) @ C)                    # (Z, N, m) (Z, m, p)
    Z, N, m = A.shape
    out = np.empty((Z, N, C.shape[-1]), dtype=np.result_type(A, C))
    S = np.zeros((Z, m, C.shape[-1]), dtype=out.dtype)         # sum_{j < chunk} B_j C_j^T
    for c0 in range(0, N, chunk):
        c1 = min(c0 + chunk, N)
        Ac, Bc, Cc = A[:, c0:c1], B[:, c0:c1], C[:, c0:c1]
        inner = np.tril(Ac @ Bc.swapaxes(-1, -2))              # (Z, C, C) j <= i in the chunk
        out[:, c0:c1] = inner @ Cc + Ac @ S                    # this chunk + the ones before
        S += Bc.swapaxes(-1, -2) @ Cc                          # (Z, m, p)
    return out


class _LinearAttention(Function):
    """out = num / (den + eps), [num, den] = prefix_dot(Q', K', [V, 1]); see the module docstring."""

    @staticmethod
    def forward(ctx, fq, fk, v, *, causal, eps, chunk):
        Vt = np.concatenate([v, np.ones(v.shape[:-1] + (1,), v.dtype)], axis=-1)  # (Z, N, dv+1)
        nd = _prefix_dot(fq, fk, Vt, causal, chunk)           # (Z, N, dv+1)
        den = nd[..., -1:] + eps                               # (Z, N, 1)
        out = nd[..., :-1] / den                               # (Z, N, dv)
        ctx.save_for_backward(fq, fk, Vt, out, den)
        ctx.causal, ctx.chunk = causal, chunk
        return out

    @staticmethod
    def backward(ctx, g):
        fq, fk, Vt, out, den = ctx.saved_tensors
        dnum = g / den                                         # (Z, N, dv)
        dden = -(g * out).sum(axis=-1, keepdims=True) / den    # (Z, N, 1)
        Gt = np.concatenate([dnum, dden], axis=-1)             # (Z, N, dv+1)
        c, ch = ctx.causal, ctx.chunk
        rev = np.s_[:, ::-1]                                   # time reversal: j >= i sums
        dfq = _prefix_dot(Gt, Vt, fk, c, ch)                   # sum_{j<=i} (G_i.V_j) K'_j
        dfk = _prefix_dot(Vt[rev], Gt[rev], fq[rev], c, ch)[rev]   # sum_{i>=j} (V_j.G_i) Q'_i
        dVt = _prefix_dot(fk[rev], fq[rev], Gt[rev], c, ch)[rev]   # sum_{i>=j} (K'_j.Q'_i) G_i
        return dfq, dfk, dVt[..., :-1]


def linear_attention(query, key, value, is_causal=True, feature_map=None, eps=1e-6,
                     chunk_size=64):
    """Kernelised linear attention (Katharopoulos et al. 2020), differentiable.

    Args:
        query: (..., N, d); key: (..., N, d); value: (..., N, dv); Tensors or ndarrays with the
            same leading dims and N (self-attention).
        is_causal: prefix sums (query i sees keys j <= i); else sums over all keys.
        feature_map: None (elu + 1) or a callable (x, is_query) -> (..., N, m) positive Tensor,
            e.g. a PerformerFeatures.
        eps: added to the denominator; chunk_size: rows per chunk of the causal prefix sums.
    Returns:
        Tensor (..., N, dv).
    """
    q, k, v = (_tensor(x) for x in (query, key, value))
    if q.ndim < 2 or k.shape[:-1] != q.shape[:-1] or v.shape[:-1] != q.shape[:-1]:
        raise ValueError(f"query {q.shape}, key {k.shape} and value {v.shape} must share (..., N)")
    if k.shape[-1] != q.shape[-1]:
        raise ValueError(f"query and key must have the same last dim, got {q.shape}, {k.shape}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) \
            or chunk_size < 1:
        raise ValueError(f"chunk_size must be an int >= 1, got {chunk_size!r}")
    if not (np.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps must be a finite float >= 0, got {eps!r}")
    if feature_map is None:
        fq, fk = elu_feature_map(q), elu_feature_map(k)
    else:
        fq, fk = feature_map(q, True), feature_map(k, False)
    lead = q.shape[:-2]
    N = q.shape[-2]
    flat = [x.reshape(-1, N, x.shape[-1]) for x in (fq, fk, v)]   # (Z, N, .)
    out = _LinearAttention.apply(*flat, causal=bool(is_causal), eps=float(eps),
                                 chunk=int(chunk_size))
    return out.reshape(*lead, N, v.shape[-1])


def performer_attention(query, key, value, n_features=256, seed=0, is_causal=False,
                        orthogonal=True, eps=1e-6):
    """Performer (FAVOR+) attention: softmax(q k^T / sqrt(d)) v estimated with random features.

    Args:
        query, key: (..., N, d); value: (..., N, dv); n_features: m; seed: fixes the features;
        is_causal: prefix-sum form; orthogonal: ORF (else i.i.d. Gaussian features); eps: as in
            linear_attention.
    Returns:
        Tensor (..., N, dv).
    """
    feats = PerformerFeatures(_tensor(query).shape[-1], n_features, seed, orthogonal)
    return linear_attention(query, key, value, is_causal, feats, eps)


class LinearAttentionState:
    """The RNN form of causal linear attention, for decoding: O(m dv) state, O(1) per token.

    S = sum_j phi(k_j) v_j^T and z = sum_j phi(k_j) over the tokens seen; `step` adds one token
    and returns its output, equal to the parallel causal form's row for that token.
    Args:
        feature_map: None (elu + 1) or a callable like linear_attention's; eps: as there.
    """

    def __init__(self, feature_map=None, eps=1e-6):
        self.feature_map, self.eps = feature_map, float(eps)
        self.S = self.z = None
        self.n_tokens = 0

    def _phi(self, x, is_query):
        if self.feature_map is None:
            return elu_feature_map(x).data
        return self.feature_map(Tensor(x), is_query).data

    def step(self, q, k, v):
        """q, k: (..., d); v: (..., dv) ndarrays for one new token -> output (..., dv)."""
        fq = self._phi(q[..., None, :], True)[..., 0, :]      # (..., m)
        fk = self._phi(k[..., None, :], False)[..., 0, :]
        if self.S is None:
            self.S = np.zeros(fk.shape + (v.shape[-1],), dtype=v.dtype)   # (..., m, dv)
            self.z = np.zeros(fk.shape, dtype=v.dtype)                    # (..., m)
        self.S += fk[..., :, None] * v[..., None, :]           # S += phi(k) v^T
        self.z += fk                                           # z += phi(k)
        self.n_tokens += 1
        num = np.einsum("...m,...mv->...v", fq, self.S)        # phi(q)^T S
        return num / (np.einsum("...m,...m->...", fq, self.z)[..., None] + self.eps)


def _tensor(x):
    return x if isinstance(x, Tensor) else Tensor(np.asarray(x))

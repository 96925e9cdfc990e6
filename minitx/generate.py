"""Sampling with a KV cache (as llama2.c's `forward` for one token at a time).

The prompt is run once (prefill), filling each layer's cache with its keys and values; every new
token then costs one position of attention over the cache instead of a full forward pass over the
whole context. When the context reaches block_size, the last half block is re-run as a new
prefill (a model with learned positions cannot see further back), so the logits are always those
a full forward pass over the visible context would give (tests/test_generate.py checks it).
"""
import math

import numpy as np

from minitx.autograd import no_grad


def _pick(logits, temperature, top_k, rng):
    """Sample one id per row of logits (B, V): greedy at temperature 0, else softmax(l / t)
    restricted to the top_k largest logits."""
    if temperature == 0:
        return logits.argmax(axis=-1)
    z = logits.astype(np.float64) / temperature                        # (B, V)
    if top_k is not None and top_k < z.shape[-1]:
        kth = np.partition(z, -top_k, axis=-1)[:, -top_k][:, None]     # (B, 1)
        z = np.where(z < kth, -np.inf, z)
    p = np.exp(z - z.max(axis=-1, keepdims=True))
    cdf = np.cumsum(p, axis=-1)                                        # (B, V)
    u = rng.random((z.shape[0], 1)) * cdf[:, -1:]
    return np.minimum((cdf < u).sum(axis=-1), z.shape[-1] - 1)


@no_grad()
def sample(model, idx, max_new_tokens, temperature=1.0, top_k=None, rng=None):
    """Extend token ids with `max_new_tokens` sampled tokens.

    Args:
        model: GPT (float or quantized). idx: (T,) or (B, T) int ids, T >= 1.
        temperature: >= 0 (0 = greedy). top_k: None or a positive int.
        rng: numpy Generator (default: a fresh one seeded 0, so output is reproducible).
    Returns:
        (B, T + max_new_tokens) int64 ids.
    """
    idx = np.atleast_2d(np.asarray(idx, dtype=np.int64))
    if idx.shape[1] == 0:
        raise ValueError("the prompt must contain at least one token")
    if not (temperature == 0 or (math.isfinite(temperature) and temperature >= 1e-3)):
        raise ValueError(f"temperature must be 0 (greedy) or a finite number >= 0.001, got "
                         f"{temperature}")
    if top_k is not None and (isinstance(top_k, bool) or int(top_k) != top_k or top_k < 1):
        raise ValueError(f"top_k must be a positive integer, got {top_k}")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    V = model.config.vocab_size
    if idx.min() < 0 or idx.max() >= V:
        raise ValueError(f"prompt token ids must be in [0, {V}), got [{idx.min()}, {idx.max()}]")
    rng = rng if rng is not None else np.random.default_rng(0)
    block = model.config.block_size
    was_training = model.training
    model.eval()
    try:
        return _decode(model, idx, max_new_tokens, temperature, top_k, rng, block)
    finally:
        model.train(was_training)


def _decode(model, idx, max_new_tokens, temperature, top_k, rng, block):
    """The prefill + one-token-at-a-time loop of `sample` (model already in eval mode)."""
    if getattr(model, "stateful", False):             # xl / knn patterns: their memory's form
        from minitx.long_context import decode_stream
        return decode_stream(model, idx, max_new_tokens,
                             lambda logits: _pick(logits, temperature, top_k, rng))
    def prefill(context):
        caches = model.new_caches()
        logits = model(context, caches=caches)[0].data[:, -1]         # (B, V)
        return caches, logits, context.shape[1]

    caches, logits, pos = prefill(idx[:, -block:])
    out = [idx]
    for i in range(max_new_tokens):
        nxt = _pick(logits, temperature, top_k, rng)[:, None]          # (B, 1)
        out.append(nxt)
        if i == max_new_tokens - 1:
            break
        if pos == block:                                               # cache full
            keep = max(block // 2, 1)                                  # block_size 1 keeps 1
            caches, logits, pos = prefill(np.concatenate(out, axis=1)[:, -keep:])
        else:
            logits = model(nxt, caches=caches, start_pos=pos)[0].data[:, -1]
            pos += 1
    return np.concatenate(out, axis=1)

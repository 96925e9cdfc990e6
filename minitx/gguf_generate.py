"""Streaming generation and chat with a GGUF model (SmolLM2): sampling, ChatML turns, timing.

    prefill:  the prompt's ids run through the model once (batched), filling the KV cache
    decode:   one token at a time: logits of the last position -> sample -> feed it back
    sample:   greedy at temperature 0; else softmax(logits / temperature) restricted to the
              top_k largest and then to the smallest set whose probability reaches top_p
              (nucleus sampling, Holtzman et al. 2019, arXiv 1904.09751)

A chat keeps its KV cache between turns: ChatML's turns are separated by special tokens, so the
ids of the conversation so far are a prefix of the ids of the conversation plus a new message,
and only the new suffix is run (if a tokenizer ever broke that, the cache is rebuilt).
"""
import time

import numpy as np


def pick(logits, temperature=0.0, top_k=None, top_p=None, rng=None):
    """One token id from logits (V,): greedy, or sampled with temperature / top-k / top-p."""
    if temperature == 0:
        return int(np.argmax(logits))
    z = logits.astype(np.float64) / temperature
    if top_k is not None and top_k < z.size:
        kth = np.partition(z, -top_k)[-top_k]
        z = np.where(z < kth, -np.inf, z)
    p = np.exp(z - z.max())
    p /= p.sum()
    if top_p is not None and top_p < 1.0:
        order = np.argsort(-p, kind="stable")
        keep = np.cumsum(p[order]) - p[order] < top_p          # the first token always stays
        mask = np.zeros_like(p, dtype=bool)
        mask[order[keep]] = True
        p = np.where(mask, p, 0.0)
        p /= p.sum()
    return int(rng.choice(p.size, p=p))


def check_sampling(temperature, top_k, top_p, max_new_tokens):
    """Flag ranges, before any model is loaded."""
    if not np.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be a positive integer, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")


class Session:
    """A model, its tokenizer and one KV cache: `feed` prompt ids, `stream` new tokens.

    Attributes after each call: prompt_tokens, prompt_seconds, new_tokens, decode_seconds.
    """

    def __init__(self, model, tokenizer):
        self.model, self.tok = model, tokenizer
        self.reset()

    def reset(self):
        self.caches, self.ids, self.logits = self.model.new_caches(), [], None

    def feed(self, ids):
        """Run new prompt ids (appended to what the cache holds); keeps the last logits."""
        ids = [int(i) for i in ids]
        if not ids:
            raise ValueError("the prompt is empty: give at least one token")
        if len(self.ids) + len(ids) > self.model.config.block_size:
            raise ValueError(f"{len(self.ids) + len(ids)} tokens exceed the model's context of "
                             f"{self.model.config.block_size}")
        t0 = time.perf_counter()
        out = self.model(np.array([ids]), caches=self.caches, start_pos=len(self.ids),
                         last_only=True)[0].data
        self.prompt_seconds, self.prompt_tokens = time.perf_counter() - t0, len(ids)
        self.ids += ids
        self.logits = out[0, -1]

    def stream(self, max_new_tokens, temperature=0.0, top_k=None, top_p=None, rng=None,
               stop_ids=()):
        """Yield (token id, newly printable text) for up to max_new_tokens tokens; stops after
        a token in stop_ids (which is yielded, with its text suppressed)."""
        rng = rng if rng is not None else np.random.default_rng(0)
        decoder = self.tok.stream_decoder(skip_special=True)
        self.new_tokens, t0 = 0, time.perf_counter()
        for _ in range(max_new_tokens):
            tid = pick(self.logits, temperature, top_k, top_p, rng)
            self.new_tokens += 1
            if tid in stop_ids:            # not fed: the next turn's prompt starts with it
                break
            yield tid, decoder.push(tid)
            if len(self.ids) + 1 > self.model.config.block_size:
                break
            self.feed_one(tid)
        self.decode_seconds = time.perf_counter() - t0
        tail = decoder.flush()
        if tail:
            yield None, tail

    def feed_one(self, tid):
        out = self.model(np.array([[tid]]), caches=self.caches, start_pos=len(self.ids),
                         last_only=True)[0].data
        self.ids.append(tid)
        self.logits = out[0, -1]


def chat_turn(session, messages, **sampling):
    """Add the model's reply to `messages` (list of {"role", "content"}); yields text pieces.

    The conversation is rendered by the tokenizer's chat template; only ids not yet in the
    session's cache are run."""
    text = session.tok.render_chat(messages, add_generation_prompt=True)
    ids = list(session.tok.encode(text))
    cached = session.ids
    if ids[:len(cached)] != cached or len(ids) == len(cached):
        session.reset()                      # re-tokenized differently: rebuild the cache
        cached = []
    session.feed(ids[len(cached):])
    reply = []
    stop = {session.tok.eos_id} - {None}
    for _, piece in session.stream(stop_ids=stop, **sampling):
        reply.append(piece)
        yield piece
    messages.append({"role": "assistant", "content": "".join(reply)})


def rates(session):
    """(prompt tokens/s, decode tokens/s) of the last feed and stream."""
    p = session.prompt_tokens / max(session.prompt_seconds, 1e-9)
    d = session.new_tokens / max(getattr(session, "decode_seconds", 0.0), 1e-9)
    return p, d

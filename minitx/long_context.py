"""Training and evaluating the GPT over long documents, segment by segment (Transformer-XL's
regime, Dai et al. 2019, section 3.2), for the stateful attention patterns `xl` and `knn`.

The stream: the training ids are cut into B contiguous rows (B = batch size) and batch i is the
i-th segment of T = block_size tokens of every row, so each batch row continues its own text
segment after segment and the per-layer memory (attention/stream.py: cached keys and values,
stop-gradient) holds the true preceding text of that row. All rows have the same length, so
they reach the end of their stream at the same step: the memory is then reset for every row and
the next pass starts (one "epoch"). The corpus is one long stream (no document markers), as
Transformer-XL treats enwik8; a sampler with documents of its own says when a stream starts
(`starts_stream`, read after each `next_batch`).

`SegmentTraining` plugs this into minitx.train.Trainer as an extension: at on_init it installs
the `SegmentSampler`, and it gives the trainer a `loss` that passes the carried caches to the
model and an `evaluate` that reads the validation stream segment by segment with a fresh memory
(the first `eval_iters` segments of B rows: the same tokens for every pattern). Its state is
the caches, saved in the checkpoint as base64 of the raw little-endian arrays inside the JSON
training state (no pickle); the sampler's position is the sampler's state. With both, a resume
is bit-exact. Non-stateful models may use it too (the study does, so every pattern sees the same
tokens in the same order); they simply carry no memory.
"""
import base64

import numpy as np

from minitx.autograd import no_grad
from minitx.checkpoint import CheckpointError

MAX_STATE_BYTES = 48 * 2 ** 20        # caches saved in the JSON training state (limit 100 MB)


class SegmentSampler:
    """Batch i = segment i (T tokens, plus the next token as target) of each of B rows.

    Args:
        ids: 1-D int array, the token stream; batch_size: B rows; seg_len: T.
    Attributes:
        segment: the next segment's index; epoch: passes completed; starts_stream: True when the
        batch just returned begins the rows' streams (the memory must be reset before it).
    """

    def __init__(self, ids, batch_size, seg_len):
        ids = np.asarray(ids)
        L = len(ids) // batch_size
        self.n_segments = (L - 1) // seg_len
        if self.n_segments < 1:
            raise ValueError(f"{len(ids)} tokens in {batch_size} rows give no segment of "
                             f"{seg_len} + 1 tokens: give more text or a smaller batch")
        self.rows = ids[:batch_size * L].reshape(batch_size, L)     # (B, L)
        self.T, self.segment, self.epoch, self.starts_stream = seg_len, 0, 0, False

    def next_batch(self, trainer=None):
        i, T = self.segment, self.T
        self.starts_stream = i == 0
        x = self.rows[:, i * T:(i + 1) * T]                          # (B, T)
        y = self.rows[:, i * T + 1:(i + 1) * T + 1]                  # (B, T) next tokens
        self.segment = (i + 1) % self.n_segments
        self.epoch += self.segment == 0
        return x, y, None

    def state_dict(self):
        return {"segment": self.segment, "epoch": self.epoch}

    def load_state_dict(self, d):
        seg, ep = int(d["segment"]), int(d["epoch"])
        if not 0 <= seg < self.n_segments:
            raise ValueError(f"saved segment {seg} outside the stream's {self.n_segments}")
        self.segment, self.epoch = seg, ep


def stream_batches(ids, batch_size, seg_len, n_segments=None):
    """The (x, y) segments of `ids` cut into rows, in order (validation, tests)."""
    s = SegmentSampler(ids, batch_size, seg_len)
    n = s.n_segments if n_segments is None else min(n_segments, s.n_segments)
    return [s.next_batch()[:2] for _ in range(n)]


class SegmentTraining:
    """Trainer extension: the segment stream, the carried memory, segment-wise evaluation.

    Args:
        sampler: a sampler with `starts_stream` (default: SegmentSampler over the training ids
            with B = batch size and T = block_size).
        val_batches: list of (x, y) validation segments in stream order (default: the first
            eval_iters segments of the validation ids in B rows).
    """
    name = "segment_memory"

    def __init__(self, sampler=None, val_batches=None):
        self.sampler, self.val_batches, self.caches = sampler, val_batches, None

    def on_init(self, trainer):
        model, tc = trainer.model, trainer.tc
        T = model.config.block_size
        if self.sampler is None:
            self.sampler = SegmentSampler(trainer.train_ids, tc.batch_size, T)
        if self.val_batches is None:
            self.val_batches = stream_batches(trainer.val_ids, tc.batch_size, T, tc.eval_iters)
        if trainer.out_dir is not None and cache_bytes(model, tc.batch_size) > MAX_STATE_BYTES:
            raise ValueError(f"the attention memory of {tc.batch_size} rows needs "
                             f"{cache_bytes(model, tc.batch_size) / 2**20:.0f} MB in the "
                             f"checkpoint (at most {MAX_STATE_BYTES // 2**20} MB): use a smaller "
                             "memory (mem=, size=) or --batch-size")
        trainer.sampler = self.sampler
        self.caches = model.new_caches() if model.stateful else None
        self.trainer = trainer
        trainer.loss = self.loss                       # the memory goes into every forward
        trainer.evaluate = self.evaluate               # validation: the stream, in order

    def loss(self, x, y, weights=None):
        if weights is not None:
            raise ValueError("segment training has no per-example weights")
        model = self.trainer.model
        if self.sampler.starts_stream and self.caches is not None:
            self.caches = model.new_caches()           # a new stream: forget the old one
        if model.stateful and x.shape[1] != model.config.block_size:
            raise ValueError(f"segments must be block_size {model.config.block_size} long, got "
                             f"{x.shape[1]} (no sequence-length schedule with memory patterns)")
        return model(x, y, caches=self.caches)[1]

    @no_grad()
    def evaluate(self):
        """Mean validation loss over the validation segments, read in order, fresh memory."""
        model = self.trainer.model
        was_training = model.training
        model.eval()
        caches = model.new_caches() if model.stateful else None
        losses = [model(x, y, caches=caches)[1].item() for x, y in self.val_batches]
        model.train(was_training)
        return float(np.mean(losses))

    def state_dict(self):
        if self.caches is None:
            return {}
        return {"caches": [{k: encode_array(v) for k, v in c.items()} for c in self.caches]}

    def load_state_dict(self, d):
        if not d:
            return
        caches = d["caches"]
        if self.caches is None or len(caches) != len(self.caches):
            raise CheckpointError(f"the checkpoint holds {len(caches)} layer memories, the model "
                                  f"{0 if self.caches is None else len(self.caches)}")
        self.caches = [{k: decode_array(v) for k, v in c.items()} for c in caches]


def cache_bytes(model, batch_size):
    """Upper bound of the saved memory's size (base64 included) for B = batch_size rows."""
    c = model.config
    total = 0
    for b in model.blocks:
        p = b.attn.pattern
        n = p.mem_len if p.name == "xl" else p.params.get("size", 0) if p.stateful else 0
        total += 2 * batch_size * c.n_kv_head * n * c.head_dim * 4
    return total * 4 // 3


def encode_array(a):
    """ndarray -> JSON-able {"dtype", "shape", "data" (base64 of the little-endian bytes)}."""
    a = np.ascontiguousarray(a)
    le = a.astype(a.dtype.newbyteorder("<"), copy=False)
    return {"dtype": a.dtype.str.lstrip("<>|="), "shape": list(a.shape),
            "data": base64.b64encode(le.tobytes()).decode("ascii")}


def decode_array(d):
    """The inverse of encode_array, checking the byte count against the shape."""
    dtype = np.dtype("<" + d["dtype"])
    if dtype.kind != "f":
        raise CheckpointError(f"saved attention memory has dtype {d['dtype']!r}, not a float")
    raw = base64.b64decode(d["data"], validate=True)
    shape = tuple(int(s) for s in d["shape"])
    if len(raw) != int(np.prod(shape)) * dtype.itemsize:
        raise CheckpointError(f"saved attention memory: {len(raw)} bytes for shape {shape}")
    return np.frombuffer(raw, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))


# ============================== inference over a long text ===================================
@no_grad()
def stream_logits(model, idx, caches=None):
    """Logits (B, N, V) ndarray of a long idx (B, N) read segment by segment with the memory
    (xl, knn) carried in `caches` (default: fresh); the teacher-forced reference of decoding."""
    idx = np.asarray(idx)
    T = model.config.block_size
    caches = model.new_caches() if caches is None else caches
    out = [model(idx[:, s:s + T], caches=caches if model.stateful else None)[0].data
           for s in range(0, idx.shape[1], T)]
    return np.concatenate(out, axis=1)


def decode_stream(model, idx, max_new_tokens, pick):
    """Sampling for a stateful model (called by minitx.generate.sample, in no_grad/eval mode):
    the whole prompt is read segment by segment into the memory, then one token at a time; when
    a segment fills up it joins the memory and the next token starts a new segment at position 0.

    Args:
        idx: (B, P) prompt ids; pick: logits (B, V) -> next ids (B,).
    Returns:
        (B, P + max_new_tokens) ids.
    """
    T = model.config.block_size
    caches = model.new_caches()
    for s in range(0, idx.shape[1], T):
        logits = model(idx[:, s:s + T], caches=caches)[0].data[:, -1]   # (B, V)
    pos = (idx.shape[1] - 1) % T + 1                                      # tokens in segment
    out = [idx]
    for i in range(max_new_tokens):
        nxt = pick(logits)[:, None]                                       # (B, 1)
        out.append(nxt)
        if i == max_new_tokens - 1:
            break
        pos = 0 if pos == T else pos
        logits = model(nxt, caches=caches, start_pos=pos)[0].data[:, -1]
        pos += 1
    return np.concatenate(out, axis=1)

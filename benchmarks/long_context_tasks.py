"""The study's synthetic long-range tasks (benchmarks/long_context_study.py, parts b and c):
documents of `doc_segments` segments of T tokens, streamed segment by segment through
`minitx.long_context.SegmentTraining`, with targets only where the answer sits a chosen
distance back.

(b) Associative recall (as in Zoology's MQAR, Arora et al. 2023, streamed): the document is a
    stream of (key, value) pairs. A pair either writes a key never seen before in the document
    with a random value, or, D tokens after a write, reads the written key again: the target is
    its value. Every key is written at most once and read at most once per document, so the
    only earlier occurrence of a read key is exactly D tokens back (no nearer copy a short
    window could use). Chance: 1 / len(VALUES).
(c) Selective copying (Gu & Dao 2023, "Mamba", figure 2 and section 4.1.1: the copying task
    with the data tokens at random positions instead of fixed ones): an episode is a span
    of S tokens, blank except for `n_data` data tokens at random positions, then a marker, then
    the data tokens in their order, which are the targets (teacher-forced: the input at output j
    is output j - 1). Episodes are packed back to back in the document, so a span may start in
    an earlier segment than its marker: for S > T only a memory reaches the first data tokens.
    Chance: 1 / len(DATA).

`TaskSampler` draws the documents; with a `minitx.curriculum.CurriculumScheduler` it is also a
distance curriculum: at Trainer step s only distances <= get_difficulty(s + 1) are drawn.
"""
import numpy as np

from minitx.long_context import stream_logits

KEYS, VALUES = np.arange(0, 192), np.arange(192, 208)          # recall: 192 keys, 16 values
BLANK, MARK, DATA = 220, 221, np.arange(224, 232)               # copying: 8 data tokens


def make_recall(rng, B, L, distances):
    """B recall documents. Returns ids (B, L + 1) and, per input position t (B, L), the distance
    D of the target seq[t + 1] (a read key's value), 0 where there is no target."""
    n = (L + 2) // 2                                              # pairs
    if n > len(KEYS):
        raise ValueError(f"a recall document of {L} tokens has {n} pairs, more than the "
                         f"{len(KEYS)} keys that keep every key's copies unique")
    seq = np.zeros((B, 2 * n), dtype=np.int64)
    tdist = np.zeros((B, 2 * n), dtype=np.int64)
    for b in range(B):
        keys = iter(rng.permutation(KEYS))
        read = {}                                                 # pair slot -> (key, value, D)
        for i in range(n):
            if i in read:
                k, v, D = read.pop(i)
                tdist[b, 2 * i] = D
            else:
                k, v = next(keys), rng.choice(VALUES)
                D = distances[rng.integers(len(distances))]
                if i + D // 2 < n and i + D // 2 not in read:
                    read[i + D // 2] = (k, v, D)
            seq[b, 2 * i:2 * i + 2] = k, v
    return seq[:, :L + 1], tdist[:, :L]


def make_copy(rng, B, L, spans, n_data=4):
    """B documents of packed selective-copying episodes (span S, marker, n_data outputs), S drawn
    from `spans` among those that still fit. Returns ids (B, L + 1) and the span S of each
    target (B, L), 0 where there is no target."""
    seq = np.full((B, L + 1), BLANK, dtype=np.int64)
    tdist = np.zeros((B, L), dtype=np.int64)
    for b in range(B):
        t = 0
        while True:
            fit = [S for S in spans if t + S + 1 + n_data <= L + 1]
            if not fit:
                break
            S = fit[rng.integers(len(fit))]
            data = rng.choice(DATA, size=n_data)
            where = np.sort(rng.choice(S, size=n_data, replace=False))
            seq[b, t + where] = data
            m = t + S                                             # the marker's position
            seq[b, m] = MARK
            seq[b, m + 1:m + 1 + n_data] = data
            tdist[b, m:m + n_data] = S                            # input m + j -> output j
            t = m + 1 + n_data
    return seq, tdist


TASKS = {"recall": (make_recall, VALUES), "copy": (make_copy, DATA)}


class TaskSampler:
    """Each row: one document of `doc_segments` segments of T tokens; all rows start a new
    document together (starts_stream) when the last segment is done. State: the generator state
    at the document's start, the distances it was drawn with, and the segment index (the
    document is redrawn on resume).

    Args:
        task: "recall" or "copy"; B, T, doc_segments: batch rows, segment length, segments per
            document; distances: the task's D (recall) or S (copy) values; seed: the generator's.
        curriculum: optional minitx.curriculum.CurriculumScheduler whose difficulty is the
            largest distance drawn at Trainer step s (read as get_difficulty(s + 1)).
    """

    def __init__(self, task, B, T, doc_segments, distances, seed, curriculum=None):
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; choose from {sorted(TASKS)}")
        self.make = TASKS[task][0]
        self.B, self.T, self.n, self.distances = B, T, doc_segments, sorted(distances)
        self.curriculum = curriculum
        self.rng = np.random.default_rng(seed)
        self.segment, self.starts_stream, self.doc = 0, False, None
        self.doc_state, self.allowed = None, self.distances

    def _draw(self):
        """A new document; redrawn while some segment has no target in any row (its mean
        loss would be 0/0: with copying's long spans, about 1 document in 500)."""
        self.doc_state = self.rng.bit_generator.state
        while True:
            seq, tdist = self.make(self.rng, self.B, self.n * self.T, self.allowed)
            if (tdist.reshape(self.B, self.n, self.T) > 0).any(axis=(0, 2)).all():
                break
        y = seq[:, 1:].copy()
        y[tdist == 0] = -100                                      # only the answers count
        self.doc = (seq[:, :-1], y)

    def next_batch(self, trainer=None):
        if self.segment == 0:
            if self.curriculum is not None and trainer is not None:
                cap = self.curriculum.get_difficulty(trainer.step + 1)
                self.allowed = [D for D in self.distances if D <= cap] or self.distances[:1]
            self._draw()
        s, T = self.segment, self.T
        self.starts_stream = s == 0
        self.segment = (s + 1) % self.n
        return self.doc[0][:, s * T:(s + 1) * T], self.doc[1][:, s * T:(s + 1) * T], None

    def state_dict(self):
        st = self.rng.bit_generator.state if self.segment == 0 else self.doc_state
        return {"rng": st, "segment": self.segment, "allowed": list(map(int, self.allowed))}

    def load_state_dict(self, d):
        self.rng.bit_generator.state = d["rng"]
        self.segment, self.allowed = int(d["segment"]), [int(D) for D in d["allowed"]]
        if self.segment:
            self._draw()


def task_accuracy(model, task, T, doc_segments, distances, seed, n_docs):
    """Accuracy per distance {D: fraction of targets right}: the answer is the argmax over the
    task's answer tokens; documents read segment by segment with the memory carried. Recall draws
    mixed distances; copying draws documents of one span S at a time."""
    make, answers = TASKS[task]
    rng = np.random.default_rng(10_000 + seed)
    groups = [distances] if task == "recall" else [[S] for S in distances]
    acc, hits = {}, {}
    for group in groups:
        seq, tdist = make(rng, n_docs, doc_segments * T, group)
        logits = stream_logits(model, seq[:, :-1])              # (n, L, V), memory carried
        pred = logits[..., answers[0]:answers[-1] + 1].argmax(-1) + answers[0]
        hit = pred == seq[:, 1:]
        for D in group:
            hits[int(D)] = hit[tdist == D]
    for D in distances:
        acc[int(D)] = float(hits[int(D)].mean()) if hits[int(D)].size else float("nan")
    return acc


def reach(task, T, doc_segments, distances, memory, n_docs=64, seed=0):
    """The ceiling set by an attention span: {D: fraction of targets whose answer token (the
    recalled value; the copied data token) lies in the query's own segment or in the `memory`
    tokens before it}. memory = 0: a segment-bound layer (dense); T: xl:mem=T; 4T: the knn
    layer's store (before top-k). Measured on drawn documents as task_accuracy draws them."""
    make = TASKS[task][0]
    rng = np.random.default_rng(seed)
    groups = [distances] if task == "recall" else [[S] for S in distances]
    src, qry, dist = [], [], []
    for group in groups:
        seq, tdist = make(rng, n_docs, doc_segments * T, group)
        for b in range(n_docs):
            t = np.flatnonzero(tdist[b])
            if task == "recall":
                src.append(t - tdist[b, t] + 1)
            else:                                         # the j-th data token of the span
                for m in t[::4]:                          # make_copy's n_data = 4 outputs
                    S = tdist[b, m]
                    src.append(m - S + np.flatnonzero(np.isin(seq[b, m - S:m], DATA))[:4])
            qry.append(t)
            dist.append(tdist[b, t])
    src, qry, dist = (np.concatenate(a) for a in (src, qry, dist))
    ok = src >= (qry // T) * T - memory
    return {int(D): float(ok[dist == D].mean()) for D in distances}

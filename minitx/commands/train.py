"""`python -m minitx train`: train a GPT (default: the `default` config on the embedded corpus)."""
import dataclasses
import os

from minitx import backend
from minitx.data import default_corpus, load_text
from minitx.models.gpt import CONFIGS, get_config
from minitx.train import TrainConfig, train

# the flags that map one to one onto TrainConfig fields
TRAIN_FLAGS = ("max_steps", "batch_size", "lr", "min_lr", "seed", "eval_interval", "eval_iters",
               "ckpt_interval", "warmup", "log_interval", "weight_decay", "grad_clip",
               "max_tokens")
ATTENTION = ("naive", "flash1", "flash2", "c")


def add_parser(sub):
    p = sub.add_parser("train", help="train a GPT (default: the embedded corpus)")
    p.add_argument("--out", default="out", help="checkpoint directory (default: out)")
    p.add_argument("--data", help="a UTF-8 text file to train on (default: the embedded corpus "
                                  "of Python standard-library docstrings and comments)")
    p.add_argument("--config", default=None, choices=sorted(CONFIGS),
                   help="model size (default: default; on --resume, the checkpoint's)")
    p.add_argument("--attention", default=None, choices=ATTENTION,
                   help="attention implementation (default: naive)")
    p.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    d = TrainConfig()
    for name in TRAIN_FLAGS:
        default = getattr(d, name)
        kind = float if name in ("lr", "min_lr", "weight_decay", "grad_clip") else int
        p.add_argument("--" + name.replace("_", "-"), type=kind,
                       default=None if name == "min_lr" else default,
                       help=f"(default: {'lr / 10' if name == 'min_lr' else default})")
    p.add_argument("--sample-tokens", type=int, default=200,
                   help="print a sample of this many bytes after training (0: none)")
    return p


def check_out_dir(path):
    """Fail before training if checkpoints could not be written to `path`."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"--out {path} exists and is not a directory")
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    target = path if os.path.isdir(path) else parent
    if not os.access(target, os.W_OK | os.X_OK):
        raise ValueError(f"--out {path}: {target} is not writable")


def check_memory(batch_size, block_size, vocab_size):
    """Refuse a batch whose logits alone would not fit in memory (before allocating them)."""
    need = batch_size * block_size * vocab_size * 4 * 4      # logits, probs, grads: float32
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return
    if need > total // 2:
        raise ValueError(f"--batch-size {batch_size} x block_size {block_size} needs about "
                         f"{need / 2**30:.1f} GiB for the logits alone, more than half of this "
                         f"machine's {total / 2**30:.1f} GiB: use a smaller --batch-size")


def run(args):
    if args.sample_tokens < 0:
        raise ValueError(f"--sample-tokens must be >= 0, got {args.sample_tokens}")
    if args.resume and args.config is not None:
        raise ValueError("--config and --resume: the checkpoint's model config is used on "
                         "resume; leave out --config")
    tc = TrainConfig(**{k: getattr(args, k) for k in TRAIN_FLAGS})
    overrides = {"attention": args.attention} if args.attention else {}
    model_config = get_config(args.config or "default", **overrides)
    check_out_dir(args.out)
    check_memory(tc.batch_size, model_config.block_size, model_config.vocab_size)
    text = load_text(args.data) if args.data else default_corpus()
    print(f"minitx: training config '{args.config or 'default'}' on "
          f"{args.data if args.data else 'the embedded corpus'} "
          f"({len(text.encode('utf-8')):,} bytes), backend {backend.active()}, out {args.out}")
    result = train(model_config, tc, text, args.out, resume=args.resume)
    gap = result["unigram_loss"] - result["val_loss"]
    print(f"done: {result['step']} steps in {result['seconds']:.0f}s, "
          f"{result['tokens_per_s']:,.0f} tok/s, {result['flops'] / 1e12:.2f} TFLOP | val loss "
          f"{result['val_loss']:.4f} vs unigram baseline {result['unigram_loss']:.4f} "
          f"({gap:+.4f} nats better) | checkpoint: {args.out}")
    if args.sample_tokens > 0:
        from minitx.commands.generate import print_sample
        print_sample(result["model"], "The ", args.sample_tokens, 0.8, 40, args.seed)
    return 0

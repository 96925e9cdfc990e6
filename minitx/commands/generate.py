"""`python -m minitx generate`: sample text from a checkpoint with a KV cache."""
import math
import sys
import time

import numpy as np

from minitx.checkpoint import load_model
from minitx.tokenizer import ByteTokenizer


def add_parser(sub):
    p = sub.add_parser("generate", help="sample text from a checkpoint")
    p.add_argument("--ckpt", default="out", help="checkpoint directory (default: out)")
    p.add_argument("--gguf", help="sample from a llama-architecture .gguf file instead of --ckpt")
    p.add_argument("--top-p", type=float, default=0.95, help="--gguf only: nucleus cut")
    p.add_argument("--kernel", default="float", choices=["float", "q8"], help="--gguf only")
    p.add_argument("--prompt", default="\n", help="text to continue")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8, help="0: greedy")
    p.add_argument("--top-k", type=int, default=40, help="0: no top-k")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--adapter", default=None,
                   help="a LoRA adapter to apply: a PEFT adapter directory or a finetune run")
    p.add_argument("--merge", action="store_true",
                   help="with --adapter: fold the adapters into the weights (float base only)")
    return p


def check_sampling(max_new_tokens, temperature, top_k, seed):
    """The sampling flags' ranges, before any model is loaded."""
    if max_new_tokens < 0:
        raise ValueError(f"--max-new-tokens must be >= 0, got {max_new_tokens}")
    if not math.isfinite(temperature) or temperature < 0 or 0 < temperature < 1e-3:
        raise ValueError(f"--temperature must be 0 (greedy) or a finite number >= 0.001, got "
                         f"{temperature}")
    if top_k < 0:
        raise ValueError(f"--top-k must be >= 0 (0: no top-k), got {top_k}")
    if seed < 0:
        raise ValueError(f"--seed must be >= 0, got {seed}")


def print_sample(model, prompt, n, temperature, top_k, seed):
    tok = ByteTokenizer()
    if getattr(model, "peft_base_model", None):             # a GGUF base: the file's tokenizer
        from minitx.gguf import load_tokenizer
        tok = load_tokenizer(model.peft_base_model)
    ids = np.asarray(tok.encode(prompt), dtype=np.int64)
    if ids.size == 0:
        raise ValueError("the prompt is empty: give at least one character")
    t0 = time.perf_counter()
    out = model.generate(ids, n, temperature=temperature, top_k=top_k or None,
                         rng=np.random.default_rng(seed))
    dt = time.perf_counter() - t0
    print("-" * 60)
    print(tok.decode(np.asarray(out[0]).tolist()))
    print("-" * 60)
    print(f"{n} tokens in {dt:.2f}s ({n / max(dt, 1e-9):.0f} tok/s)", file=sys.stderr)


def run(args):
    check_sampling(args.max_new_tokens, args.temperature, args.top_k, args.seed)
    if args.merge and not args.adapter:
        raise ValueError("--merge needs --adapter")
    if args.gguf and args.adapter:
        return _generate_gguf_adapter(args)
    if args.gguf:
        from minitx.commands.chat import generate_gguf
        return generate_gguf(args)
    model = load_model(args.ckpt)
    if args.adapter:
        from minitx.lora import apply_adapter_dir
        apply_adapter_dir(model, args.adapter, merge=args.merge)
    print_sample(model, args.prompt, args.max_new_tokens, args.temperature, args.top_k,
                 args.seed)
    return 0


def _generate_gguf_adapter(args):
    """`generate --gguf FILE --adapter DIR`: the file's blocks as the frozen base plus the
    adapter (minitx.lora_gguf); --merge is refused (it would need a float copy of the base or a
    re-quantization of the file's blocks)."""
    if args.merge:
        raise ValueError("--merge: the GGUF base's blocks are never re-quantized, and merging "
                         "in place would need a float copy of them; sample without --merge")
    from minitx.lora import apply_adapter_dir
    from minitx.lora_gguf import load_gguf_gpt
    model = load_gguf_gpt(args.gguf, keep_blocks=True)
    apply_adapter_dir(model, args.adapter)
    print_sample(model, args.prompt, args.max_new_tokens, args.temperature, args.top_k,
                 args.seed)
    return 0

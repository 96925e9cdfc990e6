"""`python -m minitx export-gguf --ckpt DIR --out FILE.gguf --type f32|q8_0|q4_0|q4_1`: write a
Llama-flavoured minitx checkpoint as GGUF (see minitx.gguf_export)."""
import os
import sys

from minitx.checkpoint import load_model
from minitx.gguf_export import FILE_TYPES, export_gguf


def add_parser(sub):
    p = sub.add_parser("export-gguf", help="write a llama-flavoured checkpoint as a GGUF file")
    p.add_argument("--ckpt", default="out", help="checkpoint directory (default: out)")
    p.add_argument("--out", required=True, help="the .gguf file to write")
    p.add_argument("--type", default="f32", choices=sorted(FILE_TYPES),
                   help="matrix format (default: f32)")
    return p


def run(args):
    if os.path.isdir(args.out):
        raise ValueError(f"--out {args.out} is a directory; give a file name")
    model = load_model(args.ckpt)
    types = export_gguf(model, args.out, args.type)
    counts = {}
    for t in types.values():
        counts[t] = counts.get(t, 0) + 1
    print(f"wrote {args.out} ({os.path.getsize(args.out):,} bytes): {len(types)} tensors, "
          + ", ".join(f"{n} {t}" for t, n in sorted(counts.items())), file=sys.stderr)
    return 0

"""`python -m minitx quantize --ckpt DIR --scheme int8|int4|nf4|... --out DIR2`.

Only wiring: argument parsing, then `minitx.quant.linear.quantize_model` and
`minitx.quant.serialize.save_quantized_model`. The lead's minitx/cli.py registers the sub-command
with `add_quantize_parser(subparsers)` and calls `run_quantize(args)`.
"""
import os

from minitx.quant import SCHEME_NAMES


def add_quantize_parser(subparsers):
    """Add the `quantize` sub-command to an argparse subparsers object; returns its parser."""
    p = subparsers.add_parser("quantize", help="write a quantized copy of a GPT checkpoint")
    p.add_argument("--ckpt", required=True, help="float checkpoint directory (minitx-gpt)")
    p.add_argument("--out", required=True, help="output directory for the quantized checkpoint")
    p.add_argument("--scheme", default="int8", choices=SCHEME_NAMES)
    p.add_argument("--block-size", type=int, default=None,
                   help="integer: group size (default per channel); nf4/fp4: block (default 64)")
    p.add_argument("--double-quant", action="store_true", help="nf4/fp4: 8-bit absmax constants")
    p.add_argument("--asymmetric", action="store_true", help="integer: min-max grid + zero point")
    p.add_argument("--range-method", default="minmax", choices=("minmax", "percentile", "mse"))
    p.add_argument("--salient-fraction", type=float, default=0.1, help="pbllm: int8 fraction")
    p.add_argument("--skip", default="", help="comma-separated layer-name substrings kept float32")
    return p


def _options(args):
    opts = {"scheme": args.scheme, "block_size": args.block_size}
    if args.scheme in ("nf4", "fp4"):
        opts["double_quant"] = args.double_quant
    elif args.scheme.startswith("int"):
        opts.update(symmetric=not args.asymmetric, range_method=args.range_method)
    elif args.scheme == "pbllm":
        opts["salient_fraction"] = args.salient_fraction
    return opts


def run_quantize(args):
    """The `quantize` command: `quantize_checkpoint(args)`, exit code 0."""
    quantize_checkpoint(args)
    return 0


def quantize_checkpoint(args):
    """Quantize `args.ckpt` into `args.out` and print the sizes. Returns the quantized model."""
    from minitx.quant.linear import quantize_model, weight_bytes
    from minitx.quant.serialize import load_float_model, save_quantized_model

    if os.path.abspath(args.ckpt) == os.path.abspath(args.out):
        raise ValueError(f"--out must differ from --ckpt (both {args.ckpt!r})")
    model = load_float_model(args.ckpt)
    before = weight_bytes(model)
    opts = _options(args)
    kwargs = {k: v for k, v in opts.items() if k != "scheme"}
    skip = tuple(s for s in args.skip.split(",") if s)
    used = quantize_model(model, args.scheme, skip=skip, **kwargs)
    size = save_quantized_model(model, args.out, options=dict(opts, skip=list(skip)),
                                source_dir=args.ckpt)
    from minitx.checkpoint import resolve
    src = os.path.getsize(os.path.join(resolve(args.ckpt), "model.safetensors"))
    n_q = sum(1 for s in used.values() if s != "float32")
    print(f"quantized {n_q}/{len(used)} Linear layers with {args.scheme}; weights in RAM "
          f"{before / 1e6:.2f} MB -> {weight_bytes(model) / 1e6:.2f} MB; model.safetensors "
          f"{src / 1e6:.2f} MB -> {size / 1e6:.2f} MB ({src / size:.2f}x smaller); wrote {args.out}")
    return model

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
                   help="int*: group size (default per channel); nf4/fp4: block (default 64)")
    p.add_argument("--double-quant", action="store_true", help="nf4/fp4: 8-bit absmax constants")
    p.add_argument("--asymmetric", action="store_true", help="int*: min-max grid + zero point")
    p.add_argument("--range-method", default=None, choices=("minmax", "percentile", "mse"),
                   help="int*: clipping range (default minmax)")
    p.add_argument("--salient-fraction", type=float, default=None,
                   help="pbllm: fraction kept in int8 (default 0.1)")
    p.add_argument("--skip", default="", help="comma-separated layer-name substrings kept float32")
    return p


# flag -> (attribute, the schemes that use it); a flag given for another scheme is an error
_SCHEME_FLAGS = {"--block-size": ("block_size", ("int", "nf4", "fp4")),
                 "--double-quant": ("double_quant", ("nf4", "fp4")),
                 "--asymmetric": ("asymmetric", ("int",)),
                 "--range-method": ("range_method", ("int",)),
                 "--salient-fraction": ("salient_fraction", ("pbllm",))}


def _options(args):
    """The quantize() options of `args`, after checking every flag against the scheme.

    Raises:
        ValueError naming the flag when it is out of range or the scheme does not use it
        (instead of silently ignoring it).
    """
    for flag, (attr, schemes) in _SCHEME_FLAGS.items():
        value = getattr(args, attr)
        if value not in (None, False) and not args.scheme.startswith(schemes):
            raise ValueError(f"{flag} does not apply to --scheme {args.scheme} (it is used by "
                             f"{', '.join(s + '*' if s == 'int' else s for s in schemes)})")
    if args.block_size is not None and args.block_size < 1:
        raise ValueError(f"--block-size must be a positive integer, got {args.block_size}")
    if args.salient_fraction is not None and not 0.0 <= args.salient_fraction <= 1.0:
        raise ValueError(f"--salient-fraction must be in [0, 1], got {args.salient_fraction}")
    opts = {"scheme": args.scheme, "block_size": args.block_size}
    if args.scheme in ("nf4", "fp4"):
        opts["double_quant"] = args.double_quant
    elif args.scheme.startswith("int"):
        opts.update(symmetric=not args.asymmetric, range_method=args.range_method or "minmax")
    elif args.scheme == "pbllm":
        opts["salient_fraction"] = 0.1 if args.salient_fraction is None else args.salient_fraction
    if args.scheme in ("binary", "pbllm"):
        del opts["block_size"]
    return opts


def run_quantize(args):
    """The `quantize` command: `quantize_checkpoint(args)`, exit code 0."""
    quantize_checkpoint(args)
    return 0


def quantize_checkpoint(args):
    """Quantize `args.ckpt` into `args.out` and print the sizes. Returns the quantized model."""
    from minitx.quant.linear import quantize_model, weight_bytes
    from minitx.quant.serialize import load_float_model, save_quantized_model

    opts = _options(args)                                   # every flag checked before any work
    src_dir, out_dir = os.path.realpath(args.ckpt), os.path.realpath(args.out)
    if out_dir == src_dir or out_dir.startswith(src_dir + os.sep):
        raise ValueError(f"--out {args.out!r} is --ckpt {args.ckpt!r} or inside it: the float "
                         "checkpoint would be overwritten")
    if os.path.exists(os.path.join(args.out, "latest")) or os.path.exists(
            os.path.join(args.out, "config.json")):
        raise ValueError(f"--out {args.out!r} already holds a checkpoint: choose a new directory")
    model = load_float_model(args.ckpt)
    before = weight_bytes(model)
    kwargs = {k: v for k, v in opts.items() if k != "scheme"}
    skip = tuple(s for s in args.skip.split(",") if s)
    used = quantize_model(model, args.scheme, skip=skip, **kwargs)
    size = save_quantized_model(model, args.out, options=dict(opts, skip=list(skip)),
                                source_dir=args.ckpt)
    from minitx.checkpoint import resolve
    src = os.path.getsize(os.path.join(resolve(args.ckpt), "model.safetensors"))
    n_q = sum(1 for s in used.values() if s != "float32")
    print(f"quantized {n_q}/{len(used)} Linear layers with {args.scheme}; weights in RAM "
          f"{before / 1e6:.2f} MB -> {weight_bytes(model) / 1e6:.2f} MB; weights file "
          f"model.safetensors {src / 1e6:.2f} MB -> {size / 1e6:.2f} MB ({src / size:.2f}x "
          f"smaller; optimizer state not copied); wrote {args.out}")
    return model

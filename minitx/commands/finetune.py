"""`python -m minitx finetune`: LoRA / QLoRA fine-tuning of a trained GPT on a text file.

    python -m minitx finetune --ckpt out --data FILE --lora-r 8 --lora-alpha 16 \\
        --target q_proj,v_proj --quant nf4 --out out-lora [--checkpointing] [--paged-optim]
    python -m minitx finetune --gguf SmolLM2-135M-Instruct.Q4_1.gguf --data FILE \\
        --block-size 128 --target q_proj,v_proj --out out-lora      # QLoRA on the file's blocks

With --gguf the base is a llama GGUF file (`minitx.lora_gguf`): --quant gguf (the default there)
keeps its Q4_1 / Q8_0 / ... blocks as the frozen base, used as they are (never re-quantized);
--quant none decodes them to float32 (plain LoRA). The text is tokenized with the file's own
tokenizer, --block-size sets the training context, and adapters are saved with Hugging Face's
module paths, so PEFT loads them onto transformers' Llama.

The base checkpoint is loaded, optionally quantized (--quant nf4: NF4 with double quantization,
QLoRA's base; int4, int8; none: a float base = plain LoRA), frozen, and LoRA adapters are put on
the --target layers (PEFT's matching: comma-separated names or suffixes, "all-linear", or
--target-regex). Training is the one loop (`minitx.train.Trainer`, trainable = the adapters):
same progress line, validation, schedule and flags as `train`. Checkpoints go to --out as
step directories holding a PEFT adapter (`minitx.lora_checkpoint`); --resume continues bit for
bit. Sample with `generate --ckpt OUT`, or `generate --ckpt BASE --adapter OUT [--merge]`.
"""
import os

import numpy as np

from minitx import backend
from minitx.checkpoint import CheckpointError, resolve
from minitx.commands.train import TRAIN_FLAGS, add_train_flags, check_out_dir
from minitx.data import fingerprint, load_text
from minitx.train import TrainConfig, Trainer, prepare_data, split_ids

QUANT = ("nf4", "int4", "int8", "gguf", "none")


def add_parser(sub):
    p = sub.add_parser("finetune", help="LoRA / QLoRA fine-tuning of a checkpoint on a text file")
    p.add_argument("--ckpt", help="the base checkpoint (not needed with --resume)")
    p.add_argument("--gguf", help="a llama .gguf file as the base instead of --ckpt")
    p.add_argument("--block-size", type=int, default=128,
                   help="--gguf only: the training context in tokens (default: 128)")
    p.add_argument("--data", required=True, help="a UTF-8 text file to fine-tune on")
    p.add_argument("--out", default="out-lora", help="run directory (default: out-lora)")
    p.add_argument("--lora-r", type=int, default=8, help="adapter rank r (default: 8)")
    p.add_argument("--lora-alpha", type=float, default=16.0,
                   help="lora_alpha; updates are scaled by alpha / r (default: 16)")
    p.add_argument("--lora-dropout", type=float, default=0.0, help="(default: 0)")
    p.add_argument("--use-rslora", action="store_true", help="scale by alpha / sqrt(r)")
    p.add_argument("--target", default="all-linear",
                   help="comma-separated layer names or suffixes, or all-linear (default)")
    p.add_argument("--target-regex", default=None,
                   help="a regular expression matched against whole module names instead")
    p.add_argument("--quant", choices=QUANT, default=None,
                   help="the frozen base: nf4 (+ double quant, QLoRA), int4, int8 or none "
                        "(default: nf4); with --gguf: gguf (the file's blocks, default) or none")
    p.add_argument("--checkpointing", action="store_true",
                   help="activation checkpointing per block (recompute in the backward)")
    p.add_argument("--paged-optim", action="store_true",
                   help="keep the AdamW moments in memory-mapped files (PagedAdamW)")
    p.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    add_train_flags(p, TrainConfig(lr=1e-3, max_steps=200, warmup=10, eval_interval=50,
                                   ckpt_interval=50))
    return p


def check_lora_flags(args):
    """Every LoRA flag's range, before anything is loaded."""
    if args.lora_r < 1:
        raise ValueError(f"--lora-r must be an integer >= 1, got {args.lora_r}")
    if not 0 <= args.lora_dropout < 1:
        raise ValueError(f"--lora-dropout must be in [0, 1), got {args.lora_dropout}")
    if args.lora_alpha != args.lora_alpha or abs(args.lora_alpha) == float("inf"):
        raise ValueError(f"--lora-alpha must be a finite number, got {args.lora_alpha}")
    if not args.resume and not (args.ckpt or args.gguf):
        raise ValueError("give the base with --ckpt or --gguf (or --resume a run in --out)")
    if args.resume and (args.ckpt or args.gguf):
        raise ValueError("--resume takes the base from the run in --out; leave out "
                         f"{'--ckpt' if args.ckpt else '--gguf'}")
    if args.ckpt and args.gguf:
        raise ValueError("give one base: --ckpt DIR or --gguf FILE, not both")
    if args.gguf:
        from minitx.gguf import open_gguf
        open_gguf(args.gguf)                                # missing / not GGUF: one error
        if args.quant not in (None, "gguf", "none"):
            raise ValueError(f"--quant {args.quant}: a GGUF base is used as stored (--quant "
                             "gguf) or decoded to float32 (--quant none), never re-quantized")
    elif args.quant == "gguf":
        raise ValueError("--quant gguf needs a --gguf base")
    if args.block_size < 1:
        raise ValueError(f"--block-size must be >= 1, got {args.block_size}")
    if args.target_regex is not None:
        return args.target_regex
    targets = [t.strip() for t in args.target.split(",") if t.strip()]
    if not targets:
        raise ValueError(f"--target names no layer: {args.target!r}")
    return "all-linear" if targets == ["all-linear"] else targets


class AdapterCheckpoints:
    """Trainer extension: save the adapters and the training state every ckpt_interval steps
    and at the end (the Trainer itself gets no out_dir: its full-model checkpoints would copy
    the frozen base)."""
    name = "lora_checkpoints"

    def __init__(self, out_dir, info):
        self.out_dir, self.info = out_dir, info

    def on_step_end(self, trainer, metrics):
        if trainer.step % trainer.tc.ckpt_interval == 0 or trainer.done():
            from minitx.lora_checkpoint import save_lora_checkpoint
            save_lora_checkpoint(self.out_dir, trainer.model, trainer.step, trainer.optimizer,
                                 trainer.state_dict(), self.info)

    def state_dict(self):
        return {}

    def load_state_dict(self, d):
        pass


def _paged(trainer):
    from minitx.optim import PagedAdamW
    opt = trainer.optimizer
    groups = [{k: v for k, v in g.items()} for g in opt.param_groups]
    trainer.optimizer = PagedAdamW(groups, lr=trainer.tc.lr, betas=trainer.tc.betas)


def _new_model(args, targets, quant, tc):
    """The frozen base (checkpoint or GGUF file) with fresh adapters on the --target layers."""
    from minitx import random as _random
    from minitx.lora import apply_lora, find_targets
    from minitx.lora_checkpoint import build_gguf_model, build_model, prepare_base
    if args.gguf:
        model = build_gguf_model(args.gguf, quant, args.block_size)
    else:
        resolve(args.ckpt)                                  # a clear error if it is missing
        model = build_model(args.ckpt, None, False)
    find_targets(model, targets)                            # nothing matches: fail before work
    prepare_base(model, None if args.gguf else quant, args.checkpointing)
    _random.manual_seed(tc.seed)                            # fixes the adapters' init
    apply_lora(model, r=args.lora_r, alpha=args.lora_alpha, target_modules=targets,
               dropout=args.lora_dropout, use_rslora=args.use_rslora)
    return model


def run(args):
    from minitx.lora import lora_parameters, trainable_parameters
    from minitx.lora_checkpoint import load_lora_training, run_info
    targets = check_lora_flags(args)
    tc = TrainConfig(**{k: getattr(args, k) for k in TRAIN_FLAGS})
    check_out_dir(args.out)
    text = load_text(args.data)
    if args.resume:
        model, step, opt_state, state, config = load_lora_training(args.out)
        if state.get("data") != fingerprint(text):
            raise CheckpointError(f"{args.out} was fine-tuned on different data; resume with "
                                  "the same --data")
        base, quant, ckpt = config["base"]["path"], config.get("quant"), config["checkpointing"]
        gguf = config["base"].get("kind") == "gguf"
    else:
        gguf, base, ckpt = bool(args.gguf), args.gguf or args.ckpt, args.checkpointing
        quant = args.quant or ("gguf" if gguf else "nf4")
        quant = None if quant == "none" else quant
        model = _new_model(args, targets, quant, tc)
    model.train()                                           # loaded models come in eval mode
    if gguf:
        from minitx.gguf import load_tokenizer
        ids = np.asarray(load_tokenizer(base).encode(text), dtype=np.int64)
        train_ids, val_ids = split_ids(ids, tc, model.config.block_size)
    else:
        train_ids, val_ids = prepare_data(text, tc, model.config.block_size)
    info = run_info(base, model, quant, ckpt, tc, gguf=gguf)
    trainer = Trainer(model, tc, train_ids, val_ids, None, trainable=lora_parameters,
                      extensions=[AdapterCheckpoints(args.out, info)],
                      data_fingerprint=fingerprint(text))
    if args.paged_optim:
        _paged(trainer)
    if args.resume:
        trainer.load_state(step, opt_state, state)
        print(f"resumed from {args.out} at step {step}")
    n_train, n_total = trainable_parameters(model)
    print(f"minitx: fine-tuning {base} ({quant or 'float'} base) on {args.data} "
          f"({len(text.encode('utf-8')):,} bytes), backend {backend.active()}, out {args.out} | "
          f"trainable {n_train:,} of {n_total:,} parameters ({100 * n_train / n_total:.2f}%)")
    result = trainer.fit()
    print(f"done: {result['step']} steps in {result['seconds']:.0f}s, "
          f"{result['tokens_per_s']:,.0f} tok/s | val loss {result['val_loss']:.4f} | "
          f"adapter: {os.path.join(args.out, 'latest')}")
    return 0

"""`python -m minitx train`: train a GPT (default: the `default` config on the embedded corpus)."""
import contextlib
import dataclasses
import os

from minitx import backend, profiler
from minitx.attention import IMPLS as ATTENTION
from minitx.data import default_corpus, load_text
from minitx.models.gpt import CONFIGS, get_config
from minitx.train import TrainConfig, train

# the flags that map one to one onto TrainConfig fields
TRAIN_FLAGS = ("max_steps", "batch_size", "lr", "min_lr", "seed", "eval_interval", "eval_iters",
               "ckpt_interval", "warmup", "log_interval", "weight_decay", "grad_clip",
               "max_tokens")
PACING = ("fixed_linear", "fixed_root", "fixed_discrete", "two_stage")


def add_train_flags(p, d):
    """One --flag per TrainConfig field in TRAIN_FLAGS, defaulting to d's value (min_lr: None,
    meaning lr / 10)."""
    for name in TRAIN_FLAGS:
        default = getattr(d, name)
        kind = float if name in ("lr", "min_lr", "weight_decay", "grad_clip") else int
        p.add_argument("--" + name.replace("_", "-"), type=kind,
                       default=None if name == "min_lr" else default,
                       help=f"(default: {'lr / 10' if name == 'min_lr' else default})")


def add_parser(sub):
    p = sub.add_parser("train", help="train a GPT (default: the embedded corpus)")
    p.set_defaults(_parser=p)
    p.add_argument("--out", default="out", help="checkpoint directory (default: out)")
    p.add_argument("--data", help="a UTF-8 text file to train on (default: the embedded corpus "
                                  "of Python standard-library docstrings and comments)")
    p.add_argument("--config", default=None, choices=sorted(CONFIGS),
                   help="model size (default: default; on --resume, the checkpoint's)")
    p.add_argument("--attention", default=None, choices=ATTENTION,
                   help="attention implementation (default: auto, i.e. c on the c backend, "
                        "else naive)")
    p.add_argument("--attention-pattern", default=None, metavar="SPEC",
                   help="which pairs attend, per layer: dense (default), window:W, "
                        "bigbird:block=B,window=w,global=g,random=r, strided:block=B,stride=l, "
                        "fixed:..., longformer:..., linear, performer:features=m, and the "
                        "memories xl:mem=M | xl:segments=s, knn:k=K,size=S (these train over the "
                        "corpus segment by segment and need RoPE, e.g. --config llama) "
                        "(minitx/attention/patterns.py; saved in the checkpoint)")
    p.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    p.add_argument("--profile", action="store_true",
                   help="print minitx.profiler's per-op table (forward/backward time) at the end")
    p.add_argument("--init-from", default=None, metavar="HFDIR",
                   help="initial weights (and model config) from a Hugging Face GPT-2 or Llama "
                        "directory instead of random ones")
    add_train_flags(p, TrainConfig())
    add_growth_flags(p)
    p.add_argument("--sample-tokens", type=int, default=200,
                   help="print a sample of this many bytes after training (0: none)")
    add_curriculum_flags(p)
    return p


def add_growth_flags(p):
    p.add_argument("--grow", metavar="SCHEDULE", help="grow the model while training (MSG), e.g. "
                   "'300:n_layer=6,n_embd=192;600:n_layer=8': at STEP set SIZE (n_embd, ffn, "
                   "n_head, n_layer); see minitx/growth/schedule.py")
    p.add_argument("--ramp-steps", type=int, default=50, help="steps over which the masks of "
                   "new structure rise from 0 to 1 (0: no masks; default: 50)")
    p.add_argument("--grow-init", default="random", choices=("random", "copy", "zero"),
                   help="new weights: random (GPT init), copy (Net2Net), zero (default: random)")


def growth_extensions(args, model_config, tc):
    """[GrowthSchedule] for --grow (validated before any training), else []."""
    if not args.grow:
        return []
    from minitx.growth.schedule import GrowthSchedule, parse_schedule, validate_schedule
    events = parse_schedule(args.grow)
    if not args.resume:                      # on resume the checkpoint's config is checked
        validate_schedule(events, model_config, tc.max_steps, args.ramp_steps)
    return [GrowthSchedule(events, args.ramp_steps, args.grow_init)]


def add_curriculum_flags(p):
    g = p.add_argument_group("curriculum (minitx.curriculum, minitx.hard_examples)")
    g.add_argument("--curriculum", choices=("none", "seqlen"), default="none",
                   help="seqlen: sequence-length warmup")
    g.add_argument("--pacing", choices=PACING, default="fixed_linear",
                   help="pacing function (DeepSpeed's names; two_stage: --min-len for "
                        "--curriculum-steps steps, then the full block)")
    g.add_argument("--min-len", type=int, default=8, help="first sequence length")
    g.add_argument("--curriculum-steps", type=int, default=300,
                   help="total_curriculum_step (the switch step for two_stage)")
    g.add_argument("--difficulty-step", type=int, default=8,
                   help="lengths are multiples of this (must divide --min-len and block_size)")
    g.add_argument("--root-degree", type=float, default=2.0, help="fixed_root's root degree")
    g.add_argument("--discrete", default=None,
                   help="fixed_discrete: 'LEN:STEP,LEN:STEP,...,LEN' (length up to that step)")
    g.add_argument("--curriculum-config", default=None,
                   help="a JSON file holding DeepSpeed's curriculum_learning block")
    g.add_argument("--seqlen-mode", choices=("truncate", "reshape"), default="truncate")
    g.add_argument("--lr-decay", choices=("steps", "tokens"), default="steps",
                   help="count the cosine schedule in optimizer steps or in tokens")
    g.add_argument("--sampler", choices=("uniform", "hard", "scored"), default="uniform")
    g.add_argument("--scorer", default=None, help="checkpoint of the scorer model (scored)")
    g.add_argument("--hard-temperature", type=float, default=1.0)
    g.add_argument("--hard-floor", type=float, default=0.1)
    g.add_argument("--importance", action="store_true", help="hard: unbiased importance weights")
    g.add_argument("--mix-steps", type=int, default=100, help="scored: steps from uniform to hard")


def check_inactive_flags(args):
    """A flag of a feature that is not switched on is an error, not silently ignored."""
    defaults = {a.dest: a.default for a in args._parser._actions} if hasattr(args, "_parser") \
        else {}
    needs = {"curriculum": ("seqlen", ("pacing", "min_len", "curriculum_steps",
                                       "difficulty_step", "root_degree", "discrete",
                                       "curriculum_config", "seqlen_mode")),
             "sampler": (("hard", "scored"), ("hard_temperature", "hard_floor")),
             }
    given = [k for k, v in defaults.items() if getattr(args, k, v) != v]
    bad = []
    for switch, (on, flags) in needs.items():
        if getattr(args, switch) not in (on if isinstance(on, tuple) else (on,)):
            bad += [f for f in flags if f in given]
    if args.sampler != "scored":
        bad += [f for f in ("scorer", "mix_steps") if f in given]
    if args.sampler != "hard" and "importance" in given:
        bad.append("importance")
    if bad:
        flags = ", ".join("--" + f.replace("_", "-") for f in bad)
        raise ValueError(f"{flags} given, but the feature it sets is off (--curriculum "
                         f"{args.curriculum}, --sampler {args.sampler})")


def check_out_dir(path):
    """Fail before training if checkpoints could not be written to `path`."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"--out {path} exists and is not a directory")
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ValueError(f"--out {path}: {parent} is not a directory")
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
    if args.attention_pattern is not None:
        if args.resume:
            raise ValueError("--attention-pattern and --resume: the checkpoint's pattern is used "
                             "on resume; leave out --attention-pattern")
        overrides["attention_pattern"] = args.attention_pattern
    if args.resume:                  # the checkpoint's model config (block size, ...) wins
        from minitx.checkpoint import model_config as saved_model_config
        from minitx.checkpoint import read_config
        model_config = saved_model_config(read_config(args.out), args.out)
    else:
        model_config = get_config(args.config or "default", **overrides)
    check_inactive_flags(args)
    init = init_from_hf(args, overrides)
    if init is not None:
        model_config = init.config
    extensions = [init] if init else []          # first: the weights before anything else acts
    extensions += curriculum_extensions(args, tc, model_config)
    extensions += growth_extensions(args, model_config, tc)
    extensions += segment_extensions(args, model_config)
    check_out_dir(args.out)
    check_memory(tc.batch_size, model_config.block_size, model_config.vocab_size)
    text = load_text(args.data) if args.data else default_corpus()
    name = args.config or (f"from {args.init_from}" if args.init_from else "default")
    print(f"minitx: training config '{name}' on "
          f"{args.data if args.data else 'the embedded corpus'} "
          f"({len(text.encode('utf-8')):,} bytes), backend {backend.active()}, out {args.out}")
    with (profiler.profile() if args.profile else contextlib.nullcontext()) as prof:
        result = train(model_config, tc, text, args.out, resume=args.resume,
                       extensions=extensions)
    gap = result["unigram_loss"] - result["val_loss"]
    print(f"done: {result['step']} steps in {result['seconds']:.0f}s, "
          f"{result['tokens_per_s']:,.0f} tok/s, {result['flops'] / 1e12:.2f} TFLOP | val loss "
          f"{result['val_loss']:.4f} vs unigram baseline {result['unigram_loss']:.4f} "
          f"({gap:+.4f} nats better) | checkpoint: {args.out}")
    if prof is not None:
        print(prof.table(sort_by="total", row_limit=20))
    if args.sample_tokens > 0:
        from minitx.commands.generate import print_sample
        print_sample(result["model"], "The ", args.sample_tokens, 0.8, 40, args.seed)
    return 0


def segment_extensions(args, model_config):
    """SegmentTraining (minitx/long_context.py) when a layer's pattern carries a memory."""
    from minitx.attention.patterns import STATEFUL, parse_layers
    layers = parse_layers(model_config.attention_pattern, model_config.n_layer)
    if not any(name in STATEFUL for name, _ in layers):
        return []
    if args.curriculum != "none" or args.sampler != "uniform":
        raise ValueError(f"attention pattern {model_config.attention_pattern!r} trains on the "
                         "corpus in order, segment by segment: leave out --curriculum/--sampler")
    from minitx.long_context import SegmentTraining
    return [SegmentTraining()]


def init_from_hf(args, overrides):
    """The InitFromHF extension for --init-from (its weights read and checked now), or None."""
    if args.init_from is None:
        return None
    if args.resume or args.config is not None:
        raise ValueError("--init-from takes the model config from the Hugging Face directory; "
                         "leave out --config and --resume")
    from minitx.hf import InitFromHF
    init = InitFromHF(args.init_from)
    init.config = dataclasses.replace(init.config, **overrides)
    if init.config.vocab_size < 256:
        raise ValueError(f"--init-from {args.init_from}: vocab_size {init.config.vocab_size} is "
                         "smaller than the byte tokenizer's 256 ids")
    return init


def curriculum_config(args, block_size):
    """DeepSpeed's curriculum_learning dict from the flags (or --curriculum-config)."""
    if args.curriculum_config:
        import json
        try:
            with open(args.curriculum_config, encoding="utf-8") as f:
                return json.load(f)
        except (OSError, ValueError) as e:
            raise ValueError(f"--curriculum-config {args.curriculum_config}: {e}") from None
    if args.pacing == "two_stage":
        from minitx.curriculum import two_stage
        return two_stage(args.min_len, block_size, args.curriculum_steps)
    if args.pacing == "fixed_discrete":
        if not args.discrete:
            raise ValueError("--pacing fixed_discrete needs --discrete 'LEN:STEP,...,LEN'")
        parts = args.discrete.split(",")
        try:
            lengths = [int(p.split(":")[0]) for p in parts]
            steps = [int(p.split(":")[1]) for p in parts[:-1]]
        except (ValueError, IndexError):
            raise ValueError(f"--discrete {args.discrete!r}: expected 'LEN:STEP,...,LEN'") from None
        return {"min_difficulty": min(lengths), "max_difficulty": max(lengths),
                "schedule_type": "fixed_discrete",
                "schedule_config": {"difficulty": lengths, "max_step": steps}}
    sc = {"total_curriculum_step": args.curriculum_steps, "difficulty_step": args.difficulty_step}
    if args.pacing == "fixed_root":
        sc["root_degree"] = args.root_degree
    return {"min_difficulty": args.min_len, "max_difficulty": block_size,
            "schedule_type": args.pacing, "schedule_config": sc}


def curriculum_extensions(args, tc, model_config):
    """The loop extensions the curriculum flags ask for, validated before any work."""
    from minitx.curriculum import CurriculumScheduler, SeqLenWarmup, TokenLRDecay
    from minitx.hard_examples import HardExamples
    block = model_config.block_size
    out = []
    if args.sampler != "uniform":
        if args.sampler == "scored" and not args.scorer:
            raise ValueError("--sampler scored needs --scorer CKPT (a small model trained first)")
        scorer = None
        if args.sampler == "scored":
            from minitx.checkpoint import load_model
            scorer = load_model(args.scorer)
            opts = dict(temperature=args.hard_temperature, floor=args.hard_floor,
                        mix_steps=args.mix_steps)
        else:
            opts = dict(temperature=args.hard_temperature, floor=args.hard_floor,
                        importance=args.importance)
        if not (args.hard_temperature > 0 and 0 <= args.hard_floor <= 1 and args.mix_steps >= 0):
            raise ValueError(f"need --hard-temperature > 0, --hard-floor in [0, 1] and "
                             f"--mix-steps >= 0, got {args.hard_temperature}, "
                             f"{args.hard_floor}, {args.mix_steps}")
        out.append(HardExamples(args.sampler, scorer, **opts))
    if args.curriculum == "seqlen":
        if args.curriculum_steps < 1:
            raise ValueError(f"--curriculum-steps must be >= 1, got {args.curriculum_steps}")
        sched = CurriculumScheduler(curriculum_config(args, block), strict=True)
        if sched.max > block:
            raise ValueError(f"the curriculum's longest length {sched.max} exceeds block_size "
                             f"{block}")
        if args.seqlen_mode == "reshape" and args.sampler != "uniform":
            raise ValueError("--seqlen-mode reshape works with --sampler uniform only")
        out.append(SeqLenWarmup(sched, args.seqlen_mode))
    if args.lr_decay == "tokens":
        per_step = tc.batch_size * block
        out.append(TokenLRDecay(tc.max_tokens or tc.max_steps * per_step, tc.warmup * per_step))
    return out

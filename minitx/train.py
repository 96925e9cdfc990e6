"""The one training loop: AdamW, warmup + cosine schedule, gradient clipping, periodic validation,
atomic checkpoints, exact resume, FLOPs accounting, and a stop with a clear message when the loss
is not finite. Every method that changes what a step does (curriculum, growth, LoRA, QAT,
compensation layers) plugs in here; none writes a loop of its own.

Extension points of `Trainer` (each keeps its state in the checkpoint, so --resume is exact):
    sampler     what batch comes next: `next_batch(trainer) -> (x, y, weights or None)`, with
                `state_dict()` / `load_state_dict(d)`; per-example `weights` (B,) weight the
                loss, and a sampler with `update(trainer, losses)` then gets each example's
                loss after the step. Default `UniformSampler`.
    schedule    the per-step settings: `schedule(trainer) -> {"lr": float, "seq_len": int}`,
                read before each step (trainer.step = optimizer steps taken so far). Default
                `CosineSchedule` (warmup + cosine, full context).
    trainable   `trainable(model) -> list of Parameters` to optimise (default: all of them).
    extensions  objects with any of the hooks `on_init(trainer)` (at construction, before a
                checkpoint's state is loaded: install a schedule or sampler here),
                `on_start(trainer)`, `on_step_begin(trainer)`,
                `on_step_end(trainer, metrics)`, and `name`, `state_dict()`,
                `load_state_dict(d)`. A hook may replace trainer.model and trainer.optimizer
                (growth does), or add to trainer.progress (shown on the progress line).

A ten-line example, halving the learning rate after step 100:

    class HalveLR:
        name = "halve"
        def __init__(self, inner):
            self.inner = inner
        def __call__(self, trainer):
            s = self.inner(trainer)
            return {**s, "lr": s["lr"] / 2 if trainer.step >= 100 else s["lr"]}
    tr = Trainer(model, tc, train_ids, val_ids, "out")
    tr.schedule = HalveLR(tr.schedule)
    tr.fit()

Determinism: the seed fixes the initial weights (minitx.manual_seed), the sampler (its own PCG64
generator) and dropout (the global generator). Validation draws its batches from a fresh generator
seeded by (seed, 1), so evaluating never moves the training stream. FLOPs per step are
6N + 12 L H d T per token (PaLM appendix B) with the step's own T and the model's current size.
"""
import dataclasses
import math
import numbers
import os
import time

import numpy as np

from minitx import random as _random
from minitx.autograd import no_grad
from minitx.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from minitx.data import fingerprint, get_batch, train_val_split, unigram_loss
from minitx.models.gpt import GPT
from minitx.nn import functional as F
from minitx.optim import AdamW, clip_grad_norm_, cosine_lr
from minitx.tokenizer import ByteTokenizer
from minitx.train_checks import check_adamw_state, check_same_settings, validate_train_config


@dataclasses.dataclass
class TrainConfig:
    max_steps: int = 1000
    batch_size: int = 16
    lr: float = 2e-3
    min_lr: float = None          # default lr / 10 (the cosine schedule's floor)
    warmup: int = 100
    weight_decay: float = 0.1
    betas: tuple = (0.9, 0.99)
    grad_clip: float = 1.0        # 0: no clipping
    eval_interval: int = 200
    eval_iters: int = 20
    ckpt_interval: int = 200
    log_interval: int = 10
    seed: int = 1337
    val_fraction: float = 0.1
    max_tokens: int = 0           # > 0: stop after this many training tokens (token budget)

    def __post_init__(self):
        if self.min_lr is None and isinstance(self.lr, numbers.Real):
            self.min_lr = self.lr / 10
        validate_train_config(self)
        for f in dataclasses.fields(self):              # NumPy scalars -> Python (JSON) numbers
            v = getattr(self, f.name)
            if isinstance(v, np.generic):
                setattr(self, f.name, v.item())
        self.betas = tuple(float(b) for b in self.betas)


class TrainingError(RuntimeError):
    """Training cannot go on (the loss became NaN or infinite)."""


# ============================== default extension points =====================================
class UniformSampler:
    """Windows of seq_len + 1 tokens at uniformly random offsets (the default sampler)."""

    def __init__(self, ids, batch_size, seed):
        self.ids, self.batch_size = ids, batch_size
        self.rng = np.random.default_rng(seed)

    def next_batch(self, trainer):
        x, y = get_batch(self.ids, self.batch_size, trainer.seq_len, self.rng)  # (B, T) each
        return x, y, None

    def state_dict(self):
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, d):
        self.rng.bit_generator.state = d["rng"]


class CosineSchedule:
    """Linear warmup then cosine decay from tc.lr to tc.min_lr at tc.max_steps; full context."""

    def __init__(self, tc):
        self.tc = tc

    def __call__(self, trainer):
        tc = self.tc
        return {"lr": cosine_lr(trainer.step, tc.lr, tc.min_lr, tc.warmup, tc.max_steps),
                "seq_len": trainer.model.config.block_size}


def all_parameters(model):
    return model.parameters()


def make_optimizer(params, tc):
    """AdamW with weight decay on matrices only (embeddings and Linear weights), as nanoGPT."""
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": tc.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return AdamW(groups, lr=tc.lr, betas=tc.betas)


def _fmt_time(seconds):
    m, s = divmod(int(seconds), 60)
    return f"{m}m{s:02d}s"


# ============================== the loop =====================================================
class Trainer:
    """Trains `model` on token ids; see the module docstring for the extension points.

    Args:
        model: a GPT (or any module with `forward(x, y) -> (logits, loss)` and a `config`).
        tc: TrainConfig. train_ids, val_ids: 1-D int arrays of token ids.
        out_dir: where checkpoints go (None: never save).
        sampler, schedule, trainable, extensions: extension points (defaults above).
        log: a print-like function for progress lines.
        data_fingerprint: stored in checkpoints; a resume on other data is refused.
    """

    def __init__(self, model, tc, train_ids, val_ids, out_dir=None, *, sampler=None,
                 schedule=None, trainable=None, extensions=(), log=print, data_fingerprint=None):
        self.model, self.tc, self.out_dir, self.log = model, tc, out_dir, log
        self.train_ids, self.val_ids = train_ids, val_ids
        self.sampler = sampler or UniformSampler(train_ids, tc.batch_size, tc.seed)
        self.schedule = schedule or CosineSchedule(tc)
        self.trainable = trainable or all_parameters
        self.extensions = list(extensions)
        self.data_fingerprint = data_fingerprint
        self.optimizer = make_optimizer(self.trainable(model), tc)
        self.step, self.tokens, self.flops = 0, 0, 0.0      # optimizer steps taken, totals
        self.seq_len, self.lr = model.config.block_size, tc.lr
        self.val_loss, self.progress, self.example_losses = None, {}, None
        names = [e.name for e in self.extensions]
        if len(set(names)) != len(names):
            raise ValueError(f"two extensions share a name: {names}")
        self._hook("on_init")                 # may install a schedule or sampler of its own

    # ------------------------------------------------------------ state
    def sampler_kind(self):
        """The sampler's class, and those it wraps: 'SeqLenSampler/HardExampleSampler'."""
        kinds, s = [], self.sampler
        while s is not None:
            kinds.append(type(s).__name__)
            s = getattr(s, "inner", None)
        return "/".join(kinds)

    def state_dict(self):
        """The JSON-able training state saved beside the optimizer moments."""
        return {"sampler": self.sampler.state_dict(), "sampler_kind": self.sampler_kind(),
                "global_rng": _random.get_state(),
                "data": self.data_fingerprint, "seed": self.tc.seed, "tokens": self.tokens,
                "flops": self.flops,
                "extensions": {e.name: e.state_dict() for e in self.extensions}}

    def load_state(self, step, optimizer_state, state):
        """Continue from a checkpoint's step, optimizer state and training state. Anything that
        does not fit (another sampler or curriculum than the one saved, missing or malformed
        state) is a CheckpointError before any step runs: a resume is the saved run or nothing."""
        saved = state.get("extensions", {})
        kind = state.get("sampler_kind")
        if kind is not None and kind != self.sampler_kind():
            raise CheckpointError(f"the checkpoint was trained with sampler {kind}, this run has "
                                  f"{self.sampler_kind()}: resume with the same flags")
        if not isinstance(saved, dict):
            raise CheckpointError(f"malformed extension state in the checkpoint: {saved!r:.80}")
        missing = [k for k, v in saved.items() if v and k not in {e.name for e in self.extensions}]
        if missing:
            raise CheckpointError(f"the checkpoint was trained with {', '.join(missing)}, which "
                                  "this run lacks: resume with the same flags")
        try:
            self.step = step
            self.optimizer.load_state_dict(optimizer_state)
            check_adamw_state(self.optimizer)
            if "sampler" in state:
                self.sampler.load_state_dict(state["sampler"])
            else:                                      # checkpoints of earlier minitx versions
                self.sampler.load_state_dict({"rng": state["batch_rng"]})
            _random.set_state(state["global_rng"])
            self.tokens = int(state.get("tokens", step * self.tc.batch_size
                                        * self.model.config.block_size))
            self.flops = float(state.get("flops", 0.0))
            for e in self.extensions:
                if e.name in saved:
                    e.load_state_dict(saved[e.name])
        except CheckpointError:
            raise
        except (KeyError, TypeError, ValueError, IndexError, OverflowError, AttributeError) as e:
            raise CheckpointError(f"cannot resume from the saved training state: "
                                  f"{type(e).__name__}: {e}") from None

    def save(self):
        if self.out_dir is None:
            return
        save_checkpoint(self.out_dir, self.model, self.step, self.optimizer, self.state_dict(),
                        dataclasses.asdict(self.tc))

    def _hook(self, name, *args):
        for e in self.extensions:
            fn = getattr(e, name, None)
            if fn is not None:
                fn(self, *args)

    # ------------------------------------------------------------ one step
    def loss(self, x, y, weights=None):
        """Mean next-token cross-entropy; with per-example `weights` (B,), their weighted mean."""
        if weights is None:
            return self.model(x, y)[1]
        logits, _ = self.model(x)                                          # (B, T, V)
        B, T = y.shape
        per_token = F.cross_entropy(logits.reshape(B * T, -1), y.reshape(B * T),
                                    reduction="none").reshape(B, T)        # (B, T)
        self.example_losses = per_token.data.mean(axis=1)                  # (B,) for samplers
        w = np.asarray(weights, dtype=per_token.dtype).reshape(B, 1) / (B * T)
        return (per_token * w).sum()

    def train_step(self):
        """Run one optimizer step; returns its metrics (loss, lr, seq_len, tokens)."""
        settings = self.schedule(self)
        self.lr, self.seq_len = settings["lr"], settings["seq_len"]
        for g in self.optimizer.param_groups:
            g["lr"] = self.lr
        self._hook("on_step_begin")
        x, y, weights = self.sampler.next_batch(self)
        loss = self.loss(x, y, weights)
        value = loss.item()
        if not math.isfinite(value):
            raise TrainingError(f"loss became {value} at step {self.step + 1}; stopped without "
                                f"saving, the last good checkpoint in {self.out_dir} is kept. "
                                "Try a lower --lr.")
        loss.backward()
        if weights is not None and hasattr(self.sampler, "update"):
            self.sampler.update(self, self.example_losses)                 # e.g. hard examples
        grad_norm = None
        if self.tc.grad_clip:
            optimized = {id(p) for g in self.optimizer.param_groups for p in g["params"]}
            params = [p for p in self.model.parameters() if id(p) in optimized]  # model order
            grad_norm = clip_grad_norm_(params, self.tc.grad_clip)
        self.optimizer.step()
        self.model.zero_grad()
        n = int(np.asarray(x).size)
        self.step += 1
        self.tokens += n
        self.flops += float(self.model.flops_per_token(seq_len=x.shape[1])) * n
        metrics = {"loss": value, "lr": self.lr, "seq_len": int(x.shape[1]), "tokens": n,
                   "grad_norm": grad_norm}
        self._hook("on_step_end", metrics)
        return metrics

    def done(self):
        tc = self.tc
        return self.step >= tc.max_steps or (tc.max_tokens and self.tokens >= tc.max_tokens)

    # ------------------------------------------------------------ the loop
    def fit(self):
        """Train until max_steps (or max_tokens). Returns a dict of results."""
        tc = self.tc
        self._hook("on_start")
        start_step, start_tokens = self.step, self.tokens
        t0 = time.perf_counter()
        while not self.done():
            m = self.train_step()
            step = self.step
            last = self.done()
            if step % tc.log_interval == 0 or last:
                self.log(self._progress_line(m, start_step, start_tokens, t0))
            if step % tc.eval_interval == 0 or last:
                self.val_loss = self.evaluate()
                self.log(f"step {step:5d} | val loss {self.val_loss:.4f}"
                         + (f" (unigram baseline {self.baseline:.4f})"
                            if getattr(self, "baseline", None) is not None else ""))
            if step % tc.ckpt_interval == 0 or last:
                self.save()
        seconds = time.perf_counter() - t0
        if self.val_loss is None:
            self.val_loss = self.evaluate()
        tokens = self.tokens - start_tokens
        return {"step": self.step, "val_loss": self.val_loss, "tokens": self.tokens,
                "flops": self.flops, "tokens_per_s": tokens / seconds if tokens else 0.0,
                "seconds": seconds, "model": self.model}

    def _progress_line(self, m, start_step, start_tokens, t0):
        tc = self.tc
        elapsed = max(time.perf_counter() - t0, 1e-9)
        tps = (self.tokens - start_tokens) / elapsed
        steps_per_s = (self.step - start_step) / elapsed
        eta = (tc.max_steps - self.step) / steps_per_s
        if tc.max_tokens:
            eta = min(eta, max(tc.max_tokens - self.tokens, 0) / max(tps, 1e-9))
        extra = "".join(f" | {k} {v}" for k, v in self.progress.items())
        if m["seq_len"] != self.model.config.block_size:
            extra = f" | len {m['seq_len']}" + extra
        return (f"step {self.step:5d}/{tc.max_steps} | loss {m['loss']:.4f} | lr {m['lr']:.2e} | "
                f"{tps:,.0f} tok/s | ETA {_fmt_time(eta)}{extra}")

    @no_grad()
    def evaluate(self):
        """Mean validation loss over `eval_iters` fixed batches (same batches every call)."""
        model, tc = self.model, self.tc
        was_training = model.training
        model.eval()
        rng = np.random.default_rng([tc.seed, 1])
        losses = []
        for _ in range(tc.eval_iters):
            x, y = get_batch(self.val_ids, tc.batch_size, model.config.block_size, rng)
            losses.append(model(x, y)[1].item())
        model.train(was_training)
        return float(np.mean(losses))


# ============================== the main job =================================================
def prepare_data(text, tc, block_size):
    """Byte ids of `text`, split into train and validation, checked long enough."""
    return split_ids(ByteTokenizer().encode(text), tc, block_size)


def split_ids(ids, tc, block_size):
    """Train / validation ids (tc.val_fraction held out), each checked long enough for one
    block; any tokenizer's ids."""
    train_ids, val_ids = train_val_split(ids, tc.val_fraction)
    for name, part in (("training", train_ids), ("validation", val_ids)):
        if len(part) < block_size + 1:
            raise ValueError(f"the {name} split has {len(part)} tokens, fewer than block_size + "
                             f"1 = {block_size + 1}: give more text (--data) or a smaller "
                             "--block-size")
    return train_ids, val_ids


def train(model_config, tc, text, out_dir, resume=False, log=print, **extension_points):
    """Train a GPT on `text` and checkpoint it in `out_dir`.

    Args:
        model_config: GPTConfig (ignored on resume: the checkpoint's config wins).
        tc: TrainConfig. text: the training corpus (str).
        resume: continue from the checkpoint in `out_dir`.
        log: a print-like function for progress lines.
        extension_points: sampler / schedule / trainable / extensions for `Trainer` (samplers
            that need the training ids install themselves from an extension's `on_init`).
    Returns:
        dict with step, val_loss, unigram_loss, tokens, flops, tokens_per_s, seconds, model.
    """
    data_fp = fingerprint(text)
    if out_dir is not None and os.path.basename(os.path.normpath(out_dir)).startswith(
            "step-") and os.path.isfile(os.path.join(out_dir, "config.json")):
        raise CheckpointError(f"{out_dir} is one save of a run: give the run directory (its "
                              "parent) as --out")
    if resume:
        model, step, opt_state, state, config = load_checkpoint(out_dir)
        if state.get("data") != data_fp:
            raise CheckpointError(f"{out_dir} was trained on different data (fingerprint "
                                  f"{state.get('data')} vs {data_fp}); resume with the same --data")
        check_same_settings(config.get("train", {}), tc, out_dir)
        if step >= tc.max_steps:
            log(f"{out_dir} is already at step {step} >= max_steps {tc.max_steps}: nothing to "
                "train (give a larger --max-steps to continue)")
        model.train()
    else:
        _random.manual_seed(tc.seed)
        model = GPT(model_config)
    train_ids, val_ids = prepare_data(text, tc, model.config.block_size)
    trainer = Trainer(model, tc, train_ids, val_ids, out_dir, log=log, data_fingerprint=data_fp,
                      **extension_points)
    if resume:
        trainer.load_state(step, opt_state, state)
        log(f"resumed from {out_dir} at step {step}")
    trainer.baseline = unigram_loss(train_ids, val_ids, model.config.vocab_size)
    log(f"model: {model.num_params():,} parameters, {model.flops_per_token() / 1e6:.1f} MFLOP "
        f"per token (training) | data: {len(train_ids):,} train / {len(val_ids):,} val tokens | "
        f"unigram baseline {trainer.baseline:.3f} nats/token")
    result = trainer.fit()
    result["unigram_loss"] = trainer.baseline
    return result

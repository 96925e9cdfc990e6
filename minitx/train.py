"""The training loop: AdamW, warmup + cosine schedule, gradient clipping, periodic validation,
atomic checkpoints, exact resume, and a stop with a clear message when the loss is not finite.

Determinism: the seed fixes the initial weights (minitx.manual_seed), the batch sampler (its own
PCG64 generator) and dropout (the global generator). A checkpoint stores the optimizer moments,
the step and both generators' states, so `resume=True` continues bit for bit as an uninterrupted
run would. Validation draws its batches from a fresh generator seeded by (seed, 1), so evaluating
never moves the training stream.
"""
import dataclasses
import math
import time

import numpy as np

from minitx import random as _random
from minitx.autograd import no_grad
from minitx.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from minitx.data import fingerprint, get_batch, train_val_split, unigram_loss
from minitx.models.gpt import GPT
from minitx.optim import AdamW, clip_grad_norm_, cosine_lr
from minitx.tokenizer import ByteTokenizer


@dataclasses.dataclass
class TrainConfig:
    max_steps: int = 1000
    batch_size: int = 16
    lr: float = 2e-3
    min_lr: float = 2e-4
    warmup: int = 100
    weight_decay: float = 0.1
    betas: tuple = (0.9, 0.99)
    grad_clip: float = 1.0
    eval_interval: int = 200
    eval_iters: int = 20
    ckpt_interval: int = 200
    log_interval: int = 10
    seed: int = 1337
    val_fraction: float = 0.1

    def __post_init__(self):
        positive = ("max_steps", "batch_size", "eval_interval", "eval_iters", "ckpt_interval",
                    "log_interval")
        bad = [f"{k}={getattr(self, k)}" for k in positive if getattr(self, k) < 1]
        if self.lr <= 0 or self.min_lr < 0:
            bad.append(f"lr={self.lr} min_lr={self.min_lr}")
        if self.seed < 0:
            bad.append(f"seed={self.seed}")
        if bad:
            raise ValueError(f"invalid training settings: {', '.join(bad)}")
        self.betas = tuple(self.betas)


class TrainingError(RuntimeError):
    """Training cannot go on (the loss became NaN or infinite)."""


def make_optimizer(model, tc):
    """AdamW with weight decay on matrices only (embeddings and Linear weights), as nanoGPT."""
    params = model.parameters()
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": tc.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return AdamW(groups, lr=tc.lr, betas=tc.betas)


@no_grad()
def evaluate(model, ids, tc, block_size):
    """Mean validation loss over `eval_iters` fixed batches (same batches every call)."""
    was_training = model.training
    model.eval()
    rng = np.random.default_rng([tc.seed, 1])
    losses = []
    for _ in range(tc.eval_iters):
        x, y = get_batch(ids, tc.batch_size, block_size, rng)
        losses.append(model(x, y)[1].item())
    model.train(was_training)
    return float(np.mean(losses))


def _fmt_time(seconds):
    m, s = divmod(int(seconds), 60)
    return f"{m}m{s:02d}s"


def train(model_config, tc, text, out_dir, resume=False, log=print):
    """Train a GPT on `text` and checkpoint it in `out_dir`.

    Args:
        model_config: GPTConfig. tc: TrainConfig. text: the training corpus (str).
        resume: continue from the checkpoint in `out_dir` (its model config wins).
        log: a print-like function for progress lines.
    Returns:
        dict with step, val_loss, unigram_loss, tokens_per_s, seconds.
    """
    tok = ByteTokenizer()
    ids = tok.encode(text)
    train_ids, val_ids = train_val_split(ids, tc.val_fraction)
    block = model_config.block_size
    for name, part in (("training", train_ids), ("validation", val_ids)):
        if len(part) < block + 1:
            raise ValueError(f"the {name} split has {len(part)} tokens, fewer than block_size + 1 "
                             f"= {block + 1}: give more text (--data) or a smaller block size")
    data_fp = fingerprint(text)
    start = 0
    if resume:
        model, start, opt_state, state, _ = load_checkpoint(out_dir)
        if state.get("data") != data_fp:
            raise CheckpointError(f"{out_dir} was trained on different data (fingerprint "
                                  f"{state.get('data')} vs {data_fp}); resume with the same --data")
        model.train()
        optimizer = make_optimizer(model, tc)
        optimizer.load_state_dict(opt_state)
        batch_rng = np.random.default_rng()
        batch_rng.bit_generator.state = state["batch_rng"]
        _random.set_state(state["global_rng"])
        log(f"resumed from {out_dir} at step {start}")
    else:
        _random.manual_seed(tc.seed)
        model = GPT(model_config)
        optimizer = make_optimizer(model, tc)
        batch_rng = np.random.default_rng(tc.seed)
    cfg = model.config
    baseline = unigram_loss(train_ids, val_ids, cfg.vocab_size)
    log(f"model: {model.num_params():,} parameters, {model.flops_per_token() / 1e6:.1f} MFLOP "
        f"per token (training) | data: {len(train_ids):,} train / {len(val_ids):,} val tokens | "
        f"unigram baseline {baseline:.3f} nats/token")

    def save(step):
        state = {"batch_rng": batch_rng.bit_generator.state, "global_rng": _random.get_state(),
                 "data": data_fp, "seed": tc.seed}
        save_checkpoint(out_dir, model, step, optimizer, state, dataclasses.asdict(tc))

    tokens_per_step = tc.batch_size * block
    t0 = time.perf_counter()
    val_loss, step = None, start
    for step in range(start, tc.max_steps):
        lr = cosine_lr(step, tc.lr, tc.min_lr, tc.warmup, tc.max_steps)
        for g in optimizer.param_groups:
            g["lr"] = lr
        x, y = get_batch(train_ids, tc.batch_size, block, batch_rng)
        _, loss = model(x, y)
        loss_value = loss.item()
        if not math.isfinite(loss_value):
            raise TrainingError(f"loss became {loss_value} at step {step + 1}; stopped without "
                                f"saving, the last good checkpoint in {out_dir} is kept. Try a "
                                "lower --lr.")
        loss.backward()
        clip_grad_norm_(model.parameters(), tc.grad_clip)
        optimizer.step()
        optimizer.zero_grad()
        done = step + 1
        elapsed = time.perf_counter() - t0
        tps = (done - start) * tokens_per_step / elapsed
        if done % tc.log_interval == 0 or done == tc.max_steps:
            eta = (tc.max_steps - done) * tokens_per_step / tps
            line = (f"step {done:5d}/{tc.max_steps} | loss {loss_value:.4f} | lr {lr:.2e} | "
                    f"{tps:,.0f} tok/s | ETA {_fmt_time(eta)}")
            log(line)
        if done % tc.eval_interval == 0 or done == tc.max_steps:
            val_loss = evaluate(model, val_ids, tc, block)
            log(f"step {done:5d} | val loss {val_loss:.4f} (unigram baseline {baseline:.4f})")
        if done % tc.ckpt_interval == 0 or done == tc.max_steps:
            save(done)
    seconds = time.perf_counter() - t0
    if val_loss is None:
        val_loss = evaluate(model, val_ids, tc, block)
    trained = max(tc.max_steps - start, 0)
    return {"step": max(step + 1, start), "val_loss": val_loss, "unigram_loss": baseline,
            "tokens_per_s": trained * tokens_per_step / seconds if trained else 0.0,
            "seconds": seconds, "model": model}

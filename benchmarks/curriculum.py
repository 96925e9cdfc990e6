"""Curriculum experiments at laptop scale: stability, token efficiency, hard examples.

    python benchmarks/curriculum.py                 # all three tables (~10 min on 2 cores)
    python benchmarks/curriculum.py --quick         # a smoke run (~1 min)
    python benchmarks/curriculum.py --only stability --seeds 3

Every run is minitx's one training loop (`minitx.train.Trainer`) with the curriculum plugged in
as extensions; a `Recorder` extension logs loss, gradient norm, tokens, wall time and periodic
validation loss. Models and data: a small GPT on the embedded corpus (byte-level), fixed
validation batches. Definitions:
  spike     a step whose loss exceeds SPIKE x the running minimum of earlier losses (after the
            first 20 steps);
  diverged  the loss became NaN/inf (TrainingError), or the final validation loss is above the
            unigram baseline (the run learned nothing lasting);
  early grad-norm variance   the variance of the gradient norm over the first 25% of steps.
Time is the process's CPU time (one thread), which other jobs on the machine do not inflate.
"""
import argparse
import os
import statistics
import sys
import time

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):   # small models: one thread is fastest
    os.environ.setdefault(_var, "1")
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # source checkout
import minitx  # noqa: E402
from minitx.curriculum import CurriculumScheduler, SeqLenWarmup, TokenLRDecay  # noqa: E402
from minitx.data import default_corpus, unigram_loss  # noqa: E402
from minitx.hard_examples import HardExamples  # noqa: E402
from minitx.models.gpt import GPT, GPTConfig  # noqa: E402
from minitx.train import TrainConfig, Trainer, TrainingError, prepare_data  # noqa: E402

SPIKE = 1.3


class Recorder:
    """An extension that records what the experiments need (never saved: out_dir is None)."""
    name = "recorder"

    def __init__(self, eval_every):
        self.eval_every, self.t0 = eval_every, time.process_time()
        self.loss, self.grad_norm, self.curve = [], [], []     # curve: (step, tokens, s, val)

    def on_step_end(self, trainer, m):
        self.loss.append(m["loss"])
        self.grad_norm.append(m["grad_norm"])
        if trainer.step % self.eval_every == 0 or trainer.done():
            self.curve.append((trainer.step, trainer.tokens, time.process_time() - self.t0,
                               trainer.evaluate()))

    def state_dict(self):
        return {}


def run(model_cfg, tc, data, extensions=(), eval_every=50):
    """One training run; returns the Recorder plus an outcome dict."""
    train_ids, val_ids = data
    minitx.manual_seed(tc.seed)
    model = GPT(model_cfg)
    rec = Recorder(eval_every)
    tr = Trainer(model, tc, train_ids, val_ids, None, log=lambda *_: None,
                 extensions=[*extensions, rec])
    baseline = unigram_loss(train_ids, val_ids, 256)
    try:
        tr.fit()
        final = rec.curve[-1][3]
        diverged = not np.isfinite(final) or final > baseline
    except TrainingError:
        final, diverged = float("nan"), True
    losses = np.array(rec.loss)
    run_min = np.minimum.accumulate(losses)
    spikes = int(np.sum(losses[21:] > SPIKE * run_min[20:-1])) if losses.size > 21 else 0
    early = [g for g in rec.grad_norm[: max(len(rec.grad_norm) // 4, 2)] if g is not None]
    return rec, {"val": final, "diverged": diverged, "spikes": spikes,
                 "gn_var": float(np.var(early)) if early else float("nan"),
                 "tokens": tr.tokens, "seconds": time.process_time() - rec.t0}


def seqlen(block, steps, min_len=8, step_size=8):
    """The seq-len warmup the experiments use: fixed_linear from min_len to block."""
    return CurriculumScheduler({"min_difficulty": min_len, "max_difficulty": block,
                                "schedule_type": "fixed_linear",
                                "schedule_config": {"total_curriculum_step": steps,
                                                    "difficulty_step": step_size}})


def mean_sd(xs):
    xs = [x for x in xs if np.isfinite(x)]
    if not xs:
        return "n/a"
    return f"{statistics.mean(xs):.3f} ± {statistics.pstdev(xs):.3f}" if len(xs) > 1 else f"{xs[0]:.3f}"


def table(rows):
    keys = list(rows[0])
    out = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    out += ["| " + " | ".join(str(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(out)


def stability(data, cfg, seeds, steps, batch, lrs):
    """Baseline vs seq-len warmup at growing learning rates (Li et al.: warmup stays stable at
    learning rates where the baseline does not)."""
    rows = []
    for lr in lrs:
        for arm in ("baseline", "seqlen warmup"):
            outs = []
            for seed in seeds:
                tc = TrainConfig(max_steps=steps, batch_size=batch, lr=lr, warmup=steps // 20,
                                 eval_iters=8, seed=seed, eval_interval=10**6,
                                 log_interval=10**6, ckpt_interval=10**6)
                ext = [SeqLenWarmup(seqlen(cfg.block_size, steps // 3))] if arm != "baseline" else []
                outs.append(run(cfg, tc, data, ext, eval_every=steps)[1])
            rows.append({"lr": lr, "arm": arm, "diverged": f"{sum(o['diverged'] for o in outs)}/{len(outs)}",
                         "spikes": mean_sd([o["spikes"] for o in outs]),
                         "early grad-norm var": mean_sd([o["gn_var"] for o in outs]),
                         "final val loss": mean_sd([o["val"] for o in outs])})
    return rows


def efficiency(data, cfg, seeds, steps, batch, lr, margin=0.05):
    """Validation loss against tokens and time, with and without warmup (truncation, with
    step-based and token-based lr decay), and the tokens/time each arm needs to reach the
    target: the baseline's mean final validation loss + `margin`."""
    rows, curves, target = [], {}, None
    per_step = batch * cfg.block_size
    arms = {"baseline": lambda: [],
            "warmup, step decay": lambda: [SeqLenWarmup(seqlen(cfg.block_size, steps // 3))],
            "warmup, token decay": lambda: [SeqLenWarmup(seqlen(cfg.block_size, steps // 3)),
                                            TokenLRDecay(steps * per_step, steps // 20 * per_step)]}
    for arm, make in arms.items():
        outs, reach_tok, reach_s = [], [], []
        for seed in seeds:
            tc = TrainConfig(max_steps=steps, batch_size=batch, lr=lr, warmup=steps // 20,
                             eval_iters=8, seed=seed, eval_interval=10**6, log_interval=10**6,
                             ckpt_interval=10**6)
            rec, o = run(cfg, tc, data, make(), eval_every=max(steps // 20, 1))
            outs.append(o)
            curves.setdefault(arm, []).append(rec.curve)
        if target is None:
            target = statistics.mean(o["val"] for o in outs) + margin
        for curve in curves[arm]:
            hit = [(t, sec) for _, t, sec, v in curve if v <= target]
            reach_tok.append(hit[0][0] if hit else float("nan"))
            reach_s.append(hit[0][1] if hit else float("nan"))
        reached = sum(np.isfinite(reach_tok))
        rows.append({"arm": arm, "final val loss": mean_sd([o["val"] for o in outs]),
                     "tokens": mean_sd([o["tokens"] / 1e6 for o in outs]) + " M",
                     f"reached {target:.3f}": f"{reached}/{len(seeds)}",
                     "M tokens to reach": mean_sd([t / 1e6 for t in reach_tok]),
                     "CPU s to reach": mean_sd(reach_s)})
    return rows, curves


def hard_examples(data, cfg, seeds, steps, batch, lr):
    """Uniform vs online-hard vs scorer-ranked sampling at equal steps."""
    rows = []
    scorer_cfg = GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=cfg.block_size)
    tc0 = TrainConfig(max_steps=max(steps // 3, 10), batch_size=batch, lr=3e-3, warmup=5,
                      eval_iters=4, seed=99, eval_interval=10**6, log_interval=10**6,
                      ckpt_interval=10**6)
    minitx.manual_seed(99)
    scorer = GPT(scorer_cfg)
    Trainer(scorer, tc0, data[0], data[1], None, log=lambda *_: None).fit()
    arms = {"uniform": lambda: [],
            "online hard": lambda: [HardExamples("hard", temperature=0.5, floor=0.2)],
            "online hard, importance weights": lambda: [HardExamples("hard", temperature=0.5,
                                                                     floor=0.2, importance=True)],
            "scorer-ranked": lambda: [HardExamples("scored", scorer.eval(), temperature=0.5,
                                                   floor=0.2, mix_steps=steps // 2)]}
    for arm, make in arms.items():
        outs = []
        for seed in seeds:
            tc = TrainConfig(max_steps=steps, batch_size=batch, lr=lr, warmup=steps // 20,
                             eval_iters=8, seed=seed, eval_interval=10**6, log_interval=10**6,
                             ckpt_interval=10**6)
            outs.append(run(cfg, tc, data, make(), eval_every=steps)[1])
        rows.append({"sampler": arm, "final val loss": mean_sd([o["val"] for o in outs]),
                     "CPU s": mean_sd([o["seconds"] for o in outs])})
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--only", choices=("stability", "efficiency", "hard"), default=None)
    p.add_argument("--lrs", type=float, nargs="+", default=None, help="stability: learning rates")
    args = p.parse_args()
    text = default_corpus()[: (300_000 if args.quick else 2_000_000)]
    cfg = GPTConfig(n_layer=2, n_head=4, n_embd=64, block_size=64)
    tc = TrainConfig()
    data = prepare_data(text, tc, cfg.block_size)
    seeds = list(range(1 if args.quick else args.seeds))
    steps = 60 if args.quick else 300
    print(f"# curriculum experiments: {cfg}, {len(text):,} chars, seeds {seeds}, {steps} steps, "
          f"backend {minitx.backend.active()}")
    if args.only in (None, "stability"):
        lrs = args.lrs or ((3e-3, 3e-2) if args.quick else (3e-3, 1e-2, 3e-2))
        print("\n## Stability (batch 32)\n")
        print(table(stability(data, cfg, seeds, steps, 32, lrs)))
    if args.only in (None, "efficiency"):
        print("\n## Efficiency (batch 16, lr 3e-3)\n")
        rows, _ = efficiency(data, cfg, seeds, steps, 16, 3e-3)
        print(table(rows))
    if args.only in (None, "hard"):
        print("\n## Hard examples (batch 16, lr 3e-3, equal steps)\n")
        print(table(hard_examples(data, cfg, seeds, steps, 16, 3e-3)))


if __name__ == "__main__":
    main()

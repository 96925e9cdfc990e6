"""Grown-from-small against trained-from-scratch at an equal FLOPs budget (issue 9's experiment).

    python benchmarks/growth.py [--steps 600] [--grow-at 200] [--ramp 50] [--seeds 3] [--quick]

Variants, all on the embedded corpus with the one training loop:
  msg      small model grown to the final size at --grow-at, MSG masks ramped over --ramp steps
  nomask   the same growth with random new weights and no masks (the ablation: the loss spike)
  copy     Net2Net copy growth (no masks)
  scratch  the final size from the start, for as many steps as give the same FLOPs as `msg`
Prints, per variant, mean and spread over seeds of the final validation loss, the training FLOPs and
the wall time; the loss at the budget; the FLOPs each needs to reach the scratch run's final loss;
and the loss change over the ten steps after growth. The machine is shared: wall times are noisy.
"""
import argparse
import re
import time

import numpy as np

from minitx.data import default_corpus
from minitx.growth.cost import run_flops
from minitx.growth.schedule import GrowthSchedule
from minitx.models.gpt import GPTConfig
from minitx.train import TrainConfig, train

SMALL = dict(n_layer=2, n_embd=32, n_head=2, head_dim=16, ffn_hidden=128)
FINAL = dict(n_layer=4, n_embd=64, n_head=4, ffn=256)


class Recorder:
    """Extension: (step, cumulative FLOPs, seconds, loss) after every step."""
    name = "recorder"

    def __init__(self):
        self.rows, self.t0 = [], time.perf_counter()

    def on_step_end(self, trainer, metrics):
        self.rows.append((trainer.step, trainer.flops, time.perf_counter() - self.t0,
                          metrics["loss"]))

    def state_dict(self):
        return {}

    def load_state_dict(self, d):
        pass


def run_variant(kind, seed, args, text, out):
    base = GPTConfig(block_size=args.block, **SMALL)
    final = GPTConfig(block_size=args.block, n_layer=4, n_embd=64, n_head=4, head_dim=16,
                      ffn_hidden=256)
    tokens = args.batch * args.block
    events = [(args.grow_at, dict(FINAL))]
    steps = args.steps
    if kind == "scratch":
        budget, _ = run_flops(base, events, args.steps, tokens)
        steps = int(round(budget / (run_flops(final, [], 1, tokens)[0])))
    tc = TrainConfig(max_steps=steps, batch_size=args.batch, lr=2e-3, warmup=min(50, steps // 4),
                     eval_interval=args.eval_every, eval_iters=args.eval_iters,
                     ckpt_interval=10 ** 9, log_interval=10 ** 9, seed=seed)
    rec, vals = Recorder(), {}

    def log(line):
        m = re.match(r"step\s+(\d+) \| val loss ([0-9.]+)", line)
        if m:
            vals[int(m.group(1))] = float(m.group(2))
    ext = [rec]
    if kind != "scratch":
        ramp = {"msg": args.ramp, "nomask": 0, "copy": 0}[kind]
        ext.insert(0, GrowthSchedule(events, ramp, "copy" if kind == "copy" else "random"))
    result = train(final if kind == "scratch" else base, tc, text, None, log=log, extensions=ext)
    flops = {s: f for s, f, _, _ in rec.rows}
    secs = {s: t for s, _, t, _ in rec.rows}
    curve = [(flops[s], secs[s], v) for s, v in sorted(vals.items())]
    losses = np.array([r[3] for r in rec.rows])
    g = args.grow_at
    spike = (float(losses[g:g + 10].mean() - losses[g - 10:g].mean())
             if kind != "scratch" else float("nan"))
    return {"val": result["val_loss"], "flops": result["flops"], "seconds": rec.rows[-1][2],
            "curve": curve, "spike": spike, "steps": steps}


def flops_to_reach(curve, target):
    for f, _, v in curve:
        if v <= target:
            return f
    return float("nan")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--grow-at", type=int, default=200)
    ap.add_argument("--ramp", type=int, default=50)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--block", type=int, default=64)
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--eval-iters", type=int, default=10)
    ap.add_argument("--quick", action="store_true", help="tiny settings (tests, tutorial)")
    args = ap.parse_args()
    if args.quick:
        args.steps, args.grow_at, args.ramp, args.seeds = 60, 20, 5, 1
        args.batch, args.block, args.eval_every, args.eval_iters = 4, 32, 20, 2
    text = default_corpus()
    kinds = ("msg", "nomask", "copy", "scratch")
    res = {k: [run_variant(k, 1000 + s, args, text, None) for s in range(args.seeds)]
           for k in kinds}
    print_tables(res, args)
    return res


def print_tables(res, args):
    target = float(np.mean([r["val"] for r in res["scratch"]]))
    print(f"\n{args.steps} steps (scratch: {res['scratch'][0]['steps']} steps, same FLOPs), growth "
          f"{SMALL} -> {FINAL} at step {args.grow_at}, ramp {args.ramp}, batch {args.batch} x "
          f"{args.block}, {args.seeds} seed(s); mean ± std")
    print("| variant | final val loss | TFLOP | wall s | TFLOP to reach scratch's final loss | "
          "loss change, 10 steps after growth |")
    print("|---|---|---|---|---|---|")
    for k, runs in res.items():
        v = np.array([r["val"] for r in runs])
        reach = np.array([flops_to_reach(r["curve"], target) for r in runs]) / 1e12
        sp = np.array([r["spike"] for r in runs])
        print(f"| {k} | {v.mean():.4f} ± {v.std():.4f} | "
              f"{np.mean([r['flops'] for r in runs]) / 1e12:.3f} | "
              f"{np.mean([r['seconds'] for r in runs]):.1f} | {np.nanmean(reach) if np.isfinite(reach).any() else float('nan'):.3f} "
              f"({np.isfinite(reach).sum()}/{len(runs)} reached) | "
              f"{'' if k == 'scratch' else f'{sp.mean():+.3f} ± {sp.std():.3f}'} |")
    print("\nvalidation loss against cumulative TFLOP (first seed):")
    for k, runs in res.items():
        pts = ", ".join(f"{f / 1e12:.3f}:{v:.3f}" for f, _, v in runs[0]["curve"])
        print(f"  {k:8s} {pts}")


if __name__ == "__main__":
    main()

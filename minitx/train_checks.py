"""Checks the training loop runs before any work: its settings' ranges, and on resume that the
checkpoint's optimizer state and step-defining settings fit the run (a resume is the saved run
or a clear error, never a silently different one)."""
import math
import numbers

import numpy as np

from minitx.checkpoint import CheckpointError
from minitx.optim import AdamW


def validate_train_config(tc):
    """Every field's range, checked before any work; one ValueError naming all bad fields."""
    bad = []
    for k in ("max_steps", "batch_size", "eval_interval", "eval_iters", "ckpt_interval",
              "log_interval"):
        v = getattr(tc, k)
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
            bad.append(f"{k}={v} (a positive integer)")
    for k in ("warmup", "seed", "max_tokens"):
        v = getattr(tc, k)
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 0:
            bad.append(f"{k}={v} (an integer >= 0)")
    finite = {k: getattr(tc, k) for k in ("lr", "min_lr", "weight_decay", "grad_clip",
                                          "val_fraction")}
    for k, v in finite.items():
        if not isinstance(v, numbers.Real) or isinstance(v, bool) or not math.isfinite(v) or v < 0:
            bad.append(f"{k}={v} (a finite number >= 0)")
    if not bad:
        if tc.lr <= 0:
            bad.append(f"lr={tc.lr} (must be > 0)")
        if tc.min_lr > tc.lr:
            bad.append(f"min_lr={tc.min_lr} is above lr={tc.lr}")
        if not 0 < tc.val_fraction < 1:
            bad.append(f"val_fraction={tc.val_fraction} (in (0, 1))")
    betas = tuple(tc.betas) if isinstance(tc.betas, (tuple, list)) else ()
    if len(betas) != 2 or not all(isinstance(b, numbers.Real) and not isinstance(b, bool)
                                  and 0 <= b < 1 for b in betas):
        bad.append(f"betas={tc.betas} (two numbers in [0, 1))")
    if bad:
        raise ValueError(f"invalid training settings: {', '.join(bad)}")


def check_adamw_state(optimizer):
    """Every optimized parameter has AdamW moments of its own shape and dtype and a positive
    integer step, and the hyper-parameters are finite and in range (a resume from zeroed or
    mistyped moments would silently not be the saved run)."""
    if not isinstance(optimizer, AdamW):
        return
    for g in optimizer.param_groups:
        lr, eps, wd, betas = g.get("lr"), g.get("eps"), g.get("weight_decay"), g.get("betas")
        ok = all(isinstance(x, (int, float)) and math.isfinite(x) and x >= 0
                 for x in (lr, eps, wd))
        ok = ok and isinstance(betas, tuple) and len(betas) == 2 and all(
            isinstance(b, (int, float)) and 0 <= b < 1 for b in betas)
        if not ok:
            raise CheckpointError(f"malformed optimizer hyper-parameters in the checkpoint: "
                                  f"lr={lr!r} eps={eps!r} weight_decay={wd!r} betas={betas!r}")
        for p in g["params"]:
            st = optimizer.state.get(id(p), {})
            if not st:                 # never updated (no gradient yet): nothing to check
                continue
            step = st.get("step")
            if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 1:
                raise CheckpointError(f"optimizer state of a {p.shape} parameter has step "
                                      f"{step!r}, expected a positive integer")
            for k in ("exp_avg", "exp_avg_sq"):
                m = st.get(k)
                if not isinstance(m, np.ndarray) or m.shape != p.shape or m.dtype != p.data.dtype:
                    found = "missing" if m is None else f"{np.shape(m)} {getattr(m, 'dtype', m)}"
                    raise CheckpointError(f"optimizer state {k} of a {p.shape} {p.data.dtype} "
                                          f"parameter is {found}")


# settings that change what a step computes: a resume with other values is not the saved run
RESUME_SETTINGS = ("batch_size", "lr", "min_lr", "warmup", "weight_decay", "betas", "grad_clip",
                   "seed", "val_fraction")


def check_same_settings(saved, tc, out_dir):
    """Refuse a resume whose step-defining settings differ from the checkpoint's."""
    if not isinstance(saved, dict):
        raise CheckpointError(f"{out_dir}: malformed training settings in config.json")
    diff = []
    for k in RESUME_SETTINGS:
        if k in saved:
            now = list(tc.betas) if k == "betas" else getattr(tc, k)
            if saved[k] != now:
                diff.append(f"{k} {now!r} (checkpoint: {saved[k]!r})")
    if diff:
        raise CheckpointError(f"resume with the checkpoint's settings: {', '.join(diff)}")

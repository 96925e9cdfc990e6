"""Curriculum learning: make the task harder as the model learns (Bengio et al. 2009).

Two curricula, both plugged into minitx's one training loop (`minitx.train.Trainer`):

1. Sequence-length warmup (Li, Zhang, He 2022, "The Stability-Efficiency Dilemma: Investigating
   Sequence Length Warmup for Training GPT Models"; DeepSpeed Data Efficiency). The difficulty is
   the context length L; a pacing function raises it from `min_difficulty` to `max_difficulty`.
   DeepSpeed's pacing functions, with its names and formulas (its `CurriculumScheduler`, the
   legacy `curriculum_learning` config block), where s is DeepSpeed's global step (optimizer
   steps taken + 1), S = total_curriculum_step, r = root_degree, and Δ = difficulty_step:

       fixed_linear:    d(s) = min(max, f - f mod Δ),  f = floor((s / S)       (max - min) + min)
       fixed_root:      d(s) = min(max, f - f mod Δ),  f = floor((s / S)^(1/r) (max - min) + min)
       fixed_discrete:  d(s) = difficulty[i] for the first i with s <= max_step[i], else the last

   Δ keeps shapes friendly (multiples of 8 for tensor cores). DeepSpeed's quirk, kept on purpose:
   when max is not a multiple of Δ the value sits at the largest multiple below max (the CLI
   refuses a Δ that does not divide min and max). The text's simplest case, short sequences for S
   steps and then long ones, is `two_stage(short, long, S)`, a fixed_discrete schedule.

   Two ways to feed a shorter L (`SeqLenSampler`), as DeepSpeed offers:
       truncate  the batch keeps its B rows, each cut to its first L tokens (fewer tokens per step
                 early; offer token-based lr decay and stopping, `TokenCosineSchedule`);
       reshape   the same tokens per step: each (B, T) batch becomes (B * (T // L), L) rows.
   Inputs and targets are cut and reshaped identically, so y[b, t] stays x's next token.

2. Hard-example sampling (`minitx.hard_examples`): feed later steps the examples the model
   gets most wrong, online (scores from the model being trained) or offline (a small scorer).
"""
import math

import numpy as np


SCHEDULES = ("fixed_linear", "fixed_root", "fixed_discrete")


# ============================== pacing functions (DeepSpeed's formulas) ======================
def fixed_root(step, min_difficulty, max_difficulty, total_curriculum_step, difficulty_step,
               root_degree):
    """DeepSpeed's fixed_root difficulty at global step `step` (see the module docstring)."""
    try:
        f = (float(step) / total_curriculum_step) ** (1.0 / root_degree)
        d = math.floor(f * (max_difficulty - min_difficulty) + min_difficulty)
    except OverflowError:                    # far past S with a tiny root degree: the cap holds
        return max_difficulty
    d -= d % difficulty_step
    return min(d, max_difficulty)


def fixed_linear(step, min_difficulty, max_difficulty, total_curriculum_step, difficulty_step):
    """DeepSpeed's fixed_linear: fixed_root with root_degree 1."""
    return fixed_root(step, min_difficulty, max_difficulty, total_curriculum_step,
                      difficulty_step, 1)


def fixed_discrete(step, difficulty, max_step):
    """DeepSpeed's fixed_discrete: difficulty[i] while step <= max_step[i], then the last."""
    for d, s in zip(difficulty, max_step):
        if step <= s:
            return d
    return difficulty[-1]


def two_stage(short, long, switch_step):
    """The text's two-stage schedule as a DeepSpeed config: `short` for steps 1..switch_step,
    then `long`."""
    return {"curriculum_type": "seqlen", "min_difficulty": short, "max_difficulty": long,
            "schedule_type": "fixed_discrete",
            "schedule_config": {"difficulty": [short, long], "max_step": [switch_step]}}


class CurriculumScheduler:
    """DeepSpeed's legacy `curriculum_learning` config block, evaluated as DeepSpeed does.

    Args:
        config: dict with min_difficulty, max_difficulty, schedule_type and schedule_config
            (total_curriculum_step, difficulty_step, root_degree; or difficulty and max_step
            lists); `enabled` and `curriculum_type` are accepted and checked.
        strict: also refuse a difficulty_step that does not divide min and max (the CLI's rule;
            DeepSpeed itself only warns).
    """

    def __init__(self, config, strict=False):
        if not isinstance(config, dict):
            raise ValueError(f"a curriculum config must be a dict, got {type(config).__name__}")
        self.config = config
        c = dict(config)
        if c.pop("enabled", True) is not True:
            raise ValueError("curriculum config has enabled != true")
        kind = c.pop("curriculum_type", "seqlen")
        if kind != "seqlen":
            raise ValueError(f"curriculum_type {kind!r}: minitx implements 'seqlen' only")
        try:
            self.min, self.max = _int(c, "min_difficulty"), _int(c, "max_difficulty")
            self.type = c["schedule_type"]
            s = c.get("schedule_config", {})
            if not isinstance(s, dict):
                raise ValueError(f"curriculum config schedule_config must be an object, got "
                                 f"{s!r:.60}")
        except KeyError as e:
            raise ValueError(f"curriculum config lacks {e.args[0]!r}") from None
        if not 0 < self.min <= self.max:
            raise ValueError(f"need 0 < min_difficulty <= max_difficulty, got {self.min} and "
                             f"{self.max}")
        if self.type == "fixed_discrete":
            lists = [s.get("difficulty", []), s.get("max_step", [])]
            if not all(isinstance(x, list) for x in lists):
                raise ValueError(f"fixed_discrete difficulty and max_step must be lists, got "
                                 f"{lists[0]!r:.40} and {lists[1]!r:.40}")
            self.difficulty = [_int({"difficulty": d}, "difficulty") for d in lists[0]]
            self.max_step = [_int({"max_step": x}, "max_step") for x in lists[1]]
            if len(self.difficulty) != len(self.max_step) + 1 or not self.max_step:
                raise ValueError("fixed_discrete needs len(difficulty) == len(max_step) + 1 >= 2, "
                                 f"got {s.get('difficulty')} and {s.get('max_step')}")
            if sorted(self.max_step) != self.max_step or self.max_step[0] < 0:
                raise ValueError(f"fixed_discrete max_step must be increasing and >= 0, got "
                                 f"{self.max_step}")
            if any(not self.min <= d <= self.max for d in self.difficulty):
                raise ValueError(f"fixed_discrete difficulties {self.difficulty} are outside "
                                 f"[{self.min}, {self.max}]")
        elif self.type in ("fixed_linear", "fixed_root"):
            self.total = _int(s, "total_curriculum_step")
            self.step_size = _int(s, "difficulty_step")
            root = s.get("root_degree", 1) if self.type == "fixed_root" else 1.0
            if isinstance(root, bool) or not isinstance(root, (int, float)):
                raise ValueError(f"root_degree must be a number, got {root!r:.40}")
            self.root = float(root)
            if self.total < 1 or self.step_size < 1 or not 0 < self.root < 1e6:
                raise ValueError("total_curriculum_step and difficulty_step must be >= 1 and "
                                 f"root_degree > 0, got {self.total}, {self.step_size}, "
                                 f"{self.root}")
            if self.type == "fixed_root" and "root_degree" not in s:
                raise ValueError("fixed_root needs schedule_config.root_degree")
            if strict and (self.min % self.step_size or self.max % self.step_size):
                raise ValueError(f"difficulty_step {self.step_size} does not divide "
                                 f"min_difficulty {self.min} and max_difficulty {self.max}")
            if self.min - self.min % self.step_size < 1:
                raise ValueError(f"difficulty_step {self.step_size} rounds min_difficulty "
                                 f"{self.min} down to 0")
        else:
            raise ValueError(f"unknown schedule_type {self.type!r}; choose from {SCHEDULES}")

    def get_difficulty(self, global_step):
        """The difficulty (sequence length) DeepSpeed gives at `global_step`."""
        if self.type == "fixed_discrete":
            return fixed_discrete(global_step, self.difficulty, self.max_step)
        return fixed_root(global_step, self.min, self.max, self.total, self.step_size, self.root)

    def last_curriculum_step(self):
        """The first global step from which the difficulty stays at its final value."""
        if self.type == "fixed_discrete":
            return self.max_step[-1] + 1
        return self.total


def _int(d, key):
    if not isinstance(d, dict):
        raise ValueError(f"curriculum config: expected an object holding {key!r}, got {d!r:.60}")
    v = d[key]
    if (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
            or v != int(v)):
        raise ValueError(f"curriculum config {key}={v!r} must be an integer")
    return int(v)


# ============================== sequence-length warmup in the loop ===========================
class SeqLenSchedule:
    """Wraps the loop's schedule: same learning rate, sequence length from the curriculum at
    DeepSpeed's global step (trainer.step + 1)."""

    def __init__(self, inner, scheduler, block_size):
        if scheduler.max > block_size:
            raise ValueError(f"curriculum max_difficulty {scheduler.max} exceeds the model's "
                             f"block_size {block_size}")
        self.inner, self.scheduler = inner, scheduler

    def __call__(self, trainer):
        s = self.inner(trainer)
        return {**s, "seq_len": self.scheduler.get_difficulty(trainer.step + 1)}


class TokenCosineSchedule:
    """Warmup + cosine decay over tokens instead of steps (the DeepSpeed/Megatron curriculum
    guide's advice for truncation, where early steps carry fewer tokens). Wraps the loop's
    schedule and replaces only its learning rate."""

    def __init__(self, inner, tc, total_tokens, warmup_tokens):
        self.inner, self.tc, self.total, self.warmup = inner, tc, total_tokens, warmup_tokens

    def __call__(self, trainer):
        t, tc = trainer.tokens, self.tc
        if t < self.warmup:
            lr = tc.lr * (t + 1) / self.warmup
        elif t >= self.total:
            lr = tc.min_lr
        else:
            p = (t - self.warmup) / max(1, self.total - self.warmup)
            lr = tc.min_lr + 0.5 * (tc.lr - tc.min_lr) * (1 + math.cos(math.pi * p))
        return {**self.inner(trainer), "lr": lr}


def truncate_batch(x, y, L):
    """(B, T) inputs and targets cut to their first L positions: (B, L) each."""
    return x[:, :L], y[:, :L]


def reshape_batch(x, y, L):
    """(B, T) inputs and targets as (B * (T // L), L) rows; the T mod L tail of each row is
    dropped. Row-major reshape keeps every target next to its input."""
    B, T = x.shape
    k = T // L
    x, y = x[:, :k * L], y[:, :k * L]                                  # (B, kL)
    return x.reshape(B * k, L), y.reshape(B * k, L)                    # (Bk, L)


class SeqLenSampler:
    """Draws full-length batches from `inner` and truncates or reshapes them to trainer.seq_len."""

    def __init__(self, inner, mode="truncate"):
        if mode not in ("truncate", "reshape"):
            raise ValueError(f"seq-len mode must be 'truncate' or 'reshape', got {mode!r}")
        self.inner, self.mode = inner, mode

    def next_batch(self, trainer):
        # the inner sampler draws at trainer.seq_len: let it draw full-length windows, then cut
        L = trainer.seq_len
        trainer.seq_len = trainer.model.config.block_size
        try:
            x, y, w = self.inner.next_batch(trainer)                   # (B, T)
        finally:
            trainer.seq_len = L
        if w is not None and self.mode == "reshape":
            w = np.repeat(w, x.shape[1] // L)
        cut = truncate_batch if self.mode == "truncate" else reshape_batch
        x, y = cut(x, y, L)
        return x, y, w

    def state_dict(self):
        return self.inner.state_dict()

    def load_state_dict(self, d):
        self.inner.load_state_dict(d)

    def update(self, trainer, example_losses):
        if hasattr(self.inner, "update") and self.mode == "truncate":
            self.inner.update(trainer, example_losses)


# ============================== the extensions the loop takes ================================
class Settings:
    """An extension that records settings in the checkpoint and refuses a resume with others."""
    name = "settings"

    def state_dict(self):
        return self.settings()

    def load_state_dict(self, d):
        if d != self.settings():
            raise ValueError(f"the checkpoint was trained with {self.name} settings {d}, not "
                             f"{self.settings()}: resume with the same flags")


class SeqLenWarmup(Settings):
    """Sequence-length warmup: installs `SeqLenSchedule` and `SeqLenSampler` in the loop."""
    name = "seqlen_warmup"

    def __init__(self, scheduler, mode="truncate"):
        self.scheduler, self.mode = scheduler, mode
        SeqLenSampler(None, mode)                                     # validates mode

    def settings(self):
        return {"config": self.scheduler.config, "mode": self.mode}

    def on_init(self, trainer):
        block = trainer.model.config.block_size
        trainer.schedule = SeqLenSchedule(trainer.schedule, self.scheduler, block)
        trainer.sampler = SeqLenSampler(trainer.sampler, self.mode)


class TokenLRDecay(Settings):
    """Learning-rate warmup and cosine decay counted in tokens (for truncation warmup)."""
    name = "token_lr_decay"

    def __init__(self, total_tokens, warmup_tokens):
        if total_tokens < 1 or warmup_tokens < 0:
            raise ValueError(f"token decay needs total_tokens >= 1 and warmup_tokens >= 0, got "
                             f"{total_tokens}, {warmup_tokens}")
        self.total, self.warmup = total_tokens, warmup_tokens

    def settings(self):
        return {"total_tokens": self.total, "warmup_tokens": self.warmup}

    def on_init(self, trainer):
        trainer.schedule = TokenCosineSchedule(trainer.schedule, trainer.tc, self.total,
                                               self.warmup)

"""Hard-example sampling: draw the training windows the model gets most wrong more often.

The corpus is cut into n fixed windows of T + 1 tokens (window i starts at token i * T). Each
window has a score l_i, its loss under some model; windows are drawn with probability

    p_i = (1 - u) softmax(l / tau)_i + u / n                                         (1)

with a temperature tau (tau -> inf: uniform; small tau: only the hardest) and a uniform floor u
(no window is ever starved). Two sources of scores:

- `HardExampleSampler`, online (Wang et al. 2023, "Exploiting Hard Samples"; the importance-
  sampling view of Katharopoulos & Fleuret 2018, "Not All Samples Are Created Equal"): l_i is the
  window's most recent loss under the model being trained. Every window starts at log(V) (the
  loss of a uniform guess, so the first draws are uniform); a drawn window's score becomes the
  loss it just had; every `refresh_every` steps the `refresh_size` stalest scores are recomputed
  without gradient (a budget, since scores of windows not drawn for long go stale). With
  `importance=True` the step's loss weights example b by w_b = 1 / (n p_b) (mean over the batch),
  so that E[w L] equals the uniform mean loss: the gradient stays unbiased, only its variance
  changes.
- `ScoredSampler`, offline (Fernandez & Downey 2018, "Sampling Informative Training Data for RNN
  Language Models"): a small, cheap scorer model trained first scores every window once
  (`score_windows`); the large model draws from the mixture (1 - a(t)) uniform + a(t) p(scores),
  a(t) rising linearly from 0 to `max_mix` over `mix_steps` steps (from uniform to hard).

Both follow minitx.train's sampler interface (`next_batch`, `state_dict`, `load_state_dict`) and
keep their scores and generator in the checkpoint, so a resume continues bit for bit.
"""
import math

import numpy as np

from minitx.autograd import no_grad
from minitx.nn import functional as F


def num_windows(n_tokens, T):
    """How many whole windows of T + 1 tokens, starting every T tokens, fit in n_tokens."""
    return max((n_tokens - 1) // T, 0)


def window_batch(ids, index, T):
    """Inputs and targets (len(index), T) of the windows numbered `index`."""
    starts = np.asarray(index, dtype=np.int64) * T                          # (B,)
    w = ids[starts[:, None] + np.arange(T + 1)[None, :]].astype(np.int64)  # (B, T+1)
    return w[:, :-1], w[:, 1:]


def hard_probabilities(scores, temperature, floor):
    """Equation (1): (1 - u) softmax(l / tau) + u / n over the window scores l."""
    z = np.asarray(scores, dtype=np.float64) / temperature
    z = np.exp(z - z.max())
    return (1.0 - floor) * z / z.sum() + floor / z.size


def _check(temperature, floor, n, T):
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
    if not 0 <= floor <= 1:
        raise ValueError(f"the uniform floor must be in [0, 1], got {floor}")
    if n < 1:
        raise ValueError(f"the training split has no whole window of {T + 1} tokens")


@no_grad()
def example_losses(model, x, y):
    """Mean next-token loss of each row of (B, T) inputs x and targets y: (B,) float64."""
    was = model.training
    model.eval()
    logits, _ = model(x)                                                   # (B, T, V)
    B, T = y.shape
    per_token = F.cross_entropy(logits.reshape(B * T, -1), y.reshape(B * T), reduction="none")
    model.train(was)
    return per_token.data.reshape(B, T).mean(axis=1).astype(np.float64)


def score_windows(model, ids, T, batch_size=64):
    """The scorer model's mean loss on every window of `ids` (the offline scores), (n,)."""
    n = num_windows(len(ids), T)
    scores = np.empty(n)
    for s in range(0, n, batch_size):
        index = np.arange(s, min(s + batch_size, n))
        scores[index] = example_losses(model, *window_batch(ids, index, T))
    return scores


class HardExampleSampler:
    """Online hard-example sampling, equation (1) with scores from the model being trained.

    Args:
        ids: training token ids. batch_size: B. T: window length (the model's block size).
        seed: the sampler's generator seed. temperature, floor: tau and u of equation (1).
        refresh_every, refresh_size: every that many steps, rescore that many stalest windows.
        importance: weight each example by 1 / (n p_i) (an unbiased gradient).
        vocab_size: V, for the initial score log(V).
    """

    def __init__(self, ids, batch_size, T, seed, temperature=1.0, floor=0.1, refresh_every=50,
                 refresh_size=256, importance=False, vocab_size=256):
        self.n = num_windows(len(ids), T)
        _check(temperature, floor, self.n, T)
        self.ids, self.B, self.T = ids, batch_size, T
        self.temperature, self.floor, self.importance = temperature, floor, importance
        self.refresh_every, self.refresh_size = refresh_every, refresh_size
        self.rng = np.random.default_rng(seed)
        self.scores = np.full(self.n, math.log(vocab_size))          # (n,) losses
        self.scored_at = np.zeros(self.n, dtype=np.int64)            # (n,) step of last score
        self.last, self.draws = None, np.zeros(self.n, dtype=np.int64)

    def probabilities(self):
        return hard_probabilities(self.scores, self.temperature, self.floor)

    def next_batch(self, trainer):
        if self.refresh_every and trainer.step and trainer.step % self.refresh_every == 0:
            self.refresh(trainer.model, trainer.step)
        p = self.probabilities()                                      # (n,)
        index = self.rng.choice(self.n, size=self.B, p=p)             # (B,)
        self.last = index
        np.add.at(self.draws, index, 1)
        x, y = window_batch(self.ids, index, self.T)                  # (B, T)
        weights = 1.0 / (self.n * p[index]) if self.importance else np.ones(self.B)
        return x, y, weights

    def update(self, trainer, example_losses_):
        """The drawn windows' scores become the losses they just had."""
        self.scores[self.last] = example_losses_
        self.scored_at[self.last] = trainer.step

    def refresh(self, model, step):
        """Rescore the `refresh_size` stalest windows without gradient."""
        k = min(self.refresh_size, self.n)
        stalest = np.argsort(self.scored_at, kind="stable")[:k]
        for s in range(0, k, self.B):
            index = stalest[s:s + self.B]
            self.scores[index] = example_losses(model, *window_batch(self.ids, index, self.T))
        self.scored_at[stalest] = step

    def state_dict(self):
        return {"rng": self.rng.bit_generator.state, "scores": self.scores.tolist(),
                "scored_at": self.scored_at.tolist(), "draws": self.draws.tolist()}

    def load_state_dict(self, d):
        self.rng.bit_generator.state = d["rng"]
        self.scores = np.array(d["scores"], dtype=np.float64)
        self.scored_at = np.array(d["scored_at"], dtype=np.int64)
        self.draws = np.array(d["draws"], dtype=np.int64)
        if self.scores.shape != (self.n,):
            raise ValueError(f"hard-example state has {self.scores.size} windows, the data has "
                             f"{self.n}")


class ScoredSampler:
    """Offline hard-example sampling: a mixture moving from uniform to equation (1) over the
    scorer's fixed scores (`score_windows`)."""

    def __init__(self, ids, batch_size, T, seed, scores, temperature=1.0, floor=0.1,
                 mix_steps=100, max_mix=1.0):
        self.n = num_windows(len(ids), T)
        _check(temperature, floor, self.n, T)
        scores = np.asarray(scores, dtype=np.float64)
        if scores.shape != (self.n,) or not np.all(np.isfinite(scores)):
            raise ValueError(f"need {self.n} finite window scores, got shape {scores.shape}")
        if not 0 <= max_mix <= 1 or mix_steps < 0:
            raise ValueError(f"max_mix must be in [0, 1] and mix_steps >= 0, got {max_mix}, "
                             f"{mix_steps}")
        self.ids, self.B, self.T = ids, batch_size, T
        self.hard = hard_probabilities(scores, temperature, floor)    # (n,)
        self.mix_steps, self.max_mix = mix_steps, max_mix
        self.rng = np.random.default_rng(seed)

    def mix(self, step):
        """a(t): the weight of the hard distribution at optimizer step t."""
        ramp = 1.0 if self.mix_steps == 0 else min(1.0, step / self.mix_steps)
        return self.max_mix * ramp

    def probabilities(self, step):
        a = self.mix(step)
        return (1 - a) / self.n + a * self.hard

    def next_batch(self, trainer):
        index = self.rng.choice(self.n, size=self.B, p=self.probabilities(trainer.step))
        x, y = window_batch(self.ids, index, self.T)
        return x, y, None

    def state_dict(self):
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, d):
        self.rng.bit_generator.state = d["rng"]


class HardExamples:
    """An extension installing a hard-example sampler (`kind` "hard" or "scored") in the loop;
    the sampler's scores and generator are saved with the loop's sampler state."""
    name = "hard_examples"

    def __init__(self, kind="hard", scorer=None, **options):
        if kind not in ("hard", "scored"):
            raise ValueError(f"hard-example sampler must be 'hard' or 'scored', got {kind!r}")
        if kind == "scored" and scorer is None:
            raise ValueError("the 'scored' sampler needs a scorer model (--scorer CKPT)")
        self.kind, self.scorer, self.options = kind, scorer, options

    def on_init(self, trainer):
        from minitx.train import UniformSampler
        if not isinstance(trainer.sampler, UniformSampler):
            raise ValueError("list HardExamples before extensions that wrap the sampler (such as "
                             "SeqLenWarmup), so that they wrap it")
        tc, T = trainer.tc, trainer.model.config.block_size
        if self.kind == "hard":
            trainer.sampler = HardExampleSampler(trainer.train_ids, tc.batch_size, T, tc.seed,
                                                 vocab_size=trainer.model.config.vocab_size,
                                                 **self.options)
        else:
            if self.scorer.config.block_size < T:
                raise ValueError(f"the scorer's block_size {self.scorer.config.block_size} is "
                                 f"shorter than the model's {T}")
            scores = score_windows(self.scorer, trainer.train_ids, T)
            trainer.sampler = ScoredSampler(trainer.train_ids, tc.batch_size, T, tc.seed, scores,
                                            **self.options)

    def state_dict(self):
        return {"kind": self.kind, "options": self.options}

    def load_state_dict(self, d):
        if d != self.state_dict():
            raise ValueError(f"the checkpoint was trained with sampler settings {d}, not "
                             f"{self.state_dict()}: resume with the same flags")

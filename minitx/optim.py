"""Optimizers and learning-rate schedules with PyTorch's exact update rules.

SGD (with momentum, dampening, Nesterov, weight decay) follows torch.optim.SGD; AdamW follows
Loshchilov & Hutter 2019, "Decoupled Weight Decay Regularization" (arXiv 1711.05101),
Algorithm 2, with torch.optim.AdamW's bias correction:
    p <- p - lr * wd * p
    m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2
    p <- p - lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
"""
import math

import numpy as np


class Optimizer:
    """Holds parameter groups and per-parameter state; `state_dict()` is arrays + JSON-able."""

    def __init__(self, params, defaults):
        params = list(params)
        if not params:
            raise ValueError("optimizer got an empty parameter list")
        if isinstance(params[0], dict):
            groups = [dict(defaults, **g) for g in params]
        else:
            groups = [dict(defaults, params=params)]
        for g in groups:
            g["params"] = list(g["params"])
        self.param_groups = groups
        self.state = {}                  # id(param) -> dict of ndarrays / ints

    def zero_grad(self):
        for g in self.param_groups:
            for p in g["params"]:
                p.grad = None

    def _params(self):
        return [p for g in self.param_groups for p in g["params"]]

    def state_dict(self):
        """{"groups": [hyper-parameters], "state": {"<index>.<key>": ndarray or number}}."""
        groups = [{k: v for k, v in g.items() if k != "params"} for g in self.param_groups]
        state = {}
        for i, p in enumerate(self._params()):
            for k, v in self.state.get(id(p), {}).items():
                state[f"{i}.{k}"] = v
        return {"groups": groups, "state": state}

    def load_state_dict(self, sd):
        if len(sd["groups"]) != len(self.param_groups):
            raise ValueError(f"optimizer state has {len(sd['groups'])} groups, expected "
                             f"{len(self.param_groups)}")
        for g, saved in zip(self.param_groups, sd["groups"]):
            g.update(saved)
        params = self._params()
        self.state = {}
        for key, v in sd["state"].items():
            i, name = key.split(".", 1)
            i = int(i)
            if i >= len(params):
                raise ValueError(f"optimizer state refers to parameter {i}, only {len(params)}")
            if isinstance(v, np.ndarray) and v.ndim and v.shape != params[i].shape:
                raise ValueError(f"optimizer state {key} has shape {v.shape}, parameter has "
                                 f"{params[i].shape}")
            self.state.setdefault(id(params[i]), {})[name] = v


def _check_range(name, value, low=0.0, high=math.inf, high_open=False):
    """ValueError naming the hyper-parameter unless low <= value <= high (< high if high_open).

    Written `not (low <= value ...)` so that NaN fails too, as torch.optim's checks do."""
    ok = low <= value < high if high_open else low <= value <= high
    if not ok:
        bound = f"[{low}, {high})" if high_open else f"[{low}, {high}]"
        raise ValueError(f"invalid {name}: {value!r}; expected a number in {bound}")


class SGD(Optimizer):
    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0,
                 nesterov=False):
        for name, value in (("lr", lr), ("momentum", momentum), ("weight_decay", weight_decay)):
            _check_range(name, value)
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov))

    def step(self):
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is None:
                    continue
                d = p.grad
                if g["weight_decay"]:
                    d = d + g["weight_decay"] * p.data
                if g["momentum"]:
                    st = self.state.setdefault(id(p), {})
                    if "momentum_buffer" not in st:
                        st["momentum_buffer"] = d.copy()
                    else:
                        buf = st["momentum_buffer"]
                        buf *= g["momentum"]
                        buf += (1 - g["dampening"]) * d
                    buf = st["momentum_buffer"]
                    d = d + g["momentum"] * buf if g["nesterov"] else buf
                p.data -= (g["lr"] * d).astype(p.data.dtype, copy=False)


class AdamW(Optimizer):
    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2):
        for name, value in (("lr", lr), ("eps", eps), ("weight_decay", weight_decay)):
            _check_range(name, value)                          # rejects NaN and negatives
        if len(betas) != 2:
            raise ValueError(f"invalid betas {betas!r}: expected (beta1, beta2)")
        for i, beta in enumerate(betas):
            _check_range(f"betas[{i}]", beta, 0.0, 1.0, high_open=True)
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps,
                                      weight_decay=weight_decay))

    def step(self):
        for g in self.param_groups:
            lr, (b1, b2), eps, wd = g["lr"], g["betas"], g["eps"], g["weight_decay"]
            for p in g["params"]:
                if p.grad is None:
                    continue
                st = self.state.setdefault(id(p), {})
                if "step" not in st:
                    st["step"] = 0
                    st["exp_avg"] = np.zeros_like(p.data)
                    st["exp_avg_sq"] = np.zeros_like(p.data)
                st["step"] += 1
                t, m, v, grad = st["step"], st["exp_avg"], st["exp_avg_sq"], p.grad
                p.data *= 1 - lr * wd                               # decoupled weight decay
                m *= b1
                m += (1 - b1) * grad                                # first moment
                v *= b2
                v += (1 - b2) * grad * grad                         # second moment
                step_size = lr / (1 - b1 ** t)                      # bias corrections
                denom = np.sqrt(v) / math.sqrt(1 - b2 ** t) + eps
                p.data -= (step_size * m / denom).astype(p.data.dtype, copy=False)


def clip_grad_norm_(params, max_norm):
    """Scale all gradients so their global L2 norm is at most `max_norm`; return the norm
    before clipping (torch.nn.utils.clip_grad_norm_)."""
    grads = [p.grad for p in params if p.grad is not None]
    total = math.sqrt(sum(float(np.vdot(g, g)) for g in grads))
    if total > max_norm:
        coef = max_norm / (total + 1e-6)
        for g in grads:
            g *= coef
    return total


def cosine_lr(step, max_lr, min_lr, warmup, total):
    """Linear warmup for `warmup` steps, then cosine decay from max_lr to min_lr at `total`."""
    if step < warmup:
        return max_lr * (step + 1) / warmup
    if step >= total:
        return min_lr
    progress = (step - warmup) / max(1, total - warmup)
    return min_lr + 0.5 * (max_lr - min_lr) * (1 + math.cos(math.pi * progress))


class PagedAdamW(AdamW):
    """AdamW whose moments live in memory-mapped files (np.memmap): a CPU analogue of paging.

    What bitsandbytes' paged optimizers do (Dettmers et al. 2023, QLoRA, section 3): the
    optimizer state is allocated in CUDA unified memory. When the GPU runs out of memory - a
    long sequence makes the activations spike - the driver evicts state pages to CPU RAM
    page by page and brings them back when the optimizer step touches them, so the spike does
    not end the run with an out-of-memory error; in steady state nothing moves.

    What this CPU analogue does: each moment (exp_avg, exp_avg_sq) is an np.memmap over a file in
    `directory` (a fresh temporary directory by default, unlinked at once, so the files vanish
    with the process). Its pages are file-backed: the kernel can write them back and drop them
    under memory pressure instead of swapping, and they are outside Python's heap (tracemalloc
    does not see them; RSS counts them as RssFile once touched). What it does not buy: the update
    touches every page every step, so the moments are all resident again during each step; on a
    machine with enough RAM the peak resident size is the same, and the disk round trip can make
    steps slower under pressure. The update is AdamW's, bit for bit (same arithmetic, in place).

    Args:
        params, lr, betas, eps, weight_decay: as AdamW.
        directory: where the memory-mapped files go (default: a new temporary directory).
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 directory=None):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
        self.directory = directory

    def _paged_zeros(self, like, name):
        import os
        import tempfile
        directory = self.directory if self.directory is not None else tempfile.mkdtemp(
            prefix="minitx-paged-")
        fd, path = tempfile.mkstemp(prefix=name, suffix=".bin", dir=directory)
        os.close(fd)
        arr = np.memmap(path, dtype=like.dtype, mode="w+", shape=like.shape)   # zero-filled
        os.unlink(path)                         # the mapping keeps the pages; the name goes
        if self.directory is None:
            os.rmdir(directory)
        return arr

    def _page_in(self, p):
        st = self.state.setdefault(id(p), {})
        if "step" not in st:
            st["step"] = 0
            st["exp_avg"] = self._paged_zeros(p.data, "exp_avg")
            st["exp_avg_sq"] = self._paged_zeros(p.data, "exp_avg_sq")

    def step(self):
        for p in self._params():
            if p.grad is not None:
                self._page_in(p)
        super().step()                          # AdamW's update, in place on the memmaps

    def load_state_dict(self, sd):
        super().load_state_dict(sd)
        for p in self._params():                # copy loaded moments into memory-mapped files
            st = self.state.get(id(p))
            if st and "exp_avg" in st:
                for key in ("exp_avg", "exp_avg_sq"):
                    paged = self._paged_zeros(p.data, key)
                    paged[...] = st[key]
                    st[key] = paged

"""Activation checkpointing: keep a block's input, recompute its activations in the backward.

Chen et al. 2016, "Training Deep Nets with Sublinear Memory Cost" (arXiv 1604.06174), as
`torch.utils.checkpoint.checkpoint` does it: the forward of a checkpointed function records no
graph that outlives it (only its inputs and output are kept), so the activations inside are
freed at once; the backward runs the function again with gradients on and backpropagates
through that fresh, short-lived graph. Activation memory becomes one stored tensor per
checkpointed block plus the activations of the one block being recomputed, for the price of a
second forward pass.

Gradients equal the plain backward bit for bit: the recomputation sees the same input arrays,
the same weights and, for dropout, the same random numbers (the global generator's state is
saved before the forward and restored around the recomputation, then put back, as torch does
with `preserve_rng_state=True`); inside the block the gradient contributions are summed in the
same order as in the plain graph, and each weight's gradient reaches its `.grad` through the
outer graph exactly once.

How the weights are found: the forward runs the function once with gradients on and walks the
graph it built to find the leaf tensors it read (parameters that require grad), then drops that
graph. Those leaves become inputs of the checkpoint node, so the outer backward reaches it even
when no input requires grad (a LoRA model's first block reads a frozen embedding) - the failure
mode of torch's reentrant variant. Tensors the function reads must be its arguments or leaves
(parameters); a non-leaf tensor captured from outside is not supported.
"""
import contextlib

from minitx import autograd
from minitx import random as _random
from minitx.autograd import Function, Tensor, _topological_order


@contextlib.contextmanager
def _grad_mode(enabled):
    previous = autograd._grad_enabled
    autograd._grad_enabled = enabled
    try:
        yield
    finally:
        autograd._grad_enabled = previous


def _detach_inputs(args):
    """Fresh leaf tensors for the Tensor arguments (same data, same requires_grad)."""
    return [Tensor(a.data, requires_grad=a.requires_grad) if isinstance(a, Tensor) else a
            for a in args]


class _Checkpoint(Function):
    """Node standing for a whole checkpointed call: inputs = (args..., leaves read inside)."""

    @staticmethod
    def forward(ctx, *arrays, function, n_args, leaves, out, rng_state):
        ctx.function, ctx.n_args, ctx.leaves, ctx.rng_state = function, n_args, leaves, rng_state
        ctx.save_for_backward(*arrays[:n_args])
        return out

    @staticmethod
    def backward(ctx, g):
        originals = ctx.saved_tensors                    # the call's arguments (arrays or not)
        args = [Tensor(a, requires_grad=n) if n else a
                for a, n in zip(originals, ctx.needs_input_grad[:ctx.n_args])]
        stash = [p.grad for p in ctx.leaves]             # outer .grad, restored below
        for p in ctx.leaves:
            p.grad = None
        now = _random.get_state()
        if ctx.rng_state is not None:
            _random.set_state(ctx.rng_state)             # the forward's dropout masks again
        try:
            with _grad_mode(True):
                out = ctx.function(*args)                # recompute: a fresh graph
            if out.requires_grad:
                out.backward(g)
            leaf_grads = [p.grad for p in ctx.leaves]
        finally:
            _random.set_state(now)
            for p, s in zip(ctx.leaves, stash):
                p.grad = s
        arg_grads = [a.grad if isinstance(a, Tensor) else None for a in args]
        return tuple(arg_grads) + tuple(leaf_grads)


def checkpoint(function, *args, preserve_rng_state=True):
    """Call `function(*args)` keeping only its inputs and output; recompute it in the backward.

    Args:
        function: a callable returning one Tensor (e.g. a transformer block).
        args: its arguments; Tensors among them are differentiated, others passed as they are.
        preserve_rng_state: restore the global generator for the recomputation, so dropout masks
            match the forward's (False: the recomputation draws fresh numbers, as in torch).
    Returns:
        the output Tensor, equal to `function(*args)`, with a single graph node behind it.
    """
    if not autograd.is_grad_enabled():
        return function(*args)
    rng_state = _random.get_state() if preserve_rng_state else None
    inner = _detach_inputs(args)
    out = function(*inner)                               # graph built once, to find leaves
    if not isinstance(out, Tensor):
        raise TypeError(f"checkpoint: the function must return a Tensor, got "
                        f"{type(out).__name__}")
    inputs = {id(a) for a in inner if isinstance(a, Tensor)}
    leaves = [t for t in _topological_order(out)
              if t.is_leaf and t.requires_grad and id(t) not in inputs] if out.requires_grad else []
    data = out.data
    del out, inner                                       # the block's activations go here
    return _Checkpoint.apply(*args, *leaves, function=function, n_args=len(args),
                             leaves=leaves, out=data, rng_state=rng_state)


class _CheckpointedForward:
    """A module's forward wrapped in `checkpoint` while training with gradients on."""

    def __init__(self, module):
        self.module = module

    def __call__(self, *args):
        plain = type(self.module).forward.__get__(self.module)
        if not self.module.training or not autograd.is_grad_enabled():
            return plain(*args)
        return checkpoint(plain, *args)


def checkpoint_modules(modules, enabled=True):
    """Turn activation checkpointing on (or off) for each module (e.g. `model.blocks`).

    The module keeps its name and parameters; only its forward is wrapped, and only while it is
    training with gradients on (evaluation and generation run the plain forward).
    """
    for m in modules:
        if enabled:
            object.__setattr__(m, "forward", _CheckpointedForward(m))
        elif "forward" in m.__dict__:
            object.__delattr__(m, "forward")
    return modules

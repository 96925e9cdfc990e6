"""minitx's global random generator, as `torch.manual_seed` gives PyTorch one.

Parameter initialisation and dropout draw from it unless given a generator of their own, so
`minitx.manual_seed(s)` before building a model fixes its weights. Its state is saved in
checkpoints so that a resumed run draws the same numbers as an uninterrupted one.
"""
import numpy as np

_gen = np.random.default_rng(0)


def manual_seed(seed):
    """Reseed the global generator (PCG64) with an integer seed."""
    global _gen
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    _gen = np.random.default_rng(int(seed))


def generator():
    """The global numpy Generator."""
    return _gen


def get_state():
    """The generator's state as a JSON-serialisable dict."""
    return _gen.bit_generator.state


def set_state(state):
    """Restore a state returned by `get_state`."""
    _gen.bit_generator.state = state

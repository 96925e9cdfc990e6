"""Optimizers follow PyTorch's update rules exactly; schedules and clipping; state round trips."""
import math

import numpy as np
import pytest

import minitx
from minitx.nn import Parameter
from minitx.optim import SGD, AdamW, clip_grad_norm_, cosine_lr


def _grads(steps, shape, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape) for _ in range(steps)]


def test_adamw_matches_the_decoupled_weight_decay_algorithm():
    p0 = np.random.default_rng(1).standard_normal((3, 4))
    lr, (b1, b2), eps, wd = 0.01, (0.9, 0.98), 1e-8, 0.1
    p = Parameter(p0.copy())
    opt = AdamW([p], lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd)
    ref, m, v = p0.copy(), np.zeros_like(p0), np.zeros_like(p0)
    for t, g in enumerate(_grads(5, p0.shape), start=1):
        p.grad = g.copy()
        opt.step()
        ref = ref * (1 - lr * wd)                                   # Loshchilov & Hutter, Alg. 2
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        ref = ref - lr * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)
    np.testing.assert_allclose(p.data, ref, rtol=1e-12)


@pytest.mark.parametrize("momentum,nesterov,wd,dampening", [(0.0, False, 0.0, 0.0),
                                                            (0.9, False, 0.01, 0.1),
                                                            (0.9, True, 0.01, 0.0)])
def test_sgd_matches_torch_rule(momentum, nesterov, wd, dampening):
    p0 = np.random.default_rng(2).standard_normal(5)
    p = Parameter(p0.copy())
    opt = SGD([p], lr=0.1, momentum=momentum, nesterov=nesterov, weight_decay=wd,
              dampening=dampening)
    ref, buf = p0.copy(), None
    for g in _grads(4, p0.shape):
        p.grad = g.copy()
        opt.step()
        d = g + wd * ref
        if momentum:
            buf = d.copy() if buf is None else momentum * buf + (1 - dampening) * d
            d = d + momentum * buf if nesterov else buf
        ref = ref - 0.1 * d
    np.testing.assert_allclose(p.data, ref, rtol=1e-12)


def test_adamw_equals_pytorch_when_installed():
    torch = pytest.importorskip("torch")
    p0 = np.random.default_rng(3).standard_normal((4, 3))
    p = Parameter(p0.copy())
    tp = torch.nn.Parameter(torch.tensor(p0))
    ours = AdamW([p], lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1)
    theirs = torch.optim.AdamW([tp], lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1)
    for g in _grads(6, p0.shape):
        p.grad, tp.grad = g.copy(), torch.tensor(g)
        ours.step()
        theirs.step()
    np.testing.assert_allclose(p.data, tp.detach().numpy(), rtol=1e-10)


def test_optimizer_state_dict_round_trip_continues_identically():
    p0 = np.random.default_rng(4).standard_normal(6)
    grads = _grads(6, p0.shape)
    a = Parameter(p0.copy())
    opt_a = AdamW([a], lr=0.01)
    for g in grads:
        a.grad = g.copy()
        opt_a.step()
    b = Parameter(p0.copy())
    opt_b = AdamW([b], lr=0.01)
    for g in grads[:3]:
        b.grad = g.copy()
        opt_b.step()
    c = Parameter(b.data.copy())
    opt_c = AdamW([c], lr=0.5)
    opt_c.load_state_dict(opt_b.state_dict())
    for g in grads[3:]:
        c.grad = g.copy()
        opt_c.step()
    np.testing.assert_array_equal(c.data, a.data)


def test_clip_grad_norm_and_schedule():
    p, q = Parameter(np.zeros(3)), Parameter(np.zeros(1))
    p.grad, q.grad = np.array([3.0, 0.0, 0.0]), np.array([4.0])
    assert clip_grad_norm_([p, q], 1.0) == pytest.approx(5.0)
    assert math.sqrt((p.grad ** 2).sum() + (q.grad ** 2).sum()) == pytest.approx(1.0, rel=1e-5)
    assert cosine_lr(0, 1.0, 0.1, 10, 100) == pytest.approx(0.1)
    assert cosine_lr(9, 1.0, 0.1, 10, 100) == pytest.approx(1.0)
    assert cosine_lr(55, 1.0, 0.1, 10, 100) == pytest.approx(0.55)
    assert cosine_lr(100, 1.0, 0.1, 10, 100) == pytest.approx(0.1)


def test_bad_hyperparameters_are_named():
    with pytest.raises(ValueError, match="betas"):
        AdamW([Parameter(np.zeros(1))], betas=(1.0, 0.9))
    with pytest.raises(ValueError, match="empty parameter list"):
        SGD([], lr=0.1)


@pytest.mark.parametrize("opt, kwargs, name", [
    (AdamW, dict(weight_decay=-1.0), "weight_decay: -1.0"), (AdamW, dict(lr=float("nan")), "lr: nan"),
    (AdamW, dict(lr=-1e-3), "lr: -0.001"), (AdamW, dict(eps=float("nan")), "eps: nan"),
    (AdamW, dict(betas=(0.9, float("nan"))), r"betas\[1\]: nan"),
    (SGD, dict(lr=float("nan")), "lr: nan"), (SGD, dict(lr=0.1, weight_decay=-1), "weight_decay")])
def test_optimizers_reject_nan_and_negative_hyperparameters_like_torch(opt, kwargs, name):
    """torch.optim.AdamW raises ValueError for weight_decay < 0 and lr NaN or < 0 (issue 14)."""
    with pytest.raises(ValueError, match=name):
        opt([Parameter(np.zeros(1))], **kwargs)


def test_module_state_dict_names_shapes_and_errors():
    lin = minitx.nn.Linear(3, 2)
    sd = lin.state_dict()
    assert set(sd) == {"weight", "bias"} and sd["weight"].shape == (2, 3)
    other = minitx.nn.Linear(3, 2)
    other.load_state_dict(sd)
    np.testing.assert_array_equal(other.weight.data, lin.weight.data)
    with pytest.raises(ValueError, match=r"weight has shape \(2, 4\)"):
        other.load_state_dict({"weight": np.zeros((2, 4)), "bias": np.zeros(2)})
    with pytest.raises(KeyError, match="missing keys \\['bias'\\]"):
        other.load_state_dict({"weight": np.zeros((2, 3))})

"""PTQ, W8A8, sensitivity, QAT and compensation on a tiny GPT trained here."""
import copy

import numpy as np
import pytest

import minitx
from minitx.nn.modules import Linear
from minitx.quant import experiments as E
from minitx.lora import LoRALinear
from minitx.quant.compensate import add_compensation, recovered_fraction
from minitx.quant.integer import qrange
from minitx.quant.linear import QuantLinear, linear_layers
from minitx.quant.ptq import (W8A8Linear, calibrate, layer_sensitivity, mixed_precision_plan,
                             quantize_w8a8, quantize_weights)
from minitx.quant.qat import LSQQuant, QATLinear, convert, prepare_qat

TOL = {"float32": {"rtol": 1e-4, "atol": 1e-5}}
T = TOL["float32"]
SIZE = dict(n_layer=1, n_head=2, n_embd=32, block_size=32)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors: OpenMP threads only add overhead (10x on a loaded 2-core machine)."""
    c = minitx.backend._C
    if c is None:
        yield
        return
    n = c.get_num_threads()
    c.set_num_threads(1)
    yield
    c.set_num_threads(n)


@pytest.fixture(scope="module")
def trained(one_thread):
    model, tr, va = E.train_gpt(SIZE, steps=300, B=16, lr=5e-3, seed=0)
    val = E.eval_batches(va, 8, 32, 4)
    calib = E.eval_batches(tr, 8, 32, 2, seed=7)
    return model, tr, val, calib


def test_w8_per_channel_ptq_costs_at_most_one_percent(trained):
    model, _, val, calib = trained
    base = E.evaluate(model, val)
    q, used = quantize_weights(model, "int8")
    assert all(s.startswith("int8") for s in used.values())
    rel = (E.evaluate(q, val) - base) / base
    assert abs(rel) <= 0.01, f"W8 per-channel PTQ costs {100 * rel:.3f}% relative loss"


def test_w8a8_costs_at_most_one_percent_and_is_integer_exact(trained):
    model, _, val, calib = trained
    obs = calibrate(model, calib)
    base = E.evaluate(model, val)
    q = quantize_w8a8(model, obs, method="percentile")
    rel = (E.evaluate(q, val) - base) / base
    assert abs(rel) <= 0.01, f"W8A8 costs {100 * rel:.3f}% relative loss"
    layer = next(m for m in q.modules() if isinstance(m, W8A8Linear))
    x = np.random.default_rng(0).standard_normal((5, layer.in_features)).astype(np.float32)
    # integer accumulation == fake-quantized input times dequantized weight
    q_min, q_max = qrange(8, False)
    xq = layer.x_scale * (np.clip(np.round(x / layer.x_scale) + layer.x_zero, q_min, q_max)
                          - layer.x_zero)
    want = xq @ layer.weight_float().T + layer.bias_data
    assert np.allclose(layer.compute(x), want, **T)


def test_calibration_observes_every_linear_and_restores_forward(trained):
    model, _, _, calib = trained
    obs = calibrate(model, calib)
    assert sorted(obs) == sorted(linear_layers(model))
    for name, o in obs.items():
        m = dict(model.named_modules())[name]
        assert "forward" not in m.__dict__
        assert o.hessian_diag.shape == (m.in_features,) and np.all(o.hessian_diag >= 0)
        assert o.min <= o.max and o.count == sum(x.size for x, _ in calib)
        lo, hi = o.range("percentile", percentile=99.0)
        assert o.min <= lo <= hi <= o.max


def test_pbllm_hessian_needs_calibration(trained):
    model = trained[0]
    with pytest.raises(ValueError, match="observers"):
        quantize_weights(model, "pbllm", saliency="hessian")


def test_sensitivity_and_mixed_precision(trained):
    model, _, val, _ = trained
    sens = layer_sensitivity(model, lambda m: E.evaluate(m, val), "int2")
    assert sorted(sens) == sorted(linear_layers(model))
    deltas = list(sens.values())
    assert deltas == sorted(deltas, reverse=True)
    plan = mixed_precision_plan(sens, "int2", None, 2)
    assert [n for n, s in plan.items() if s is None] == list(sens)[:2]


def test_lsq_gradient_matches_the_paper():
    W = np.array([[0.26, -0.9, 0.04, 3.0]], np.float32)            # last one is clipped at 2 bits
    s = np.array([[0.5]], np.float32)
    tW, ts = minitx.tensor(W, requires_grad=True), minitx.tensor(s, requires_grad=True)
    out = LSQQuant.apply(tW, ts, 2)
    out.sum().backward()
    v = W / s
    r = np.clip(np.round(v), -1, 1)
    inside = (v >= -1) & (v <= 1)
    want_s = np.where(inside, r - v, r).sum() / np.sqrt(4 * 1)
    assert np.allclose(out.data, s * r)
    assert np.allclose(tW.grad, inside.astype(np.float32))          # straight-through
    assert np.allclose(ts.grad, want_s, **T)


@pytest.mark.parametrize("method", ["ste", "lsq"])
def test_qat_convert_keeps_the_fake_quant_forward(method):
    minitx.random.manual_seed(0)
    lin = Linear(16, 8)
    qat = QATLinear(lin, bits=3, method=method)
    x = minitx.tensor(np.random.default_rng(0).standard_normal((4, 16)).astype(np.float32))
    with minitx.no_grad():
        want = qat(x).data
        got = qat.to_quant_linear()(x).data
    assert np.allclose(got, want, **T)


def test_qat_beats_ptq_at_two_bits(trained):
    model, tr, val, _ = trained
    ptq = E.evaluate(quantize_weights(model, "int2")[0], val)
    m = copy.deepcopy(model)
    prepare_qat(m, 2, "lsq")
    E.train(m, m.parameters(), tr, 40, 8, 2e-3, seed=1, warmup=5)
    qat = E.evaluate(convert(m), val)
    assert all(isinstance(l, QuantLinear) for l in m.modules() if hasattr(l, "qweight"))
    assert qat < ptq, (qat, ptq)


def test_compensation_trains_only_the_new_layers(trained):
    model, tr, val, _ = trained
    q, _ = quantize_weights(model, "int2", block_size=32)
    lq = E.evaluate(q, val)
    frozen = {n: p.data.copy() for n, p in q.named_parameters()}
    codes = {n: m.qweight.arrays["codes"].copy() for n, m in q.named_modules()
             if isinstance(m, QuantLinear)}
    params = add_compensation(q, "adapter", rank=2)
    assert E.evaluate(q, val) == pytest.approx(lq, rel=1e-6)       # B = 0: same model at start
    E.train(q, params, tr, 30, 8, 3e-3, seed=2, warmup=5)
    lc = E.evaluate(q, val)
    assert lc < lq
    for n, m in q.named_modules():
        if isinstance(m, LoRALinear):
            base_name = n
            assert np.array_equal(m.base.qweight.arrays["codes"], codes[base_name])
    for n, p in q.named_parameters():
        if n in frozen:
            assert np.array_equal(p.data, frozen[n]), n
    assert recovered_fraction(2.0, 3.0, 2.5) == 0.5
    with pytest.raises(ValueError, match="kind"):
        add_compensation(copy.deepcopy(q), "lora")


@pytest.mark.parametrize("act_symmetric", [False, True])
def test_w8a8_integer_path_equals_fake_quant(on_backend, act_symmetric):
    minitx.random.manual_seed(3)
    lin = Linear(40, 12)
    x = np.random.default_rng(4).standard_normal((2, 3, 40)).astype(np.float32) + 0.3
    layer = W8A8Linear(lin, (float(x.min()), float(x.max())), act_symmetric)
    q_min, q_max = qrange(8, act_symmetric)
    xq = layer.x_scale * (np.clip(np.round(x / layer.x_scale) + layer.x_zero, q_min, q_max)
                          - layer.x_zero)
    want = xq @ layer.weight_float().T + layer.bias_data
    got = layer.compute(x)
    assert got.shape == (2, 3, 12)
    assert np.allclose(got, want, **T), np.abs(got - want).max()

"""Property tests for minitx.quant quantizers, codebooks, packing and bits-per-weight accounting."""
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minitx.quant as Q
from minitx.quant import packing
from minitx.quant.codebooks import FP4, NF4
from minitx.quant.integer import qrange
from minitx.quant.qtensor import QuantizedTensor, to_groups

# Tolerances, in one place. All quantizers compute in float32.
TOL = {
    "float32": {"rel": 2e-6, "abs": 1e-6},   # float32 rounding on top of an exact bound
}
T = TOL["float32"]


@st.composite
def weights(draw, max_rows=6, max_cols=40):
    """A small float32 weight matrix with a random scale (some entries may be exactly 0)."""
    rows = draw(st.integers(1, max_rows))
    cols = draw(st.integers(1, max_cols))
    seed = draw(st.integers(0, 2 ** 31 - 1))
    scale = draw(st.sampled_from([1e-3, 0.05, 1.0, 30.0]))
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((rows, cols)) * scale).astype(np.float32)
    if draw(st.booleans()):
        w[rng.random(w.shape) < 0.2] = 0.0
    return w


int_settings = st.tuples(st.sampled_from([2, 3, 4, 8]), st.booleans(),
                         st.sampled_from(["tensor", "channel", "group"]),
                         st.sampled_from([4, 8, 16]))


def _step_per_weight(q):
    """The quantization step s of each weight, shape of the original tensor."""
    R, G, g = q.meta["rows"], q.meta["groups"], q.meta["group"]
    s = np.broadcast_to(q.step[..., None], (R, G, g)).reshape(R, G * g)
    return s.reshape(R, -1)[:, : q.numel // R].reshape(q.shape)


@given(weights(), int_settings)
def test_int_round_trip_within_half_a_step(w, setting):
    bits, symmetric, granularity, group = setting
    q = Q.quantize_int(w, bits, symmetric, granularity, group if granularity == "group" else None)
    err = np.abs(q.dequantize() - w)
    bound = _step_per_weight(q) / 2 * (1 + T["rel"]) + T["abs"] * np.abs(w) + 1e-30
    worst = np.unravel_index(np.argmax(err - bound), w.shape)
    assert np.all(err <= bound), (f"{q.scheme} shape {w.shape}: error {err[worst]} > half step "
                                  f"{bound[worst]} at {worst}")


@given(weights(), int_settings)
def test_int_codes_stay_on_the_grid(w, setting):
    bits, symmetric, granularity, group = setting
    q = Q.quantize_int(w, bits, symmetric, granularity, group if granularity == "group" else None)
    q_min, q_max = qrange(bits, symmetric)
    codes = q.codes()
    assert codes.min() >= q_min and codes.max() <= q_max


# Not idempotent by design, so not listed: centred binarization (the row mean of the output is
# not the row mean of the input), PB-LLM (ties between equal binarized magnitudes and salient
# ones), double quantization (the mean of the dequantized constants shifts) and clipping ranges
# (percentile / MSE choose a new range on the already-clipped output).
@pytest.mark.parametrize("scheme,kw", [
    ("int8", {}), ("int4", {}), ("int3", {}), ("int2", {}), ("int4", {"block_size": 8}),
    ("int4", {"symmetric": False}), ("int8", {"granularity": "tensor"}),
    ("nf4", {"block_size": 8}), ("fp4", {"block_size": 8}), ("binary", {})])
@given(w=weights())
def test_quantize_is_idempotent_on_its_own_output(scheme, kw, w):
    once = Q.quantize(w, scheme, **kw).dequantize()
    twice = Q.quantize(once, scheme, **kw).dequantize()
    err = np.abs(twice - once)
    tol = T["rel"] * 4 * np.abs(once).max() + 1e-30
    assert err.max() <= tol, f"{scheme} {kw} shape {w.shape}: max change {err.max()} > {tol}"


def _norm_ppf(p):
    """Inverse standard normal CDF by bisection on math.erf (no scipy needed)."""
    lo, hi = -10.0, 10.0
    for _ in range(200):
        mid = (lo + hi) / 2
        if 0.5 * (1 + math.erf(mid / math.sqrt(2))) < p:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def test_nf4_is_the_published_table_built_from_normal_quantiles():
    # QLoRA's construction: 8 positive quantiles and 7 negative ones of N(0, 1) between
    # offset = 0.9677083 and 0.5, plus an exact zero, normalised by the largest.
    offset = 0.9677083
    pos = [_norm_ppf(p) for p in np.linspace(offset, 0.5, 9)[:-1]]
    neg = [-_norm_ppf(p) for p in np.linspace(offset, 0.5, 8)[:-1]]
    v = np.sort(np.array(pos + [0.0] + neg))
    v = v / np.abs(v).max()
    assert NF4.shape == (16,) and NF4.dtype == np.float32
    assert np.abs(v - NF4).max() < 1e-6, np.abs(v - NF4).max()


def test_codebooks_sorted_and_symmetric_where_they_should_be():
    for name, cb in (("nf4", NF4), ("fp4", FP4)):
        assert np.all(np.diff(cb) > 0), f"{name} not strictly increasing"
        assert cb[0] == -1.0 and cb[-1] == 1.0 and 0.0 in cb, name
    assert np.array_equal(FP4, -FP4[::-1]), "FP4 must be symmetric"
    # NF4 is asymmetric by design: 8 positive values, 7 negative, and an exact zero.
    assert (NF4 > 0).sum() == 8 and (NF4 < 0).sum() == 7
    assert not np.allclose(NF4, -NF4[::-1])
    for bits in (2, 3, 4, 8):
        q_min, q_max = qrange(bits, True)
        assert q_min == -q_max


def test_nf4_beats_int4_and_fp4_on_gaussian_weights():
    w = np.random.default_rng(0).standard_normal((512, 1024)).astype(np.float32)
    mse = {s: float(((Q.quantize(w, s, block_size=64).dequantize() - w) ** 2).mean())
           for s in ("nf4", "fp4", "int4")}
    assert mse["nf4"] < mse["int4"] and mse["nf4"] < mse["fp4"], mse


@given(weights(), st.booleans())
def test_binarization_keeps_signs(w, centered):
    q = Q.quantize(w, "binary", centered=centered)
    mu = w.mean(axis=1, keepdims=True) if centered else 0.0
    want = np.where(w - mu >= 0, 1.0, -1.0)
    d = q.dequantize() - (q.arrays["mean"][:, None] if centered else 0.0)
    got = np.where(d >= 0, 1.0, -1.0)
    alpha_pos = q.arrays["alpha"] > 0
    assert np.array_equal(got[alpha_pos], want[alpha_pos])


@given(weights(), st.sampled_from([0.0, 0.05, 0.25, 1.0]))
def test_pbllm_keeps_the_most_salient_fraction(w, p):
    q = Q.quantize(w, "pbllm", salient_fraction=p)
    mask = q.salient_mask()
    assert mask.sum() == round(p * w.size)
    if 0 < mask.sum() < w.size:
        assert np.abs(w[mask]).min() >= np.abs(w[~mask]).max()
    d = q.dequantize()
    # salient weights are int8 per-row absmax: within half a step of 8 bits
    s = q.arrays["salient_scale"][np.nonzero(mask)[0]]
    assert np.all(np.abs(d[mask] - w[mask]) <= s / 2 * (1 + T["rel"]) + T["abs"] * np.abs(w[mask]))
    if p == 0.0:
        assert np.allclose(d, Q.quantize(w, "binary").dequantize(), rtol=T["rel"], atol=0)


def test_pbllm_hessian_saliency_follows_input_energy():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((8, 32)).astype(np.float32)
    h = np.ones(32)
    h[:4] = 1e6                                  # inputs 0..3 are huge: their weights matter most
    q = Q.quantize(w, "pbllm", salient_fraction=32 / w.size, saliency="hessian", hessian_diag=h)
    assert q.salient_mask()[:, :4].all()
    with pytest.raises(ValueError, match="hessian_diag"):
        Q.quantize(w, "pbllm", saliency="hessian")


@given(st.integers(1, 8), st.integers(1, 4), st.integers(0, 37), st.integers(0, 2 ** 31 - 1))
def test_packing_round_trips(bits, rows, n, seed):
    codes = np.random.default_rng(seed).integers(0, 2 ** bits, (rows, n)).astype(np.uint8)
    packed = packing.pack(codes, bits)
    assert packed.dtype == np.uint8 and packed.shape == (rows, math.ceil(n * bits / 8))
    assert np.array_equal(packing.unpack(packed, n, bits), codes)
    assert np.array_equal(packing.unpack_bits(packing.pack_bits(codes, bits), n, bits), codes)


def test_int4_packing_matches_the_kernel_layout():
    from minitx.kernels import int8 as int8_kernels
    q = np.arange(-8, 8, dtype=np.int8).reshape(2, 8)
    ours = packing.pack_int4((q + 8).astype(np.uint8))
    assert np.array_equal(ours, int8_kernels.pack_int4(q))
    assert ours[0, 0] == (0 | (1 << 4))          # even k in the low nibble


def test_packing_rejects_bad_codes():
    with pytest.raises(ValueError, match="4-bit codes"):
        packing.pack_int4(np.array([0, 16]))
    with pytest.raises(TypeError, match="integer"):
        packing.pack_int2(np.array([0.5]))
    with pytest.raises(ValueError, match="bits"):
        packing.pack_bits(np.array([1]), 9)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_bits_per_weight_integer(bits):
    w = np.random.default_rng(0).standard_normal((16, 256)).astype(np.float32)
    assert Q.quantize(w, f"int{bits}").bits_per_weight == bits + 32 / 256
    assert Q.quantize(w, f"int{bits}", symmetric=False).bits_per_weight == bits + 40 / 256
    assert Q.quantize(w, f"int{bits}", block_size=64).bits_per_weight == bits + 32 / 64
    assert Q.quantize(w, f"int{bits}", granularity="tensor").bits_per_weight == bits + 32 / w.size


def test_bits_per_weight_codebooks_and_double_quant():
    w = np.random.default_rng(0).standard_normal((64, 64 * 256)).astype(np.float32)
    assert Q.quantize(w, "nf4").bits_per_weight == 4.5
    dq = Q.quantize(w, "nf4", double_quant=True)
    n_blocks = w.size // 64
    want = (4 * w.size + 8 * n_blocks + 32 * math.ceil(n_blocks / 256) + 32) / w.size
    assert dq.bits_per_weight == want
    assert round(dq.bits_per_weight, 3) == 4.127
    err_dq = np.abs(dq.dequantize() - w).mean()
    err = np.abs(Q.quantize(w, "nf4").dequantize() - w).mean()
    assert err_dq < 1.01 * err, (err_dq, err)     # the 8-bit constants cost almost nothing


def test_bits_per_weight_binary_and_pbllm():
    w = np.random.default_rng(0).standard_normal((16, 256)).astype(np.float32)
    assert Q.quantize(w, "binary").bits_per_weight == 1 + 32 / 256
    assert Q.quantize(w, "binary", centered=True).bits_per_weight == 1 + 64 / 256
    p = 0.125                                     # 512 salient weights: everything byte aligned
    want = 1 + (1 - p) * 1 + p * 8 + 64 / 256     # mask + signs + int8 values + 2 scales per row
    assert Q.quantize(w, "pbllm", salient_fraction=p).bits_per_weight == want


@pytest.mark.parametrize("scheme,kw", [("int4", {"symmetric": False}), ("int3", {"block_size": 5}),
                                       ("nf4", {"double_quant": True}), ("binary", {"centered": True}),
                                       ("pbllm", {})])
def test_state_round_trip(scheme, kw):
    w = np.random.default_rng(2).standard_normal((3, 4, 10)).astype(np.float32)
    q = Q.quantize(w, scheme, **kw)
    again = QuantizedTensor.from_state(*q.state())
    assert again.shape == w.shape and again.bits_per_weight == q.bits_per_weight
    assert np.array_equal(again.dequantize(), q.dequantize())


@given(weights(), st.sampled_from([2, 3, 4]))
def test_mse_range_is_never_worse_than_minmax(w, bits):
    err = {m: ((Q.quantize(w, f"int{bits}", range_method=m).dequantize() - w) ** 2).sum(axis=1)
           for m in ("minmax", "mse")}
    assert np.all(err["mse"] <= err["minmax"] * (1 + 1e-5) + 1e-30)


def test_clipping_beats_minmax_on_gaussian_tails():
    # At 4 bits min-max wastes levels on the rare tails of a Gaussian; clipping them pays.
    w = np.random.default_rng(3).standard_normal((4, 4096)).astype(np.float32)
    mse = {m: float(((Q.quantize(w, "int4", range_method=m).dequantize() - w) ** 2).mean())
           for m in ("minmax", "percentile", "mse")}
    assert mse["mse"] < 0.8 * mse["minmax"] and mse["percentile"] < mse["minmax"], mse


def test_groups_pad_rows_that_do_not_divide():
    assert to_groups(np.ones((2, 5), np.float32), 4).shape == (2, 2, 4)


def test_bad_input_is_named():
    w = np.ones((2, 4), np.float32)
    with pytest.raises(ValueError, match="unknown scheme 'int9'"):
        Q.quantize(w, "int9")
    with pytest.raises(ValueError, match="NaN"):
        Q.quantize(np.array([[np.nan]], np.float32))
    with pytest.raises(TypeError, match="dtype int64"):
        Q.quantize(np.ones((2, 2), np.int64))
    with pytest.raises(ValueError, match="double_quant"):
        Q.quantize(w, "int4", double_quant=True)
    with pytest.raises(ValueError, match="block_size"):
        Q.quantize(w, "nf4", block_size=0)
    with pytest.raises(ValueError, match="salient_fraction"):
        Q.quantize(w, "pbllm", salient_fraction=1.5)


@given(weights(), st.sampled_from(["nf4", "fp4"]), st.sampled_from([4, 8, 64]), st.booleans())
def test_codebook_dequantize_is_codebook_value_times_absmax(w, name, block, dq):
    q = Q.quantize(w, name, block_size=block, double_quant=dq)
    cb = {"nf4": NF4, "fp4": FP4}[name]
    want = (cb[q.indices()] * q.absmax()[..., None]).reshape(w.shape[0], -1)[:, : w.shape[1]]
    assert np.array_equal(q.dequantize(), want.reshape(w.shape))

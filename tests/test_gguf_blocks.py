"""ggml block formats (minitx.quant.ggml): exact layouts, round trips within the bound each
format promises, exact reproduction of on-grid blocks, and the relation to minitx.quant."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minitx.quant import quantize
from minitx.quant import ggml as G
from minitx.quant.ggml_types import ggml_type

FORMATS = ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"]
# (levels below / above the zero code for symmetric formats; None for min-offset formats)
GRID = {"Q8_0": (127, 127), "Q4_0": (8, 7), "Q5_0": (16, 15), "Q4_1": None, "Q5_1": None}
STEPS = {"Q4_1": 15, "Q5_1": 31}
REL_TOL = {"float32": 1e-6}            # float32 arithmetic in the bound itself


@st.composite
def matrices(draw):
    """(R, n) float32, n a multiple of 32, with occasional constant or all-zero blocks."""
    R, nb = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scale = draw(st.sampled_from([1e-3, 1.0, 50.0]))
    x = (rng.standard_normal((R, nb * 32)) * scale + draw(st.sampled_from([0.0, 3.0]))) \
        .astype(np.float32)
    kind = draw(st.sampled_from(["plain", "zero", "const"]))
    if kind != "plain":
        x[0, :32] = 0.0 if kind == "zero" else x[0, 0]
    return x


def _params(raw, name):
    """Stored per-block scale d and offset m (0 for symmetric formats), float32 (R, nb, 1)."""
    b = raw.reshape(raw.shape[0], -1, ggml_type(name).type_size)
    d = G._f16(b, 0)
    m = G._f16(b, 2) if name in STEPS else np.zeros_like(d)
    return d, m


@pytest.mark.parametrize("name", FORMATS)
@given(x=matrices())
def test_round_trip_within_the_format_bound(name, x):
    raw = G.quantize_rows(x, name)
    t = ggml_type(name)
    assert raw.shape == (x.shape[0], x.shape[1] // 32 * t.type_size) and raw.dtype == np.uint8
    y = G.dequantize_rows(raw, name, x.shape[1])
    xb, yb = x.reshape(y.shape[0], -1, 32), y.reshape(y.shape[0], -1, 32)
    d16, m16 = _params(raw, name)
    lo, hi = xb.min(-1, keepdims=True), xb.max(-1, keepdims=True)
    amax = np.abs(xb).max(-1, keepdims=True)
    if name in STEPS:             # d = (max - min) / steps, m = min; half a step + fp16 rounding
        d = (hi - lo) / STEPS[name]
        bound = d / 2 + STEPS[name] * np.abs(d - d16) + np.abs(lo - m16)
    else:
        below, above = GRID[name]
        ext = np.take_along_axis(xb, np.abs(xb).argmax(-1)[..., None], -1)
        d = ext / (-below if name != "Q8_0" else 127)
        if name == "Q8_0":
            d = amax / 127
        # values on the short side of an asymmetric grid may sit up to one step past its end
        half = np.where(xb / np.where(d != 0, d, 1) > above + 0.5, np.abs(d), np.abs(d) / 2)
        bound = half + below * np.abs(d - d16)
    bound = bound + REL_TOL["float32"] * (amax + np.abs(lo))
    err = np.abs(xb - yb)
    worst = np.unravel_index(np.argmax(err - bound), err.shape)
    assert np.all(err <= bound), f"{name} {x.shape}: worst {worst} err {err[worst]} > {bound[worst]}"
    assert np.all(yb[np.all(xb == 0, axis=-1)] == 0)           # zero blocks stay zero


def _on_grid(name, rng, R=2, nb=3):
    """Blocks exactly representable: power-of-two d, fp16 m, codes hitting both grid ends."""
    d = 2.0 ** rng.integers(-6, 3, size=(R, nb, 1))
    if name in STEPS:
        q = rng.integers(0, STEPS[name] + 1, size=(R, nb, 32))
        q[..., 0], q[..., 1] = 0, STEPS[name]
        m = rng.integers(-64, 64, size=(R, nb, 1)) / 16.0
        return (q * d + m).astype(np.float32).reshape(R, -1)
    below, above = GRID[name]
    q = rng.integers(-below, above + 1, size=(R, nb, 32))
    q[..., 0] = -below                                   # the extreme: maps to -below exactly
    return (q * d).astype(np.float32).reshape(R, -1)


@pytest.mark.parametrize("name", FORMATS)
def test_on_grid_blocks_are_exact(name):
    x = _on_grid(name, np.random.default_rng(1))
    raw = G.quantize_rows(x, name)
    np.testing.assert_array_equal(G.dequantize_rows(raw, name, x.shape[1]), x)
    np.testing.assert_array_equal(G.quantize_rows(G.dequantize_rows(raw, name, x.shape[1]),
                                                  name), raw)


def test_q4_1_layout_by_hand():
    """fp16 d, fp16 m, then 16 bytes: low nibbles = elements 0-15, high nibbles = 16-31."""
    block = np.zeros(20, np.uint8)
    block[0:2] = np.array([0.5], "<f2").view(np.uint8)
    block[2:4] = np.array([-1.0], "<f2").view(np.uint8)
    codes = np.arange(32) % 16                           # element j has code j mod 16
    block[4:20] = (codes[:16] | (codes[16:][::-1] << 4)).astype(np.uint8)   # high: 15, 14, ...
    y = G.dequantize_q4_1(block[None])[0]
    expected = 0.5 * np.concatenate([codes[:16], codes[16:][::-1]]) - 1.0
    np.testing.assert_array_equal(y, expected.astype(np.float32))


def test_q8_0_and_q4_0_layout_by_hand():
    block = np.zeros(34, np.uint8)
    block[0:2] = np.array([0.25], "<f2").view(np.uint8)
    block[2:] = np.arange(-16, 16, dtype=np.int8).view(np.uint8)
    np.testing.assert_array_equal(G.dequantize_q8_0(block[None])[0],
                                  0.25 * np.arange(-16, 16, dtype=np.float32))
    b4 = np.zeros(18, np.uint8)
    b4[0:2] = np.array([2.0], "<f2").view(np.uint8)
    b4[2:] = 0x9A                                        # low nibble 10, high nibble 9
    np.testing.assert_array_equal(G.dequantize_q4_0(b4[None])[0],
                                  np.repeat([4.0, 2.0], 16).astype(np.float32))


def test_bits_per_weight():
    bpw = {name: ggml_type(name).type_size * 8 / 32 for name in FORMATS}
    assert bpw == {"Q8_0": 8.5, "Q4_0": 4.5, "Q4_1": 5.0, "Q5_0": 5.5, "Q5_1": 6.0}


def test_q4_1_beats_minitx_int4_on_offset_groups():
    """Q4_1's float offset uses all 16 levels on [min, max]; minitx's asymmetric int4 widens the
    range to contain 0, which wastes levels on a group far from 0."""
    x = (np.random.default_rng(2).standard_normal((64, 256)) + 4.0).astype(np.float32)
    q41 = G.dequantize_rows(G.quantize_rows(x, "Q4_1"), "Q4_1", 256)
    int4 = quantize(x, "int4", block_size=32, symmetric=False).dequantize()
    mse_q41, mse_int4 = np.mean((x - q41) ** 2), np.mean((x - int4) ** 2)
    assert mse_q41 < 0.5 * mse_int4, (mse_q41, mse_int4)


def test_q8_0_is_int8_group_32_with_fp16_scales():
    """Same grid as minitx's symmetric int8 per group of 32: agree up to the fp16 scale."""
    x = np.random.default_rng(3).standard_normal((16, 128)).astype(np.float32)
    q8 = G.dequantize_rows(G.quantize_rows(x, "Q8_0"), "Q8_0", 128)
    int8 = quantize(x, "int8", block_size=32).dequantize()
    step = np.abs(x.reshape(16, -1, 32)).max(-1).repeat(32, -1).reshape(16, 128) / 127
    assert np.all(np.abs(q8 - int8) <= step * (1 + 127 * 2.0**-11) + 1e-7)


def test_bad_input():
    with pytest.raises(ValueError, match="multiple of 32"):
        G.quantize_rows(np.zeros((2, 40)), "Q4_0")
    with pytest.raises(ValueError, match="cannot decode ggml type Q6_K"):
        G.dequantize_rows(np.zeros((1, 210), np.uint8), "Q6_K", 256)
    with pytest.raises(ValueError, match="take 40 bytes"):
        G.dequantize_rows(np.zeros((1, 41), np.uint8), "Q4_1", 64)
    with pytest.raises(ValueError, match="unknown ggml type 'Q9'"):
        G.quantize_rows(np.zeros((1, 32)), "Q9")

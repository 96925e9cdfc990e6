"""The IO model reproduces FlashAttention's Theorem 2 scalings."""
import pytest

from minitx.attention import io

# Tolerances, in one place: how close measured growth factors must be to the theorem's.
TOL = {"growth": 0.05}


def test_naive_io_is_exact_algorithm_0_count():
    N, d = 1000, 64
    assert io.naive_io(N, d)["total"] == 4 * N * N + 4 * N * d
    # and it grows like N d + N^2
    r = io.naive_io(2 * N, d)["total"] / io.naive_io(N, d)["total"]
    assert r == pytest.approx(io.theorem2_naive(2 * N, d) / io.theorem2_naive(N, d), rel=TOL["growth"])


@pytest.mark.parametrize("count", [io.flash1_io, io.flash2_io])
def test_flash_io_scales_as_n2_d2_over_m(count):
    N, d, M = 16384, 64, 64 * 1024        # N large enough that the O(N d) term is negligible
    base = count(N, d, M)["total"]
    assert count(2 * N, d, M)["total"] / base == pytest.approx(4, rel=TOL["growth"])   # N^2
    assert count(N, d, 2 * M)["total"] / base == pytest.approx(0.5, rel=TOL["growth"])  # 1/M
    assert base / io.theorem2_flash(N, d, M) == pytest.approx(
        count(2 * N, d, 2 * M)["total"] / io.theorem2_flash(2 * N, d, 2 * M), rel=TOL["growth"])


def test_flash_moves_far_less_than_naive_for_realistic_sram():
    N, d, M = 4096, 64, 100 * 1024          # ~100K floats of SRAM per streaming multiprocessor
    naive = io.naive_io(N, d)["total"]
    assert io.flash1_io(N, d, M)["total"] < naive / 5
    assert io.flash2_io(N, d, M)["total"] < naive / 5


def test_causal_skipping_roughly_halves_tiled_io():
    N, d, M = 4096, 64, 64 * 1024
    for count in (io.flash1_io, io.flash2_io):
        full, causal = count(N, d, M)["total"], count(N, d, M, is_causal=True)["total"]
        assert 0.45 < causal / full < 0.6


def test_block_sizes_follow_algorithm_1_and_validate():
    assert io.block_sizes(4096, 64, 64 * 1024) == (64, 256)
    assert io.block_sizes(10, 64, 64 * 1024) == (10, 10)
    with pytest.raises(ValueError, match="fast memory M"):
        io.flash1_io(100, 64, 100)
    with pytest.raises(ValueError, match="N must be"):
        io.naive_io(0, 64)

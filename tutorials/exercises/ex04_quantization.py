"""Exercises for tutorial 04: quantization. Grade with `python -m minitx grade 04`.

Replace each `raise NotImplementedError` with your code; NumPy only. The answer key is
minitx/quant/ (integer.py, codebooks.py, binary.py). Rounding is np.round (half to even).
"""
import numpy as np  # noqa: F401  (you will need it)

# The 16 NF4 values of QLoRA (Dettmers et al. 2023), index = the stored 4-bit code.
NF4 = np.array([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0], dtype=np.float32)


def quantize_int8_per_channel(w):
    """Symmetric absmax int8, one scale per output channel (row), as llama2.c stores weights.

    s_r = max_j |w_rj| / 127 (computed in float32; a row of zeros gets s_r = 1), codes
    round(w / s) clipped to [-127, 127].

    Args:
        w: (R, C) float32.
    Returns:
        (codes (R, C) int8, scale (R,) float32); w ~ codes * scale[:, None].
    """
    raise NotImplementedError


def quantize_asymmetric(x, bits):
    """Asymmetric min-max quantization of a whole tensor (Nagel et al. 2021, eqs. 3-4).

    Widen [min x, max x] to contain 0, s = (hi - lo) / (2^bits - 1) as float32 (1 if the range
    is empty), zero point z = clip(round(-lo / s), 0, 2^bits - 1), codes
    clip(round(x / s) + z, 0, 2^bits - 1).

    Args:
        x: (n,) float32; bits: int in [2, 8].
    Returns:
        (codes (n,) int32, s () float32, z () int32); x ~ s * (codes - z).
    """
    raise NotImplementedError


def nf4_quantize_block(x):
    """NF4 quantization of one block (QLoRA, section 3): absmax scaling, nearest code.

    c = max |x| (1 if the block is all zeros); each x / c goes to the index of the nearest NF4
    value (a value exactly halfway goes to the larger code).

    Args:
        x: (n,) float32, one block, n <= 64.
    Returns:
        (codes (n,) uint8 in [0, 15], absmax () float32); x ~ NF4[codes] * absmax.
    """
    raise NotImplementedError


def binarize(w):
    """Binarize each row with its L2-optimal scale (XNOR-Net): w_r ~ alpha_r * sign(w_r).

    alpha_r = mean_j |w_rj|; sign(0) counts as +1.

    Args:
        w: (R, C) float32.
    Returns:
        (signs (R, C) float32 of +-1, alpha (R,) float32).
    """
    raise NotImplementedError

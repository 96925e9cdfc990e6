"""The answer key of the course's exercises (tutorials/exercises/): minitx itself.

Each entry registers, with `@exercise(name, file, reference, outputs)`, a function that draws the
exercise's random arguments; `reference` is minitx's own implementation, adapted to the
exercise's signature when minitx's function takes more. `python -m minitx grade` compares the
learner's function with it (minitx/grade.py). Entries are in course order; the adapters import
minitx lazily so that listing the exercises stays cheap.
"""
import numpy as np

from minitx.grade import exercise


def _backward(f, *arrays, grad_out):
    """Gradients of sum(f(*tensors) * grad_out) w.r.t. every array, by minitx's autograd."""
    from minitx.autograd import Tensor

    ts = [Tensor(a.copy(), requires_grad=True) for a in arrays]
    (f(*ts) * Tensor(grad_out)).sum().backward()
    return tuple(t.grad if t.grad is not None else np.zeros_like(a) for t, a in zip(ts, arrays))


def _ref_tanh_backward(x, grad_out):
    return _backward(lambda t: t.tanh(), x, grad_out=grad_out)[0]


@exercise("01.tanh_backward", "ex01_autograd.py", _ref_tanh_backward, ("grad_x",))
def _(g):
    shape = (g.int(1, 4), g.int(1, 5))
    return {"x": g.array(shape, scale=2.0), "grad_out": g.array(shape)}


def _ref_softmax_backward(x, grad_out):
    from minitx.nn.functional import softmax
    return _backward(lambda t: softmax(t, dim=-1), x, grad_out=grad_out)[0]


@exercise("01.softmax_backward", "ex01_autograd.py", _ref_softmax_backward, ("grad_x",))
def _(g):
    shape = (g.int(1, 4), g.int(1, 6))
    return {"x": g.array(shape, scale=3.0), "grad_out": g.array(shape)}


def _ref_matmul_backward(a, b, grad_out):
    return _backward(lambda x, y: x @ y, a, b, grad_out=grad_out)


@exercise("01.matmul_backward", "ex01_autograd.py", _ref_matmul_backward, ("grad_a", "grad_b"))
def _(g):
    M, K, N = g.int(1, 5), g.int(1, 5), g.int(1, 5)
    return {"a": g.array((M, K)), "b": g.array((K, N)), "grad_out": g.array((M, N))}


def _ref_sum_to_shape(grad, shape):
    return _backward(lambda x, y: x + y, np.zeros(shape), np.zeros(grad.shape), grad_out=grad)[0]


@exercise("01.sum_to_shape", "ex01_autograd.py", _ref_sum_to_shape, ("grad_x",))
def _(g):
    out = tuple(g.int(1, 4) for _ in range(g.int(1, 3)))
    shape = tuple(1 if g.flag() else n for n in out)[g.int(0, len(out) - 1):]  # broadcastable
    return {"grad": g.array(out), "shape": shape}


class Objective:
    """f(x) = sum(w * tanh(x) + x^2 / 2): a float of an array, and a minitx Tensor twin."""

    def __init__(self, w):
        self.w = w

    def __call__(self, x):
        return float((self.w * np.tanh(x) + 0.5 * x * x).sum())

    def tensor(self, t):
        from minitx.autograd import Tensor
        return (Tensor(self.w) * t.tanh() + t * t * 0.5).sum()

    def __repr__(self):
        return f"Objective(w of shape {self.w.shape})"


def _ref_numerical_gradient(f, x, eps):
    from minitx.autograd import Tensor
    t = Tensor(x.copy(), requires_grad=True)
    f.tensor(t).backward()
    return t.grad


# Central differences have error ~eps^2 (1e-8 at eps = 1e-4, plus rounding ~1e-12): the float64
# tolerance of gradcheck itself. A one-sided difference (error ~eps = 1e-4) fails it.
@exercise("01.numerical_gradient", "ex01_autograd.py", _ref_numerical_gradient, ("grad",),
          tolerances={"float64": (1e-6, 1e-5)})
def _(g):
    shape = (g.int(1, 3), g.int(1, 4))
    return {"f": Objective(g.array(shape)), "x": g.array(shape), "eps": 1e-4}


def _ref_attention(q, k, v, is_causal):
    from minitx.attention.naive import naive_forward
    return naive_forward(q[None, None], k[None, None], v[None, None], is_causal=is_causal)[0][0, 0]


@exercise("02.attention", "ex02_flash_attention.py", _ref_attention, ("o",))
def _(g):
    Nq, d = g.int(1, 6), g.int(1, 5)
    Nk = Nq + g.int(0, 3)
    return {"q": g.array((Nq, d)), "k": g.array((Nk, d)), "v": g.array((Nk, d)),
            "is_causal": g.flag()}


def _ref_causal_mask(Nq, Nk, window):
    from minitx.attention.masks import allowed
    return allowed(np.arange(Nq), np.arange(Nk), Nq, Nk, -1 if window is None else window, 0)


@exercise("02.causal_mask", "ex02_flash_attention.py", _ref_causal_mask, ("mask",))
def _(g):
    Nq = g.int(1, 7)
    return {"Nq": Nq, "Nk": Nq + g.int(0, 5), "window": g.choice([None, 0, 1, 2, 3])}


def _ref_online_softmax(x, chunk):
    from minitx.kernels.fused import softmax_lastdim
    i = int(np.argmax(x))
    return x[i], 1.0 / softmax_lastdim(x)[i]          # p[argmax] = exp(m - m) / l = 1 / l


@exercise("02.online_softmax", "ex02_flash_attention.py", _ref_online_softmax, ("m", "l"))
def _(g):
    return {"x": g.array(g.int(1, 40), scale=g.choice([1.0, 10.0, 100.0])), "chunk": g.int(1, 9)}


def _ref_flash2_forward_block(Qi, K, V, Bc, scale):
    from minitx.attention.flash2 import flash2_forward
    o, L = flash2_forward(Qi[None, None], K[None, None], V[None, None], scale=scale,
                          Br=len(Qi), Bc=Bc)
    return o[0, 0], L[0, 0]


@exercise("02.flash2_forward_block", "ex02_flash_attention.py", _ref_flash2_forward_block,
          ("O_i", "L_i"))
def _(g):
    Br, Nk, d = g.int(1, 5), g.int(1, 12), g.int(1, 6)
    return {"Qi": g.array((Br, d)), "K": g.array((Nk, d)), "V": g.array((Nk, d)),
            "Bc": g.int(1, 5), "scale": d ** -0.5}


def _gemm():
    from minitx.kernels import gemm
    return gemm


@exercise("03.pack_a", "ex03_gemm.py", lambda A_blk: _gemm().pack_a(A_blk), ("Ap",))
def _(g):
    return {"A_blk": g.array((g.int(1, 20), g.int(1, 6)), dtype=np.float32)}


@exercise("03.pack_b", "ex03_gemm.py", lambda B_blk: _gemm().pack_b(B_blk), ("Bp",))
def _(g):
    return {"B_blk": g.array((g.int(1, 6), g.int(1, 40)), dtype=np.float32)}


@exercise("03.micro_kernel", "ex03_gemm.py",
          lambda a_panel, b_panel: _gemm().micro_kernel(a_panel, b_panel), ("tile",))
def _(g):
    kc = g.int(1, 12)
    return {"a_panel": g.array((kc, 6)), "b_panel": g.array((kc, 16))}


# float32 sums of up to 20 products in another order differ by a few ulps of the largest term.
@exercise("03.matmul_blocked", "ex03_gemm.py", lambda A, B: _gemm().matmul(A, B), ("C",),
          tolerances={"float32": (2e-5, 1e-4)})
def _(g):
    M, K, N = g.int(1, 20), g.int(1, 20), g.int(1, 40)
    return {"A": g.array((M, K), dtype=np.float32), "B": g.array((K, N), dtype=np.float32)}


def _ref_int8(w):
    from minitx.quant.integer import quantize_int
    q = quantize_int(w, bits=8, symmetric=True, granularity="channel")
    return q.codes().reshape(w.shape).astype(np.int8), q.step[:, 0]


def _weights(g, dtype=np.float32):
    """A weight matrix; hypothesis may zero its first row (a dead channel: scale must stay > 0)."""
    w = g.array((g.int(1, 5), g.int(1, 70)), dtype=dtype, scale=g.choice([0.02, 1.0, 50.0]))
    if g.flag():
        w[0] = 0
    return w


@exercise("04.quantize_int8_per_channel", "ex04_quantization.py", _ref_int8, ("codes", "scale"))
def _(g):
    return {"w": _weights(g)}


def _ref_asym(x, bits):
    from minitx.quant.integer import quantize_codes, scale_zero
    s, z = scale_zero(x.min(), x.max(), bits, symmetric=False)
    return quantize_codes(x, s, z, bits, symmetric=False), s, z


@exercise("04.quantize_asymmetric", "ex04_quantization.py", _ref_asym, ("codes", "s", "z"))
def _(g):
    x = g.array(g.int(1, 50), dtype=np.float32) + np.float32(g.choice([0.0, 2.0, -3.0]))
    return {"x": x, "bits": g.choice([2, 3, 4, 8])}


def _ref_nf4(x):
    from minitx.quant.codebooks import quantize_codebook
    q = quantize_codebook(x, "nf4", block_size=x.size)
    return q.indices().reshape(-1), q.absmax().reshape(())


@exercise("04.nf4_quantize_block", "ex04_quantization.py", _ref_nf4, ("codes", "absmax"))
def _(g):
    return {"x": g.array(g.int(1, 64), dtype=np.float32, scale=g.choice([0.01, 1.0]))}


def _ref_binarize(w):
    from minitx.quant.binary import binarize
    from minitx.quant.packing import unpack_bits
    q = binarize(w)
    signs = unpack_bits(q.arrays["signs"], w.shape[1], 1).astype(np.float32) * 2 - 1
    return signs, q.arrays["alpha"]


@exercise("04.binarize", "ex04_quantization.py", _ref_binarize, ("signs", "alpha"))
def _(g):
    return {"w": _weights(g)}


def _curriculum():
    from minitx import curriculum
    return curriculum


@exercise("05.fixed_root", "ex05_curriculum.py",
          lambda step, min_difficulty, max_difficulty, total_curriculum_step, difficulty_step,
          root_degree: _curriculum().fixed_root(step, min_difficulty, max_difficulty,
                                                total_curriculum_step, difficulty_step,
                                                root_degree), ("difficulty",))
def _(g):
    lo = g.int(1, 64)
    S = g.int(1, 500)
    return {"step": g.int(1, 2 * S), "min_difficulty": lo, "max_difficulty": lo + g.int(0, 1024),
            "total_curriculum_step": S, "difficulty_step": g.choice([1, 8, 16]),
            "root_degree": g.int(1, 3)}


@exercise("05.reshape_batch", "ex05_curriculum.py",
          lambda x, y, L: _curriculum().reshape_batch(x, y, L), ("x_rows", "y_rows"))
def _(g):
    B, T = g.int(1, 4), g.int(1, 20)
    x = (g.array((B, T + 1)) * 100).astype(np.int64) % 256
    return {"x": x[:, :-1], "y": x[:, 1:], "L": g.int(1, T)}


# ---- 06: growth ----------------------------------------------------------------------------------

def _ref_masked_layer_norm(x, weight, bias, mask, eps):
    from minitx.autograd import Tensor
    from minitx.growth.masks import _MaskedNorm
    return _MaskedNorm.apply(Tensor(x), Tensor(weight), Tensor(bias), mask, eps, True).data


@exercise("06.masked_layer_norm", "ex06_growth.py", _ref_masked_layer_norm, ("y",))
def _(g):
    C = g.int(2, 12)
    mask = np.where(np.arange(C) < g.int(1, C), 1.0, g.choice([0.0, 0.5]))
    return {"x": g.array((g.int(1, 3), C)), "weight": g.array((C,)), "bias": g.array((C,)),
            "mask": mask, "eps": 1e-5}


# ---- 07: LoRA ------------------------------------------------------------------------------------

def _ref_lora_forward(x, W, A, B, alpha):
    from minitx.autograd import Tensor
    from minitx.lora import LoRALinear
    from minitx.nn.modules import Linear
    base = Linear(W.shape[1], W.shape[0], bias=False)
    base.weight.data = W.copy()
    layer = LoRALinear(base, r=A.shape[0], alpha=alpha)
    layer.lora_A.data, layer.lora_B.data = A.copy(), B.copy()
    return layer(Tensor(x)).data


@exercise("07.lora_forward", "ex07_lora.py", _ref_lora_forward, ("y",))
def _(g):
    n, k, m, r = g.int(1, 5), g.int(1, 8), g.int(1, 8), g.int(1, 4)
    return {"x": g.array((n, k)), "W": g.array((m, k)), "A": g.array((r, k)),
            "B": g.array((m, r)), "alpha": g.choice([1.0, 8.0, 16.0])}


# ---- 08: a ggml block format ---------------------------------------------------------------------

def _ref_dequantize_q4_1(raw):
    from minitx.quant.ggml import dequantize_q4_1
    return dequantize_q4_1(raw)


@exercise("08.dequantize_q4_1", "ex08_llama.py", _ref_dequantize_q4_1, ("w",))
def _(g):
    from minitx.quant.ggml import quantize_q4_1
    rows, blocks = g.int(1, 3), g.int(1, 3)
    return {"raw": quantize_q4_1(g.array((rows, 32 * blocks)).astype(np.float32))}


# ---- 09: a block-sparse layout -------------------------------------------------------------------

def _ref_sliding_window(n, w, causal):
    from minitx.attention.sparse import sliding_window
    return sliding_window(n, w, causal)


@exercise("09.sliding_window", "ex09_long_context.py", _ref_sliding_window, ("layout",))
def _(g):
    return {"n": g.int(1, 12), "w": g.int(0, 4), "causal": g.flag()}

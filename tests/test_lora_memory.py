"""QLoRA's memory machinery: activation checkpointing (bit-identical gradients), the paged AdamW,
the packed base during training, and the memory arithmetic of the QLoRA paper."""
import copy
import tracemalloc

import numpy as np
import pytest

import minitx
from minitx import random as _random
from minitx.autograd import Tensor
from minitx.lora import apply_lora, lora_parameters, memory_estimate, prepare_qlora
from minitx.models.gpt import GPT, get_config
from minitx.nn.checkpoint import checkpoint, checkpoint_modules
from minitx.nn.modules import Linear, Module, ModuleList
from minitx.optim import AdamW, PagedAdamW
from minitx.quant.linear import QuantLinear

GB = 1e9


def _grads(model, idx, ckpt, params=None):
    if ckpt:
        checkpoint_modules(model.blocks)
    minitx.manual_seed(5)
    _, loss = model(idx[:, :-1], idx[:, 1:])
    loss.backward()
    after = _random.get_state()
    params = params if params is not None else [p for p in model.parameters() if p.requires_grad]
    return loss.data.copy(), [p.grad.copy() for p in params], after


@pytest.mark.parametrize("setup", ["full", "lora", "qlora"])
def test_checkpointing_gives_bit_identical_gradients(on_backend, setup):
    minitx.manual_seed(0)
    model = GPT(get_config("tiny", dropout=0.2))
    if setup == "lora":
        apply_lora(model, r=3, alpha=6, target_modules="all-linear", dropout=0.1)
    elif setup == "qlora":
        prepare_qlora(model, "nf4", r=3, alpha=6, dropout=0.1)
    for p in lora_parameters(model):
        p.data = np.random.default_rng(1).standard_normal(p.shape).astype(np.float32) * 0.1
    model.train()
    idx = np.random.default_rng(2).integers(0, 256, (3, 17))
    plain = copy.deepcopy(model)
    loss0, g0, rng0 = _grads(plain, idx, ckpt=False)
    loss1, g1, rng1 = _grads(model, idx, ckpt=True)
    assert loss0 == loss1
    assert len(g0) == len(g1) > 0
    for a, b in zip(g0, g1):
        assert np.array_equal(a, b), np.abs(a - b).max()
    assert rng0 == rng1                               # the generator continues identically
    model.eval()                                      # evaluation runs the plain forward
    assert np.array_equal(model(idx)[0].data, plain.eval()(idx)[0].data)


def test_checkpoint_function_and_no_grad_inputs():
    """Weights inside are reached even when no input requires grad (a frozen embedding)."""
    minitx.manual_seed(3)
    lin = Linear(5, 4)
    x = Tensor(np.random.default_rng(0).standard_normal((2, 5)).astype(np.float32))
    plain = (lin(x).tanh() * 3.0).sum()
    plain.backward()
    want = [lin.weight.grad.copy(), lin.bias.grad.copy()]
    lin.zero_grad()
    out = checkpoint(lambda t: lin(t).tanh() * 3.0, x).sum()
    assert out.item() == plain.item()
    out.backward()
    assert np.array_equal(lin.weight.grad, want[0]) and np.array_equal(lin.bias.grad, want[1])
    with pytest.raises(TypeError, match="Tensor"):
        checkpoint(lambda t: t.data, Tensor(np.ones(2, np.float32), requires_grad=True))


class _Stack(Module):
    def __init__(self, n, width):
        super().__init__()
        self.layers = ModuleList([Linear(width, width) for _ in range(n)])

    def forward(self, x):
        for lin in self.layers:
            x = lin(x)
        return x


def _peak(fn):
    tracemalloc.start()
    tracemalloc.reset_peak()
    fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def test_qlora_keeps_the_base_packed():
    """A step of QLoRA never holds more than about one dequantized layer: the peak traced memory
    of forward + backward through 8 NF4 layers of 512 x 512 stays far below the 8 MB of float
    weights (one layer's float32 weight is 1 MB)."""
    minitx.manual_seed(0)
    model = _Stack(8, 512)
    float_bytes = sum(p.data.nbytes for p in model.parameters())
    for i, lin in enumerate(list(model.layers)):
        model.layers._list[i] = QuantLinear.from_linear(lin, "nf4", double_quant=True)
        setattr(model.layers, str(i), model.layers._list[i])
    apply_lora(model, r=4, alpha=8, target_modules="all-linear")
    x = Tensor(np.random.default_rng(0).standard_normal((2, 512)).astype(np.float32))

    def step():
        model(x).sum().backward()

    step()                                            # warm up caches and kernels
    peak = _peak(step)
    assert peak < 0.4 * float_bytes, (peak, float_bytes)
    for m in model.layers:
        assert isinstance(m.base, QuantLinear) and m.base.bias.grad is None
        assert m.lora_A.grad is not None


def test_paged_adamw_equals_adamw(tmp_path):
    rng = np.random.default_rng(0)
    shapes = [(5, 3), (7,)]
    ps = [[Tensor(rng.standard_normal(s).astype(np.float32), requires_grad=True) for s in shapes]]
    ps.append([Tensor(p.data.copy(), requires_grad=True) for p in ps[0]])
    a = AdamW(ps[0], lr=0.01, weight_decay=0.1)
    b = PagedAdamW(ps[1], lr=0.01, weight_decay=0.1, directory=str(tmp_path))
    for _ in range(4):
        for p, q in zip(*ps):
            p.grad = rng.standard_normal(p.shape).astype(np.float32)
            q.grad = p.grad.copy()
        a.step()
        b.step()
    for p, q in zip(*ps):
        assert np.array_equal(p.data, q.data)
    st = b.state[id(ps[1][0])]
    assert isinstance(st["exp_avg"], np.memmap) and isinstance(st["exp_avg_sq"], np.memmap)
    assert list(tmp_path.iterdir()) == []             # files unlinked, pages kept by the map
    c = PagedAdamW(ps[1], lr=0.01, weight_decay=0.1)  # resume into memory-mapped state
    c.load_state_dict(b.state_dict())
    assert isinstance(c.state[id(ps[1][0])]["exp_avg"], np.memmap)
    for key, v in b.state_dict()["state"].items():
        assert np.array_equal(np.asarray(c.state_dict()["state"][key]), np.asarray(v)), key


def test_memory_estimate_reproduces_the_qlora_paper():
    full = memory_estimate("llama-65b", "full16")
    assert 65.0e9 < full["params"] < 65.5e9                          # LLaMA-65B: 65.2 B
    static = full["weights"] + full["gradients"] + full["optimizer"]
    assert static == 12 * full["params"] and static > 780 * GB       # ">780 GB"
    q = memory_estimate("llama-65b", "qlora", r=64, target_modules="all-linear",
                        batch_size=1, seq_len=512)
    assert q["total"] < 48 * GB                                     # "<48 GB"
    assert q["total"] == sum(q[k] for k in ("weights", "adapters", "gradients", "optimizer",
                                            "activations"))
    # 7B, adapters of 0.2% of the weights: the paper's "26 MB" of LoRA parameters (MiB, 16 bit)
    q7 = memory_estimate("llama-7b", "qlora", lora_fraction=0.002)
    assert round(q7["adapters"] / 2 ** 20) == 26
    assert q7["activations_checkpointing"] < q7["activations_no_checkpointing"]
    lora = memory_estimate("llama-7b", "lora16")
    assert lora["weights"] > 3.4 * q7["weights"]                     # 16 vs 4.127 bits (+ embeddings)
    with pytest.raises(ValueError, match="method"):
        memory_estimate("llama-7b", "qlora8")
    with pytest.raises(ValueError, match="unknown model"):
        memory_estimate("llama-8b")


def test_memory_estimate_counts_a_minitx_model():
    cfg = get_config("tiny")
    minitx.manual_seed(0)
    model = GPT(cfg)
    est = memory_estimate(model, "full32", seq_len=cfg.block_size)
    assert est["params"] == model.num_params() - sum(p.data.size for n, p in
                                                     model.named_parameters()
                                                     if n.endswith("bias"))
    params = apply_lora(model, r=4, alpha=4, target_modules="all-linear")
    lo = memory_estimate(cfg, "lora32", r=4, target_modules="all-linear")
    assert lo["trainable"] == sum(p.data.size for p in params)

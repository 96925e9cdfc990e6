"""QLoRA on GGUF blocks: GGMLLinear (a GGUF file's Q8_0 / Q4_0 / Q4_1 / Q5_x rows, frozen) under
LoRALinear, against the same adapter on a float Linear holding the dequantized weight; the base
gets no gradient and its bytes never change; a GPT loaded from a synthetic GGUF file."""
import hashlib
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, strategies as st

import minitx
from minitx import gguf_model
from minitx.autograd import Tensor
from minitx.gguf_export import export_gguf
from minitx.lora import (LoRALinear, apply_lora, lora_layers, lora_parameters,
                         merge_and_unload, save_adapter, trainable_parameters)
from minitx.lora_gguf import GGMLLinear, load_gguf_gpt
from minitx.models.gpt import GPT, GPTConfig
from minitx.nn.modules import Linear
from minitx.optim import AdamW
from minitx.safetensors import load_file

# tolerances, keyed by what is compared: the block kernels / row-tiled products against NumPy's
# float32 product with the dequantized weight (same values, other summation orders)
TOL = {"float32": dict(rtol=2e-5, atol=2e-5), "logits": dict(rtol=0, atol=1e-4)}
TYPES = ["Q8_0", "Q4_1", "Q4_0", "Q5_0", "Q5_1"]


def make_pair(qtype, n_in, n_out, r, alpha, seed):
    """(LoRALinear over GGMLLinear, LoRALinear over a float Linear with W_hat), same A and B."""
    rng = np.random.default_rng(seed)
    w = (0.2 * rng.standard_normal((n_out, n_in))).astype(np.float32)
    base = GGMLLinear.from_float(w, qtype)
    ref = Linear(n_in, n_out, bias=False)
    ref.weight.data = base.weight_float()
    q, f = LoRALinear(base, r=r, alpha=alpha), LoRALinear(ref, r=r, alpha=alpha)
    for layer in (q, f):
        layer.lora_A.data = rng.standard_normal((r, n_in)).astype(np.float32) if layer is q \
            else q.lora_A.data.copy()
        layer.lora_B.data = (0.1 * np.arange(n_out * r).reshape(n_out, r) % 0.7).astype(
            np.float32) if layer is q else q.lora_B.data.copy()
    return q, f


cases = st.fixed_dictionaries(dict(
    qtype=st.sampled_from(TYPES), n_in=st.sampled_from([32, 64, 96]),
    n_out=st.sampled_from([1, 7, 40, 300]), r=st.integers(1, 5), alpha=st.sampled_from([1, 8.0]),
    lead=st.sampled_from([(3,), (2, 5), (20,)]), seed=st.integers(0, 1000)))


@given(cases)
def test_lora_on_blocks_matches_the_dequantized_float_reference(on_backend, c):
    q, f = make_pair(c["qtype"], c["n_in"], c["n_out"], c["r"], c["alpha"], c["seed"])
    x0 = np.random.default_rng(c["seed"] + 1).standard_normal(c["lead"] + (c["n_in"],))
    g = np.random.default_rng(c["seed"] + 2).standard_normal(c["lead"] + (c["n_out"],))
    outs = []
    for layer in (q, f):
        x = Tensor(x0.astype(np.float32), requires_grad=True)
        y = layer(x)
        (y * Tensor(g.astype(np.float32))).sum().backward()
        outs.append((y.data, x.grad, layer.lora_A.grad, layer.lora_B.grad))
    for name, got, want in zip(("y", "dx", "dA", "dB"), *outs):
        np.testing.assert_allclose(got, want, **TOL["float32"], err_msg=f"{name} {c}")
    assert q.base.parameters() == [] and not q.base.raw.flags.writeable


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_1"])
def test_training_never_touches_the_blocks(on_backend, qtype):
    q, _ = make_pair(qtype, 64, 48, 4, 8, 0)
    before = hashlib.sha256(q.base.raw.tobytes()).hexdigest()
    opt = AdamW(lora_parameters_of(q), lr=1e-2)
    x = Tensor(np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32))
    B0 = q.lora_B.data.copy()
    for _ in range(3):
        (q(x) ** 2).sum().backward()
        opt.step()
        q.zero_grad()
    assert hashlib.sha256(q.base.raw.tobytes()).hexdigest() == before
    assert not np.array_equal(q.lora_B.data, B0)                   # the adapter did train
    with pytest.raises(ValueError, match="read-only"):
        q.base.raw[0, 0] = 1


def lora_parameters_of(layer):
    return [layer.lora_A, layer.lora_B]


def test_no_float_copy_of_the_weight_is_made(on_backend):
    """Forward and backward through an 8192 x 512 Q4_1 layer (16 MiB as float32) stay far below
    one float copy: NR = 256 rows (0.5 MiB) are decoded at a time (with the decoder's
    temporaries, measured ~2 MiB on either backend, whatever the number of rows)."""
    w = np.random.default_rng(3).standard_normal((8192, 512)).astype(np.float32)
    q = LoRALinear(GGMLLinear.from_float(w, "Q4_1"), r=4, alpha=8)
    x = Tensor(np.random.default_rng(0).standard_normal((8, 512)).astype(np.float32),
               requires_grad=True)
    float_bytes = 8192 * 512 * 4
    tracemalloc.start()
    try:
        q(x).sum().backward()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert x.grad is not None and peak < float_bytes / 4, (peak, float_bytes)


def test_merge_on_blocks_returns_a_float_linear_and_keeps_the_blocks():
    q, f = make_pair("Q4_1", 64, 40, 3, 6, 1)
    raw = q.base.raw.copy()
    lin = q.merge()
    assert isinstance(lin, Linear) and q.base.raw.tobytes() == raw.tobytes() and not q.merged
    np.testing.assert_allclose(lin.weight.data, f.base.weight.data + f.delta_weight(),
                               **TOL["float32"])
    with pytest.raises(ValueError, match="never merged in place"):
        q.unmerge()


def test_bad_blocks_are_refused():
    raw = np.zeros((4, 34), np.uint8)                               # one Q8_0 block per row
    with pytest.raises(ValueError, match="Q8_0 rows of in_features=64 take 68 bytes"):
        GGMLLinear(raw, "Q8_0", 64)
    with pytest.raises(ValueError, match="holds one of"):
        GGMLLinear(np.zeros((4, 128), np.uint8), "F32", 32)
    with pytest.raises(TypeError, match="uint8"):
        GGMLLinear(raw.astype(np.int8), "Q8_0", 32)
    with pytest.raises(ValueError, match="expects 32 input features"):
        GGMLLinear(raw, "Q8_0", 32)(Tensor(np.zeros((2, 16), np.float32)))


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    minitx.manual_seed(0)
    cfg = GPTConfig(vocab_size=256, block_size=64, n_layer=2, n_head=2, n_kv_head=1, n_embd=64,
                    ffn_hidden=96, norm="rmsnorm", pos="rope", mlp="swiglu", bias=False,
                    tie_weights=True, fused_qkv=False)
    path = tmp_path_factory.mktemp("tiny_gguf") / "tiny.gguf"
    export_gguf(GPT(cfg), str(path), "q4_1")
    return str(path)


def test_gpt_from_gguf_keeps_the_files_blocks(on_backend, tiny_gguf, tmp_path):
    model = load_gguf_gpt(tiny_gguf)
    ref = gguf_model.load_gpt(tiny_gguf)                            # every weight decoded
    ggml = {n: m for n, m in model.named_modules() if isinstance(m, GGMLLinear)}
    assert len(ggml) == 14 and {m.type_name for m in ggml.values()} == {"Q4_1"}
    assert not any(isinstance(m, Linear) for m in model.modules())
    ids = np.random.default_rng(0).integers(0, 256, (2, 20))
    np.testing.assert_allclose(model(ids)[0].data, ref(ids)[0].data, **TOL["logits"])
    minitx.manual_seed(0)
    apply_lora(model, r=2, alpha=4, target_modules=["q_proj", "v_proj"])
    n_train, n_total = trainable_parameters(model)
    # 2 layers x r=2 x (q_proj: 64 in + 64 out, v_proj: 64 in + 32 out)
    assert n_train == 2 * 2 * (64 + 64 + 64 + 32) and n_total == ref.num_parameters() + n_train
    for _, layer in lora_layers(model):
        layer.lora_B.data += 0.01
    loss = model(ids, ids)[1]
    loss.backward()
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)
    assert all(p.grad is not None for p in lora_parameters(model))
    save_adapter(model, str(tmp_path / "a"))
    keys = set(load_file(str(tmp_path / "a" / "adapter_model.safetensors")))
    assert "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight" in keys
    with pytest.raises(ValueError, match="quantized"):
        merge_and_unload(model)


def test_activation_checkpointing_over_blocks_is_bit_identical(tiny_gguf):
    from minitx.nn.checkpoint import checkpoint_modules
    ids = np.random.default_rng(1).integers(0, 256, (2, 16))
    grads = []
    for ckpt in (False, True):
        model = load_gguf_gpt(tiny_gguf).train()
        minitx.manual_seed(0)
        apply_lora(model, r=2, alpha=4, target_modules="all-linear")
        for _, layer in lora_layers(model):
            layer.lora_B.data += 0.01
        if ckpt:
            checkpoint_modules(model.blocks)
        model(ids, ids)[1].backward()
        grads.append([p.grad for p in lora_parameters(model)])
    assert all(np.array_equal(a, b) for a, b in zip(*grads))

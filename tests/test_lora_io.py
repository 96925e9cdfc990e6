"""PEFT adapter files: key names, config fields, round trips, clear errors, and PEFT's own logits
(tests/data/peft_llama, made by benchmarks/make_peft_reference.py with torch 2.13 + peft)."""
import json
import os

import numpy as np
import pytest

import minitx
from minitx.lora import LoRALinear, apply_lora, load_adapter, save_adapter
from minitx.lora_io import AdapterError, hf_llama_path, load_hf_llama_weights
from minitx.models.gpt import GPT, get_config
from minitx.nn.modules import RMSNorm
from minitx.safetensors import load_file, load_metadata, save_file

DATA = os.path.join(os.path.dirname(__file__), "data", "peft_llama")
# float32 logits of the same network in PyTorch and minitx: different summation orders
TOL = {"float32": dict(rtol=1e-4, atol=1e-5)}
SHAPE = dict(vocab_size=64, n_embd=32, n_head=2, n_layer=2, block_size=32)


def ref_model():
    ref = load_file(os.path.join(DATA, "reference.safetensors"))
    eps = json.loads(load_metadata(os.path.join(DATA, "reference.safetensors"))["rms_norm_eps"])
    model = GPT(get_config("llama", **SHAPE))
    for m in model.modules():
        if isinstance(m, RMSNorm):
            m.eps = eps
    load_hf_llama_weights(model, load_file(os.path.join(DATA, "base.safetensors")))
    return model.eval(), ref


def test_the_base_matches_pytorch():
    model, ref = ref_model()
    np.testing.assert_allclose(model(ref["ids"])[0].data, ref["base_logits"], **TOL["float32"])


@pytest.mark.parametrize("adapter, key", [("minitx_adapter", "peft_logits_minitx_adapter"),
                                          ("peft_adapter", "peft_logits_peft_adapter")])
def test_same_logits_as_peft(adapter, key):
    """PEFT loads minitx's adapter and gives minitx's logits; minitx loads PEFT's (rsLoRA)."""
    model, ref = ref_model()
    config = load_adapter(model, os.path.join(DATA, adapter), name_map="hf-llama")
    got = model(ref["ids"])[0].data
    np.testing.assert_allclose(got, ref[key], **TOL["float32"])
    assert np.abs(ref[key] - ref["base_logits"]).max() > 0.1      # the adapter does something
    assert config["peft_type"] == "LORA" and config["r"] == 4


def test_minitx_adapter_file_is_what_save_adapter_writes(tmp_path):
    model, _ = ref_model()
    load_adapter(model, os.path.join(DATA, "minitx_adapter"), name_map="hf-llama")
    save_adapter(model, tmp_path, "tiny-random-llama", name_map="hf-llama")
    want = load_file(os.path.join(DATA, "minitx_adapter", "adapter_model.safetensors"))
    got = load_file(os.path.join(tmp_path, "adapter_model.safetensors"))
    assert sorted(got) == sorted(want) and all(np.array_equal(got[k], want[k]) for k in want)
    with open(os.path.join(tmp_path, "adapter_config.json")) as f:
        cfg = json.load(f)
    assert cfg["target_modules"] == ["model.layers.%d.%s" % (i, p) for i in range(2) for p in
                                     ("mlp.down_proj", "mlp.gate_proj", "mlp.up_proj",
                                      "self_attn.k_proj", "self_attn.o_proj", "self_attn.q_proj",
                                      "self_attn.v_proj")]


def tiny(seed=0, **kw):
    minitx.manual_seed(seed)
    return GPT(get_config("tiny", **kw))


def trained_adapter(model, targets=("qkv", "fc")):
    apply_lora(model, r=3, alpha=6, target_modules=list(targets), dropout=0.05)
    rng = np.random.default_rng(1)
    for m in model.modules():
        if isinstance(m, LoRALinear):
            m.lora_B.data = rng.standard_normal(m.lora_B.shape).astype(np.float32) * 0.1
    return model


def test_round_trip_keys_and_config(tmp_path):
    model = trained_adapter(tiny())
    config = save_adapter(model, tmp_path, base_model_name_or_path="minitx-tiny")
    tensors = load_file(os.path.join(tmp_path, "adapter_model.safetensors"))
    assert sorted(tensors) == sorted(
        f"base_model.model.blocks.{i}.{leaf}.lora_{ab}.weight"
        for i in range(2) for leaf in ("attn.qkv", "mlp.fc") for ab in "AB")
    assert tensors["base_model.model.blocks.0.attn.qkv.lora_A.weight"].shape == (3, 32)
    assert tensors["base_model.model.blocks.0.attn.qkv.lora_B.weight"].shape == (96, 3)
    with open(os.path.join(tmp_path, "adapter_config.json")) as f:
        on_disk = json.load(f)
    assert on_disk == config
    assert {k: on_disk[k] for k in ("peft_type", "task_type", "r", "lora_alpha", "lora_dropout",
                                    "target_modules", "use_rslora", "base_model_name_or_path")} \
        == {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 3, "lora_alpha": 6,
            "lora_dropout": 0.05, "target_modules": ["fc", "qkv"], "use_rslora": False,
            "base_model_name_or_path": "minitx-tiny"}
    assert load_metadata(os.path.join(tmp_path, "adapter_model.safetensors")) == {"format": "pt"}
    fresh = tiny()
    load_adapter(fresh, tmp_path)
    idx = np.arange(20).reshape(2, 10)
    model.eval()
    fresh.eval()
    assert np.array_equal(fresh(idx)[0].data, model(idx)[0].data)
    assert {n for n, p in fresh.named_parameters() if p.requires_grad} == \
        {n for n, p in model.named_parameters() if p.requires_grad}


def test_load_refuses_another_model(tmp_path):
    save_adapter(trained_adapter(tiny()), tmp_path)
    other = tiny(n_embd=48, n_head=2)
    frozen = {n: p.requires_grad for n, p in other.named_parameters()}
    with pytest.raises(AdapterError, match="another model"):
        load_adapter(other, tmp_path)
    assert not any(isinstance(m, LoRALinear) for m in other.modules())   # left untouched
    assert {n: p.requires_grad for n, p in other.named_parameters()} == frozen
    with pytest.raises(AdapterError, match="another model"):
        load_adapter(tiny(n_layer=1), tmp_path)
    with pytest.raises(AdapterError, match="another model"):
        load_adapter(tiny(), tmp_path, name_map="hf-llama")


def test_malformed_adapter_dirs(tmp_path):
    with pytest.raises(AdapterError, match="missing"):
        load_adapter(tiny(), tmp_path)
    save_adapter(trained_adapter(tiny()), tmp_path)
    cpath = os.path.join(tmp_path, "adapter_config.json")
    with open(cpath) as f:
        good = json.load(f)
    for change, match in (({"peft_type": "IA3"}, "peft_type"), ({"r": 0}, "r must be"),
                          ({"r": 5}, "expected"), ({"use_dora": True}, "use_dora"),
                          ({"rank_pattern": {"qkv": 2}}, "rank_pattern")):
        with open(cpath, "w") as f:
            json.dump(dict(good, **change), f)
        with pytest.raises(AdapterError, match=match):
            load_adapter(tiny(), tmp_path)
    with open(cpath, "w") as f:
        f.write("{not json")
    with pytest.raises(AdapterError, match="JSON"):
        load_adapter(tiny(), tmp_path)
    with open(cpath, "w") as f:
        json.dump(good, f)
    wpath = os.path.join(tmp_path, "adapter_model.safetensors")
    save_file({"base_model.model.blocks.0.attn.qkv.lora_A.weight": np.zeros((3, 32), np.float32)},
              wpath)
    with pytest.raises(AdapterError, match="only"):
        load_adapter(tiny(), tmp_path)
    save_file({"model.blocks.0.attn.qkv.weight": np.zeros((3, 32), np.float32)}, wpath)
    with pytest.raises(AdapterError, match="unexpected tensor"):
        load_adapter(tiny(), tmp_path)
    with pytest.raises(AdapterError, match="no LoRA layers"):
        save_adapter(tiny(), tmp_path)


def test_hf_llama_paths():
    assert hf_llama_path("blocks.3.attn.q_proj") == "model.layers.3.self_attn.q_proj"
    assert hf_llama_path("blocks.3.attn.o_proj") == "model.layers.3.self_attn.o_proj"
    assert hf_llama_path("blocks.0.mlp.down_proj") == "model.layers.0.mlp.down_proj"
    assert hf_llama_path("blocks.0.attn.proj") is None and hf_llama_path("blocks.0.mlp.fc") is None
    assert hf_llama_path("blocks.0.mlp.up_proj") == "model.layers.0.mlp.up_proj"
    assert hf_llama_path("lm_head") == "lm_head"
    assert hf_llama_path("blocks.0.attn.qkv") is None and hf_llama_path("wte") is None
    with pytest.raises(AdapterError, match="counterpart"):
        save_adapter(trained_adapter(tiny()), "unused", name_map="hf-llama")

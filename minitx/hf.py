"""Hand-off to Hugging Face transformers: export a minitx GPT as a `GPT2LMHeadModel` or a
`LlamaForCausalLM` directory, and read such directories back (`from_hf`).

The tensors each flavour renames (minitx Linear weights are (out, in) like torch.nn.Linear;
GPT-2's Conv1D stores (in, out), so its four projections are transposed, marked ^T):

    minitx                   GPT2LMHeadModel: transformer.   LlamaForCausalLM: model.
    wte                      wte                             embed_tokens
    wpe                      wpe                             (none: RoPE, rotate-half)
    blocks.i.ln1             h.i.ln_1                        layers.i.input_layernorm
    blocks.i.attn.qkv        h.i.attn.c_attn ^T (fused)      layers.i.self_attn.{q,k,v}_proj
    blocks.i.attn.proj       h.i.attn.c_proj ^T              layers.i.self_attn.o_proj
    blocks.i.ln2             h.i.ln_2                        layers.i.post_attention_layernorm
    blocks.i.mlp             h.i.mlp.c_fc ^T, c_proj ^T      layers.i.mlp.{gate,up,down}_proj
    ln_f                     ln_f                            norm
    lm_head (untied)         lm_head (no prefix)             lm_head (no prefix)

Fusing q/k/v (GPT-2) or splitting them (Llama) only regroups rows, so every value is carried
bit for bit. A minitx option the target class cannot express is an `HFError` naming it.
Hugging Face formats: https://huggingface.co/docs/transformers (model_doc/gpt2, model_doc/llama).
"""
import json
import os
import shutil
import warnings

import numpy as np

from minitx.attention import IMPLS as ATTENTION
from minitx.bpe import bytes_to_unicode
from minitx.fileio import atomic_write, fsync_dir
from minitx.models.gpt import GPT, GPTConfig
from minitx.safetensors import SafetensorsError, check_finite, load_file, read_header, save_file

WEIGHTS, INDEX, OPTIM, OPTIM_JSON = ("model.safetensors", "model.safetensors.index.json",
                                     "optimizer.safetensors", "optimizer.json")
# buffers some transformers versions saved next to the weights; they carry no learned values
IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias", ".rotary_emb.inv_freq")


class HFError(ValueError):
    """A model that a Hugging Face class cannot express, or a directory minitx cannot read."""


# ============================== configs ======================================================
def flavour(cfg):
    """"gpt2" or "llama": the Hugging Face class that can hold GPTConfig `cfg`, or HFError naming
    every option that neither can express."""
    gpt2 = {"norm=layernorm": cfg.norm == "layernorm", "pos=learned": cfg.pos == "learned",
            "mlp=gelu": cfg.mlp == "gelu", "bias=True": cfg.bias,
            "n_kv_head == n_head": cfg.n_kv_head == cfg.n_head,
            "n_head * head_dim == n_embd": cfg.n_head * cfg.head_dim == cfg.n_embd}
    llama = {"norm=rmsnorm": cfg.norm == "rmsnorm", "pos=rope": cfg.pos == "rope",
             "mlp=swiglu": cfg.mlp == "swiglu",
             "dropout=0 (Llama has no residual dropout)": cfg.dropout == 0}
    dense = {"attention_pattern=dense": getattr(cfg, "attention_pattern", "dense") == "dense"}
    gpt2.update(dense)
    llama.update(dense)
    if all(gpt2.values()):
        return "gpt2"
    if all(llama.values()):
        return "llama"
    needs = [f"{cls} needs {', '.join(k for k, ok in need.items() if not ok)}"
             for cls, need in (("GPT2LMHeadModel", gpt2), ("LlamaForCausalLM", llama))]
    raise HFError(f"this model cannot be exported to Hugging Face: {'; '.join(needs)} (model: "
                  f"norm={cfg.norm}, pos={cfg.pos}, mlp={cfg.mlp}, bias={cfg.bias}, "
                  f"n_head={cfg.n_head}, n_kv_head={cfg.n_kv_head}, head_dim={cfg.head_dim}, "
                  f"n_embd={cfg.n_embd}, dropout={cfg.dropout}, "
                  f"attention_pattern={getattr(cfg, 'attention_pattern', 'dense')})")


def hf_config(cfg):
    """The config.json dict of the Hugging Face model equal to GPTConfig `cfg`."""
    common = dict(vocab_size=cfg.vocab_size, tie_word_embeddings=cfg.tie_weights,
                  bos_token_id=None, eos_token_id=None, pad_token_id=None,
                  torch_dtype="float32", dtype="float32", minitx_attention=cfg.attention)
    if flavour(cfg) == "gpt2":
        return dict(common, architectures=["GPT2LMHeadModel"], model_type="gpt2",
                    n_positions=cfg.block_size, n_embd=cfg.n_embd, n_layer=cfg.n_layer,
                    n_head=cfg.n_head, n_inner=cfg.ffn_hidden, activation_function="gelu_new",
                    layer_norm_epsilon=cfg.norm_eps, resid_pdrop=cfg.dropout,
                    embd_pdrop=cfg.dropout, attn_pdrop=0.0, scale_attn_weights=True,
                    scale_attn_by_inverse_layer_idx=False, reorder_and_upcast_attn=False)
    return dict(common, architectures=["LlamaForCausalLM"], model_type="llama",
                hidden_size=cfg.n_embd, intermediate_size=cfg.ffn_hidden,
                num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.n_head,
                num_key_value_heads=cfg.n_kv_head, head_dim=cfg.head_dim,
                max_position_embeddings=cfg.block_size, rms_norm_eps=cfg.norm_eps,
                rope_theta=cfg.rope_base, rope_scaling=None, hidden_act="silu",
                rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_base},
                attention_bias=cfg.bias, mlp_bias=cfg.bias, attention_dropout=0.0,
                pretraining_tp=1)


def _get(d, key, default):
    """d[key], or `default` when the key is absent or null (transformers writes null)."""
    value = d.get(key)
    return default if value is None else value


def _number(x):
    """A JSON number as float (GPTConfig names anything else as invalid)."""
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else x


def _require(d, path, **expected):
    """HFError naming every field of config `d` whose value minitx cannot build."""
    bad = [f"{k}={d.get(k, v[0])!r} (minitx supports {v})" for k, v in expected.items()
           if d.get(k, v[0]) not in v]
    if bad:
        raise HFError(f"{path}: unsupported config: {'; '.join(bad)}")


def config_from_hf(d, path="config.json"):
    """GPTConfig from a Hugging Face config.json dict (GPT-2 or Llama), or HFError."""
    if not isinstance(d, dict):
        raise HFError(f"{path}: config.json must be a JSON object")
    kind = d.get("model_type")
    arch = d.get("architectures") or []
    if kind == "gpt2":
        _require(d, path, activation_function=("gelu_new", "gelu_pytorch_tanh"),
                 scale_attn_weights=(True,), scale_attn_by_inverse_layer_idx=(False,),
                 add_cross_attention=(False,), architectures=(["GPT2LMHeadModel"],))
        resid, embd = d.get("resid_pdrop", 0.1), d.get("embd_pdrop", 0.1)
        if resid != embd:
            raise HFError(f"{path}: resid_pdrop={resid} != embd_pdrop={embd}: minitx has one "
                          "dropout rate")
        if d.get("attn_pdrop", 0.1):
            warnings.warn(f"{path}: attn_pdrop={d.get('attn_pdrop', 0.1)} is not modelled by "
                          "minitx (no dropout on attention probabilities); weights and logits "
                          "are unaffected", stacklevel=3)
        fields = dict(vocab_size=d.get("vocab_size"), block_size=d.get("n_positions"),
                      n_layer=d.get("n_layer"), n_head=d.get("n_head"), n_embd=d.get("n_embd"),
                      ffn_hidden=_get(d, "n_inner", 4 * (d.get("n_embd") or 0)),
                      norm_eps=d.get("layer_norm_epsilon", 1e-5), dropout=resid, bias=True,
                      norm="layernorm", pos="learned", mlp="gelu", fused_qkv=True)
    elif kind == "llama":
        rope = d.get("rope_parameters") or {}          # transformers >= 5 nests rope_theta here
        if not isinstance(rope, dict):
            raise HFError(f"{path}: rope_parameters must be a JSON object, got {rope!r}")
        _require(d, path, hidden_act=("silu",), rope_scaling=(None,), pretraining_tp=(1,),
                 architectures=(["LlamaForCausalLM"],))
        if rope.get("rope_type", "default") != "default":
            raise HFError(f"{path}: unsupported rope_type {rope.get('rope_type')!r} (minitx "
                          "implements the default RoPE only)")
        if "rope_theta" in rope and d.get("rope_theta", rope["rope_theta"]) != rope["rope_theta"]:
            raise HFError(f"{path}: rope_theta={d['rope_theta']} disagrees with "
                          f"rope_parameters.rope_theta={rope['rope_theta']}")
        if d.get("attention_bias", False) != d.get("mlp_bias", False):
            raise HFError(f"{path}: attention_bias={d.get('attention_bias')} != mlp_bias="
                          f"{d.get('mlp_bias')}: minitx's bias option covers both")
        if d.get("attention_dropout", 0.0):
            warnings.warn(f"{path}: attention_dropout={d['attention_dropout']} is not modelled "
                          "by minitx; weights and logits are unaffected", stacklevel=3)
        heads, width = d.get("num_attention_heads"), d.get("hidden_size")
        fields = dict(vocab_size=d.get("vocab_size"), block_size=d.get("max_position_embeddings"),
                      n_layer=d.get("num_hidden_layers"), n_head=heads, n_embd=width,
                      n_kv_head=_get(d, "num_key_value_heads", heads),
                      head_dim=_get(d, "head_dim", (width // heads) if isinstance(width, int)
                                    and isinstance(heads, int) and heads > 0 else None),
                      ffn_hidden=d.get("intermediate_size"), norm_eps=d.get("rms_norm_eps"),
                      rope_base=_number(rope.get("rope_theta", d.get("rope_theta", 10000.0))),
                      bias=bool(d.get("attention_bias", False)), norm="rmsnorm", pos="rope",
                      mlp="swiglu", fused_qkv=False, dropout=0.0)
    else:
        raise HFError(f"{path}: model_type {kind!r} (architectures {arch}) is not one minitx "
                      "reads; supported: 'gpt2' (GPT2LMHeadModel), 'llama' (LlamaForCausalLM)")
    fields["tie_weights"] = bool(d.get("tie_word_embeddings", True))
    fields["attention"] = d.get("minitx_attention", "naive")      # written by minitx's export
    if fields["attention"] not in ATTENTION:
        raise HFError(f"{path}: minitx_attention={fields['attention']!r}; one of {ATTENTION}")
    missing = [k for k, v in fields.items() if v is None]
    if missing:
        raise HFError(f"{path}: config.json lacks {', '.join(missing)} (minitx names)")
    try:
        return GPTConfig(**fields)
    except (TypeError, ValueError) as e:
        raise HFError(f"{path}: {e}") from None


# ============================== tensor names =================================================
def _hf_names(cfg):
    """[(minitx name, HF name, transpose)] for GPTConfig `cfg` in its HF flavour, with minitx
    names of the flavour's own layout (fused qkv for GPT-2, q/k/v/o_proj for Llama)."""
    out = []
    if flavour(cfg) == "gpt2":
        out += [("wte.weight", "transformer.wte.weight", False),
                ("wpe.weight", "transformer.wpe.weight", False)]
        for i in range(cfg.n_layer):
            m, h = f"blocks.{i}.", f"transformer.h.{i}."
            for a, b, t in (("ln1", "ln_1", False), ("attn.qkv", "attn.c_attn", True),
                            ("attn.proj", "attn.c_proj", True), ("ln2", "ln_2", False),
                            ("mlp.fc", "mlp.c_fc", True), ("mlp.proj", "mlp.c_proj", True)):
                out += [(m + a + ".weight", h + b + ".weight", t),
                        (m + a + ".bias", h + b + ".bias", False)]
        out += [("ln_f.weight", "transformer.ln_f.weight", False),
                ("ln_f.bias", "transformer.ln_f.bias", False)]
    else:
        out += [("wte.weight", "model.embed_tokens.weight", False)]
        for i in range(cfg.n_layer):
            m, h = f"blocks.{i}.", f"model.layers.{i}."
            out += [(m + "ln1.weight", h + "input_layernorm.weight", False),
                    (m + "ln2.weight", h + "post_attention_layernorm.weight", False)]
            linears = [("attn." + p, "self_attn." + p) for p in ("q_proj", "k_proj", "v_proj",
                                                                 "o_proj")]
            linears += [("mlp." + p, "mlp." + p) for p in ("gate_proj", "up_proj", "down_proj")]
            for a, b in linears:
                out.append((m + a + ".weight", h + b + ".weight", False))
                if cfg.bias:
                    out.append((m + a + ".bias", h + b + ".bias", False))
        out += [("ln_f.weight", "model.norm.weight", False)]
    if not cfg.tie_weights:
        out.append(("lm_head.weight", "lm_head.weight", False))
    return out


def _relayout(state, cfg, fused):
    """A minitx state dict with q/k/v fused into `attn.qkv` and `attn.proj` (fused=True) or
    split into q/k/v/o_proj (fused=False); values are regrouped rows, never changed."""
    if cfg.fused_qkv == fused:
        return dict(state)
    out, sizes = {}, [cfg.n_head * cfg.head_dim] + [cfg.n_kv_head * cfg.head_dim] * 2
    for k, v in state.items():
        if fused and ".attn.q_proj." in k:
            parts = [state[k.replace("q_proj", p)] for p in ("q_proj", "k_proj", "v_proj")]
            out[k.replace("q_proj", "qkv")] = np.concatenate(parts, axis=0)
        elif fused and (".attn.k_proj." in k or ".attn.v_proj." in k):
            continue
        elif not fused and ".attn.qkv." in k:
            for p, part in zip(("q_proj", "k_proj", "v_proj"),
                               np.split(v, np.cumsum(sizes)[:2], axis=0)):
                out[k.replace("qkv", p)] = part
        else:
            out[k.replace(".attn.o_proj.", ".attn.proj.") if fused
                else k.replace(".attn.proj.", ".attn.o_proj.")] = v
    return out


def to_hf_state(state, cfg):
    """{HF name: float32 C-contiguous array} from a minitx state dict (also optimizer moments,
    which share the weights' layout)."""
    state = _relayout(state, cfg, flavour(cfg) == "gpt2")
    return {h: np.ascontiguousarray(state[m].T if t else state[m], dtype=np.float32)
            for m, h, t in _hf_names(cfg) if m in state}


def from_hf_state(tensors, cfg, path, target):
    """A minitx state dict from HF tensors, checking every name, dtype and shape against
    `target` ({minitx name: shape} of the model, in the flavour's own q/k/v layout); HFError
    naming missing, unexpected or mis-shaped tensors."""
    names = _hf_names(cfg)
    tensors = {k: v for k, v in tensors.items() if not k.endswith(IGNORED_SUFFIXES)}
    if cfg.tie_weights and "lm_head.weight" in tensors:    # some writers keep the tied copy
        emb = names[0][1]
        if emb in tensors and not np.array_equal(tensors.pop("lm_head.weight"), tensors[emb]):
            raise HFError(f"{path}: tie_word_embeddings is true but lm_head.weight differs "
                          f"from {emb}")
    missing = [h for _, h, _ in names if h not in tensors]
    unexpected = sorted(set(tensors) - {h for _, h, _ in names})
    if missing or unexpected:
        raise HFError(f"{path}: tensors do not fit config.json: missing {missing[:4]}"
                      f"{' ...' if len(missing) > 4 else ''}, unexpected {unexpected[:4]}"
                      f"{' ...' if len(unexpected) > 4 else ''}")
    state = {}
    for m, h, t in names:
        a = tensors[h]
        if a.dtype not in (np.float32, np.float16):
            raise HFError(f"{path}: tensor {h} has dtype {a.dtype}; expected float32, bfloat16 "
                          "or float16")
        a = a.T if t else a
        if a.shape != target[m]:
            raise HFError(f"{path}: tensor {h} has shape {tensors[h].shape}, the config needs "
                          f"{target[m][::-1] if t else target[m]}")
        state[m] = np.ascontiguousarray(a, dtype=np.float32)    # float16 -> float32 is exact
    return state


# ============================== reading a directory ==========================================
def read_hf_dir(hf_dir):
    """The GPT (train mode) held by a Hugging Face model directory, every problem an HFError. A
    sharded checkpoint (model.safetensors.index.json) is read shard by shard."""
    if not os.path.isdir(hf_dir):
        raise HFError(f"Hugging Face model directory not found: {hf_dir}")
    cpath = os.path.join(hf_dir, "config.json")
    try:
        with open(cpath, encoding="utf-8") as f:
            d = json.loads(f.read(1 << 20))
    except FileNotFoundError:
        raise HFError(f"{hf_dir} has no config.json: not a Hugging Face model directory") from None
    except (OSError, ValueError, UnicodeDecodeError, RecursionError) as e:
        raise HFError(f"{cpath} is not valid JSON: {e}") from None
    cfg = config_from_hf(d, cpath)
    files = _weight_files(hf_dir)          # before building the model: a bad dir fails fast
    tensors = {}
    try:
        for path, names in files:
            header, _, _ = read_header(path)
            absent = sorted(set(names or ()) - set(header))
            if absent:
                raise HFError(f"{path} lacks {absent[:4]}, which {INDEX} places there")
            tensors.update(check_finite(load_file(path, names), path))
    except (SafetensorsError, OSError) as e:
        raise HFError(f"cannot read weights of {hf_dir}: {e}") from None
    model = GPT(cfg)
    shapes = {n: p.shape for n, p in model.named_parameters()}
    model.load_state_dict(from_hf_state(tensors, cfg, hf_dir, shapes))
    return model


def _weight_files(hf_dir):
    """[(safetensors path, tensor names or None for all)] of a model directory."""
    single, index = os.path.join(hf_dir, WEIGHTS), os.path.join(hf_dir, INDEX)
    if os.path.isfile(single):
        return [(single, None)]
    if not os.path.isfile(index):
        has_bin = any(n.endswith(".bin") for n in os.listdir(hf_dir))
        raise HFError(f"{hf_dir} has no {WEIGHTS} or {INDEX}"
                      + ("; its .bin (pickle) weights are not read: re-save with "
                         "save_pretrained(..., safe_serialization=True)" if has_bin else ""))
    try:
        with open(index, encoding="utf-8") as f:
            weight_map = json.loads(f.read(16 << 20))["weight_map"]
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as e:
        raise HFError(f"{index} is not a valid index: {e!r}") from None
    if not isinstance(weight_map, dict):
        raise HFError(f"{index}: 'weight_map' must map tensor names to shard files")
    shards = {}
    for name, shard in weight_map.items():
        if not isinstance(shard, str) or os.path.basename(shard) != shard or shard in ("", "."):
            raise HFError(f"{index} places {name!r} in {shard!r}, not a file of {hf_dir}")
        shards.setdefault(shard, []).append(name)
    missing = [s for s in shards if not os.path.isfile(os.path.join(hf_dir, s))]
    if missing:
        raise HFError(f"{index} names shard(s) {missing} missing from {hf_dir}")
    return [(os.path.join(hf_dir, s), names) for s, names in sorted(shards.items())]


def from_hf(hf_dir):
    """A minitx GPT (eval mode) from a GPT2LMHeadModel or LlamaForCausalLM directory."""
    return read_hf_dir(hf_dir).eval()


# ============================== writing a directory ==========================================
def tokenizer_files(block_size):
    """{file name: JSON dict} describing minitx's byte tokenizer (id = UTF-8 byte) for the
    `tokenizers` library, loadable by transformers' AutoTokenizer / PreTrainedTokenizerFast."""
    level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
             "use_regex": False}
    vocab = {ch: b for b, ch in bytes_to_unicode().items()}
    tokenizer = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": [],
                 "normalizer": None, "pre_tokenizer": level, "post_processor": None,
                 "decoder": level,
                 "model": {"type": "BPE", "dropout": None, "unk_token": None,
                           "continuing_subword_prefix": None, "end_of_word_suffix": None,
                           "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                           "vocab": vocab, "merges": []}}
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": block_size,
              "clean_up_tokenization_spaces": False, "add_prefix_space": False}
    return {"tokenizer.json": tokenizer, "tokenizer_config.json": config}


def export_hf(model, out_dir, optimizer_state=None):
    """Write `model` (a GPT) as a Hugging Face model directory.

    Args:
        model: the GPT to export; its config decides the class (see `flavour`).
        out_dir: a new or empty directory.
        optimizer_state: optional dict from `optimizer_export` (written as optimizer.safetensors
            and optimizer.json, keyed by Hugging Face parameter names).
    Returns:
        the config.json dict written.
    """
    cfg = model.config
    config = hf_config(cfg)                 # raises HFError before anything is written
    out_dir = os.fspath(out_dir)
    if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)):
        raise HFError(f"--out {out_dir} exists and is not an empty directory")
    tensors = check_finite(to_hf_state(model.state_dict(), cfg), "the model")
    files = {"config.json": config, "generation_config.json": {
        "do_sample": True, "temperature": 0.8, "top_k": 40, "max_new_tokens": 200}}
    if cfg.vocab_size == 256:               # minitx's byte vocabulary (other sizes: no tokenizer)
        files.update(tokenizer_files(cfg.block_size))
    # everything goes to a temporary sibling first, renamed into place whole
    parent, name = os.path.split(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        save_file(tensors, os.path.join(tmp, WEIGHTS), metadata={"format": "pt"})
        if optimizer_state is not None:
            save_file(optimizer_state["tensors"], os.path.join(tmp, OPTIM),
                      metadata={"format": "pt"})
            files[OPTIM_JSON] = optimizer_state["meta"]
        for fname, obj in files.items():
            atomic_write(os.path.join(tmp, fname),
                         [json.dumps(obj, indent=2, ensure_ascii=False).encode("utf-8") + b"\n"])
        if os.path.isdir(out_dir):
            os.rmdir(out_dir)                          # empty (checked above)
        os.replace(tmp, out_dir)
        fsync_dir(parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return config


# ============================== optimizer state ==============================================
def optimizer_export(model, optimizer, next_lr, schedule=None):
    """AdamW state in PyTorch's layout, keyed by Hugging Face parameter names.

    Layout: optimizer.safetensors holds, per parameter with state, "<name>.exp_avg",
    "<name>.exp_avg_sq" (the parameter's HF shape) and "<name>.step" (a float32 scalar, as
    torch.optim.AdamW keeps it); optimizer.json holds {"param_groups": [{"params": [names],
    "lr", "betas", "eps", "weight_decay"}], "schedule": {...}} with `lr` the one minitx's next
    step would use. Moments are regrouped and transposed exactly as their weights.

    Args:
        model: the GPT. optimizer: its minitx AdamW (groups over the model's parameters).
        next_lr: the learning rate of the next step. schedule: optional JSON-able dict.
    Returns:
        {"tensors": {name: ndarray}, "meta": the optimizer.json dict}.
    """
    cfg = model.config
    names = {id(p): n for n, p in model.named_parameters()}
    groups, moments, steps = [], {"exp_avg": {}, "exp_avg_sq": {}}, {}
    for g in optimizer.param_groups:
        rows = {}          # the group's parameters as row markers, regrouped like the weights
        for p in g["params"]:
            if id(p) not in names:
                raise HFError("the optimizer holds a parameter that is not the model's")
            n = names[id(p)]
            rows[n] = np.zeros(p.shape[0], np.float32)
            st = optimizer.state.get(id(p))
            if st:
                moments["exp_avg"][n], moments["exp_avg_sq"][n] = st["exp_avg"], st["exp_avg_sq"]
                steps[n] = np.full(p.shape[0], st["step"], np.float64)   # one per row
        groups.append({"params": list(to_hf_state(rows, cfg)), "lr": next_lr,
                       "betas": list(g["betas"]), "eps": g["eps"],
                       "weight_decay": g["weight_decay"]})
    tensors = {}
    for k, per_param in moments.items():
        for h, a in to_hf_state(per_param, cfg).items():
            tensors[f"{h}.{k}"] = a
    for h, a in to_hf_state(steps, cfg).items():
        if a.min() != a.max():
            raise HFError(f"{h} fuses parameters that took different numbers of steps")
        tensors[f"{h}.step"] = np.array(a[0], np.float32)
    return {"tensors": tensors,
            "meta": {"format": "minitx AdamW state in torch.optim.AdamW's layout",
                     "param_groups": groups, "schedule": schedule or {}}}


def export_checkpoint(ckpt_dir, out_dir, with_optimizer=False):
    """Export a minitx-gpt checkpoint (run or step directory) to `out_dir`; with_optimizer adds
    its AdamW state (the optimizer the training loop builds: matrices decayed, vectors not).

    Returns:
        (config.json dict written, the GPT exported).
    """
    from minitx.checkpoint import FORMAT, load_checkpoint, load_gpt, read_config
    from minitx.optim import cosine_lr
    from minitx.train import TrainConfig, make_optimizer
    fmt = read_config(ckpt_dir)["format"]
    if fmt != FORMAT:
        raise HFError(f"{ckpt_dir}: format {fmt!r}; export-hf needs a float {FORMAT!r} "
                      "checkpoint")
    if not with_optimizer:
        model = load_gpt(ckpt_dir)
        return export_hf(model, out_dir), model
    model, step, opt_state, _, config = load_checkpoint(ckpt_dir)
    tc = TrainConfig(**config.get("train", {}))
    optimizer = make_optimizer(model.parameters(), tc)
    try:
        optimizer.load_state_dict(opt_state)
    except (ValueError, KeyError) as e:
        raise HFError(f"{ckpt_dir}: its optimizer state is not the default training loop's "
                      f"(a frozen or extended parameter set?): {e}") from None
    schedule = {"kind": "warmup + cosine (minitx.optim.cosine_lr)", "next_step": step,
                "lr": tc.lr, "min_lr": tc.min_lr, "warmup": tc.warmup,
                "max_steps": tc.max_steps}
    state = optimizer_export(model, optimizer, cosine_lr(step, tc.lr, tc.min_lr, tc.warmup,
                                                         tc.max_steps), schedule)
    return export_hf(model.eval(), out_dir, state), model


class InitFromHF:
    """Training-loop extension: start from a Hugging Face directory's weights instead of random
    ones (copied into the model's parameters in place when the Trainer is built, so the
    optimizer's parameter list is untouched). Read and checked when constructed."""

    name = "init_from_hf"

    def __init__(self, hf_dir):
        self.hf_dir = hf_dir
        model = read_hf_dir(hf_dir)
        self.config, self.state = model.config, model.state_dict()

    def on_init(self, trainer):
        trainer.model.load_state_dict(self.state)

    def state_dict(self):
        return {"hf_dir": os.path.abspath(self.hf_dir)}

    def load_state_dict(self, d):
        pass

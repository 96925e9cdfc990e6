"""LoRA adapter files in Hugging Face PEFT's format, read and written with NumPy alone.

A PEFT LoRA adapter is a directory with two files (what `PeftModel.from_pretrained` reads):
    adapter_config.json        {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r", "lora_alpha",
                               "lora_dropout", "target_modules", "use_rslora", "bias": "none",
                               "base_model_name_or_path", ...}
    adapter_model.safetensors  "base_model.model.<module path>.lora_A.weight"  (r, in_features)
                               "base_model.model.<module path>.lora_B.weight"  (out_features, r)
PEFT builds its LoRA layers from `target_modules` (matched against the module names of the
model it wraps) and then copies the tensors in, inserting its adapter name ("default") between
`lora_A` and `weight`. Module paths are the model's own: for Hugging Face Llama they read
`model.layers.N.self_attn.q_proj`; `hf_llama_path` maps minitx's llama-flavour paths
(`blocks.N.attn.q_proj`) to them, so PEFT on the PyTorch model loads a minitx adapter
(tests/test_lora_peft.py checks the logits against PEFT's, benchmarks/make_peft_reference.py).
"""
import json
import os
import re

import numpy as np

from minitx.safetensors import _atomic_write, load_file, save_file

CONFIG_FILE, WEIGHTS_FILE = "adapter_config.json", "adapter_model.safetensors"
PREFIX = "base_model.model."
_KEY = re.compile(r"base_model\.model\.(.+)\.(lora_A|lora_B)\.weight")
# the llama flavour's leaf names are Hugging Face's (GPTConfig fused_qkv=False, mlp="swiglu")
_HF_LEAF = {"attn": ("q_proj", "k_proj", "v_proj", "o_proj"),
            "mlp": ("gate_proj", "up_proj", "down_proj")}


class AdapterError(ValueError):
    """An adapter directory is missing, malformed, or does not fit the model."""


def hf_llama_path(path):
    """minitx module path -> Hugging Face Llama module path, or None if it has no counterpart.

    blocks.N.attn.{q,k,v,o}_proj -> model.layers.N.self_attn.*, blocks.N.mlp.{gate,up,down}_proj
    -> model.layers.N.mlp.*, lm_head -> lm_head; the GPT-2 flavour's attn.qkv, attn.proj,
    mlp.fc, mlp.proj have no Llama counterpart.
    """
    if path == "lm_head":
        return path
    m = re.fullmatch(r"blocks\.(\d+)\.(attn|mlp)\.(\w+)", path)
    if m is None or m.group(3) not in _HF_LEAF[m.group(2)]:
        return None
    part = "self_attn" if m.group(2) == "attn" else "mlp"
    return f"model.layers.{m.group(1)}.{part}.{m.group(3)}"


NAME_MAPS = {None: lambda p: p, "minitx": lambda p: p, "hf-llama": hf_llama_path}


def _name_map(name_map):
    if callable(name_map):
        return name_map
    if name_map not in NAME_MAPS:
        raise ValueError(f"name_map must be a callable or one of {list(NAME_MAPS)}, "
                         f"got {name_map!r}")
    return NAME_MAPS[name_map]


def _adaptable_names(model):
    """Names of the model's linear layers, a LoRALinear counting as the layer it wraps."""
    from minitx.lora import LoRALinear, _linear_names
    wrapped = {n for n, m in model.named_modules() if isinstance(m, LoRALinear)}
    return [n for n in _linear_names(model) if n.rpartition(".")[0] not in wrapped] + \
        sorted(wrapped)


def _config_targets(model, adapted, fmap, targets):
    """The user's target_modules if, matched PEFT's way against the mapped names of all the
    model's linear layers, they select exactly the adapted layers; else the exact mapped paths."""
    from minitx.lora import target_matches
    exact = sorted(fmap(n) for n in adapted)
    if isinstance(targets, (list, tuple)) and targets:
        mapped = [fmap(n) for n in _adaptable_names(model)]
        chosen = sorted(p for p in mapped if p is not None and target_matches(list(targets), p))
        if chosen == exact:
            return sorted(targets)
    return exact


def save_adapter(model, out_dir, base_model_name_or_path=None, name_map=None):
    """Write the model's LoRA adapters as a PEFT adapter directory (atomically, no pickle).

    Args:
        model: a model with LoRALinear layers (see `apply_lora`); all must share r and alpha.
        out_dir: the directory (created).
        base_model_name_or_path: recorded in adapter_config.json (e.g. a hub id or a path;
            default: the model's `peft_base_model`, e.g. the GGUF file it was loaded from).
        name_map: None (the model's own `peft_name_map` if it has one, as a model loaded from
            GGUF does, else minitx module paths), "minitx", "hf-llama", or a callable.
    Returns:
        the dict written to adapter_config.json.
    """
    from minitx.lora import lora_layers
    layers = lora_layers(model)
    if not layers:
        raise AdapterError("the model has no LoRA layers to save (use apply_lora first)")
    settings = {(m.r, m.lora_alpha, m.lora_dropout, m.use_rslora) for _, m in layers}
    if len(settings) != 1:
        raise AdapterError(f"all adapters must share r, alpha, dropout and rsLoRA to be saved "
                           f"in one PEFT config, got {sorted(settings)}")
    r, alpha, dropout, rslora = settings.pop()
    fmap = _name_map(getattr(model, "peft_name_map", None) if name_map is None else name_map)
    if base_model_name_or_path is None:
        base_model_name_or_path = getattr(model, "peft_base_model", None)
    mapped = [(n, fmap(n)) for n, _ in layers]
    missing = [n for n, p in mapped if p is None]
    if missing:
        raise AdapterError(f"modules {missing[:3]} have no counterpart under name_map "
                           f"{name_map!r}")
    tensors = {}
    for (_, m), (_, path) in zip(layers, mapped):
        tensors[f"{PREFIX}{path}.lora_A.weight"] = np.ascontiguousarray(m.lora_A.data)
        tensors[f"{PREFIX}{path}.lora_B.weight"] = np.ascontiguousarray(m.lora_B.data)
    targets = getattr(model, "lora_settings", {}).get("target_modules")
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM",
              "base_model_name_or_path": base_model_name_or_path, "r": r,
              "lora_alpha": alpha, "lora_dropout": dropout,
              "target_modules": _config_targets(model, [n for n, _ in layers], fmap, targets),
              "use_rslora": rslora, "bias": "none", "fan_in_fan_out": False,
              "init_lora_weights": True, "inference_mode": True, "modules_to_save": None,
              "layers_to_transform": None, "layers_pattern": None, "rank_pattern": {},
              "alpha_pattern": {}, "use_dora": False}
    os.makedirs(out_dir, exist_ok=True)
    save_file(tensors, os.path.join(out_dir, WEIGHTS_FILE), metadata={"format": "pt"})
    text = json.dumps(config, indent=2, sort_keys=True) + "\n"
    _atomic_write(os.path.join(out_dir, CONFIG_FILE), [text.encode("utf-8")])
    return config


def read_adapter(adapter_dir):
    """(config dict, {module path: (A (r, in), B (out, r))}) of a PEFT LoRA adapter directory,
    validated: peft_type LORA, no DoRA / bias training / rank or alpha patterns, matching r."""
    cpath, wpath = (os.path.join(adapter_dir, f) for f in (CONFIG_FILE, WEIGHTS_FILE))
    for p in (cpath, wpath):
        if not os.path.isfile(p):
            raise AdapterError(f"{adapter_dir} is not a PEFT adapter directory: {p} is missing")
    try:
        with open(cpath, encoding="utf-8") as f:
            config = json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        raise AdapterError(f"{cpath} is not valid JSON: {e}") from None
    if not isinstance(config, dict) or config.get("peft_type") != "LORA":
        raise AdapterError(f"{cpath}: peft_type must be 'LORA', got "
                           f"{config.get('peft_type') if isinstance(config, dict) else config!r}")
    unsupported = {"use_dora": False, "bias": "none", "fan_in_fan_out": False,
                   "lora_bias": False}
    for key, want in unsupported.items():
        if config.get(key, want) != want:
            raise AdapterError(f"{cpath}: {key}={config[key]!r} is not supported (need {want!r})")
    for key in ("rank_pattern", "alpha_pattern"):
        if config.get(key):
            raise AdapterError(f"{cpath}: per-module {key} is not supported")
    r = config.get("r")
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise AdapterError(f"{cpath}: r must be an integer >= 1, got {r!r}")
    pairs = {}
    for key, a in load_file(wpath).items():
        m = _KEY.fullmatch(key)
        if m is None:
            raise AdapterError(f"{wpath}: unexpected tensor {key!r} (expected "
                               f"'{PREFIX}<module>.lora_A.weight' / '.lora_B.weight')")
        pairs.setdefault(m.group(1), {})[m.group(2)] = a
    out = {}
    for path, ab in sorted(pairs.items()):
        if set(ab) != {"lora_A", "lora_B"}:
            raise AdapterError(f"{wpath}: {path} has only {sorted(ab)}")
        A, B = ab["lora_A"], ab["lora_B"]
        if A.ndim != 2 or B.ndim != 2 or A.shape[0] != r or B.shape[1] != r:
            raise AdapterError(f"{wpath}: {path} has lora_A {A.shape} and lora_B {B.shape}, "
                               f"expected (r={r}, in) and (out, r={r})")
        out[path] = (A, B)
    if not out:
        raise AdapterError(f"{wpath} holds no LoRA tensors")
    return config, out


def load_adapter(model, adapter_dir, name_map=None):
    """Add (or overwrite) LoRA adapters on `model` from a PEFT adapter directory, in place.

    The base must match: every adapted module path must exist as a Linear/QuantLinear (or an
    existing LoRALinear of the same rank) with in/out features equal to the tensors' shapes;
    otherwise AdapterError names the first mismatch and the model is left untouched.
    Args:
        name_map: how the file's module paths relate to the model's (see `save_adapter`).
    Returns:
        the adapter config dict.
    """
    from minitx.lora import BASE_TYPES, LoRALinear, replace_module
    config, tensors = read_adapter(adapter_dir)
    fmap = _name_map(getattr(model, "peft_name_map", None) if name_map is None else name_map)
    modules = dict(model.named_modules())
    inverse = {fmap(n): n for n in _adaptable_names(model) if fmap(n) is not None}
    plan = []
    for path, (A, B) in tensors.items():
        if path not in inverse:
            raise AdapterError(f"the adapter in {adapter_dir} is for another model: it adapts "
                               f"{path!r}, which this model does not have (its layers: "
                               f"{sorted(inverse)[:4]}...)")
        name = inverse[path]
        layer = modules[name]
        if isinstance(layer, LoRALinear) and layer.r != config["r"]:
            raise AdapterError(f"{name} already has a rank-{layer.r} adapter, the file has "
                               f"r={config['r']}")
        if not isinstance(layer, (LoRALinear,) + BASE_TYPES):
            raise AdapterError(f"{name} is a {type(layer).__name__}, not a Linear layer")
        if A.shape[1] != layer.in_features or B.shape[0] != layer.out_features:
            raise AdapterError(f"the adapter in {adapter_dir} is for another model: {path} "
                               f"maps {A.shape[1]} -> {B.shape[0]} features, this model's "
                               f"{name} maps {layer.in_features} -> {layer.out_features}")
        plan.append((name, layer, A, B))
    for p in model.parameters():
        p.requires_grad = False
    for name, layer, A, B in plan:
        if not isinstance(layer, LoRALinear):
            layer = LoRALinear(layer, config["r"], config.get("lora_alpha", 8),
                               config.get("lora_dropout", 0.0), config.get("use_rslora", False))
            replace_module(model, name, layer)
        layer.lora_A.data = A.astype(layer.lora_A.dtype)
        layer.lora_B.data = B.astype(layer.lora_B.dtype)
        layer.lora_A.requires_grad = layer.lora_B.requires_grad = True
    model.lora_settings = {k: config.get(k) for k in ("r", "lora_alpha", "lora_dropout",
                                                      "use_rslora", "target_modules")}
    return config


def load_hf_llama_weights(model, tensors):
    """Copy a Hugging Face Llama state dict (numpy arrays, HF names) into a llama-flavour GPT.

    Used to put the same base under minitx and under PyTorch/PEFT (tests/test_lora_io.py):
    embed_tokens -> wte, layers.N.{input,post_attention}_layernorm -> blocks.N.{ln1, ln2},
    norm -> ln_f, lm_head -> lm_head, and every projection through `hf_llama_path`.
    """
    own = dict(model.named_parameters())
    fixed = {"model.embed_tokens.weight": "wte.weight", "model.norm.weight": "ln_f.weight",
             "lm_head.weight": "lm_head.weight"}
    state = {}
    for key, a in tensors.items():
        m = re.fullmatch(r"model\.layers\.(\d+)\.(input|post_attention)_layernorm\.weight", key)
        if key in fixed:
            state[fixed[key]] = a
        elif m:
            state[f"blocks.{m.group(1)}.{'ln1' if m.group(2) == 'input' else 'ln2'}.weight"] = a
    for name in own:
        path = hf_llama_path(name.rpartition(".")[0])
        if path is not None and path + ".weight" in tensors:
            state[name] = tensors[path + ".weight"]
    model.load_state_dict(state, strict=True)
    return model

"""Quantized checkpoints: the packed bytes on disk, loadable back into a GPT of QuantLinear layers.

A quantized checkpoint is a directory like the float one written by `minitx.checkpoint`:
  config.json        {"format": "minitx-gpt-quant", "model": {GPTConfig fields},
                      "quantization": {"scheme": ..., "options": {...},
                                       "layers": {layer name: QuantizedTensor meta}},
                      ... every other key of the source config (tokenizer, training info) ...}
  model.safetensors  float tensors under their state_dict names (embeddings, norms, biases) and,
                     for each quantized layer, its stored arrays as "<layer>.qweight.<array>"
                     (uint8/int8 packed codes, float32 scales): the file is really smaller.
Other files of the source directory (e.g. tokenizer files) are copied alongside; its training
state (train_state.safetensors) is not: a quantized checkpoint is weights only.
"""
import dataclasses
import json
import os
import shutil

import numpy as np

from minitx.quant.linear import QuantLinear, replace_module
from minitx.quant.qtensor import QuantizedTensor
from minitx.safetensors import check_finite, load_file, read_header, save_file

FORMAT = "minitx-gpt-quant"
FLOAT_FORMAT = "minitx-gpt"
QSEP = ".qweight."


def _read_config(ckpt_dir):
    from minitx.checkpoint import read_config
    return read_config(ckpt_dir)


def load_float_model(ckpt_dir):
    """A float GPT from a "minitx-gpt" checkpoint."""
    from minitx.checkpoint import load_gpt
    config = _read_config(ckpt_dir)
    if config.get("format") != FLOAT_FORMAT:
        raise ValueError(f"{ckpt_dir!r} has format {config.get('format')!r}, expected "
                         f"{FLOAT_FORMAT!r} (a float checkpoint) to quantize")
    return load_gpt(ckpt_dir)


def save_quantized_model(model, out_dir, options=None, source_dir=None):
    """Write `model` (a GPT whose Linear layers are partly or fully QuantLinear) to `out_dir`.

    Args:
        model: GPT with QuantLinear layers.
        out_dir: directory to create (or overwrite files in).
        options: JSON-able dict describing how it was quantized (scheme, block size, ...).
        source_dir: optional float checkpoint it came from: its extra config keys and extra files
            (tokenizer, ...) are carried over.
    Returns:
        total bytes of model.safetensors.
    """
    from minitx.checkpoint import resolve
    source_dir = resolve(source_dir) if source_dir else None
    os.makedirs(out_dir, exist_ok=True)
    tensors = {k: v.astype(np.float32) if v.dtype == np.float64 else v
               for k, v in model.state_dict().items()}
    layers = {}
    for name, m in model.named_modules():
        if isinstance(m, QuantLinear):
            arrays, meta = m.qweight.state()
            layers[name] = meta
            for key, a in arrays.items():
                tensors[f"{name}{QSEP}{key}"] = np.ascontiguousarray(a)
    config = _read_config(source_dir) if source_dir else {}
    config.update({"format": FORMAT, "model": dataclasses.asdict(model.config),
                   "quantization": {"options": options or {}, "layers": layers}})
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=1)
    path = os.path.join(out_dir, "model.safetensors")
    save_file(tensors, path, metadata={"format": FORMAT})
    if source_dir:
        for fname in os.listdir(source_dir):
            src = os.path.join(source_dir, fname)
            if _carried_over(fname) and os.path.isfile(src):
                shutil.copy2(src, os.path.join(out_dir, fname))
    return os.path.getsize(path)


def _carried_over(fname):
    """Whether a file of the float checkpoint belongs in the quantized one: not the weights or
    config (rewritten), not training state (train_state.safetensors holds the optimizer moments,
    twice the weights' size: a quantized checkpoint holds weights only, for inference), nor any
    other tensor file or temporary file."""
    return not (fname.endswith(".safetensors") or fname == "config.json" or fname.startswith("."))


class QuantCheckpointError(ValueError):
    """A quantized checkpoint is corrupted or does not fit its config."""


def load_quantized_model(ckpt_dir):
    """Load a "minitx-gpt-quant" checkpoint into a GPT with QuantLinear layers (eval mode).

    Everything is checked before use: the safetensors file (SafetensorsError), its float tensors
    finite, the config's sizes against the tensors' header before the model is built (a corrupted
    n_embd must not allocate gigabytes), each quantized layer dequantizing to its declared shape
    with finite values. Any other problem raises QuantCheckpointError naming the directory.

    Returns:
        GPT.
    """
    from minitx.checkpoint import resolve

    ckpt_dir = resolve(ckpt_dir)
    config = _read_config(ckpt_dir)
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        got = config.get("format") if isinstance(config, dict) else config
        raise ValueError(f"{ckpt_dir!r} has format {got!r}, expected {FORMAT!r}")
    try:
        return _load_quantized(ckpt_dir, config)
    except (KeyError, TypeError, IndexError, AttributeError) as e:
        raise QuantCheckpointError(f"{ckpt_dir!r}: corrupted quantized checkpoint "
                                   f"({type(e).__name__}: {e})") from None


def _load_quantized(ckpt_dir, config):
    from minitx.models.gpt import GPT, GPTConfig, upgrade_state_dict

    path = os.path.join(ckpt_dir, "model.safetensors")
    header, _, _ = read_header(path)
    cfg = GPTConfig(**config["model"])
    _check_sizes(ckpt_dir, header, cfg, os.path.getsize(path))
    tensors = upgrade_state_dict(check_finite(load_file(path), path))
    model = GPT(cfg)
    for name, meta in config["quantization"]["layers"].items():
        prefix = f"{name}{QSEP}"
        arrays = {k[len(prefix):]: tensors.pop(k) for k in list(tensors) if k.startswith(prefix)}
        if not arrays:
            raise QuantCheckpointError(f"{ckpt_dir!r}: no stored arrays for quantized layer "
                                       f"{name!r}")
        qweight = _checked_qtensor(ckpt_dir, name, arrays, meta)
        layer = QuantLinear(qweight, bias=np.zeros(qweight.shape[0], np.float32)
                            if f"{name}.bias" in tensors else None)
        replace_module(model, name, layer)
    try:
        model.load_state_dict(tensors, strict=True)
    except (KeyError, ValueError) as e:
        raise QuantCheckpointError(f"{path} does not fit its config: {e}") from None
    return model.eval()


def _float_params(cfg):
    """About the number of parameters GPT(cfg) allocates (an overestimate by at most ~2x)."""
    C, H = cfg.n_embd, cfg.n_head
    d = getattr(cfg, "head_dim", None) or C // H
    Hkv = getattr(cfg, "n_kv_head", None) or H
    ffn = getattr(cfg, "ffn_hidden", None) or 4 * C
    per_layer = C * (H + 2 * Hkv) * d + H * d * C + 3 * C * ffn + 6 * C
    return 2 * cfg.vocab_size * C + cfg.block_size * C + cfg.n_layer * per_layer


def _check_sizes(ckpt_dir, header, cfg, file_bytes):
    """The config's sizes against the weights file, before GPT(cfg) allocates anything.

    No scheme stores fewer than 1 bit per weight (float32 would be 32x larger), so a config whose
    model needs more than 64x the file's bytes (+ 64 MB) in float32 is corrupted; then the
    embedding, position table and block count are compared with the header."""
    need = 4 * _float_params(cfg)
    if need > 64 * file_bytes + 2**26:
        raise QuantCheckpointError(f"{ckpt_dir!r}: config.json describes a model of "
                                   f"{need / 1e6:.0f} MB in float32, impossible for a "
                                   f"{file_bytes}-byte model.safetensors (corrupted config?)")
    expect = {"wte.weight": [cfg.vocab_size, cfg.n_embd]}
    if "wpe.weight" in header:
        expect["wpe.weight"] = [cfg.block_size, cfg.n_embd]
    for name, shape in expect.items():
        if name not in header or header[name]["shape"] != shape:
            raise QuantCheckpointError(
                f"{ckpt_dir!r}: config.json expects {name} of shape {shape}, model.safetensors "
                f"holds {header[name]['shape'] if name in header else 'none'}")
    blocks = {int(k.split(".")[1]) for k in header if k.startswith("blocks.")
              and k.split(".")[1].isdigit()}
    if blocks != set(range(cfg.n_layer)):
        raise QuantCheckpointError(f"{ckpt_dir!r}: config.json says n_layer={cfg.n_layer}, "
                                   f"model.safetensors holds {len(blocks)} blocks")


def _checked_qtensor(ckpt_dir, name, arrays, meta):
    """QuantizedTensor.from_state, then one dequantization: right shape, finite values."""
    try:
        q = QuantizedTensor.from_state(arrays, meta)
        w = q.dequantize()
        ok = tuple(w.shape) == tuple(meta["shape"]) and len(w.shape) == 2 \
            and np.isfinite(w).all()
    except (ValueError, TypeError, KeyError, IndexError) as e:
        raise QuantCheckpointError(f"{ckpt_dir!r}: quantized layer {name!r} is corrupted "
                                   f"({type(e).__name__}: {e})") from None
    if not ok:
        raise QuantCheckpointError(f"{ckpt_dir!r}: quantized layer {name!r} does not decode to "
                                   f"finite values of its shape {meta['shape']}")
    return q

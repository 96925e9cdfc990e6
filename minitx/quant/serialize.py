"""Quantized checkpoints: the packed bytes on disk, loadable back into a GPT of QuantLinear layers.

A quantized checkpoint is a directory like the float one written by `minitx.checkpoint`:
  config.json        {"format": "minitx-gpt-quant", "model": {GPTConfig fields},
                      "quantization": {"scheme": ..., "options": {...},
                                       "layers": {layer name: QuantizedTensor meta}},
                      ... every other key of the source config (tokenizer, training info) ...}
  model.safetensors  float tensors under their state_dict names (embeddings, norms, biases) and,
                     for each quantized layer, its stored arrays as "<layer>.qweight.<array>"
                     (uint8/int8 packed codes, float32 scales): the file is really smaller.
Other files of the source directory (e.g. tokenizer files) are copied alongside.
"""
import dataclasses
import json
import os
import shutil

import numpy as np

from minitx.quant.linear import QuantLinear, replace_module
from minitx.quant.qtensor import QuantizedTensor
from minitx.safetensors import load_file, save_file

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
            if fname not in ("config.json", "model.safetensors") and os.path.isfile(src):
                shutil.copy2(src, os.path.join(out_dir, fname))
    return os.path.getsize(path)


def load_quantized_model(ckpt_dir):
    """Load a "minitx-gpt-quant" checkpoint into a GPT with QuantLinear layers (eval mode).

    Returns:
        GPT.
    """
    from minitx.checkpoint import resolve
    from minitx.models.gpt import GPT, GPTConfig, upgrade_state_dict

    ckpt_dir = resolve(ckpt_dir)
    config = _read_config(ckpt_dir)
    if config.get("format") != FORMAT:
        raise ValueError(f"{ckpt_dir!r} has format {config.get('format')!r}, expected {FORMAT!r}")
    tensors = upgrade_state_dict(load_file(os.path.join(ckpt_dir, "model.safetensors")))
    model = GPT(GPTConfig(**config["model"]))
    for name, meta in config["quantization"]["layers"].items():
        prefix = f"{name}{QSEP}"
        arrays = {k[len(prefix):]: tensors.pop(k) for k in list(tensors) if k.startswith(prefix)}
        if not arrays:
            raise ValueError(f"{ckpt_dir!r}: no stored arrays for quantized layer {name!r}")
        layer = QuantLinear(QuantizedTensor.from_state(arrays, meta),
                            bias=np.zeros(meta["shape"][0], np.float32)
                            if f"{name}.bias" in tensors else None)
        replace_module(model, name, layer)
    model.load_state_dict(tensors, strict=True)
    return model.eval()

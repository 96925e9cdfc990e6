"""Fine-tuning checkpoints ("minitx-lora"): a PEFT adapter plus what resuming needs.

A fine-tuning run directory has the same layout as a training run's (`minitx.checkpoint`):
step directories, the last few kept, and `latest` replaced atomically as the last act of a save.
Each step directory holds
    adapter_config.json, adapter_model.safetensors   the adapters, in PEFT's format
    train_state.safetensors                          AdamW moments of the adapters (tensors);
                                                     step, RNG and sampler states (metadata)
    config.json    {"format": "minitx-lora", "step", "base": the base checkpoint's path and
                    model config (a GGUF base: "kind": "gguf", the file's path, size, model
                    config and the training "block_size"), "quant": "nf4" | "int4" | "int8" |
                    "gguf" (the file's own blocks) | null, "checkpointing", "train": TrainConfig}
The base weights are not copied: the base checkpoint (or GGUF file) is loaded (and quantized
again, which is deterministic) when the run is resumed or sampled, and its model config must
still match.
`load_model` dispatches "minitx-lora" here, so `generate --ckpt RUN` samples the fine-tuned model.
"""
import dataclasses
import json
import os

import numpy as np

from minitx.checkpoint import (CONFIG_FILE, STATE_FILE, CheckpointError, commit_step,
                               load_model, read_config, resolve, write_train_state)
from minitx.fileio import atomic_write
from minitx.safetensors import SafetensorsError, load_file, read_header

FORMAT = "minitx-lora"


def save_lora_checkpoint(run_dir, model, step, optimizer, train_state, info, keep=3):
    """Write `run_dir/step-N/` (adapter, optimizer moments, training state, config), atomically.

    Args:
        info: JSON-able dict: base (path + model config), quant, checkpointing, train.
    Returns:
        the new step directory.
    """
    from minitx.lora import lora_parameters
    from minitx.lora_io import save_adapter
    bad = [i for i, p in enumerate(lora_parameters(model)) if not np.all(np.isfinite(p.data))]
    if bad:
        raise CheckpointError(f"refusing to save non-finite adapter weights at step {step}; the "
                              f"previous checkpoint in {run_dir} is kept")

    def write(tmp):
        save_adapter(model, tmp, base_model_name_or_path=info["base"]["path"])
        write_train_state(tmp, step, optimizer, train_state)
        config = dict(info, format=FORMAT, step=step)
        atomic_write(os.path.join(tmp, CONFIG_FILE), [json.dumps(config, indent=2).encode()])
    return commit_step(run_dir, step, write, keep)


def prepare_base(model, quant, checkpointing=False):
    """Quantize the model's Linear layers as asked (None: keep float) and turn on activation
    checkpointing per block, in place."""
    from minitx.lora import quantize_base
    from minitx.nn.checkpoint import checkpoint_modules
    if quant is not None:
        quantize_base(model, quant)
    if checkpointing:
        checkpoint_modules(model.blocks)
    return model


def build_model(base_path, quant, checkpointing=False):
    """The frozen base from its checkpoint, quantized as asked (None: float)."""
    return prepare_base(load_model(base_path), quant, checkpointing)


def build_gguf_model(path, quant, block_size, checkpointing=False):
    """The frozen base from a GGUF file: quant "gguf" keeps the file's blocks (GGMLLinear),
    None decodes them to float32; the context used for training is `block_size`."""
    from minitx.lora_gguf import load_gguf_gpt
    if quant not in ("gguf", None):
        raise ValueError(f"a GGUF base is used as stored ('gguf') or decoded to float32 "
                         f"('none'); re-quantizing it as {quant!r} is not supported")
    model = load_gguf_gpt(path, keep_blocks=quant == "gguf")
    if not 1 <= block_size <= model.config.block_size:
        raise ValueError(f"--block-size must be in [1, {model.config.block_size}] (the "
                         f"model's context), got {block_size}")
    model.config.block_size = int(block_size)
    return prepare_base(model, None, checkpointing)


def _gguf_model_config(path):
    """The GPTConfig (as a dict) that a GGUF file's metadata implies."""
    from minitx.gguf import open_gguf
    from minitx.gguf_model import LlamaHParams, gpt_config
    g = open_gguf(path)
    hp = LlamaHParams.from_metadata(g.metadata, path)
    return dataclasses.asdict(gpt_config(hp, "output.weight" not in g.tensors))


def _check_base(config, directory):
    base = config.get("base")
    if not isinstance(base, dict) or not isinstance(base.get("path"), str):
        raise CheckpointError(f"{directory}: config.json has no base checkpoint path")
    if base.get("kind") == "gguf":
        if not os.path.isfile(base["path"]):
            raise CheckpointError(f"{directory} was fine-tuned from {base['path']}, which is "
                                  "missing")
        if os.path.getsize(base["path"]) != base.get("size") or \
                _gguf_model_config(base["path"]) != base.get("model"):
            raise CheckpointError(f"{directory} was fine-tuned from {base['path']}, which has "
                                  "changed since: not the same base model")
        return base["path"]
    base_cfg = read_config(base["path"]).get("model")
    if base_cfg != base.get("model"):
        raise CheckpointError(f"{directory} was fine-tuned from {base['path']}, whose model "
                              "config has changed since: not the same base model")
    return base["path"]


def load_lora_training(run_dir):
    """(model, step, optimizer state dict, train_state, config) to resume a fine-tuning run."""
    from minitx.lora_io import load_adapter
    directory = resolve(run_dir)
    config = read_config(directory)
    if config["format"] != FORMAT:
        raise CheckpointError(f"{run_dir} is a {config['format']!r} checkpoint, not a "
                              "fine-tuning run")
    path, base = _check_base(config, directory), config["base"]
    if base.get("kind") == "gguf":
        model = build_gguf_model(path, config.get("quant"), base.get("block_size", 0),
                                 config.get("checkpointing", False))
    else:
        model = build_model(path, config.get("quant"), config.get("checkpointing", False))
    load_adapter(model, directory)
    path = os.path.join(directory, STATE_FILE)
    try:
        _, meta, _ = read_header(path)
        tensors = load_file(path)
        groups = json.loads(meta["optim_groups"])
        scalars = json.loads(meta["optim_scalars"])
        train_state = json.loads(meta["train_state"])
    except (SafetensorsError, KeyError, ValueError, OSError) as e:
        raise CheckpointError(f"cannot load {path}: {e}") from None
    if meta.get("step") != str(config.get("step")):
        raise CheckpointError(f"{directory}: {STATE_FILE} is from step {meta.get('step')}, "
                              f"config.json from step {config.get('step')}")
    for g in groups:
        g["betas"] = tuple(g["betas"])
    state = {k[len("optim."):]: v for k, v in tensors.items()}
    state.update(scalars)
    return model, int(config["step"]), {"groups": groups, "state": state}, train_state, config


def load_lora_checkpoint(directory):
    """The fine-tuned model (base + adapters), in eval mode: the "minitx-lora" loader."""
    model = load_lora_training(directory)[0]
    return model.eval()


def run_info(base_path, model, quant, checkpointing, tc, gguf=False):
    """The JSON-able description of a fine-tuning run stored in each config.json."""
    path = os.path.abspath(base_path)
    if gguf:
        base = {"kind": "gguf", "path": path, "size": os.path.getsize(path),
                "model": _gguf_model_config(path), "block_size": model.config.block_size}
    else:
        base = {"path": path, "model": read_config(base_path).get("model")}
    return {"base": base,
            "quant": quant, "checkpointing": bool(checkpointing),
            "train": dataclasses.asdict(tc)}

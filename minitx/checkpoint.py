"""Checkpoints: safetensors + JSON, never pickle, always written atomically.

A checkpoint is a directory:
    model.safetensors        the weights; its metadata repeats the config and step
    train_state.safetensors  optimizer moments (tensors) + step, RNG states and hyper-parameters
                             (JSON in the metadata): everything `--resume` needs to continue
                             exactly as an uninterrupted run
    config.json              {"format": "minitx-gpt", "step", "model": GPTConfig, "train": ...}
Each file is written to a temporary name, fsynced and renamed over the old one, in the order
train_state, model, config.json; every file records the step, and loading checks the steps
agree, so a crash between two renames is reported instead of silently mixing two steps. Weights
are checked to be finite before anything is written: a diverged run never replaces a good
checkpoint.
"""
import dataclasses
import json
import os

import numpy as np

from minitx.models.gpt import GPT, GPTConfig
from minitx.safetensors import SafetensorsError, _atomic_write, load_file, read_header, save_file

FORMAT = "minitx-gpt"
MODEL_FILE, STATE_FILE, CONFIG_FILE = "model.safetensors", "train_state.safetensors", "config.json"


class CheckpointError(ValueError):
    """A checkpoint is missing, truncated, corrupted, or inconsistent."""


def save_checkpoint(ckpt_dir, model, step, optimizer=None, train_state=None, train_config=None):
    """Write model (and optionally optimizer + training state) to `ckpt_dir` atomically.

    Args:
        model: a GPT. optimizer: its AdamW/SGD, or None to save weights only.
        step: the number of optimizer steps taken.
        train_state: JSON-able dict (RNG states, data fingerprint, ...) stored with the optimizer.
        train_config: JSON-able dict of training hyper-parameters, stored in config.json.
    Raises:
        CheckpointError if any weight is NaN or infinite (nothing is written then).
    """
    weights = model.state_dict()
    bad = [k for k, v in weights.items() if not np.all(np.isfinite(v))]
    if bad:
        raise CheckpointError(f"refusing to save non-finite weights ({', '.join(bad[:3])}) at "
                              f"step {step}; the previous checkpoint in {ckpt_dir} is kept")
    os.makedirs(ckpt_dir, exist_ok=True)
    model_cfg = dataclasses.asdict(model.config)
    if optimizer is not None:
        sd = optimizer.state_dict()
        tensors = {f"optim.{k}": v for k, v in sd["state"].items() if isinstance(v, np.ndarray)}
        scalars = {k: v for k, v in sd["state"].items() if not isinstance(v, np.ndarray)}
        meta = {"step": str(step), "optim_groups": json.dumps(sd["groups"]),
                "optim_scalars": json.dumps(scalars), "train_state": json.dumps(train_state or {})}
        save_file(tensors, os.path.join(ckpt_dir, STATE_FILE), metadata=meta)
    save_file(weights, os.path.join(ckpt_dir, MODEL_FILE),
              metadata={"format": FORMAT, "step": str(step), "config": json.dumps(model_cfg)})
    config = {"format": FORMAT, "step": step, "model": model_cfg, "train": train_config or {}}
    _atomic_write(os.path.join(ckpt_dir, CONFIG_FILE),
                  [json.dumps(config, indent=2).encode("utf-8") + b"\n"])


def read_config(ckpt_dir):
    """The parsed config.json of a checkpoint directory, with clear errors."""
    if not os.path.isdir(ckpt_dir):
        raise CheckpointError(f"checkpoint directory not found: {ckpt_dir}")
    path = os.path.join(ckpt_dir, CONFIG_FILE)
    if not os.path.exists(path):
        raise CheckpointError(f"no {CONFIG_FILE} in {ckpt_dir}: not a minitx checkpoint")
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is corrupted: {e}") from None
    if not isinstance(config, dict) or "format" not in config:
        raise CheckpointError(f"{path} has no 'format' field: not a minitx checkpoint")
    return config


def load_model(ckpt_dir):
    """Rebuild the model saved in `ckpt_dir` (float or quantized), in eval mode."""
    config = read_config(ckpt_dir)
    if config["format"] == "minitx-gpt-quant":
        from minitx.quant.serialize import load_quantized_model
        return load_quantized_model(ckpt_dir)
    if config["format"] != FORMAT:
        raise CheckpointError(f"{ckpt_dir}: unknown checkpoint format {config['format']!r}")
    model, _ = _load_weights(ckpt_dir, config)
    return model.eval()


def _load_weights(ckpt_dir, config):
    path = os.path.join(ckpt_dir, MODEL_FILE)
    if not os.path.exists(path):
        raise CheckpointError(f"missing {path}")
    try:
        _, meta, _ = read_header(path)
        weights = load_file(path)
        cfg = GPTConfig(**config["model"])
    except (SafetensorsError, TypeError, ValueError, OSError) as e:
        raise CheckpointError(f"cannot load {path}: {e}") from None
    if meta.get("step") != str(config.get("step")):
        raise CheckpointError(f"{ckpt_dir}: {MODEL_FILE} is from step {meta.get('step')} but "
                              f"{CONFIG_FILE} says step {config.get('step')} (interrupted save?)")
    model = GPT(cfg)
    try:
        model.load_state_dict(weights)
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{path} does not fit its config: {e}") from None
    return model, int(config["step"])


def load_checkpoint(ckpt_dir):
    """Everything needed to resume training.

    Returns:
        (model, step, optimizer_state_dict, train_state dict, config dict).
    """
    config = read_config(ckpt_dir)
    if config["format"] != FORMAT:
        raise CheckpointError(f"{ckpt_dir}: cannot resume training from format "
                              f"{config['format']!r}")
    model, step = _load_weights(ckpt_dir, config)
    path = os.path.join(ckpt_dir, STATE_FILE)
    if not os.path.exists(path):
        raise CheckpointError(f"{ckpt_dir} holds weights only ({STATE_FILE} missing): cannot "
                              "resume training exactly")
    try:
        _, meta, _ = read_header(path)
        tensors = load_file(path)
        groups = json.loads(meta["optim_groups"])
        scalars = json.loads(meta["optim_scalars"])
        train_state = json.loads(meta["train_state"])
    except (SafetensorsError, KeyError, json.JSONDecodeError, OSError) as e:
        raise CheckpointError(f"cannot load {path}: {e}") from None
    if meta.get("step") != str(step):
        raise CheckpointError(f"{ckpt_dir}: {STATE_FILE} is from step {meta.get('step')}, the "
                              f"weights from step {step} (interrupted save?)")
    for g in groups:
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    state = {k[len("optim."):]: v for k, v in tensors.items()}
    state.update(scalars)
    return model, step, {"groups": groups, "state": state}, train_state, config

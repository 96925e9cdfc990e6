"""Checkpoints: safetensors + JSON, never pickle; one save is one atomic step.

A run's output directory holds one sub-directory per save and a pointer to the newest:
    out/
      latest                   "step-0000400\\n": replaced atomically, the last act of a save
      step-0000200/            an older save (the last `keep` saves are kept)
      step-0000400/
        model.safetensors        the weights; its metadata repeats the config and step
        train_state.safetensors  optimizer moments (tensors) + step, RNG states, extension
                                 states and hyper-parameters (JSON in the metadata)
        config.json              {"format": "minitx-gpt", "step", "model": GPTConfig, "train"}
A save writes a complete new step directory under a temporary name, fsyncs it, renames it into
place and only then replaces `latest`: a crash at any point leaves `latest` naming a complete
save. Weights are checked to be finite before anything is written, so a diverged run never
replaces a good checkpoint. A directory holding config.json itself (a single-directory checkpoint
of earlier minitx versions, or a quantized export) still loads.

Loading dispatches on config.json's "format" through one registry (`FORMATS`, extended with
`register_format`), so each format's loader lives with its format and no two import each other.
"""
import dataclasses
import importlib
import json
import os
import shutil

import numpy as np

from minitx.fileio import atomic_write, fsync_dir
from minitx.models.gpt import GPT, GPTConfig, num_params_of, upgrade_state_dict
from minitx.safetensors import (SafetensorsError, check_finite, load_file, read_header,
                                save_file)

FORMAT = "minitx-gpt"
MODEL_FILE, STATE_FILE, CONFIG_FILE = "model.safetensors", "train_state.safetensors", "config.json"
LATEST = "latest"

# format name -> "module:function" taking a resolved checkpoint directory, returning a model
MASKED_FORMAT = "minitx-gpt-masked"   # a GPT mid-way through a growth ramp (minitx.growth)
FORMATS = {
    FORMAT: "minitx.checkpoint:load_gpt",
    MASKED_FORMAT: "minitx.checkpoint:refuse_masked",
    "minitx-gpt-quant": "minitx.quant.serialize:load_quantized_model",
    "minitx-lora": "minitx.lora_checkpoint:load_lora_checkpoint",
}


class CheckpointError(ValueError):
    """A checkpoint is missing, truncated, corrupted, or inconsistent."""


def register_format(name, loader):
    """Make `load_model` dispatch checkpoints of format `name` to `loader` ("module:function"
    or a callable taking the checkpoint directory)."""
    FORMATS[name] = loader


# ============================== saving =======================================================
def step_dir_name(step):
    return f"step-{step:07d}"


def save_checkpoint(ckpt_dir, model, step, optimizer=None, train_state=None, train_config=None,
                    keep=3):
    """Save model (and optionally optimizer + training state) as `ckpt_dir/step-N/`, atomically.

    Args:
        model: a GPT. optimizer: its AdamW/SGD, or None to save weights only.
        step: the number of optimizer steps taken.
        train_state: JSON-able dict (RNG states, data fingerprint, extension states, ...).
        train_config: JSON-able dict of training hyper-parameters, stored in config.json.
        keep: how many step directories to keep (older ones are removed after the save).
    Returns:
        the path of the new step directory.
    Raises:
        CheckpointError if any weight is NaN or infinite (nothing is written then).
    """
    weights = model.state_dict()
    bad = [k for k, v in weights.items() if not np.all(np.isfinite(v))]
    if bad:
        raise CheckpointError(f"refusing to save non-finite weights ({', '.join(bad[:3])}) at "
                              f"step {step}; the previous checkpoint in {ckpt_dir} is kept")
    return commit_step(ckpt_dir, step, lambda d: write_checkpoint_files(
        d, model, step, optimizer, train_state, train_config), keep)


def commit_step(ckpt_dir, step, write, keep=3):
    """The atomic step every format's save shares: `write(tmp)` fills a temporary directory,
    which is fsynced and renamed to `ckpt_dir/step-N`; only then is `latest` replaced, and saves
    older than the last `keep` are removed. Returns the new step directory."""
    if os.path.exists(ckpt_dir) and not os.path.isdir(ckpt_dir):
        raise CheckpointError(f"checkpoint path {ckpt_dir} exists and is not a directory")
    os.makedirs(ckpt_dir, exist_ok=True)
    name = step_dir_name(step)
    tmp = os.path.join(ckpt_dir, f".{name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        write(tmp)
        final = os.path.join(ckpt_dir, name)
        if os.path.exists(final):                   # re-saving a step: move the old one aside
            old = final + f".old-{os.getpid()}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        fsync_dir(ckpt_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    atomic_write(os.path.join(ckpt_dir, LATEST), [name.encode() + b"\n"])
    _prune(ckpt_dir, keep, name)
    return final


def write_train_state(directory, step, optimizer, train_state):
    """train_state.safetensors: the optimizer's arrays as tensors; its scalars and hyper-
    parameters, the step and the JSON-able training state in the metadata."""
    sd = optimizer.state_dict()
    tensors = {f"optim.{k}": np.asarray(v) for k, v in sd["state"].items()
               if isinstance(v, np.ndarray)}
    scalars = {k: v for k, v in sd["state"].items() if not isinstance(v, np.ndarray)}
    meta = {"step": str(step), "optim_groups": json.dumps(sd["groups"]),
            "optim_scalars": json.dumps(scalars), "train_state": json.dumps(train_state or {})}
    save_file(tensors, os.path.join(directory, STATE_FILE), metadata=meta)


def write_checkpoint_files(directory, model, step, optimizer=None, train_state=None,
                           train_config=None):
    """The three files of one checkpoint, into an existing `directory`. A model may name its
    format in `checkpoint_format` (growth marks a model whose masks are still ramping)."""
    fmt = getattr(model, "checkpoint_format", FORMAT)
    model_cfg = dataclasses.asdict(model.config)
    if optimizer is not None:
        write_train_state(directory, step, optimizer, train_state)
    save_file(model.state_dict(), os.path.join(directory, MODEL_FILE),
              metadata={"format": fmt, "step": str(step), "config": json.dumps(model_cfg)})
    config = {"format": fmt, "step": step, "model": model_cfg, "train": train_config or {}}
    atomic_write(os.path.join(directory, CONFIG_FILE),
                 [json.dumps(config, indent=2).encode("utf-8") + b"\n"])


def _prune(ckpt_dir, keep, newest):
    steps = sorted(d for d in os.listdir(ckpt_dir)
                   if d.startswith("step-") and os.path.isdir(os.path.join(ckpt_dir, d)))
    for d in steps[:-keep] if keep > 0 else []:
        if d != newest:
            shutil.rmtree(os.path.join(ckpt_dir, d), ignore_errors=True)


# ============================== locating and reading =========================================
def resolve(ckpt_dir):
    """The directory holding config.json: `ckpt_dir/<latest>` for a run directory, or
    `ckpt_dir` itself for a single-directory checkpoint."""
    if not os.path.isdir(ckpt_dir):
        raise CheckpointError(f"checkpoint directory not found: {ckpt_dir}")
    pointer = os.path.join(ckpt_dir, LATEST)
    if os.path.isfile(pointer):
        try:
            with open(pointer, encoding="utf-8") as f:
                name = f.read(256).strip()
        except (OSError, UnicodeDecodeError) as e:
            raise CheckpointError(f"cannot read {pointer}: {e}") from None
        if not name.startswith("step-") or os.sep in name or "/" in name:
            raise CheckpointError(f"{pointer} names {name!r}, not a step directory")
        target = os.path.join(ckpt_dir, name)
        if not os.path.isdir(target):
            raise CheckpointError(f"{pointer} names {name}, which is missing from {ckpt_dir}")
        return target
    if os.path.isfile(os.path.join(ckpt_dir, CONFIG_FILE)):
        return ckpt_dir
    raise CheckpointError(f"no {LATEST} or {CONFIG_FILE} in {ckpt_dir}: not a minitx checkpoint")


def read_config(ckpt_dir):
    """The parsed config.json of a checkpoint (run directory or step directory)."""
    path = os.path.join(resolve(ckpt_dir), CONFIG_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            config = json.loads(f.read(16 << 20))
    except (ValueError, UnicodeDecodeError, RecursionError, OSError) as e:
        raise CheckpointError(f"{path} is corrupted: {e}") from None
    if not isinstance(config, dict) or not isinstance(config.get("format"), str):
        raise CheckpointError(f"{path} has no 'format' field: not a minitx checkpoint")
    return config


def model_config(config, path):
    """The GPTConfig of a parsed config.json, with every problem a CheckpointError."""
    if "model" not in config:
        raise CheckpointError(f"{path}: config.json has no 'model' section")
    try:
        return GPTConfig.from_dict(config["model"])
    except (TypeError, ValueError, OverflowError) as e:
        raise CheckpointError(f"{path}: bad model config: {e}") from None


def _loader(fmt):
    target = FORMATS.get(fmt)
    if target is None:
        raise CheckpointError(f"unknown checkpoint format {fmt!r}; known: {sorted(FORMATS)}")
    if callable(target):
        return target
    module, func = target.split(":")
    return getattr(importlib.import_module(module), func)


def load_model(ckpt_dir):
    """Rebuild the model saved in `ckpt_dir` (any registered format), in eval mode."""
    directory = resolve(ckpt_dir)
    return _loader(read_config(directory)["format"])(directory)


def load_gpt(ckpt_dir):
    """A float GPT from a "minitx-gpt" checkpoint, in eval mode."""
    directory = resolve(ckpt_dir)
    model, _ = _load_weights(directory, read_config(directory))
    return model.eval()


def refuse_masked(ckpt_dir):
    raise CheckpointError(f"{ckpt_dir} was saved mid-way through a growth ramp: its masks live in "
                          "the training state. Resume training (`train --resume` with the same "
                          "--grow) past the ramp to get a plain GPT")


def _load_weights(directory, config):
    """Check the weights file against the config before building anything, then load it."""
    path = os.path.join(directory, MODEL_FILE)
    if not os.path.exists(path):
        raise CheckpointError(f"missing {path}")
    cfg = model_config(config, directory)
    try:
        header, meta, _ = read_header(path)
    except (SafetensorsError, OSError) as e:
        raise CheckpointError(f"cannot load {path}: {e}") from None
    if meta.get("step") != str(config.get("step")):
        raise CheckpointError(f"{directory}: {MODEL_FILE} is from step {meta.get('step')} but "
                              f"{CONFIG_FILE} says step {config.get('step')} (interrupted save?)")
    stored = sum(int(np.prod(h["shape"], dtype=np.float64)) for h in header.values())
    expected = num_params_of(cfg)
    if stored != expected:            # before GPT(cfg): a corrupted config must not allocate
        raise CheckpointError(f"{path} holds {stored:,} weights but its config describes a model "
                              f"of {expected:,}: the config does not fit the weights")
    try:
        weights = upgrade_state_dict(check_finite(load_file(path), path))
    except (SafetensorsError, OSError) as e:
        raise CheckpointError(f"cannot load {path}: {e}") from None
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
    directory = resolve(ckpt_dir)
    config = read_config(directory)
    if config["format"] not in (FORMAT, MASKED_FORMAT):
        raise CheckpointError(f"{ckpt_dir}: cannot resume training from format "
                              f"{config['format']!r}")
    model, step = _load_weights(directory, config)
    path = os.path.join(directory, STATE_FILE)
    if not os.path.exists(path):
        raise CheckpointError(f"{ckpt_dir} holds weights only ({STATE_FILE} missing): cannot "
                              "resume training exactly")
    try:
        _, meta, _ = read_header(path)
        tensors = check_finite(load_file(path), path)      # NaN moments would poison training
        groups = json.loads(meta["optim_groups"])
        scalars = json.loads(meta["optim_scalars"])
        train_state = json.loads(meta["train_state"])
    except (SafetensorsError, KeyError, ValueError, RecursionError, OSError) as e:
        raise CheckpointError(f"cannot load {path}: {e}") from None
    if not (isinstance(groups, list) and all(isinstance(g, dict) for g in groups)
            and isinstance(scalars, dict) and isinstance(train_state, dict)):
        raise CheckpointError(f"cannot load {path}: malformed optimizer or training state")
    if meta.get("step") != str(step):
        raise CheckpointError(f"{ckpt_dir}: {STATE_FILE} is from step {meta.get('step')}, the "
                              f"weights from step {step} (interrupted save?)")
    for g in groups:
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    state = {k[len("optim."):]: v for k, v in tensors.items()}
    state.update(scalars)
    return model, step, {"groups": groups, "state": state}, train_state, config

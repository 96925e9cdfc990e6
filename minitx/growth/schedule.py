"""A growth schedule as an extension of the one training loop (never a loop of its own).

Syntax of `--grow`: events separated by ";", each "STEP:SIZE=VALUE[,SIZE=VALUE...]" where STEP is
the number of optimizer steps taken when the model grows and SIZE is one of n_embd, ffn,
n_head, n_layer (the new value, never smaller), e.g.

    --grow "300:n_layer=6,n_embd=192;600:n_layer=8" --ramp-steps 50

grows to 6 layers and width 192 before step 301 and to 8 layers before step 601; with
--ramp-steps R > 0 the new structure's MSG masks rise linearly from 0 to 1 over R steps, then fold
away. The events, the masks of a growth still ramping and each event's sizes are saved in the
checkpoint (the extension's state), so --resume across a growth point or mid-ramp continues bit for
bit as the uninterrupted run.
"""
from minitx.growth.operators import GrowthMasks, apply_masks, grow, grown_config, set_mask_step

SIZES = ("n_embd", "ffn", "n_head", "n_layer")
_CONFIG_FIELD = {"n_embd": "n_embd", "ffn": "ffn_hidden", "n_head": "n_head", "n_layer": "n_layer"}


class GrowthScheduleError(ValueError):
    """An invalid --grow schedule (the CLI prints one error: line and exits 2)."""


def _int(text, what):
    try:
        value = int(text)
    except ValueError:
        raise GrowthScheduleError(f"--grow: {what} must be an integer, got {text!r}") from None
    return value


def parse_schedule(text):
    """"300:n_layer=6,n_embd=192;600:n_layer=8" -> [(300, {"n_layer": 6, "n_embd": 192}), ...].

    Raises:
        GrowthScheduleError naming the offending part.
    """
    if not isinstance(text, str) or not text.strip():
        raise GrowthScheduleError("--grow: empty schedule (expected e.g. '300:n_layer=6')")
    events = []
    for part in text.split(";"):
        part = part.strip()
        if part.count(":") != 1:
            raise GrowthScheduleError(f"--grow: event {part!r} is not STEP:SIZE=VALUE[,...]")
        step_text, sizes_text = part.split(":")
        step = _int(step_text.strip(), f"the step of event {part!r}")
        sizes = {}
        for item in sizes_text.split(","):
            key, eq, value = item.strip().partition("=")
            key = key.strip()
            if not eq or key not in SIZES:
                raise GrowthScheduleError(f"--grow: {item.strip()!r} in event {part!r}: expected "
                                          f"SIZE=VALUE with SIZE one of {', '.join(SIZES)}")
            if key in sizes:
                raise GrowthScheduleError(f"--grow: {key} given twice in event {part!r}")
            sizes[key] = _int(value.strip(), f"{key} in event {part!r}")
        events.append((step, sizes))
    return events


def validate_schedule(events, config, max_steps, ramp_steps):
    """Check the whole schedule before training: steps in order within (0, max_steps), every
    event grows something and shrinks nothing, GQA head counts fit. Returns the final config."""
    if ramp_steps < 0:
        raise GrowthScheduleError(f"--ramp-steps must be >= 0, got {ramp_steps}")
    prev = 0
    for step, sizes in events:
        if step <= prev:
            raise GrowthScheduleError(f"--grow: step {step} must be > 0 and after the previous "
                                      f"event's step ({prev}): events in increasing step order")
        if step >= max_steps:
            raise GrowthScheduleError(f"--grow: step {step} is not before --max-steps "
                                      f"{max_steps}")
        if all(getattr(config, _CONFIG_FIELD[k]) == v for k, v in sizes.items()):
            raise GrowthScheduleError(f"--grow: the event at step {step} changes nothing "
                                      f"({sizes} is the model's size then)")
        try:
            config = grown_config(config, **sizes)
        except (ValueError, TypeError) as e:
            raise GrowthScheduleError(f"--grow: event at step {step}: {e}") from None
        prev = step
    return config


def size_label(config):
    return (f"L{config.n_layer} C{config.n_embd} H{config.n_head}x{config.head_dim} "
            f"F{config.ffn_hidden}")


class GrowthSchedule:
    """Trainer extension: grows trainer.model (and moves trainer.optimizer) at the scheduled
    steps, ramps the masks, folds them, and shows the current size on the progress line.

    Args:
        events: [(step, {size: value})] as `parse_schedule` returns.
        ramp_steps: MSG mask ramp length (0: no masks). init: as `grow`'s.
    """
    name = "growth"

    def __init__(self, events, ramp_steps=0, init="random"):
        self.events, self.ramp_steps, self.init = list(events), int(ramp_steps), init
        self.history = []                 # [{"step", "config": sizes, "flops_per_token"}]
        self.trainer, self._saved_masks = None, None

    def on_start(self, trainer):
        self.trainer = trainer
        done = len(self.history)
        validate_schedule(self.events[done:], trainer.model.config, trainer.tc.max_steps,
                          self.ramp_steps)
        if self._saved_masks is not None:           # resumed mid-ramp: the masks come back
            apply_masks(trainer.model, GrowthMasks.from_state_dict(trainer.model.config,
                                                                   self._saved_masks))
            set_mask_step(trainer.model, trainer.step)
        self._show(trainer)

    def on_step_begin(self, trainer):
        for step, sizes in self.events[len(self.history):]:
            if step != trainer.step:
                continue
            trainer.model = grow(trainer.model, trainer.optimizer, ramp_steps=self.ramp_steps,
                                 init=self.init, step=trainer.step, **sizes)
            cfg = trainer.model.config
            self.history.append({"step": step, "sizes": size_label(cfg),
                                 "flops_per_token": int(trainer.model.flops_per_token())})
            trainer.log(f"step {step:5d} | grew to {size_label(cfg)}: "
                        f"{trainer.model.num_params():,} parameters, "
                        f"{trainer.model.flops_per_token() / 1e6:.2f} MFLOP per token")
        set_mask_step(trainer.model, trainer.step)
        self._show(trainer)

    def _show(self, trainer):
        trainer.progress["size"] = size_label(trainer.model.config)
        masks = trainer.model.__dict__.get("growth_masks")
        trainer.model.checkpoint_format = "minitx-gpt" if masks is None else "minitx-gpt-masked"
        if masks is not None:
            trainer.progress["mask"] = f"{masks.values.values[1:].min():.2f}"
        else:
            trainer.progress.pop("mask", None)

    def state_dict(self):
        masks = None
        if self.trainer is not None:
            gm = self.trainer.model.__dict__.get("growth_masks")
            masks = None if gm is None else gm.state_dict()
        return {"events": [[s, dict(z)] for s, z in self.events], "ramp_steps": self.ramp_steps,
                "history": list(self.history), "masks": masks}

    def load_state_dict(self, d):
        saved = [(int(s), dict(z)) for s, z in d["events"]]
        done = len(d["history"])
        if saved[:done] != self.events[:done]:
            raise GrowthScheduleError(f"--grow: the checkpoint already grew at "
                                      f"{saved[:done]}, which this --grow schedule does not "
                                      "repeat; resume with the same schedule")
        if d["masks"] is not None and d["ramp_steps"] != self.ramp_steps:
            raise GrowthScheduleError(f"--ramp-steps {self.ramp_steps}: the checkpoint is "
                                      f"mid-ramp with --ramp-steps {d['ramp_steps']}")
        self.history, self._saved_masks = list(d["history"]), d["masks"]

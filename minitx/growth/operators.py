"""The growth operators: a GPT of config c becomes a GPT of a larger config c'.

Each parameter's axes have a kind: "C" (residual width n_embd), "F" (FFN hidden), "q" (query
features H*d), "kv" (key/value features Hkv*d), "qkv" (the fused [q | k | v] rows), or a kind
that never grows (vocabulary, positions). Growing a dimension gives, per kind, the position of
every old index in the new axis; the grown tensor is a fresh one (init) with the old tensor
written at those positions, and AdamW's moments are moved by the same positions (new entries 0).

Heads. A model without GQA (Hkv = H) gets new query, key and value heads appended. With GQA the
key/value heads stay and query head h = j G + i (group j, G = H / Hkv) moves to j G' + i: new
query heads join the end of every group, so each old head keeps its key/value head.
Layers. New blocks go to `insert_at` (positions in the new stack; default on top).
"""
import dataclasses

import numpy as np

from minitx import random as _random
from minitx.growth.masks import MaskValues, MaskedLinear, MaskedNorm, replace_child
from minitx.models.gpt import GPT

INITS = ("random", "copy", "zero")


# ============================== which axis is which ==========================================
def axis_kinds(name):
    """Kinds of the axes of parameter `name` ("blocks.3.attn.q_proj.weight" -> ("q", "C"))."""
    leaf = name.split(".")[-2] if name.count(".") else name
    is_w = name.endswith("weight")
    if name.startswith(("wte.", "lm_head.")):
        return ("vocab", "C")
    if name.startswith("wpe."):
        return ("pos", "C")
    if leaf in ("ln1", "ln2", "ln_f"):
        return ("C",)
    rows = {"qkv": "qkv", "q_proj": "q", "k_proj": "kv", "v_proj": "kv", "proj": "C",
            "o_proj": "C", "fc": "F", "gate_proj": "F", "up_proj": "F", "down_proj": "C"}
    if leaf not in rows:
        raise ValueError(f"growth does not know parameter {name!r}")
    row = rows[leaf]
    if leaf == "proj":                                    # attn.proj or mlp.proj
        cols = "q" if ".attn." in name else "F"
    else:
        cols = {"o_proj": "q", "down_proj": "F"}.get(leaf, "C")
    return (row, cols) if is_w else (row,)


def head_positions(H, Hkv, H_new):
    """New index of every old query head (see the module docstring)."""
    if Hkv == H:
        return np.arange(H)
    G, G_new = H // Hkv, H_new // Hkv
    return np.array([(h // G) * G_new + h % G for h in range(H)])


def kind_maps(cfg, new):
    """{kind: int array, old index -> new index} for the grown kinds."""
    d = cfg.head_dim
    feat = lambda heads: (heads[:, None] * d + np.arange(d)).reshape(-1)       # noqa: E731
    q = feat(head_positions(cfg.n_head, cfg.n_kv_head, new.n_head))
    kv = feat(np.arange(cfg.n_kv_head))
    qkv = np.concatenate([q, new.n_head * d + kv, (new.n_head + new.n_kv_head) * d + kv])
    return {"C": np.arange(cfg.n_embd), "F": np.arange(cfg.ffn_hidden), "q": q, "kv": kv,
            "qkv": qkv}


def grown_config(cfg, n_embd=None, ffn=None, n_head=None, n_layer=None):
    """The config after growth; raises ValueError for shrinking or a GQA mismatch."""
    want = {"n_embd": n_embd, "ffn_hidden": ffn, "n_head": n_head, "n_layer": n_layer}
    if all(v is None for v in want.values()):
        raise ValueError("grow: nothing to grow (give n_embd, ffn, n_head or n_layer)")
    for key, v in want.items():
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise TypeError(f"grow: {key} must be an int, got {v!r}")
        if v < getattr(cfg, key):
            raise ValueError(f"grow: {key}={v} would shrink the model (it has "
                             f"{getattr(cfg, key)}); growth only adds")
    H = cfg.n_head if n_head is None else int(n_head)
    Hkv = H if cfg.n_kv_head == cfg.n_head else cfg.n_kv_head
    if H % Hkv:
        raise ValueError(f"grow: n_head={H} is not a multiple of the model's n_kv_head={Hkv} "
                         "(GQA keeps its key/value heads)")
    changes = {k: int(v) for k, v in want.items() if v is not None}
    return dataclasses.replace(cfg, n_kv_head=Hkv, head_dim=cfg.head_dim, **changes)


# ============================== placing old tensors in new ones ==============================
def placement(name, maps):
    """Index arrays (one per axis) where the old tensor `name` goes in the grown one."""
    return tuple(maps.get(k) for k in axis_kinds(name))


def place(new, old, index):
    """Write `old` into `new` at the per-axis positions `index` (None = the same positions)."""
    full = tuple(np.arange(s) if ix is None else ix for s, ix in zip(old.shape, index))
    new[np.ix_(*full)] = old
    return new


def _copy_sources(cfg, new, rng):
    """Net2Net: for each grown kind, the old unit each new unit copies, and replication counts."""
    d = cfg.head_dim
    src, count = {}, {}
    for kind, old_n, new_n in (("C", cfg.n_embd, new.n_embd), ("F", cfg.ffn_hidden, new.ffn_hidden)):
        s = np.concatenate([np.arange(old_n), rng.integers(0, old_n, new_n - old_n)])
        src[kind], count[kind] = s, np.bincount(s, minlength=old_n)
    # heads: a new query head copies a head of its own key/value group (so GQA stays exact)
    Gn, G = new.n_head // new.n_kv_head, cfg.n_head // cfg.n_kv_head
    heads = np.array([(h // Gn) * G + (h % Gn if h % Gn < G else rng.integers(0, G))
                      for h in range(new.n_head)]) if cfg.n_kv_head != cfg.n_head else \
        np.concatenate([np.arange(cfg.n_head), rng.integers(0, cfg.n_head,
                                                            new.n_head - cfg.n_head)])
    hcount = np.bincount(heads, minlength=cfg.n_head)
    feat = lambda hs: (hs[:, None] * d + np.arange(d)).reshape(-1)                 # noqa: E731
    src["q"], count["q"] = feat(heads), np.repeat(hcount, d)
    kvh = heads if cfg.n_kv_head == cfg.n_head else np.arange(cfg.n_kv_head)
    src["kv"] = feat(kvh)
    qd, kvd = cfg.n_head * d, cfg.n_kv_head * d
    src["qkv"] = np.concatenate([src["q"], qd + src["kv"], qd + kvd + src["kv"]])
    return src, count


def copy_grow(name, old, src, count):
    """Net2Net copy of tensor `old`: units copy their source; a Linear's input columns (the
    axis it sums over) are split between a unit and its copies, so sums are unchanged."""
    kinds = axis_kinds(name)
    out = old
    for axis, kind in enumerate(kinds):
        if kind not in src:
            continue
        out = np.take(out, src[kind], axis=axis)
        reader = axis == 1 and not name.startswith(("wte.", "wpe."))
        if reader and kind in count:
            shape = [1] * out.ndim
            shape[axis] = -1
            out = out / count[kind][src[kind]].reshape(shape).astype(out.dtype)
    return out


# ============================== the masks' bookkeeping =======================================
class GrowthMasks:
    """Which growth event created each masked coordinate, and the ramp of every event.

    resid (n_embd,) ids of the residual coordinates; blocks[i] = dict(block=id of block i,
    heads=(n_head,) ids, ffn=(ffn_hidden,) ids); events[k-1] = dict(start=step, ramp=steps).
    """

    def __init__(self, cfg):
        self.values = MaskValues()
        self.resid = np.zeros(cfg.n_embd, np.int64)
        self.blocks = [self.empty_block(cfg) for _ in range(cfg.n_layer)]
        self.events = []

    @staticmethod
    def empty_block(cfg, event=0):
        return dict(block=event, heads=np.zeros(cfg.n_head, np.int64),
                    ffn=np.zeros(cfg.ffn_hidden, np.int64))

    def new_event(self, start, ramp):
        self.events.append(dict(start=int(start), ramp=int(ramp)))
        return self.values.new_event(0.0)

    def set_step(self, step):
        """Mask of event k = clip((step - start_k) / ramp_k, 0, 1) (MSG's linear ramp).
        Returns True when every mask is 1."""
        for k, ev in enumerate(self.events, start=1):
            self.values.values[k] = min(1.0, max(0.0, (step - ev["start"]) / ev["ramp"]))
        return bool(np.all(self.values.values == 1.0))

    def state_dict(self):
        """JSON-able form (lists of ints)."""
        return dict(resid=self.resid.tolist(), events=[dict(e) for e in self.events],
                    blocks=[dict(block=int(b["block"]), heads=b["heads"].tolist(),
                                 ffn=b["ffn"].tolist()) for b in self.blocks])

    @classmethod
    def from_state_dict(cls, cfg, sd):
        masks = cls(cfg)
        for ev in sd["events"]:
            masks.new_event(ev["start"], ev["ramp"])
        masks.resid = np.asarray(sd["resid"], np.int64)
        masks.blocks = [dict(block=b["block"], heads=np.asarray(b["heads"], np.int64),
                             ffn=np.asarray(b["ffn"], np.int64)) for b in sd["blocks"]]
        if len(masks.resid) != cfg.n_embd or len(masks.blocks) != cfg.n_layer:
            raise ValueError("growth masks do not fit the model's config")
        return masks


def apply_masks(model, masks):
    """Wrap the model's norms and residual-branch output Linears in masked twins (only where
    some coordinate is masked). Sets model.growth_masks. Returns the model."""
    if "growth_masks" in model.__dict__:
        raise ValueError("apply_masks: the model already carries masks")
    values, d = masks.values, model.config.head_dim
    if masks.resid.any():
        norms = [(b, n) for b in model.blocks for n in ("ln1", "ln2")] + [(model, "ln_f")]
        for parent, n in norms:
            replace_child(parent, n, MaskedNorm(getattr(parent, n), masks.resid, values))
    for block, ids in zip(model.blocks, masks.blocks):
        attn_out = "proj" if "proj" in block.attn._modules else "o_proj"
        mlp_out = "proj" if "proj" in block.mlp._modules else "down_proj"
        out_ids = None if ids["block"] == 0 else np.full(model.config.n_embd, ids["block"])
        head_ids = np.repeat(ids["heads"], d) if ids["heads"].any() else None
        ffn_ids = ids["ffn"] if ids["ffn"].any() else None
        for parent, n, in_ids in ((block.attn, attn_out, head_ids), (block.mlp, mlp_out, ffn_ids)):
            if in_ids is not None or out_ids is not None:
                replace_child(parent, n, MaskedLinear(getattr(parent, n), in_ids, out_ids, values))
    object.__setattr__(model, "growth_masks", masks)
    return model


def _grown_masks(old_masks, cfg, new, maps, block_src, event):
    """Carry the old ids to their new places; the new coordinates get `event`."""
    m = GrowthMasks(new)
    m.values, m.events = old_masks.values, old_masks.events
    m.resid = place(np.full(new.n_embd, event, np.int64), old_masks.resid, (maps["C"],))
    heads = head_positions(cfg.n_head, cfg.n_kv_head, new.n_head)
    for i, j in enumerate(block_src):
        if j is None:
            m.blocks[i] = GrowthMasks.empty_block(new, event)
            continue
        ob = old_masks.blocks[j]
        m.blocks[i] = dict(block=ob["block"],
                           heads=place(np.full(new.n_head, event, np.int64), ob["heads"], (heads,)),
                           ffn=place(np.full(new.ffn_hidden, event, np.int64), ob["ffn"],
                                     (maps["F"],)))
    return m


# ============================== grow =========================================================
def _block_sources(L, L_new, insert_at):
    """For each new block, the old block it continues, or None for an inserted block."""
    if insert_at is None:
        insert_at = list(range(L, L_new))
    insert_at = sorted(int(i) for i in insert_at)
    if len(insert_at) != L_new - L or len(set(insert_at)) != len(insert_at) or \
            (insert_at and not 0 <= insert_at[0] <= insert_at[-1] < L_new):
        raise ValueError(f"grow: insert_at={insert_at} must name {L_new - L} distinct positions "
                         f"in [0, {L_new})")
    olds = iter(range(L))
    return [None if i in insert_at else next(olds) for i in range(L_new)]


def _new_name(name, block_src):
    """The old parameter name a new parameter continues, or None (a new block's)."""
    if not name.startswith("blocks."):
        return name
    _, i, rest = name.split(".", 2)
    j = block_src[int(i)]
    return None if j is None else f"blocks.{j}.{rest}"


def _new_tensor(name, oname, old, fresh, init, maps, src, count):
    """One grown tensor: old values at their places, `init` elsewhere."""
    if init == "copy":
        return copy_grow(oname, old, src, count)
    if init == "zero":
        base = np.zeros_like(fresh)
    elif init == "random":
        base = fresh.copy()
    else:
        base = np.asarray(init(name, fresh.shape), dtype=fresh.dtype)
        if base.shape != fresh.shape:
            raise ValueError(f"grow: init({name!r}) returned shape {base.shape}, "
                             f"expected {fresh.shape}")
    return place(base, old, placement(oname, maps))


def transfer_optimizer(optimizer, old_model, new_model, block_src, maps):
    """Move the optimizer to the grown model's Parameters, in place.

    Every state array of an old parameter (AdamW exp_avg / exp_avg_sq, SGD momentum) goes to its
    place in a zero array of the new shape; the per-parameter step count carries over; a new
    block's parameters start at zero moments with the step count of their twin in an old block.
    The groups keep the model's parameter order (as `make_optimizer` builds them), so a resumed
    run rebuilds the same optimizer. Frozen parameters (in no group) stay out.
    """
    old_params = dict(old_model.named_parameters())
    group_of = {id(p): gi for gi, g in enumerate(optimizer.param_groups) for p in g["params"]}
    first_old = next(j for j in block_src if j is not None)
    groups = [[] for _ in optimizer.param_groups]
    state = {}
    for name, p in new_model.named_parameters():
        oname = _new_name(name, block_src)
        twin = oname or "blocks.{}.{}".format(first_old, name.split(".", 2)[2])
        op = old_params[twin]
        if id(op) not in group_of:
            continue
        groups[group_of[id(op)]].append(p)
        st = {}
        for key, v in optimizer.state.get(id(op), {}).items():
            if isinstance(v, np.ndarray) and v.shape == op.shape and v.ndim:
                arr = np.zeros(p.shape, dtype=v.dtype)
                st[key] = place(arr, v, placement(oname, maps)) if oname else arr
            else:
                st[key] = v
        if st:
            state[id(p)] = st
    for g, params in zip(optimizer.param_groups, groups):
        g["params"] = params
    optimizer.state = state
    return optimizer


def _optimizer_step(optimizer):
    steps = [st["step"] for st in optimizer.state.values() if "step" in st]
    return int(max(steps)) if steps else 0


def grow(model, optimizer=None, n_embd=None, ffn=None, n_head=None, n_layer=None,
         ramp_steps=0, init="random", insert_at=None, step=None):
    """Grow a GPT in width, FFN, heads and/or depth; strictly function-preserving with masks.

    Args:
        model: a GPT (possibly still carrying masks of an earlier growth).
        optimizer: its optimizer, moved to the new Parameters in place (moments transferred).
        n_embd, ffn, n_head, n_layer: the new sizes (None: unchanged); never smaller.
        ramp_steps: > 0 puts MSG masks on the new structure, 0 at growth, rising linearly to 1
            over this many optimizer steps (see `set_mask_step`); 0 = no masks (plain growth).
        init: new weights: "random" (the GPT's own init), "zero", "copy" (Net2Net: new units
            copy old ones, outgoing weights split; new blocks copy the block below), or a
            callable init(name, shape) -> ndarray.
        insert_at: positions of the new blocks in the grown stack (default: on top).
        step: the optimizer step the ramp starts at (default: the optimizer's step count, or 0).
    Returns:
        the grown GPT (config with the new sizes; head_dim unchanged).
    """
    if not isinstance(model, GPT):
        raise TypeError(f"grow: expected a GPT, got {type(model).__name__}")
    if not (init in INITS or callable(init)):
        raise ValueError(f"grow: init must be one of {INITS} or a callable, got {init!r}")
    if isinstance(ramp_steps, bool) or not isinstance(ramp_steps, (int, np.integer)) \
            or ramp_steps < 0:
        raise ValueError(f"grow: ramp_steps must be an int >= 0, got {ramp_steps!r}")
    cfg = model.config
    new = grown_config(cfg, n_embd=n_embd, ffn=ffn, n_head=n_head, n_layer=n_layer)
    block_src = _block_sources(cfg.n_layer, new.n_layer, insert_at)
    maps = kind_maps(cfg, new)
    dtype = model.wte.weight.dtype
    fresh_model = GPT(new).to(dtype)                      # draws the random init (seeded RNG)
    src, count = _copy_sources(cfg, new, _random.generator()) if init == "copy" else ({}, {})
    old = model.state_dict()
    grown = {}
    for name, p in fresh_model.named_parameters():
        oname = _new_name(name, block_src)
        if oname is not None:
            grown[name] = _new_tensor(name, oname, old[oname], p.data, init, maps, src, count)
    for name, p in fresh_model.named_parameters():
        if name in grown:
            continue
        if init == "copy":                                # stacking: the nearest block below
            i = int(name.split(".")[1])
            below = max([k for k in range(i) if block_src[k] is not None] or
                        [block_src.index(next(j for j in block_src if j is not None))])
            grown[name] = grown[f"blocks.{below}.{name.split('.', 2)[2]}"].copy()
        elif init == "zero":
            grown[name] = np.zeros_like(p.data)
        elif init == "random":
            grown[name] = p.data
        else:
            grown[name] = np.asarray(init(name, p.shape), dtype=p.dtype)
    fresh_model.load_state_dict(grown)
    if step is None:
        step = _optimizer_step(optimizer) if optimizer is not None else 0
    old_masks = model.__dict__.get("growth_masks") or GrowthMasks(cfg)
    event = old_masks.new_event(step, ramp_steps) if ramp_steps > 0 else 0
    masks = _grown_masks(old_masks, cfg, new, maps, block_src, event)
    masks.set_step(step)
    if masks.resid.any() or any(b["block"] or b["heads"].any() or b["ffn"].any()
                                for b in masks.blocks):
        apply_masks(fresh_model, masks)
    if optimizer is not None:
        transfer_optimizer(optimizer, model, fresh_model, block_src, maps)
    return fresh_model.train(model.training)


def set_mask_step(model, step):
    """Set every mask of `model` for optimizer step `step`; fold them away once all are 1.

    Returns:
        True if the model carries no masks any more.
    """
    masks = model.__dict__.get("growth_masks")
    if masks is None:
        return True
    if masks.set_step(step):
        from minitx.growth.masks import fold_masks
        fold_masks(model)
        return True
    return False

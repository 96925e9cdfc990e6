"""Growing a GPT while it trains: Masked Structural Growth (MSG) and Net2Net-style copying.

See `operators` (the growth of each dimension), `masks` (MSG's masks, how normalisation stays
exact), `schedule` (growth events in the one training loop) and `cost` (FLOPs accounting,
FLM-101B's arithmetic).
"""
from minitx.growth.cost import flops_per_token, run_flops, schedule_cost
from minitx.growth.masks import fold_masks, has_masks
from minitx.growth.operators import GrowthMasks, apply_masks, grow, set_mask_step

__all__ = ["grow", "set_mask_step", "fold_masks", "has_masks", "apply_masks", "GrowthMasks",
           "schedule_cost", "flops_per_token", "run_flops"]

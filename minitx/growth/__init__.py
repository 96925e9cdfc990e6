"""Growing a GPT while it trains: Masked Structural Growth (MSG) and Net2Net-style copying.

    grow(model, optimizer, n_embd=.., ffn=.., n_head=.., n_layer=.., ramp_steps=R, init=..)

MSG (Yao et al. 2023, "Masked Structural Growth for 2x Faster Language Model Pre-training",
arXiv 2305.02869; code github.com/cofe-ai/MSG) multiplies every new piece of structure by a mask
m that is 0 at growth and ramps linearly to 1 over R steps. With m = 0 the grown model computes
exactly the old function whatever the new weights are, so the new weights can be initialised
for learning rather than for preservation. FLM-101B (arXiv 2309.03852) grew 16B -> 51B -> 101B
parameters this way.

Where the masks go (minitx/growth/masks.py):
  * new heads: the input columns of attn.proj / o_proj that read them;
  * new FFN units: the input columns of mlp.proj / down_proj;
  * a new block: all outputs of its two residual branches (the block is x + 0 + 0 = x);
  * new residual width (n_embd): every normalisation layer.

Normalisation is where widening breaks the function: the mean and variance of LayerNorm (the
mean square of RMSNorm) are taken over all C' coordinates, so new coordinates change the old
ones' output even if they hold zeros. MSG's code (`LayerNormEx`) takes the statistics as
mask-weighted averages, mu = sum(m x) / sum(m) and s2 = sum(m (x - mu)^2) / sum(m), and multiplies
the output by m: at m = 0 the statistics are exactly those of the old coordinates and the new
outputs are 0, whatever the residual stream holds in the new coordinates; at m = 1 it is the
plain norm. minitx does the same for RMSNorm (mu = 0). Gesmundo & Maile 2023 ("Composable
Function-preserving Expansions for Transformer Architectures", arXiv 2308.06103) take the other
road: exact preservation "under minimal initialization constraints" rather than masks. For the
width that means new residual coordinates kept at zero (zero new embedding columns and zero new
output rows of every residual branch); then an RMSNorm's mean square over C' coordinates is C/C'
times the old one, which a gain scaled by sqrt(C'/C) undoes (exactly when eps = 0), while
LayerNorm's mean cannot be fixed that way (their transformer uses RMSNorm). That constrains the
new weights, which is what MSG avoids. (The search tool gave us their abstract, not the section;
the RMSNorm algebra here is ours.)

Net2Net (Chen et al. 2015, arXiv 1511.05641) is the non-masked baseline, init="copy": new units
copy old ones and the copies split the outgoing weights. Exact for FFN units and heads; not for
the width (norm statistics see the duplicates; a tied embedding is copied and read) nor for depth
(a copied block is not an identity); tests/test_growth.py and tutorial 06 measure the breakage.

Modules: `operators` (grow, optimizer transfer), `masks` (masked norm and Linear, folding),
`schedule` (--grow as an extension of the one training loop), `cost` (FLOPs, FLM-101B).
"""
from minitx.growth.cost import flops_per_token, run_flops, schedule_cost
from minitx.growth.masks import fold_masks, has_masks
from minitx.growth.operators import GrowthMasks, apply_masks, grow, set_mask_step

__all__ = ["grow", "set_mask_step", "fold_masks", "has_masks", "apply_masks", "GrowthMasks",
           "schedule_cost", "flops_per_token", "run_flops"]

"""Compute accounting for growth: FLOPs per token as the model changes, and FLM-101B's arithmetic.

Training FLOPs per token are 6N + 12 L H d T (PaLM, Chowdhery et al. 2022, appendix B; N the
non-embedding parameters), the formula `GPT.flops_per_token` uses; a grown run pays each stage's
per-token cost for that stage's tokens only.

FLM-101B (Li et al. 2023, "FLM-101B: An Open LLM and How to Train It with $100K Budget",
arXiv 2309.03852) trained 16B -> 51B -> 101B parameters with MSG-style growth on 0.31T tokens.
Its stage table (Table 1 of the paper) gives the tokens of each stage: 245.37B at 16B, 39.64B at
51B, 26.54B at 101B (311.55B in all, the abstract's 0.31T). With the 6ND approximation (the
attention term is < 3% at their 2,048 context and d_model 10,240) the grown run costs
6 (16 x 245.37 + 51 x 39.64 + 101 x 26.54) 1e18 = 5.18e22 FLOPs against 6 x 101 x 311.55 1e18 =
1.89e23 for 101B from scratch on the same tokens: 27.4% of it, a 72.6% saving, which is the
"72% time saving" the paper reports. (The stage token counts are quoted from the paper as read
by this module's author; the search tool could not retrieve the table again to re-check them.)
"""
from minitx.models.gpt import num_params_of

# (parameters, training tokens) of each FLM-101B growth stage (arXiv 2309.03852, Table 1)
FLM_101B_STAGES = ((16e9, 245.37e9), (51e9, 39.64e9), (101e9, 26.54e9))


def flops_per_token(config, seq_len=None, training=True):
    """6N + 12 L H d T for a GPTConfig without building the model (N: non-embedding params)."""
    n = num_params_of(config)
    if config.pos == "learned":
        n -= config.block_size * config.n_embd
    T = config.block_size if seq_len is None else seq_len
    total = 6 * n + 12 * config.n_layer * config.n_head * config.head_dim * T
    return total if training else total // 3


def schedule_cost(stages=FLM_101B_STAGES, final_params=None):
    """FLOPs of a staged (grown) run against training the final size from scratch.

    Args:
        stages: sequence of (parameters, tokens) per stage, in order; 6ND per stage.
        final_params: the size trained from scratch (default: the last stage's).
    Returns:
        dict(grown_flops, scratch_flops, ratio = grown / scratch, saving = 1 - ratio,
             stage_flops list, tokens).
    """
    stages = [(float(n), float(d)) for n, d in stages]
    if not stages or any(n <= 0 or d < 0 for n, d in stages):
        raise ValueError(f"schedule_cost: stages must be (parameters > 0, tokens >= 0) pairs, "
                         f"got {stages}")
    final = stages[-1][0] if final_params is None else float(final_params)
    stage_flops = [6 * n * d for n, d in stages]
    tokens = sum(d for _, d in stages)
    grown, scratch = sum(stage_flops), 6 * final * tokens
    return {"grown_flops": grown, "scratch_flops": scratch, "ratio": grown / scratch,
            "saving": 1 - grown / scratch, "stage_flops": stage_flops, "tokens": tokens}


def run_flops(config, events, max_steps, tokens_per_step, seq_len=None):
    """Training FLOPs of a minitx run with growth `events` [(step, sizes)] (as parse_schedule).

    Returns:
        (total FLOPs, [(first step, config)] per stage).
    """
    from minitx.growth.operators import grown_config
    stages, cfg = [(0, config)], config
    for step, sizes in events:
        cfg = grown_config(cfg, **sizes)
        stages.append((step, cfg))
    total = 0.0
    for (start, c), (end, _) in zip(stages, stages[1:] + [(max_steps, None)]):
        total += flops_per_token(c, seq_len) * tokens_per_step * (end - start)
    return total, stages

"""Returns to go and the two credit modes for process rewards.

    G_t = r_t + gamma * G_{t+1},   G = 0 past the last token, 0 at padding

``sum`` credit (the REINFORCE++ report): the process rewards are part of r_t, so a token's
return sums every later step reward.

``min`` credit (PURE, arXiv 2504.15275): the process part of a token's return is the
minimum of the rewards of the steps whose reward token is at or after it,

    P_t = min { p_j : idx_j >= t }      (0 if no step ends at or after t)

and the total return is  G_t = returns_to_go(KL + outcome)_t + P_t. A step's reward is
thus credited to the tokens of that step and of every earlier step, but only if no later
step is worse: many small positive steps cannot add up, the weakest future step sets the
value. gamma does not apply to P_t (a minimum is not a discounted sum).
"""

from __future__ import annotations

import math

import torch

CREDIT_MODES = ("sum", "min")

# Within one chunk the scan multiplies by gamma**-k; keep gamma**k above 1e-100 so the
# fp64 rescaling never underflows (for gamma >= 0.99 the whole sequence is one chunk).
_MAX_LOG_SCALE = 100 * math.log(10)


def _suffix_sum(x: torch.Tensor) -> torch.Tensor:
    return x.flip(-1).cumsum(-1).flip(-1)


def discounted_suffix_sum(rewards: torch.Tensor, gamma: float) -> torch.Tensor:
    """G_t = sum_{s >= t} gamma^(s - t) r_s along the last dimension, vectorised.

    gamma = 1 is one reverse cumsum. gamma < 1 uses gamma^(s-t) = gamma^s / gamma^t within
    chunks short enough that gamma^s stays representable, and carries G across chunks
    (G_t = local_t + gamma^(end - t) * G_end). Computed in fp64.
    """
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must be in [0, 1], got {gamma}")
    r = rewards.double()
    if gamma == 1.0:
        return _suffix_sum(r).to(rewards.dtype)
    num_tokens = r.shape[-1]
    chunk = 1 if gamma == 0.0 else max(1, int(_MAX_LOG_SCALE / -math.log(gamma)))
    out = torch.empty_like(r)
    carry = torch.zeros(r.shape[:-1], dtype=r.dtype, device=r.device)  # G at `end`
    for end in range(num_tokens, 0, -chunk):
        start = max(0, end - chunk)
        k = torch.arange(end - start, dtype=r.dtype, device=r.device)
        powers = gamma**k
        local = _suffix_sum(r[..., start:end] * powers) / powers
        out[..., start:end] = local + carry.unsqueeze(-1) * gamma ** (end - start - k)
        carry = out[..., start]
    return out.to(rewards.dtype)


def returns_to_go(rewards: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """G_t = r_t + gamma * G_{t+1} over valid tokens; padding neither gives nor gets return.

    Rows are right-padded responses; rewards at padding positions are ignored.
    """
    if rewards.shape != mask.shape:
        raise ValueError(f"rewards {tuple(rewards.shape)} and mask {tuple(mask.shape)} differ in shape")
    maskf = mask.to(rewards.dtype)
    return discounted_suffix_sum(rewards * maskf, gamma) * maskf


def min_step_returns(
    step_token_index: torch.Tensor, step_rewards: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """PURE min credit: P_t = min { p_j : idx_j >= t }, 0 where no step ends at or after t.

    step_token_index [B, S] (-1 = no step), step_rewards [B, S], mask [B, T] -> [B, T].
    Vectorised: sort the steps by reward token, take a suffix minimum over steps, and
    find for every token the first step ending at or after it with searchsorted.
    """
    num_tokens = mask.shape[-1]
    has_step = step_token_index >= 0
    # Absent steps sort last and never win a minimum.
    index = torch.where(has_step, step_token_index, torch.full_like(step_token_index, num_tokens))
    value = torch.where(has_step, step_rewards.float(), torch.full_like(step_rewards.float(), math.inf))
    index, order = index.sort(dim=-1)
    value = value.gather(-1, order)
    suffix_min = value.flip(-1).cummin(-1).values.flip(-1)
    # A sentinel step past the end, and rows of absent steps only, give 0 ("no later step").
    sentinel = torch.full((suffix_min.shape[0], 1), math.inf, device=suffix_min.device)
    suffix_min = torch.cat([suffix_min, sentinel], dim=-1)
    suffix_min = torch.where(torch.isinf(suffix_min), torch.zeros_like(suffix_min), suffix_min)
    positions = torch.arange(num_tokens, device=mask.device).expand(index.shape[0], num_tokens)
    first_step = torch.searchsorted(index.contiguous(), positions.contiguous(), right=False)
    process = suffix_min.gather(-1, first_step)
    return process * mask.float()


def process_returns(
    credit: str,
    process_rewards: torch.Tensor,
    step_token_index: torch.Tensor,
    step_rewards: torch.Tensor,
    mask: torch.Tensor,
    gamma: float = 1.0,
) -> torch.Tensor:
    """The process part of the return under ``credit`` ("sum" or "min"); see module doc."""
    if credit == "sum":
        return returns_to_go(process_rewards, mask, gamma)
    if credit == "min":
        return min_step_returns(step_token_index, step_rewards, mask)
    raise ValueError(f"unknown credit mode {credit!r}; choose one of {', '.join(CREDIT_MODES)}")

"""Returns to go, and the credit modes that turn step rewards into the process part of a return.

    G_t = r_t + gamma * G_{t+1},   G = 0 past the last token, 0 at padding

A credit mode maps the step rewards of a batch (``CreditInputs``) to P [B, T], the process
part of each token's return; the total return is  G_t = returns_to_go(KL + outcome)_t + P_t.
With p_j = clip(w_j * f(s_j)) the reward of step j (raw PRM score s_j, service weight w_j,
transform f; rewards.step_rewards) and idx_j its reward token:

``sum`` (the REINFORCE++ report): the step rewards are part of r_t,
    P_t = sum_{j: idx_j >= t} gamma^(idx_j - t) p_j

``min`` (PURE, arXiv 2504.15275): the weakest step at or after t sets the value,
    P_t = min { p_j : idx_j >= t }
    Many small positive steps cannot add up. PURE's last step ends at EOS, so tokens after
    the last reward token (an answer line the PRM did not score, the EOS) take the last
    step's p. 0 for a response with no step. gamma does not apply (a minimum is not a sum).

``outcome_centered`` (PROGRS, arXiv 2604.02341: outcome-conditioned centering): each step
    reward is centred on the mean step reward of the responses to the same prompt with the
    same outcome, then credited as ``sum``,
    c_j = p_j - mean { p_k : step k of a scored response with the same prompt and outcome }
    P_t = sum_{j: idx_j >= t} gamma^(idx_j - t) c_j
    Within each outcome class the process reward averages to zero, so it can reorder
    responses of equal outcome but never outweigh the outcome itself.

``first_error`` (VPPO, arXiv 2601.18984: the PRM only locates the first wrong step): for an
    incorrect response (outcome R < ``correct_threshold``) whose PRM rejects a step
    (s_j < ``reject_below``, on the *raw* score), with j* the first rejected step and e the
    reward token of the step before it (-1 if j* is the first step),
    P_t = +w_j*  for t <= e  (the verified prefix is credited)
    P_t = -w_j*  for t > e   (penalised from the first error on)
    and P_t = 0 for correct responses and for responses the PRM does not reject.

Modes are registered by name (``register_credit_mode``); a mode says whether it needs the
outcome or prompt groups, and the config refuses a mode whose needs a run cannot meet.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

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


def place_step_rewards(step_token_index: torch.Tensor, rewards: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """Dense [B, T] tensor with each step's reward added at its reward token (scatter_add;
    two steps ending in the same token both count)."""
    dense = torch.zeros(rewards.shape[0], num_tokens, dtype=rewards.dtype, device=rewards.device)
    has_step = step_token_index >= 0
    return dense.scatter_add_(-1, step_token_index.clamp(min=0), rewards * has_step)


@dataclass
class CreditInputs:
    """What a credit mode may use. Steps are [B, S], padded with index -1."""

    mask: torch.Tensor  # [B, T] 1 = response token
    step_token_index: torch.Tensor  # [B, S] reward token of step j, -1 = no step
    step_rewards: torch.Tensor  # [B, S] p_j = clip(w_j * f(s_j)), 0 where there is no step
    step_scores: torch.Tensor  # [B, S] s_j, the raw score the process service sent
    step_weights: torch.Tensor  # [B, S] w_j = alpha * the weight of the service that scored step j
    outcome: torch.Tensor  # [B] R = outcome_coef * clip(outcome), before any baseline
    group_index: torch.Tensor  # [B] which prompt each sample came from
    valid: torch.Tensor  # [B] bool: the sample was scored (and is not dropped)
    gamma: float = 1.0
    reject_below: float = 0.5  # first_error: a step whose raw score is below this is rejected
    correct_threshold: float = 0.5  # first_error: a response with R >= this is correct


CreditFn = Callable[[CreditInputs], torch.Tensor]


@dataclass(frozen=True)
class CreditMode:
    fn: CreditFn
    needs_outcome: bool  # reads CreditInputs.outcome
    needs_groups: bool  # compares the samples of one prompt (rollout.samples_per_prompt >= 2)


CREDIT_MODES: dict[str, CreditMode] = {}


def register_credit_mode(
    name: str, *, needs_outcome: bool = False, needs_groups: bool = False
) -> Callable[[CreditFn], CreditFn]:
    """Register ``fn(CreditInputs) -> P [B, T]`` as credit mode ``name`` (``algo.process_credit``)."""

    def add(fn: CreditFn) -> CreditFn:
        if name in CREDIT_MODES:
            raise ValueError(f"credit mode {name!r} is already registered (by {CREDIT_MODES[name].fn.__module__})")
        CREDIT_MODES[name] = CreditMode(fn, needs_outcome=needs_outcome, needs_groups=needs_groups)
        return fn

    return add


def min_step_returns(
    step_token_index: torch.Tensor, step_rewards: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """PURE min credit: P_t = min { p_j : idx_j >= t }; past the last reward token, the last
    step's p (PURE's last step ends at EOS); 0 for a row with no step.

    step_token_index [B, S] (-1 = no step), step_rewards [B, S], mask [B, T] -> [B, T].
    Vectorised: sort the steps by reward token, take a suffix minimum over steps, and
    find for every token the first step ending at or after it with searchsorted.
    """
    num_tokens = mask.shape[-1]
    if step_token_index.shape[-1] == 0:
        return torch.zeros(mask.shape, device=mask.device)
    has_step = step_token_index >= 0
    # Absent steps sort last and never win a minimum.
    index = torch.where(has_step, step_token_index, torch.full_like(step_token_index, num_tokens))
    value = torch.where(has_step, step_rewards.float(), torch.full_like(step_rewards.float(), math.inf))
    index, order = index.sort(dim=-1)
    value = value.gather(-1, order)
    suffix_min = value.flip(-1).cummin(-1).values.flip(-1)
    # Positions past every step land on an absent step or on the sentinel: both take the
    # last step's reward (0 in a row with no step).
    # A sentinel step past the end, and rows of absent steps only, give 0 for now.
    sentinel = torch.full((suffix_min.shape[0], 1), math.inf, device=suffix_min.device)
    suffix_min = torch.cat([suffix_min, sentinel], dim=-1)
    suffix_min = torch.where(torch.isinf(suffix_min), torch.zeros_like(suffix_min), suffix_min)
    positions = torch.arange(num_tokens, device=mask.device).expand(index.shape[0], num_tokens)
    first_step = torch.searchsorted(index.contiguous(), positions.contiguous(), right=False)
    process = suffix_min.gather(-1, first_step)
    # Past the last reward token the last step still runs (to EOS): its value carries on.
    last = torch.where(has_step, step_token_index, torch.full_like(step_token_index, -1)).amax(-1, keepdim=True)
    tail = process.gather(-1, last.clamp(min=0))
    process = torch.where((positions > last) & (last >= 0), tail, process)
    return process * mask.float()


def outcome_centered_step_rewards(
    step_token_index: torch.Tensor,
    step_rewards: torch.Tensor,
    outcome: torch.Tensor,
    group_index: torch.Tensor,
    valid: torch.Tensor,
) -> torch.Tensor:
    """c_j = p_j - mean of the step rewards of the scored responses with the same prompt and
    the same outcome ([B, S], 0 where there is no step). Means in fp64."""
    has_step = step_token_index >= 0
    key = torch.stack([group_index.double(), outcome.double()], dim=-1)
    _, inverse = torch.unique(key, dim=0, return_inverse=True)
    n_keys = int(inverse.max().item()) + 1 if len(inverse) else 0
    p = torch.where(has_step, step_rewards.double(), torch.zeros_like(step_rewards.double()))
    scored = valid.double().unsqueeze(-1)
    sums = torch.zeros(n_keys, dtype=torch.float64, device=p.device).index_add_(0, inverse, (p * scored).sum(-1))
    counts = torch.zeros_like(sums).index_add_(0, inverse, (has_step.double() * scored).sum(-1))
    mean = (sums / counts.clamp(min=1))[inverse].unsqueeze(-1)
    return torch.where(has_step, p - mean, torch.zeros_like(p)).to(step_rewards.dtype)


def first_error_returns(
    step_token_index: torch.Tensor,
    step_scores: torch.Tensor,
    step_weights: torch.Tensor,
    incorrect: torch.Tensor,
    mask: torch.Tensor,
    reject_below: float,
) -> torch.Tensor:
    """VPPO first-error credit (module docstring): +w on the verified prefix, -w from the
    first rejected step on, for the ``incorrect`` [B] responses the PRM rejects; else 0."""
    num_tokens = mask.shape[-1]
    if step_token_index.shape[-1] == 0:
        return torch.zeros(mask.shape, device=mask.device)
    has_step = step_token_index >= 0
    index = torch.where(has_step, step_token_index, torch.full_like(step_token_index, num_tokens))
    index, order = index.sort(dim=-1)
    rejected = has_step.gather(-1, order) & (step_scores.gather(-1, order) < reject_below)
    any_rejected = rejected.any(-1)
    first = rejected.int().argmax(-1, keepdim=True)  # the first True (0 when none: masked below)
    weight = step_weights.gather(-1, order).gather(-1, first).squeeze(-1)
    # e: the reward token of the step before the first rejected one, -1 if there is none.
    before = index.gather(-1, (first - 1).clamp(min=0)).squeeze(-1)
    prefix_end = torch.where(first.squeeze(-1) > 0, before, torch.full_like(before, -1))
    positions = torch.arange(num_tokens, device=mask.device).unsqueeze(0)
    sign = torch.where(positions <= prefix_end.unsqueeze(-1), 1.0, -1.0)
    applies = (any_rejected & incorrect.bool()).float() * weight.float()
    return sign * applies.unsqueeze(-1) * mask.float()


@register_credit_mode("sum")
def sum_credit(x: CreditInputs) -> torch.Tensor:
    dense = place_step_rewards(x.step_token_index, x.step_rewards, x.mask.shape[-1])
    return returns_to_go(dense, x.mask, x.gamma)


@register_credit_mode("min")
def min_credit(x: CreditInputs) -> torch.Tensor:
    return min_step_returns(x.step_token_index, x.step_rewards, x.mask)


@register_credit_mode("outcome_centered", needs_outcome=True, needs_groups=True)
def outcome_centered_credit(x: CreditInputs) -> torch.Tensor:
    centred = outcome_centered_step_rewards(x.step_token_index, x.step_rewards, x.outcome, x.group_index, x.valid)
    dense = place_step_rewards(x.step_token_index, centred, x.mask.shape[-1])
    return returns_to_go(dense, x.mask, x.gamma)


@register_credit_mode("first_error", needs_outcome=True)
def first_error_credit(x: CreditInputs) -> torch.Tensor:
    incorrect = x.outcome < x.correct_threshold
    return first_error_returns(
        x.step_token_index, x.step_scores, x.step_weights, incorrect, x.mask, x.reject_below
    )


def process_returns(credit: str, inputs: CreditInputs) -> torch.Tensor:
    """The process part of the return under the credit mode named ``credit``."""
    try:
        mode = CREDIT_MODES[credit]
    except KeyError:
        raise ValueError(f"unknown credit mode {credit!r}; choose one of {', '.join(CREDIT_MODES)}") from None
    return mode.fn(inputs)

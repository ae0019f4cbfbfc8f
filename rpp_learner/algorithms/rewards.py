"""Dense per-token rewards: KL at every token, the outcome at the last, step scores at
the tokens where steps end.

    r_t = -beta * KL_t
          + [t = last valid token] * outcome_coef * clip(R)
          + sum over steps j with reward token t of p_j,    p_j = clip(alpha * w_j * f(s_j))

This is the one place the step-score formula is applied: s_j is the raw score the process
service sent, w_j the weight of that service (``rewards.services[].weight``), alpha the
algorithm's ``process_coef`` and f the step-score transform.

The KL+outcome part and the process part are returned separately because the credit
modes treat them differently (``sum`` adds the process part to the return-to-go, ``min``
takes a running minimum of the step rewards; see returns.py).

Process rewards arrive per sequence as padded tensors:
``step_token_index`` LongTensor[B, S] (the reward token of step j, -1 where there is no
step), ``step_scores`` FloatTensor[B, S] and ``step_weights`` FloatTensor[B, S] (ignored
where the index is -1).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

from rpp_learner.algorithms.returns import place_step_rewards
from rpp_learner.algorithms.whiten import masked_moments

_LOG_FLOOR = 1e-6  # log(0) would place -inf; probabilities below this count as this

STEP_SCORE_TRANSFORMS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    # f(s) = s
    "identity": lambda s: s,
    # f(s) = s - 0.5: a PRM probability becomes a signed reward, bad steps push down
    "centered": lambda s: s - 0.5,
    # f(s) = log(max(s, 1e-6)): sum credit then gives the log-probability that every
    # later step is correct
    "log": lambda s: torch.log(s.clamp(min=_LOG_FLOOR)),
}


def register_step_score_transform(name: str) -> Callable[[Callable], Callable]:
    """Register ``f(scores) -> scores`` as ``algo.step_score_transform`` ``name``."""

    def add(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
        if name in STEP_SCORE_TRANSFORMS:
            raise ValueError(f"step score transform {name!r} is already registered")
        STEP_SCORE_TRANSFORMS[name] = fn
        return fn

    return add


def transform_step_scores(scores: torch.Tensor, transform: str) -> torch.Tensor:
    """Apply the named step-score transform f (see STEP_SCORE_TRANSFORMS)."""
    try:
        fn = STEP_SCORE_TRANSFORMS[transform]
    except KeyError:
        raise ValueError(
            f"unknown step score transform {transform!r}; choose one of {', '.join(STEP_SCORE_TRANSFORMS)}"
        ) from None
    return fn(scores)


def pad_steps(
    token_indices: Sequence[Sequence[int]], scores: Sequence[Sequence[float]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sequence lists of (reward token, score) -> padded [B, S] index (-1) and score (0)."""
    if len(token_indices) != len(scores):
        raise ValueError(f"{len(token_indices)} index lists but {len(scores)} score lists")
    width = max((len(idx) for idx in token_indices), default=0)
    for row, (idx, sc) in enumerate(zip(token_indices, scores, strict=True)):
        if len(idx) != len(sc):
            raise ValueError(f"sequence {row}: {len(idx)} reward tokens but {len(sc)} step scores")
    # One tensor from padded Python lists: far cheaper than a tensor per row.
    index = [[*idx, *([-1] * (width - len(idx)))] for idx in token_indices]
    value = [[*sc, *([0.0] * (width - len(sc)))] for sc in scores]
    return (
        torch.tensor(index, dtype=torch.long).reshape(len(index), width),
        torch.tensor(value, dtype=torch.float32).reshape(len(value), width),
    )


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last valid token of each row ([B]); 0 for a row with no valid token."""
    positions = torch.arange(mask.shape[-1], device=mask.device)
    return (positions * mask.long()).amax(dim=-1)


def step_rewards(
    step_token_index: torch.Tensor,
    step_scores: torch.Tensor,
    mask: torch.Tensor,
    *,
    process_coef: float,
    step_weights: torch.Tensor | None = None,
    score_transform: str = "identity",
    reward_clip: tuple[float, float] = (-10.0, 10.0),
) -> torch.Tensor:
    """p_j = clip(alpha * w_j * f(s_j)) per step, [B, S], 0 where there is no step
    (``step_weights`` None: every w_j = 1).

    Raises if a step's reward token is past the row's length or on a padding token: a
    reward placed there would be silently lost, which always means an alignment bug.
    """
    if step_token_index.shape != step_scores.shape:
        raise ValueError(
            f"step_token_index {tuple(step_token_index.shape)} and step_scores "
            f"{tuple(step_scores.shape)} differ in shape"
        )
    has_step = step_token_index >= 0
    if (step_token_index >= mask.shape[-1]).any():
        raise ValueError(f"a step's reward token index is >= the sequence length {mask.shape[-1]}")
    on_padding = has_step & (mask.gather(-1, step_token_index.clamp(min=0)) == 0)
    if on_padding.any():
        row, col = on_padding.nonzero()[0].tolist()
        raise ValueError(
            f"sequence {row}, step {col}: reward token {step_token_index[row, col].item()} is a "
            "padding token; map steps with rpp_learner.alignment.reward_token_indices"
        )
    if step_weights is not None and step_weights.shape != step_scores.shape:
        raise ValueError(
            f"step_weights {tuple(step_weights.shape)} and step_scores {tuple(step_scores.shape)} differ in shape"
        )
    # f(s) only where a step is: padding scores are placeholders (log(0) would give -inf).
    scores = torch.where(has_step, step_scores.float(), torch.ones_like(step_scores.float()))
    reward = process_coef * transform_step_scores(scores, score_transform)
    if step_weights is not None:
        reward = reward * step_weights.float()
    return torch.where(has_step, reward.clamp(*reward_clip), torch.zeros_like(reward))


@dataclass
class DenseRewards:
    kl_outcome: torch.Tensor  # [B, T]: -beta * KL_t + outcome at the last valid token
    process: torch.Tensor  # [B, T]: step rewards at their reward tokens
    steps: torch.Tensor  # [B, S]: p_j = clip(alpha * w_j * f(s_j)), 0 where there is no step

    @property
    def total(self) -> torch.Tensor:
        return self.kl_outcome + self.process


def assemble_dense_rewards(
    mask: torch.Tensor,
    kl: torch.Tensor,
    outcome: torch.Tensor,
    step_token_index: torch.Tensor,
    step_scores: torch.Tensor,
    *,
    kl_coef: float,
    outcome_coef: float = 1.0,
    process_coef: float = 1.0,
    reward_clip: tuple[float, float] = (-10.0, 10.0),
    score_transform: str = "identity",
    outcome_baseline: torch.Tensor | None = None,
    step_weights: torch.Tensor | None = None,
) -> DenseRewards:
    """The per-token reward of the module docstring, split into its two parts.

    mask [B, T] (1 = response token), kl [B, T], outcome [B], steps [B, S] (see module
    doc). Padding gets no reward.
    outcome_baseline [B], if given, is subtracted from the placed outcome:
    r_last += outcome_coef * clip(R) - b.
    """
    if kl.shape != mask.shape:
        raise ValueError(f"kl {tuple(kl.shape)} and mask {tuple(mask.shape)} differ in shape")
    if outcome.shape != mask.shape[:1]:
        raise ValueError(f"outcome must be [B] = [{mask.shape[0]}], got {tuple(outcome.shape)}")
    maskf = mask.float()
    kl_outcome = -kl_coef * kl.float()
    last = last_token_index(mask).unsqueeze(-1)
    placed_outcome = outcome_coef * outcome.float().clamp(*reward_clip)
    if outcome_baseline is not None:  # subtracted in fp64, rounded once
        placed_outcome = (placed_outcome.double() - outcome_baseline.double()).float()
    placed_outcome = placed_outcome.unsqueeze(-1)
    kl_outcome = kl_outcome.scatter_add(-1, last, placed_outcome) * maskf
    steps = step_rewards(
        step_token_index,
        step_scores,
        mask,
        process_coef=process_coef,
        step_weights=step_weights,
        score_transform=score_transform,
        reward_clip=reward_clip,
    )
    process = place_step_rewards(step_token_index, steps, mask.shape[-1])
    return DenseRewards(kl_outcome=kl_outcome, process=process, steps=steps)


class RunningMeanStd:
    """Mean and standard deviation of a reward stream, tracked across training steps.

    The report normalises the reward with running statistics: r' = (r - mean) / std.
    Batches are merged with Chan et al.'s parallel update; under torch.distributed the
    batch moments are all-reduced first, so every rank holds the same statistics.
    """

    def __init__(self, eps: float = 1e-8) -> None:
        self.mean = 0.0
        self.var = 1.0
        self.count = 0.0
        self.eps = eps

    def update(self, values: torch.Tensor, group: dist.ProcessGroup | None = None) -> None:
        total, total_sq, count = masked_moments(values, torch.ones_like(values), group)
        n = count.item()
        if n == 0:
            return
        batch_mean = total.item() / n
        batch_var = max(total_sq.item() / n - batch_mean**2, 0.0)
        new_count = self.count + n
        delta = batch_mean - self.mean
        m2 = self.var * self.count + batch_var * n + delta**2 * self.count * n / new_count
        self.mean += delta * n / new_count
        self.var = m2 / new_count
        self.count = new_count

    @property
    def std(self) -> float:
        return math.sqrt(self.var + self.eps)

    def normalize(self, values: torch.Tensor) -> torch.Tensor:
        return (values - self.mean) / self.std

    def state_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "var": self.var, "count": self.count}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.mean, self.var, self.count = state["mean"], state["var"], state["count"]

"""Advantage estimators, registered by name, and the one entry point compute_advantages.

With R = outcome_coef * clip(outcome) and the dense rewards of rewards.py:

    reinforce_pp           A = whiten(G),  G_t = sum_{s>=t} gamma^(s-t) (-beta KL_s + [s=last] R)
                                                + process return P_t (a credit mode, returns.py)
    reinforce_pp_baseline  as reinforce_pp with R replaced by R - mean_group(R); the KL and
                           process terms stay per token (KL is normally a k2 loss here,
                           so kl_coef = 0)
    grpo                   A = (R - mean_group(R)) / (std_group(R) + 1e-6), every token
    rloo                   A = R - mean of the other samples of the group
                             = k / (k - 1) * (R - mean_group(R))
    dr_grpo                A = R - mean_group(R) (Dr. GRPO, arXiv 2503.20783: no std)

Group statistics (mean, std, size) are over the group's *scored* samples only
(``AdvantageInputs.valid``): a sample whose reward failed carries a placeholder outcome,
and letting it into the mean would shift every other sample's advantage. Rows dropped by
``drop_truncated`` leave the statistics too: they are out of the update, and their
(penalty or placeholder) outcome must not move their group-mates'. A scored sample with no
scored group-mate has nothing to be compared with: its group advantage is 0, and the
``advantages/lone_fraction`` metric counts such samples. The statistics, and the
advantages made from them, are fp64 until after the division, then rounded once.

Each estimator is registered with its needs (groups; dense per-token rewards or one
number per response) and the KL defaults of its paper, which the config applies to the
``algo`` fields a run leaves unset (``rpp_learner.config``).

whiten() is global over the valid tokens of all ranks (whiten.py). The group estimators
reduce a response to one number, so they refuse dense terms: a nonzero kl_coef (put KL
in the loss) or process rewards (use reinforce_pp). A group (``group_index``: the prompt
a sample came from) must sit on one rank.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.distributed as dist

from rpp_learner.algorithms.groups import group_mean_std
from rpp_learner.algorithms.returns import CreditInputs, process_returns, returns_to_go
from rpp_learner.algorithms.rewards import DenseRewards, assemble_dense_rewards
from rpp_learner.algorithms.whiten import masked_whiten

GROUP_STD_EPS = 1e-6


@dataclass
class AdvantageInputs:
    mask: torch.Tensor  # [B, T] 1 = response token
    kl: torch.Tensor  # [B, T] per-token KL (kl.kl_penalty)
    outcome: torch.Tensor  # [B] outcome score per response
    step_token_index: torch.Tensor  # [B, S] reward token of each step, -1 = no step
    step_scores: torch.Tensor  # [B, S] raw step scores, as the process service sent them
    group_index: torch.Tensor  # [B] which prompt each sample came from
    truncated: torch.Tensor  # [B] bool: the response ended without EOS
    valid: torch.Tensor | None = None  # [B] bool: the sample was scored (None = all were)
    step_weights: torch.Tensor | None = None  # [B, S] weight of the service of each step (None = 1)


@dataclass(frozen=True)
class AdvantageConfig:
    kl_coef: float = 0.0
    gamma: float = 1.0
    credit: str = "sum"
    process_coef: float = 1.0
    outcome_coef: float = 1.0
    reward_clip: tuple[float, float] = (-10.0, 10.0)
    score_transform: str = "identity"
    whiten: bool = True
    group: dist.ProcessGroup | None = None  # for the whitening statistics (None = default group)
    reject_below: float = 0.5  # first_error credit: a raw step score below this is rejected
    correct_threshold: float = 0.5  # first_error credit: an outcome R >= this is correct


@dataclass
class AdvantageOutput:
    advantages: torch.Tensor  # [B, T], 0 at padding
    returns: torch.Tensor  # [B, T], 0 at padding
    dense_rewards: torch.Tensor  # [B, T] r_t = KL + outcome + process terms, 0 at padding
    mask: torch.Tensor  # [B, T] the mask the loss must use (drop_truncated zeroes rows)
    step_rewards: torch.Tensor | None = None  # [B, S] p_j = clip(alpha * w_j * f(s_j))
    metrics: dict[str, float] = field(default_factory=dict)  # this process's counts; the trainer all-reduces them


# (inputs, config) -> (advantages, returns, dense rewards)
EstimatorFn = Callable[[AdvantageInputs, AdvantageConfig], tuple[torch.Tensor, torch.Tensor, DenseRewards]]


@dataclass(frozen=True)
class Estimator:
    fn: EstimatorFn
    # Group estimators are normalised per prompt already; whitening them again is opt-in.
    whiten_by_default: bool
    needs_groups: bool  # compares the samples of one prompt (rollout.samples_per_prompt >= 2)
    # Takes per-token rewards (KL in the reward, process rewards). False: one number per
    # response, so KL belongs in the loss and process rewards are refused.
    dense: bool
    # Config defaults of its paper, applied to the algo.* fields a run leaves unset.
    defaults: dict[str, Any] = field(default_factory=dict)


ESTIMATORS: dict[str, Estimator] = {}


def register_estimator(
    name: str,
    *,
    whiten_by_default: bool,
    needs_groups: bool = False,
    dense: bool = True,
    defaults: dict[str, Any] | None = None,
) -> Callable[[EstimatorFn], EstimatorFn]:
    """Register ``fn(inputs, cfg) -> (advantages, returns, DenseRewards)`` as ``algo.estimator`` ``name``."""

    def add(fn: EstimatorFn) -> EstimatorFn:
        if name in ESTIMATORS:
            raise ValueError(
                f"advantage estimator {name!r} is already registered (by {ESTIMATORS[name].fn.__module__})"
            )
        ESTIMATORS[name] = Estimator(fn, whiten_by_default, needs_groups, dense, dict(defaults or {}))
        return fn

    return add


def _assemble(inputs: AdvantageInputs, cfg: AdvantageConfig, baseline: torch.Tensor | None = None) -> DenseRewards:
    return assemble_dense_rewards(
        inputs.mask,
        inputs.kl,
        inputs.outcome,
        inputs.step_token_index,
        inputs.step_scores,
        kl_coef=cfg.kl_coef,
        outcome_coef=cfg.outcome_coef,
        process_coef=cfg.process_coef,
        reward_clip=cfg.reward_clip,
        score_transform=cfg.score_transform,
        outcome_baseline=baseline,
        step_weights=inputs.step_weights,
    )


def _scored(inputs: AdvantageInputs) -> torch.Tensor:
    return torch.ones_like(inputs.outcome, dtype=torch.bool) if inputs.valid is None else inputs.valid.bool()


def _outcome(inputs: AdvantageInputs, cfg: AdvantageConfig) -> torch.Tensor:
    """R = outcome_coef * clip(outcome), [B] float32."""
    return cfg.outcome_coef * inputs.outcome.float().clamp(*cfg.reward_clip)


def _whiten_returns(inputs: AdvantageInputs, cfg: AdvantageConfig, rewards: DenseRewards):
    mask = inputs.mask
    credit = CreditInputs(
        mask=mask,
        step_token_index=inputs.step_token_index,
        step_rewards=rewards.steps,
        step_scores=inputs.step_scores,
        # w_j of the credit modes that read raw scores: alpha times the service's weight.
        step_weights=cfg.process_coef
        * (torch.ones_like(inputs.step_scores) if inputs.step_weights is None else inputs.step_weights.float()),
        outcome=_outcome(inputs, cfg),
        group_index=inputs.group_index,
        valid=_scored(inputs),
        gamma=cfg.gamma,
        reject_below=cfg.reject_below,
        correct_threshold=cfg.correct_threshold,
    )
    returns = returns_to_go(rewards.kl_outcome, mask, cfg.gamma) + process_returns(cfg.credit, credit)
    advantages = masked_whiten(returns, mask, cfg.group) if cfg.whiten else returns
    return advantages, returns, rewards


@register_estimator("reinforce_pp", whiten_by_default=True)
def reinforce_pp(inputs: AdvantageInputs, cfg: AdvantageConfig):
    return _whiten_returns(inputs, cfg, _assemble(inputs, cfg))


# The report's REINFORCE++-baseline (v9) takes KL as a k2 loss term, not in the reward.
@register_estimator(
    "reinforce_pp_baseline", whiten_by_default=True, needs_groups=True,
    defaults={"kl_coef": 0.0, "kl_loss_coef": 1e-3, "kl_loss_estimator": "k2"},
)
def reinforce_pp_baseline(inputs: AdvantageInputs, cfg: AdvantageConfig):
    baseline, _, _ = group_mean_std(_outcome(inputs, cfg), inputs.group_index, inputs.valid)
    return _whiten_returns(inputs, cfg, _assemble(inputs, cfg, baseline=baseline))


def _outcome_only(name: str, inputs: AdvantageInputs, cfg: AdvantageConfig) -> DenseRewards:
    if cfg.kl_coef != 0.0:
        raise ValueError(f"{name} keeps KL out of the reward: set kl_coef=0 and use policy_loss's KL loss term")
    if cfg.process_coef != 0.0 and bool((inputs.step_token_index >= 0).any()):
        raise ValueError(
            f"{name} reduces each response to one number and cannot credit process rewards: "
            "use reinforce_pp (or reinforce_pp_baseline), or set process_coef=0"
        )
    return _assemble(inputs, cfg)


def _group_advantages(inputs: AdvantageInputs, cfg: AdvantageConfig, advantage: torch.Tensor, rewards: DenseRewards):
    maskf = inputs.mask.float()
    advantages = advantage.float().unsqueeze(-1) * maskf  # rounded once, after the fp64 math
    if cfg.whiten:
        advantages = masked_whiten(advantages, inputs.mask, cfg.group)
    returns = returns_to_go(rewards.total, inputs.mask, cfg.gamma)
    return advantages, returns, rewards


# GRPO (DeepSeekMath, arXiv 2402.03300) takes KL as a k3 loss term.
@register_estimator(
    "grpo", whiten_by_default=False, needs_groups=True, dense=False,
    defaults={"kl_coef": 0.0, "kl_loss_coef": 1e-3, "kl_loss_estimator": "k3"},
)
def grpo(inputs: AdvantageInputs, cfg: AdvantageConfig):
    rewards = _outcome_only("grpo", inputs, cfg)
    outcome = _outcome(inputs, cfg).double()
    mean, std, _ = group_mean_std(outcome, inputs.group_index, inputs.valid)
    return _group_advantages(inputs, cfg, (outcome - mean) / (std + GROUP_STD_EPS), rewards)


@register_estimator("rloo", whiten_by_default=False, needs_groups=True, dense=False, defaults={"kl_coef": 0.0})
def rloo(inputs: AdvantageInputs, cfg: AdvantageConfig):
    rewards = _outcome_only("rloo", inputs, cfg)
    outcome = _outcome(inputs, cfg).double()
    if bool((group_mean_std(outcome, inputs.group_index)[2] < 2).any()):
        raise ValueError("rloo needs at least 2 samples per prompt (group_index) to leave one out")
    mean, _, size = group_mean_std(outcome, inputs.group_index, inputs.valid)
    # A scored sample whose group-mates all failed has no one to leave out: advantage 0.
    loo = torch.where(size > 1, (outcome - mean) * size / (size - 1).clamp(min=1), torch.zeros_like(outcome))
    return _group_advantages(inputs, cfg, loo, rewards)


# Dr. GRPO drops the KL term altogether (beta = 0).
@register_estimator("dr_grpo", whiten_by_default=False, needs_groups=True, dense=False, defaults={"kl_coef": 0.0})
def dr_grpo(inputs: AdvantageInputs, cfg: AdvantageConfig):
    rewards = _outcome_only("dr_grpo", inputs, cfg)
    outcome = _outcome(inputs, cfg).double()
    mean, _, _ = group_mean_std(outcome, inputs.group_index, inputs.valid)
    return _group_advantages(inputs, cfg, outcome - mean, rewards)


def handle_truncated(
    inputs: AdvantageInputs, truncated_outcome: float | None, drop_truncated: bool
) -> AdvantageInputs:
    """Truncated responses (no EOS): replace their outcome by ``truncated_outcome`` (a
    penalty, or 0) when given, and/or drop them (mask 0: no advantage, no loss, not in
    the whitening statistics nor in their group's statistics) when ``drop_truncated``."""
    truncated = inputs.truncated.bool()
    outcome, mask, valid = inputs.outcome, inputs.mask, inputs.valid
    if truncated_outcome is not None:
        outcome = torch.where(truncated, torch.full_like(outcome, truncated_outcome), outcome)
    steps = inputs.step_token_index
    if drop_truncated:
        mask = mask * (~truncated).unsqueeze(-1).to(mask.dtype)
        # A dropped row's steps go too: a reward token on a masked-out row is an error downstream.
        steps = torch.where(truncated.unsqueeze(-1), torch.full_like(steps, -1), steps)
        valid = _scored(inputs) & ~truncated
    return replace(inputs, outcome=outcome, mask=mask, step_token_index=steps, valid=valid)


def compute_advantages(
    estimator: str,
    inputs: AdvantageInputs,
    *,
    kl_coef: float = 0.0,
    gamma: float = 1.0,
    credit: str = "sum",
    process_coef: float = 1.0,
    outcome_coef: float = 1.0,
    reward_clip: tuple[float, float] = (-10.0, 10.0),
    score_transform: str = "identity",
    whiten: bool | None = None,
    group: dist.ProcessGroup | None = None,
    truncated_outcome: float | None = None,
    drop_truncated: bool = False,
    reject_below: float = 0.5,
    correct_threshold: float = 0.5,
) -> AdvantageOutput:
    """Dense rewards, returns and advantages of the estimator named ``estimator``.

    whiten=None uses the estimator's default (True for reinforce_pp*, False for the group
    estimators). Metrics are over this rank's batch.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown advantage estimator {estimator!r}; choose one of {', '.join(ESTIMATORS)}")
    spec = ESTIMATORS[estimator]
    cfg = AdvantageConfig(
        kl_coef=kl_coef,
        gamma=gamma,
        credit=credit,
        process_coef=process_coef,
        outcome_coef=outcome_coef,
        reward_clip=reward_clip,
        score_transform=score_transform,
        whiten=spec.whiten_by_default if whiten is None else whiten,
        group=group,
        reject_below=reject_below,
        correct_threshold=correct_threshold,
    )
    inputs = handle_truncated(inputs, truncated_outcome, drop_truncated)
    advantages, returns, rewards = spec.fn(inputs, cfg)
    return AdvantageOutput(
        advantages=advantages,
        returns=returns,
        dense_rewards=rewards.total,
        mask=inputs.mask,
        step_rewards=rewards.steps,
        metrics=_metrics(inputs),
    )


def _metrics(inputs: AdvantageInputs) -> dict[str, float]:
    """Counts for the trainer to all-reduce: scored samples whose group has no other scored
    member (their group advantage is 0; logged as ``advantages/lone_fraction``)."""
    scored = _scored(inputs)
    _, _, group_size = group_mean_std(torch.zeros(len(scored)), inputs.group_index, scored)
    return {"advantages/lone_samples": float((scored & (group_size == 1)).sum())}

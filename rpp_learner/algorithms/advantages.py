"""Advantage estimators, registered by name, and the one entry point compute_advantages.

With R = outcome_coef * clip(outcome) and the dense rewards of rewards.py:

    reinforce_pp           A = whiten(G),  G_t = sum_{s>=t} gamma^(s-t) (-beta KL_s + [s=last] R)
                                                + process return P_t (credit "sum" | "min")
    reinforce_pp_baseline  as reinforce_pp with R replaced by R - mean_group(R); the KL and
                           process terms stay per token (KL is normally a k2 loss here,
                           so kl_coef = 0)
    grpo                   A = (R - mean_group(R)) / (std_group(R) + 1e-6), every token
    rloo                   A = R - mean of the other samples of the group
                             = k / (k - 1) * (R - mean_group(R))
    dr_grpo                A = R - mean_group(R) (Dr. GRPO, arXiv 2503.20783: no std)

Group statistics (mean, std, size) are over the group's *scored* samples only
(``AdvantageInputs.valid``): a sample whose reward failed carries a placeholder outcome,
and letting it into the mean would shift every other sample's advantage.

whiten() is global over the valid tokens of all ranks (whiten.py). The group estimators
reduce a response to one number, so they refuse dense terms: a nonzero kl_coef (put KL
in the loss) or process rewards (use reinforce_pp). A group (``group_index``: the prompt
a sample came from) must sit on one rank.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
import torch.distributed as dist

from rpp_learner.algorithms.returns import process_returns, returns_to_go
from rpp_learner.algorithms.rewards import DenseRewards, assemble_dense_rewards
from rpp_learner.algorithms.whiten import masked_whiten

GROUP_STD_EPS = 1e-6


@dataclass
class AdvantageInputs:
    mask: torch.Tensor  # [B, T] 1 = response token
    kl: torch.Tensor  # [B, T] per-token KL (kl.kl_penalty)
    outcome: torch.Tensor  # [B] outcome score per response
    step_token_index: torch.Tensor  # [B, S] reward token of each step, -1 = no step
    step_scores: torch.Tensor  # [B, S] raw step scores from the process service
    group_index: torch.Tensor  # [B] which prompt each sample came from
    truncated: torch.Tensor  # [B] bool: the response ended without EOS
    valid: torch.Tensor | None = None  # [B] bool: the sample was scored (None = all were)


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


@dataclass
class AdvantageOutput:
    advantages: torch.Tensor  # [B, T], 0 at padding
    returns: torch.Tensor  # [B, T], 0 at padding
    dense_rewards: torch.Tensor  # [B, T] r_t = KL + outcome + process terms, 0 at padding
    mask: torch.Tensor  # [B, T] the mask the loss must use (drop_truncated zeroes rows)
    metrics: dict[str, float] = field(default_factory=dict)


# (inputs, config) -> (advantages, returns, dense rewards)
Estimator = Callable[[AdvantageInputs, AdvantageConfig], tuple[torch.Tensor, torch.Tensor, DenseRewards]]
ESTIMATORS: dict[str, Estimator] = {}
# Group estimators are normalised per prompt already; whitening them again is opt-in.
WHITEN_BY_DEFAULT: dict[str, bool] = {}


def register_estimator(name: str, whiten_by_default: bool) -> Callable[[Estimator], Estimator]:
    def add(fn: Estimator) -> Estimator:
        ESTIMATORS[name] = fn
        WHITEN_BY_DEFAULT[name] = whiten_by_default
        return fn

    return add


def group_mean_std(
    values: torch.Tensor, group_index: torch.Tensor, valid: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each sample: mean, unbiased std and size of its group ([B] each), counting only
    the ``valid`` members (default: all). A group with no valid member has mean 0, std 0."""
    _, inverse = torch.unique(group_index, return_inverse=True)
    n_groups = int(inverse.max().item()) + 1 if len(inverse) else 0
    x = values.double()
    w = torch.ones_like(x) if valid is None else valid.to(device=x.device, dtype=x.dtype)
    counts = torch.zeros(n_groups, dtype=x.dtype, device=x.device).index_add_(0, inverse, w)
    sums = torch.zeros_like(counts).index_add_(0, inverse, x * w)
    mean = (sums / counts.clamp(min=1))[inverse]
    squares = torch.zeros_like(counts).index_add_(0, inverse, w * (x - mean) ** 2)
    std = (squares / (counts - 1).clamp(min=1)).sqrt()[inverse]
    return mean.to(values.dtype), std.to(values.dtype), counts.long()[inverse]


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
    )


def _whiten_returns(inputs: AdvantageInputs, cfg: AdvantageConfig, rewards: DenseRewards):
    mask = inputs.mask
    returns = returns_to_go(rewards.kl_outcome, mask, cfg.gamma) + process_returns(
        cfg.credit, rewards.process, inputs.step_token_index, rewards.steps, mask, cfg.gamma
    )
    advantages = masked_whiten(returns, mask, cfg.group) if cfg.whiten else returns
    return advantages, returns, rewards


@register_estimator("reinforce_pp", whiten_by_default=True)
def reinforce_pp(inputs: AdvantageInputs, cfg: AdvantageConfig):
    return _whiten_returns(inputs, cfg, _assemble(inputs, cfg))


@register_estimator("reinforce_pp_baseline", whiten_by_default=True)
def reinforce_pp_baseline(inputs: AdvantageInputs, cfg: AdvantageConfig):
    outcome = cfg.outcome_coef * inputs.outcome.float().clamp(*cfg.reward_clip)
    baseline, _, _ = group_mean_std(outcome, inputs.group_index, inputs.valid)
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
    advantages = advantage.unsqueeze(-1) * maskf
    if cfg.whiten:
        advantages = masked_whiten(advantages, inputs.mask, cfg.group)
    returns = returns_to_go(rewards.total, inputs.mask, cfg.gamma)
    return advantages, returns, rewards


@register_estimator("grpo", whiten_by_default=False)
def grpo(inputs: AdvantageInputs, cfg: AdvantageConfig):
    rewards = _outcome_only("grpo", inputs, cfg)
    outcome = cfg.outcome_coef * inputs.outcome.float().clamp(*cfg.reward_clip)
    mean, std, _ = group_mean_std(outcome, inputs.group_index, inputs.valid)
    return _group_advantages(inputs, cfg, (outcome - mean) / (std + GROUP_STD_EPS), rewards)


@register_estimator("rloo", whiten_by_default=False)
def rloo(inputs: AdvantageInputs, cfg: AdvantageConfig):
    rewards = _outcome_only("rloo", inputs, cfg)
    outcome = cfg.outcome_coef * inputs.outcome.float().clamp(*cfg.reward_clip)
    if bool((group_mean_std(outcome, inputs.group_index)[2] < 2).any()):
        raise ValueError("rloo needs at least 2 samples per prompt (group_index) to leave one out")
    mean, _, size = group_mean_std(outcome, inputs.group_index, inputs.valid)
    # A scored sample whose group-mates all failed has no one to leave out: advantage 0.
    loo = torch.where(size > 1, (outcome - mean) * size / (size - 1).clamp(min=1), torch.zeros_like(outcome))
    return _group_advantages(inputs, cfg, loo, rewards)


@register_estimator("dr_grpo", whiten_by_default=False)
def dr_grpo(inputs: AdvantageInputs, cfg: AdvantageConfig):
    rewards = _outcome_only("dr_grpo", inputs, cfg)
    outcome = cfg.outcome_coef * inputs.outcome.float().clamp(*cfg.reward_clip)
    mean, _, _ = group_mean_std(outcome, inputs.group_index, inputs.valid)
    return _group_advantages(inputs, cfg, outcome - mean, rewards)


def handle_truncated(
    inputs: AdvantageInputs, truncated_outcome: float | None, drop_truncated: bool
) -> AdvantageInputs:
    """Truncated responses (no EOS): replace their outcome by ``truncated_outcome`` (a
    penalty, or 0) when given, and/or drop them (mask 0: no advantage, no loss, not in
    the whitening statistics) when ``drop_truncated``."""
    truncated = inputs.truncated.bool()
    outcome, mask = inputs.outcome, inputs.mask
    if truncated_outcome is not None:
        outcome = torch.where(truncated, torch.full_like(outcome, truncated_outcome), outcome)
    steps = inputs.step_token_index
    if drop_truncated:
        mask = mask * (~truncated).unsqueeze(-1).to(mask.dtype)
        # A dropped row's steps go too: a reward token on a masked-out row is an error downstream.
        steps = torch.where(truncated.unsqueeze(-1), torch.full_like(steps, -1), steps)
    return replace(inputs, outcome=outcome, mask=mask, step_token_index=steps)


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
) -> AdvantageOutput:
    """Dense rewards, returns and advantages of the estimator named ``estimator``.

    whiten=None uses the estimator's default (True for reinforce_pp*, False for the group
    estimators). Metrics are over this rank's batch.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown advantage estimator {estimator!r}; choose one of {', '.join(ESTIMATORS)}")
    cfg = AdvantageConfig(
        kl_coef=kl_coef,
        gamma=gamma,
        credit=credit,
        process_coef=process_coef,
        outcome_coef=outcome_coef,
        reward_clip=reward_clip,
        score_transform=score_transform,
        whiten=WHITEN_BY_DEFAULT[estimator] if whiten is None else whiten,
        group=group,
    )
    inputs = handle_truncated(inputs, truncated_outcome, drop_truncated)
    advantages, returns, rewards = ESTIMATORS[estimator](inputs, cfg)
    return AdvantageOutput(
        advantages=advantages,
        returns=returns,
        dense_rewards=rewards.total,
        mask=inputs.mask,
        metrics=_metrics(inputs, rewards, returns, advantages),
    )


def _metrics(inputs: AdvantageInputs, rewards: DenseRewards, returns, advantages) -> dict[str, float]:
    maskf = inputs.mask.float()
    tokens = maskf.sum().clamp(min=1)
    has_step = inputs.step_token_index >= 0
    steps = has_step.sum()
    return {
        "reward/outcome_mean": inputs.outcome.float().mean().item(),
        "reward/kl_mean": ((inputs.kl.float() * maskf).sum() / tokens).item(),
        "reward/step_reward_mean": (rewards.steps.sum() / steps.clamp(min=1)).item(),
        "reward/steps_per_response": (steps / max(len(has_step), 1)).item(),
        "reward/truncated_fraction": inputs.truncated.float().mean().item(),
        "returns/mean": ((returns * maskf).sum() / tokens).item(),
        "advantages/mean": ((advantages * maskf).sum() / tokens).item(),
        "advantages/abs_max": (advantages * maskf).abs().max().item(),
    }

"""The clipped policy-gradient loss and its aggregation over tokens.

Per token, with ratio = exp(clamp(logp - logp_old, -20, 20)):

    L_t = -min(ratio * A, clip(ratio, 1 - eps_low, 1 + eps_high) * A)
    dual clip (c > 1, for A < 0 only):  L_t = min(L_t, -c * A)

Aggregations (``num_tokens`` / ``num_sequences`` are the counts of the whole optimiser
step, over gradient-accumulation micro-batches and ranks, so that the sum of the
micro-batch losses of all ranks is the loss of the whole step):

    token_mean             sum_{i,t} m_it L_it / num_tokens
    seq_mean_token_mean    sum_i (sum_t m_it L_it / sum_t m_it) / num_sequences

Under DDP, which averages gradients over ranks, multiply the loss by the world size
(the counts are already global).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from rpp_learner.algorithms.distributed import all_reduce_sum
from rpp_learner.algorithms.kl import kl_penalty

AGGREGATIONS = ("token_mean", "seq_mean_token_mean")
_LOG_RATIO_LIMIT = 20.0


def global_token_count(
    masks: torch.Tensor | list[torch.Tensor], group: dist.ProcessGroup | None = None
) -> torch.Tensor:
    """Number of valid tokens in ``masks`` (one mask or the micro-batches of a step),
    summed over ranks. Pass it as ``num_tokens`` to every micro-batch's loss."""
    masks = [masks] if isinstance(masks, torch.Tensor) else masks
    local = sum(m.sum().double() for m in masks)
    return all_reduce_sum(torch.as_tensor(local, dtype=torch.float64), group)


def global_sequence_count(
    masks: torch.Tensor | list[torch.Tensor], group: dist.ProcessGroup | None = None
) -> torch.Tensor:
    """Number of sequences with at least one valid token, summed over micro-batches and ranks."""
    masks = [masks] if isinstance(masks, torch.Tensor) else masks
    local = sum((m.sum(-1) > 0).sum().double() for m in masks)
    return all_reduce_sum(torch.as_tensor(local, dtype=torch.float64), group)


def aggregate(
    values: torch.Tensor,
    mask: torch.Tensor,
    aggregation: str = "token_mean",
    num_tokens: torch.Tensor | float | None = None,
    num_sequences: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """Reduce per-token ``values`` [B, T] to a scalar (see module doc). Counts default to
    this micro-batch's own, which is right only for a single micro-batch on one rank."""
    maskf = mask.to(values.dtype)
    if aggregation == "token_mean":
        denom = maskf.sum() if num_tokens is None else num_tokens
        return (values * maskf).sum() / torch.as_tensor(denom, dtype=values.dtype).clamp(min=1)
    if aggregation == "seq_mean_token_mean":
        lengths = maskf.sum(-1)
        per_seq = (values * maskf).sum(-1) / lengths.clamp(min=1)
        denom = (lengths > 0).sum() if num_sequences is None else num_sequences
        return per_seq.sum() / torch.as_tensor(denom, dtype=values.dtype).clamp(min=1)
    raise ValueError(f"unknown loss aggregation {aggregation!r}; choose one of {', '.join(AGGREGATIONS)}")


def clipped_pg_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token clipped loss L_t, the ratio, and where clipping decided the value (bool)."""
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"dual_clip must be > 1 (a bound of c * |A| on the loss), got {dual_clip}")
    ratio = torch.exp((logp - old_logp).clamp(-_LOG_RATIO_LIMIT, _LOG_RATIO_LIMIT))
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    loss = torch.maximum(unclipped, clipped)
    was_clipped = clipped > unclipped
    if dual_clip is not None:
        bound = -advantages * dual_clip
        dual = (advantages < 0) & (loss > bound)
        loss = torch.where(dual, bound, loss)
        was_clipped = was_clipped | dual
    return loss, ratio, was_clipped


def policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float | None = None,
    num_tokens: torch.Tensor | float | None = None,
    aggregation: str = "token_mean",
    num_sequences: torch.Tensor | float | None = None,
    ref_logp: torch.Tensor | None = None,
    kl_loss_coef: float = 0.0,
    kl_loss_kind: str = "k2",
    entropy: torch.Tensor | None = None,
    entropy_coef: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Loss = agg(L_t) + kl_loss_coef * agg(KL_t(logp, ref_logp)) - entropy_coef * agg(H_t).

    logp carries the gradient; old_logp, advantages, ref_logp are constants. Returns the
    loss and detached metrics over this micro-batch's valid tokens: pg_loss, kl_loss,
    clip_fraction, approx_kl (k3 of old vs new), entropy.
    """
    old_logp, advantages = old_logp.detach(), advantages.detach()
    per_token, ratio, was_clipped = clipped_pg_loss(logp, old_logp, advantages, clip_low, clip_high, dual_clip)

    def agg(values: torch.Tensor) -> torch.Tensor:
        return aggregate(values, mask, aggregation, num_tokens, num_sequences)

    pg_loss = agg(per_token)
    loss = pg_loss
    metrics: dict[str, torch.Tensor] = {"pg_loss": pg_loss.detach()}
    if kl_loss_coef != 0.0:
        if ref_logp is None:
            raise ValueError("kl_loss_coef is set but ref_logp is None: pass the reference log-probs")
        kl_loss = agg(kl_penalty(logp, ref_logp.detach(), kl_loss_kind))
        loss = loss + kl_loss_coef * kl_loss
        metrics["kl_loss"] = kl_loss.detach()
    if entropy is not None:
        entropy_mean = agg(entropy)
        loss = loss - entropy_coef * entropy_mean
        metrics["entropy"] = entropy_mean.detach()

    with torch.no_grad():
        maskf = mask.float()
        tokens = maskf.sum().clamp(min=1)
        log_ratio = (logp - old_logp).float()
        metrics["clip_fraction"] = (was_clipped.float() * maskf).sum() / tokens
        metrics["approx_kl"] = ((log_ratio.exp() - 1 - log_ratio) * maskf).sum() / tokens
        metrics["ratio_max"] = (ratio * maskf).max()
    return loss, metrics

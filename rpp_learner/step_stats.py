"""Per-step statistics of a rollout, all-reduced over processes."""

from __future__ import annotations

import torch

from rpp_learner.algorithms.distributed import all_reduce_max, all_reduce_sum
from rpp_learner.algorithms.kl import kl_penalty
from rpp_learner.rollout.base import RolloutBatch
from rpp_learner.scoring import ScoredBatch


def rollout_metrics(
    batch: RolloutBatch, scored: ScoredBatch, mask: torch.Tensor, old_logp: torch.Tensor, ref_logp: torch.Tensor
) -> dict[str, float]:
    """Rewards, failures, lengths and KL of one step, over every process's samples.

    Means are of global sums / global counts (all-reduced), never means of rank means.
    Per-response rewards average over the samples that were scored, the step mean over
    their placed steps; KL (k1, old policy vs reference) over their tokens. Each name says
    which: ``reward/process_sum`` grows with the number of steps, ``reward/process_step_mean``
    does not.
    """
    valid = scored.valid.double()
    placed = scored.step_token_index >= 0
    weights = torch.ones_like(scored.step_scores) if scored.step_weights is None else scored.step_weights
    process = (weights * scored.step_scores * placed).sum(1).double()  # sum of w_j * s_j (raw scores)
    lengths = batch.response_mask.sum(1).double()
    kl_tokens = (kl_penalty(old_logp, ref_logp, "k1").double() * mask).sum()
    sums = all_reduce_sum(torch.stack([
        (scored.outcome.double() * valid).sum(),
        (process * valid).sum(),
        valid.sum(),
        torch.tensor(float(len(valid)), dtype=torch.float64),
        lengths.sum(),
        batch.truncated.double().sum(),
        kl_tokens,
        mask.double().sum(),
        (placed.sum(1).double() * valid).sum(),
    ]))
    n_steps = sums[8].item()
    n_valid = max(sums[2].item(), 1.0)
    metrics = {
        "reward/outcome_weighted": sums[0].item() / n_valid,
        "reward/process_sum": sums[1].item() / n_valid,
        "reward/process_step_mean": sums[1].item() / n_steps if n_steps else 0.0,
        "reward/total": (sums[0] + sums[1]).item() / n_valid,
        "reward/steps_per_response": n_steps / n_valid,
        "reward/failed": sums[3].item() - sums[2].item(),
        "reward/failed_frac": 1.0 - sums[2].item() / sums[3].item(),
        "response_length": sums[4].item() / sums[3].item(),
        "truncated_frac": sums[5].item() / sums[3].item(),
        "kl": sums[6].item() / max(sums[7].item(), 1.0),
    }
    for name, fails in sorted(scored.failures.items()):
        metrics[f"reward/failed/{name}"] = float(fails)  # this process's count
    return metrics


def sampler_mismatch_metrics(batch: RolloutBatch, policy_logp: torch.Tensor) -> dict[str, float]:
    """How far the rollout engine's log-probs of its own samples are from the learner's
    log-probs of them under the same weights (|difference| over response tokens, over every
    process). Near 0 when the engine samples from the policy being trained; a stale weight
    push or a numerics gap (bf16 kernels, top-p truncation) shows here first. Empty for
    engines that report no log-probs (HF: the learner's own forward is the sampler)."""
    if batch.sampler_logprobs is None:
        return {}
    mask = batch.response_mask.bool()
    gap = (batch.sampler_logprobs.double() - policy_logp.detach().double().cpu()).abs() * mask
    sums = all_reduce_sum(torch.stack([gap.sum(), mask.double().sum()]))
    return {
        "rollout/sampler_logprob_gap": sums[0].item() / max(sums[1].item(), 1.0),
        "rollout/sampler_logprob_gap_max": all_reduce_max(gap.max()).item(),
    }

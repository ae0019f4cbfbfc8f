"""Per-token KL estimators between the policy that sampled and the reference policy.

Schulman's estimators of KL(pi || pi_ref) from one sample, with log_ratio = logp - ref_logp:

    k1 = log_ratio                                   unbiased, can be negative
    k2 = 0.5 * log_ratio**2                          biased, >= 0, its gradient is k1's
    k3 = exp(-log_ratio) - 1 + log_ratio             unbiased, >= 0, low variance
       = exp(ref - logp) - (ref - logp) - 1

REINFORCE++ puts k1 in the reward; REINFORCE++-baseline uses k2 as a loss, GRPO k3.
"""

from __future__ import annotations

import torch

KL_KINDS = ("k1", "k2", "k3")

# exp() of a log-ratio past this overflows fp32 long before the final clamp could help,
# and an inf forward turns into a NaN gradient (0 * inf) when k3 is used as a loss.
_K3_LOG_RATIO_LIMIT = 20.0


def kl_penalty(
    logp: torch.Tensor, ref_logp: torch.Tensor, kind: str = "k1", clamp: float = 10.0
) -> torch.Tensor:
    """Per-token KL estimate ``kind`` in fp32, clamped to ``[-clamp, clamp]``.

    logp, ref_logp: [B, T] log-probabilities of the sampled tokens. Padding is not masked
    here; the caller multiplies by the response mask.
    """
    if logp.shape != ref_logp.shape:
        raise ValueError(f"logp {tuple(logp.shape)} and ref_logp {tuple(ref_logp.shape)} differ in shape")
    log_ratio = logp.float() - ref_logp.float()
    if kind == "k1":
        kl = log_ratio
    elif kind == "k2":
        kl = 0.5 * log_ratio.square()
    elif kind == "k3":
        neg = (-log_ratio).clamp(-_K3_LOG_RATIO_LIMIT, _K3_LOG_RATIO_LIMIT)
        kl = neg.exp() - neg - 1.0
    else:
        raise ValueError(f"unknown KL estimator {kind!r}; choose one of {', '.join(KL_KINDS)}")
    return kl.clamp(-clamp, clamp)

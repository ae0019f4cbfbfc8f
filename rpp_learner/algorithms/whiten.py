"""Masked statistics and whitening over every valid token of the batch, on all ranks.

Under torch.distributed each rank holds a slice of the rollout batch. Averaging per-rank
means would weight ranks equally whatever their token counts; instead the raw moments
(sum, sum of squares, count) are all-reduced in fp64, so N ranks compute exactly the
statistics one process would compute on the whole batch.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from rpp_learner.algorithms.distributed import all_reduce_sum


def masked_moments(
    values: torch.Tensor, mask: torch.Tensor, group: dist.ProcessGroup | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Global (sum, sum of squares, count) of ``values`` where ``mask`` is 1, in fp64."""
    if values.shape != mask.shape:
        raise ValueError(f"values {tuple(values.shape)} and mask {tuple(mask.shape)} differ in shape")
    x = values.detach().double()
    m = mask.double()
    moments = torch.stack([(x * m).sum(), (x * x * m).sum(), m.sum()])
    moments = all_reduce_sum(moments, group)
    return moments[0], moments[1], moments[2]


def masked_mean_var(
    values: torch.Tensor, mask: torch.Tensor, group: dist.ProcessGroup | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Global mean and population variance (divided by n) of the valid entries, in fp64.

    var = E[x^2] - E[x]^2, clamped at 0 against rounding.
    """
    total, total_sq, count = masked_moments(values, mask, group)
    if count.item() == 0:
        raise ValueError("the mask selects no valid token on any rank: nothing to normalise")
    mean = total / count
    var = (total_sq / count - mean * mean).clamp(min=0.0)
    return mean, var


def masked_whiten(
    values: torch.Tensor,
    mask: torch.Tensor,
    group: dist.ProcessGroup | None = None,
    eps: float = 1e-8,
    shift_mean: bool = True,
) -> torch.Tensor:
    """(values - mean) / sqrt(var + eps) over the valid tokens of all ranks; 0 at padding.

    shift_mean=False only rescales (values / sqrt(var + eps)), keeping the sign of each
    entry. Returns the dtype of ``values``.
    """
    mean, var = masked_mean_var(values, mask, group)
    centred = values.double() - mean if shift_mean else values.double()
    whitened = centred * torch.rsqrt(var + eps)
    return (whitened * mask.double()).to(values.dtype)

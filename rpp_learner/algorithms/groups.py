"""Per-prompt group statistics, shared by the group estimators and the group credit modes."""

from __future__ import annotations

import torch


def group_mean_std(
    values: torch.Tensor, group_index: torch.Tensor, valid: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each sample: mean, unbiased std and size of its group ([B] each), counting only
    the ``valid`` members (default: all). A group with no valid member has mean 0, std 0.

    Mean and std are float64: callers subtract and divide before rounding back, so a
    group of large, close outcomes keeps its differences (fp32 would round the mean first).
    """
    _, inverse = torch.unique(group_index, return_inverse=True)
    n_groups = int(inverse.max().item()) + 1 if len(inverse) else 0
    x = values.double()
    w = torch.ones_like(x) if valid is None else valid.to(device=x.device, dtype=x.dtype)
    counts = torch.zeros(n_groups, dtype=x.dtype, device=x.device).index_add_(0, inverse, w)
    sums = torch.zeros_like(counts).index_add_(0, inverse, x * w)
    mean = (sums / counts.clamp(min=1))[inverse]
    squares = torch.zeros_like(counts).index_add_(0, inverse, w * (x - mean) ** 2)
    std = (squares / (counts - 1).clamp(min=1)).sqrt()[inverse]
    return mean, std, counts.long()[inverse]

"""torch.distributed helpers shared by the statistics (whitening, token counts, metrics)."""

from __future__ import annotations

import torch
import torch.distributed as dist


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def all_reduce_sum(values: torch.Tensor, group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """Sum ``values`` over the ranks of ``group`` (a copy; no-op without torch.distributed)."""
    return _all_reduce(values, dist.ReduceOp.SUM, group)


def all_reduce_max(values: torch.Tensor, group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """Element-wise max of ``values`` over the ranks of ``group`` (a copy)."""
    return _all_reduce(values, dist.ReduceOp.MAX, group)


def _all_reduce(values: torch.Tensor, op: dist.ReduceOp, group: dist.ProcessGroup | None) -> torch.Tensor:
    # NCCL reduces only CUDA tensors, so CPU statistics travel through the current GPU and
    # come back to the device they came from.
    if not _distributed():
        return values
    device = values.device
    if dist.get_backend(group) == "nccl" and device.type != "cuda":
        reduced = values.to(torch.device("cuda", torch.cuda.current_device()))
    else:
        reduced = values.clone()
    dist.all_reduce(reduced, op=op, group=group)
    return reduced.to(device)

"""Reading the per-process rollouts a run saves with ``logging.save_rollouts``."""

from __future__ import annotations

from pathlib import Path

import torch


def load_rollouts(run_dir: Path, step: int) -> list[dict]:
    """The rollouts of ``step``, one per process, in rank order."""
    paths = sorted((Path(run_dir) / "rollouts").glob(f"step_{step:06d}_rank*.pt"))
    return [torch.load(p, weights_only=False) for p in paths]


def joined(rollouts: list[dict], key: str) -> torch.Tensor:
    """Concatenate per-rank tensors in global sample order, padding the token dimension."""
    parts = [r[key] for r in rollouts]
    width = max(p.shape[-1] for p in parts)
    return torch.cat([torch.nn.functional.pad(p, (0, width - p.shape[-1])) for p in parts])

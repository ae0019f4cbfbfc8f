"""Two gloo ranks on CPU give the single-process result to 1e-6.

A batch is split unevenly over two ranks (different numbers of valid tokens per rank, so
per-rank means would be wrong); every rank saves what it computed and the parent checks
it against the same functions run on the whole batch in one process.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from rpp_learner.algorithms import (
    AdvantageInputs,
    RunningMeanStd,
    compute_advantages,
    global_token_count,
    masked_whiten,
    policy_loss,
)

WORLD = 2


def make_batch() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    b, t = 6, 9
    lengths = torch.tensor([9, 1, 4, 8, 2, 7])  # rank 0 gets 14 tokens, rank 1 gets 17
    mask = (torch.arange(t) < lengths.unsqueeze(-1)).long()
    return {
        "mask": mask,
        "kl": torch.rand(b, t, generator=gen) * 0.1,
        "outcome": torch.randn(b, generator=gen),
        "step_token_index": torch.stack([lengths // 2, lengths - 1], dim=-1),
        "step_scores": torch.rand(b, 2, generator=gen),
        "group_index": torch.arange(b),
        "truncated": torch.zeros(b, dtype=torch.bool),
        "values": torch.randn(b, t, generator=gen),
        "logp": -torch.rand(b, t, generator=gen),
        "old_logp": -torch.rand(b, t, generator=gen),
    }


def compute(batch: dict[str, torch.Tensor], rows: slice, micro_batches: list[slice], group=None) -> dict:
    """Everything that must not depend on how the batch is split, computed on ``rows``."""
    part = {k: v[rows] for k, v in batch.items()}
    inputs = AdvantageInputs(**{k: part[k] for k in AdvantageInputs.__dataclass_fields__ if k in part})
    adv = compute_advantages("reinforce_pp", inputs, kl_coef=0.05, process_coef=0.5, group=group)
    rms = RunningMeanStd()
    rms.update(part["outcome"], group)
    # Token-mean over the global token count of the optimiser step, over micro-batches.
    logp = part["logp"].clone().requires_grad_()
    num_tokens = global_token_count([part["mask"][mb] for mb in micro_batches], group)
    total = torch.zeros((), dtype=torch.float64)
    for mb in micro_batches:
        loss, _ = policy_loss(
            logp[mb], part["old_logp"][mb], adv.advantages[mb], part["mask"][mb], num_tokens=num_tokens
        )
        loss.backward()
        total += loss.detach().double()
    return {
        "whitened": masked_whiten(part["values"], part["mask"], group),
        "advantages": adv.advantages,
        "loss": total,
        "grad": logp.grad,
        "rms": torch.tensor([rms.mean, rms.var, rms.count], dtype=torch.float64),
    }


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        rows = slice(0, 3) if rank == 0 else slice(3, 6)
        result = compute(make_batch(), rows, micro_batches=[slice(0, 1), slice(1, 3)])
        torch.save(result, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_match_one_process(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    single = compute(make_batch(), slice(0, 6), micro_batches=[slice(0, 6)])
    for key in ("whitened", "advantages", "grad"):
        torch.testing.assert_close(torch.cat([r[key] for r in ranks]), single[key], atol=1e-6, rtol=0)
    # The losses of all ranks and micro-batches add up to the single-process loss.
    torch.testing.assert_close(sum(r["loss"] for r in ranks), single["loss"], atol=1e-6, rtol=0)
    for r in ranks:
        torch.testing.assert_close(r["rms"], single["rms"], atol=1e-6, rtol=0)
    assert single["whitened"].abs().sum() > 0 and single["grad"].abs().sum() > 0

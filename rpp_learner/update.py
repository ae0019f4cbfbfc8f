"""The policy update: ``ppo_epochs`` passes of clipped policy-gradient steps over shuffled
mini-batches, with gradient accumulation over micro-batches, gradient clipping, the
optimiser and the learning-rate schedule.

Rewards arrive during the update. The first micro-batch's forward needs only the rollout,
not its rewards, so ``run_update`` runs it first and only then asks for the advantages
(``advantages_for``, which waits for the reward services): the services score while the
forward runs, and a synchronous step no longer idles through the reward round trip.

On-policy shortcut. When the rollout is used for exactly one optimiser step
(``ppo_epochs == 1`` and one mini-batch per epoch), every micro-batch's forward runs on
the weights that sampled the rollout, so the old-policy log-probs are exactly the current
log-probs, detached. ``run_update`` then takes ``old_logp=None`` and uses
``logp.detach()`` (what verl and OpenRLHF do, and TRL's GRPOTrainer), saving a whole
forward pass over the rollout. It returns those log-probs so the step's metrics can still
report the KL to the reference. With the KL in the reward (``kl_coef != 0``) the
advantages need pi_old on every token before the first loss, so the shortcut applies only
when one micro-batch holds the whole rollout: its forward's log-probs are then handed to
``advantages_for``. With several micro-batches the trainer runs the separate forward.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from accelerate import Accelerator

from rpp_learner.algorithms.distributed import all_reduce_sum
from rpp_learner.algorithms.loss import global_sequence_count, global_token_count, policy_loss
from rpp_learner.config import Config
from rpp_learner.forward import checkpointing_active, response_logprobs
from rpp_learner.rollout.base import RolloutBatch
from rpp_learner.sharding import as_float


def is_on_policy(cfg: Config) -> bool:
    """One optimiser step per rollout (mini-batch and rollout sizes are both global), so
    pi_old is the policy during the whole update."""
    rollout_batch = cfg.rollout.prompts_per_step * cfg.rollout.samples_per_prompt
    return cfg.algo.ppo_epochs == 1 and cfg.optim.mini_batch_size == rollout_batch


def one_micro_batch(cfg: Config, world: int) -> bool:
    """A process's whole share of the rollout fits in one micro-batch."""
    rollout_rows = cfg.rollout.prompts_per_step * cfg.rollout.samples_per_prompt // world
    return cfg.optim.micro_batch_size >= rollout_rows


# on-policy log-probs of every row, [B, T] (or None) -> (advantages [B, T], loss mask [B, T])
AdvantagesFor = Callable[[torch.Tensor | None], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class UpdateResult:
    metrics: dict[str, float]
    logp: torch.Tensor | None  # [B, T] detached log-probs before any step (on-policy shortcut only)


def run_update(
    cfg: Config,
    acc: Accelerator,
    policy: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler,
    *,
    b: RolloutBatch,
    old_logp: torch.Tensor | None,
    ref_logp: torch.Tensor | None,
    advantages_for: AdvantagesFor,
    seed: int,
) -> UpdateResult:
    """Run the epochs; ``old_logp=None`` selects the on-policy shortcut (see module doc).

    ``advantages_for`` is called once, after the first micro-batch's forward: with the
    detached log-probs of every row when that forward covered them all on-policy (they are
    pi_old), else with None. It returns the advantages and the loss mask (failed and
    dropped samples masked out)."""
    algo, world, dev = cfg.algo, acc.num_processes, acc.device
    mini = cfg.optim.mini_batch_size // world
    micro = cfg.optim.micro_batch_size
    on_policy = old_logp is None
    if on_policy and (algo.ppo_epochs != 1 or mini < len(b)):
        raise ValueError("old_logp=None is only exact with one optimiser step per rollout")
    seen = torch.zeros(b.response_ids.shape, dtype=torch.float32) if on_policy else None
    advantages = mask = None
    totals = torch.zeros(4, dtype=torch.float64)  # loss, clipped tokens, tokens, grad norm
    n_updates = 0
    for epoch in range(algo.ppo_epochs):
        order = torch.randperm(len(b), generator=torch.Generator().manual_seed(seed + epoch))
        for start in range(0, len(b), mini):
            rows = order[start : start + mini]
            chunks = [rows[i : i + micro] for i in range(0, len(rows), micro)]
            for j, c in enumerate(chunks):
                # DDP syncs gradients on the last micro-batch only.
                sync = contextlib.nullcontext() if j == len(chunks) - 1 else acc.no_sync(policy)
                with sync, checkpointing_active(policy):
                    logp = response_logprobs(
                        policy, b.prompt_ids[c].to(dev), b.prompt_mask[c].to(dev),
                        b.response_ids[c].to(dev), b.response_mask[c].to(dev), cfg.rollout.temperature,
                        share_prompts=cfg.optim.shared_prompt_forward,
                    )
                    if on_policy:
                        seen[c] = logp.detach().cpu()
                        old = logp.detach()
                    else:
                        old = old_logp[c].to(dev)
                    if advantages is None:  # the first forward ran while the rewards were scored
                        advantages, mask = advantages_for(seen if on_policy and len(c) == len(b) else None)
                    if j == 0:
                        num_tokens = global_token_count([mask[c] for c in chunks])
                        num_seqs = global_sequence_count([mask[c] for c in chunks])
                    loss, m = policy_loss(
                        logp, old, advantages[c].to(dev), mask[c].to(dev),
                        clip_low=algo.clip_low, clip_high=algo.clip_high, dual_clip=algo.dual_clip,
                        num_tokens=num_tokens, aggregation=algo.loss_aggregation,
                        num_sequences=num_seqs, ref_logp=None if ref_logp is None else ref_logp[c].to(dev),
                        kl_loss_coef=algo.kl_loss_coef, kl_loss_kind=algo.kl_loss_estimator,
                    )
                    # DDP averages gradients over processes; the loss is already divided
                    # by the global count, so undo the average.
                    acc.backward(loss * world)
                tokens = mask[c].sum().item()
                totals[0] += loss.item()
                totals[1] += m["clip_fraction"].item() * tokens
                totals[2] += tokens
            grad_norm = acc.clip_grad_norm_(policy.parameters(), cfg.optim.max_grad_norm)
            totals[3] += as_float(grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            n_updates += 1
    totals[:3] = all_reduce_sum(totals[:3])
    metrics = {
        "loss": totals[0].item() / n_updates,
        "clip_frac": totals[1].item() / max(totals[2].item(), 1.0),
        "grad_norm": totals[3].item() / n_updates,
        "lr": scheduler.get_last_lr()[0],
    }
    return UpdateResult(metrics, seen)

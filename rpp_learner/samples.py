"""A step's rollout as text: decoded responses with token byte offsets (for placing
process rewards), the ``Sample`` messages sent to the reward services, and the optional
per-step dump of everything derived from them (``logging.save_rollouts``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from reward_server.types import Sample
from rpp_learner.alignment import decode_with_offsets
from rpp_learner.data import PromptRecord
from rpp_learner.rollout.base import RolloutBatch, concat_batches
from rpp_learner.scoring import ScoredBatch


@dataclass
class Rollout:
    """One process's share of a step: the samples, their rewards and everything derived."""

    batch: RolloutBatch
    records: list[PromptRecord]  # one per sample
    group_index: torch.Tensor  # [B] global prompt index of each sample
    texts: list[str]
    token_end_bytes: list[list[int]]
    # Updates the sampling weights had seen: the step's own update count when synchronous,
    # one less when pipelined (README, "Pipelined mode").
    policy_version: int = 0


def with_text(
    batch: RolloutBatch, records: list[PromptRecord], groups: torch.Tensor, tokenizer, eos_ids: list[int]
) -> Rollout:
    """Decode every response once (one pass per response, no encode round trip)."""
    eos = set(eos_ids)
    texts, ends = [], []
    for ids, m in zip(batch.response_ids, batch.response_mask, strict=True):
        tokens = ids[m.bool()].tolist()
        if tokens and tokens[-1] in eos:
            tokens = tokens[:-1]  # the EOS is not part of the text the services see
        text, token_end_bytes = decode_with_offsets(tokenizer, tokens)
        texts.append(text)
        ends.append(list(token_end_bytes))
    return Rollout(batch, records, groups, texts, ends)


def concat_rollouts(parts: list[Rollout], pad_id: int) -> Rollout:
    """Join the chunks of one step's rollout, in order (see ``RolloutEngine.generate_chunks``)."""
    if len(parts) == 1:
        return parts[0]
    return Rollout(
        concat_batches([p.batch for p in parts], pad_id),
        [r for p in parts for r in p.records],
        torch.cat([p.group_index for p in parts]),
        [t for p in parts for t in p.texts],
        [e for p in parts for e in p.token_end_bytes],
        parts[0].policy_version,
    )


def reward_samples(rollout: Rollout, step: int, rank: int, first_index: int = 0) -> list[Sample]:
    """The messages for the reward services; ids ``s<step>-r<rank>-<index in the step>``."""
    return [
        Sample(
            id=f"s{step}-r{rank}-{first_index + i}",
            prompt=rec.prompt,
            response=text,
            reference=rec.reference,
            metadata={"prompt_row": str(rec.row)},
        )
        for i, (rec, text) in enumerate(zip(rollout.records, rollout.texts, strict=True))
    ]


def save_rollout(path: Path, rollout: Rollout, scored: ScoredBatch, adv, old_logp: torch.Tensor) -> None:
    """ids, rewards, advantages and texts of one step on one process, as a torch file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "group_index": rollout.group_index,
            "prompt_ids": rollout.batch.prompt_ids,
            "prompt_mask": rollout.batch.prompt_mask,
            "response_ids": rollout.batch.response_ids,
            "response_mask": rollout.batch.response_mask,
            "mask": adv.mask,
            "outcome": scored.outcome,
            "step_token_index": scored.step_token_index,
            "step_scores": scored.step_scores,  # raw, as the services sent them
            "step_weights": scored.step_weights,
            "step_rewards": adv.step_rewards,  # p_j = clip(alpha * w_j * f(s_j))
            "valid": scored.valid,
            "dense_rewards": adv.dense_rewards,
            "advantages": adv.advantages,
            "old_logp": old_logp,  # pi_old of the clipped ratio: the sampling policy's log-probs
            "policy_version": torch.full((len(rollout.texts),), rollout.policy_version),
            "texts": rollout.texts,
            "prompts": [r.prompt for r in rollout.records],
        },
        path,
    )

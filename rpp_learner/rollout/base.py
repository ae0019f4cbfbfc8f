"""The rollout interface: prompts in, sampled responses (token ids and masks) out.

Engines: ``hf`` (Hugging Face ``generate``, CPU or GPU, the default) and ``vllm`` (GPU).
Both return the same ``RolloutBatch`` so the trainer never knows which one ran.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingParams:
    n: int = 1  # samples per prompt
    max_new_tokens: int = 256
    min_new_tokens: int = 0  # no EOS before this many tokens
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    greedy: bool = False


@dataclass
class RolloutBatch:
    """B = prompts * n rows; row i*n + j is sample j of prompt i.

    ``prompt_ids`` are left-padded ([B, P]); ``response_ids`` are right-padded ([B, T]);
    ``response_mask`` is 1 for generated tokens up to and including EOS; ``truncated`` is
    True where the response hit ``max_new_tokens`` without EOS. ``sampler_logprobs``
    ([B, T], 0 past the mask) are the engine's own log-probs of the tokens it drew, from
    an engine that computes them apart from the learner (vLLM); None otherwise.
    """

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    response_ids: torch.Tensor
    response_mask: torch.Tensor
    truncated: torch.Tensor
    sampler_logprobs: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.response_ids.shape[0]


class RolloutEngine(abc.ABC):
    @abc.abstractmethod
    def generate(self, prompts: list[list[int]], params: SamplingParams, seed: int) -> RolloutBatch:
        """Sample ``params.n`` responses for each tokenised prompt; ``seed`` fixes the draws."""

    def generate_chunks(
        self, prompts: list[list[int]], params: SamplingParams, seed: int
    ) -> Iterator[tuple[int, RolloutBatch]]:
        """The draws of ``generate``, handed out chunk by chunk as each one finishes:
        (index of the chunk's first prompt, its batch). The trainer sends a chunk to the
        reward services while the next one is generated. An engine that generates all
        prompts at once (vLLM) yields once."""
        yield 0, self.generate(prompts, params, seed)

    #: True when the engine generates from its own copy of the weights, which the trainer
    #: then refreshes with ``load_weights`` after every update; False when it shares the
    #: policy module and sees each update as it happens.
    owns_weights: bool = False

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:  # noqa: B027 - optional hook
        """Copy the policy's updated (name, full tensor) pairs into the engine's own weights."""


def pad_left(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token lists to one [B, P] tensor and its attention mask."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            ids[i, width - len(s) :] = torch.tensor(s, dtype=torch.long)
            mask[i, width - len(s) :] = 1
    return ids, mask


def pad_right(seqs: list[list[int]], pad_id: int, width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token lists to one [B, T] tensor and its mask."""
    width = max([len(s) for s in seqs] + [1]) if width is None else width
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids, mask


def concat_batches(batches: list[RolloutBatch], pad_id: int) -> RolloutBatch:
    """Join rollout chunks, re-padding prompts (left) and responses (right) to common widths."""
    prompts = [row[m.bool()].tolist() for b in batches for row, m in zip(b.prompt_ids, b.prompt_mask, strict=True)]
    responses = [
        row[m.bool()].tolist() for b in batches for row, m in zip(b.response_ids, b.response_mask, strict=True)
    ]
    prompt_ids, prompt_mask = pad_left(prompts, pad_id)
    response_ids, response_mask = pad_right(responses, pad_id)
    sampler_logprobs = None
    if all(b.sampler_logprobs is not None for b in batches):
        width = response_ids.shape[1]
        sampler_logprobs = torch.cat(
            [torch.nn.functional.pad(b.sampler_logprobs, (0, width - b.sampler_logprobs.shape[1])) for b in batches]
        )
    return RolloutBatch(
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask,
        response_ids=response_ids,
        response_mask=response_mask,
        truncated=torch.cat([b.truncated for b in batches]),
        sampler_logprobs=sampler_logprobs,
    )

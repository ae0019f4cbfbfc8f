"""Outcome reward from a Hugging Face sequence-classification model.

The model is an ``AutoModelForSequenceClassification`` with one label; the reward is that
label's logit, read where the model's own head pools: for decoder models in transformers
that is the rightmost token that is not the pad token, the same token with or without
padding, so a batched score equals scoring the sample alone. Input text: see
``hf_common`` (``prompt + prompt_separator + response``, or the chat template).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import AutoModelForSequenceClassification

from reward_server.scorers.hf_common import (
    Encoded,
    HFModelConfig,
    HFScorer,
    encode_sample,
    load_model,
    load_tokenizer,
)
from reward_server.types import Result, RewardKind, Sample


@dataclass
class HFOutcomeConfig(HFModelConfig):
    prompt_separator: str = field(default="", metadata={"help": "text between prompt and response (no chat template)"})


class HFOutcomeScorer(HFScorer):
    """Outcome reward model: one logit of a one-label sequence-classification head."""

    kind = RewardKind.OUTCOME

    def __init__(self, config: HFOutcomeConfig):
        model = load_model(AutoModelForSequenceClassification, config)
        if model.config.num_labels != 1:
            raise ValueError(
                f"{config.model!r} has a {model.config.num_labels}-label head; an outcome reward "
                "model needs exactly one label (its logit is the reward)"
            )
        super().__init__(config, model, load_tokenizer(config))
        self.config: HFOutcomeConfig = config

    def encode(self, sample: Sample) -> Encoded:
        return Encoded(
            encode_sample(self.tokenizer, self.config, sample.prompt, sample.response, self.config.prompt_separator)
        )

    def forward_batch(
        self, samples: list[Sample], encoded: list[Encoded], input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> list[Result]:
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits  # [B, 1]
        scores = logits[:, 0].float().cpu().tolist()
        return [
            Result(id=s.id, outcome=score, metrics={"num_tokens": float(len(e.input_ids))})
            for s, e, score in zip(samples, encoded, scores, strict=True)
        ]

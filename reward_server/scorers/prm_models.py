"""Native model classes for the released PRM checkpoints whose heads transformers lacks.

No code from the checkpoint runs: each class is transformers' own ``Qwen2Model`` plus the
head the release describes, with the release's weight names, so ``from_pretrained`` reads
the released config.json and (sharded) safetensors as they are.

- ``Qwen2ForProcessRewardModel`` (Qwen2.5-Math-PRM-7B/-72B, Qwen2.5-Math-7B-PRM800K):
  ``model.*`` + ``score = Sequential(Linear(h, h), ReLU, Linear(h, 2))``, so ``score.0.*``
  and ``score.2.*``; token logits ``[B, T, 2]``. Its remote code breaks on
  transformers >= 4.54 (``DynamicCache.get_usable_length``); this class does not need it.
- ``Qwen2ForPrmModel`` (Skywork-o1-Open-PRM-Qwen-2.5-1.5B/7B): a causal LM whose released
  state dict adds ``v_head.summary = Linear(h, 1)`` (TRL's value head); the value at each
  token, computed in float32 as Skywork's ``ValueHead`` does. The LM head is not needed
  for scoring, so ``lm_head.*`` is skipped.

``load_released_prm`` refuses a checkpoint whose weights do not match these names, naming
the missing, unexpected and mis-shaped keys, instead of scoring with a random head.
"""

from __future__ import annotations

import torch
from safetensors import SafetensorError
from torch import nn
from transformers import Qwen2Config, Qwen2Model, Qwen2PreTrainedModel

from reward_server.scorers.hf_common import (
    HFServingConfig,
    check_loading_info,
    from_pretrained_kwargs,
    place,
)


class Qwen2ForProcessRewardModel(Qwen2PreTrainedModel):
    """Qwen2.5-Math-PRM: ``forward`` returns 2-label logits for every token, ``[B, T, 2]``."""

    num_labels = 2
    released_head = "score.0.{weight,bias}, score.2.{weight,bias}"
    _keys_to_ignore_on_load_unexpected = [r"^lm_head\."]

    def __init__(self, config: Qwen2Config):
        super().__init__(config)
        self.model = Qwen2Model(config)
        hidden = config.hidden_size
        self.score = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, self.num_labels))
        self.post_init()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.score(hidden)


class ValueHead(nn.Module):
    """TRL's value head as Skywork saved it: ``summary = Linear(h, 1)`` (dropout is off in eval)."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.summary = nn.Linear(hidden_size, 1)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.summary(hidden.to(self.summary.weight.dtype)).squeeze(-1)


class Qwen2ForPrmModel(Qwen2PreTrainedModel):
    """Skywork-o1-Open-PRM: ``forward`` returns the value-head logit of every token, ``[B, T]``."""

    released_head = "v_head.summary.{weight,bias}"
    _keys_to_ignore_on_load_unexpected = [r"^lm_head\."]
    # Skywork's ValueHead is created in float32 and upcasts the hidden state to it.
    _keep_in_fp32_modules_strict = ["v_head"]

    def __init__(self, config: Qwen2Config):
        super().__init__(config)
        self.model = Qwen2Model(config)
        self.v_head = ValueHead(config.hidden_size)
        self.post_init()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.v_head(hidden)


PRM_CLASSES: dict[str, type[Qwen2PreTrainedModel]] = {
    "Qwen2ForProcessRewardModel": Qwen2ForProcessRewardModel,
    "Qwen2ForPrmModel": Qwen2ForPrmModel,
}


def load_released_prm(model_class: type[Qwen2PreTrainedModel], config: HFServingConfig) -> Qwen2PreTrainedModel:
    """Load ``config.model`` into ``model_class``, refusing any weight that does not fit."""
    name = model_class.__name__
    try:
        model_config = Qwen2Config.from_pretrained(config.model)
    except (OSError, ValueError) as exc:
        raise ValueError(f"could not read a Qwen2 config.json from {config.model!r}: {exc}") from exc
    if model_config.model_type != "qwen2":
        raise ValueError(
            f"{config.model!r} has model_type {model_config.model_type!r}; a {name} checkpoint is 'qwen2'"
        )
    expected_labels = getattr(model_class, "num_labels", None)
    if expected_labels is not None and model_config.num_labels != expected_labels:
        raise ValueError(
            f"{config.model!r} says num_labels={model_config.num_labels}; the {name} head has "
            f"{expected_labels} labels (its step score is P(label 1)): this is not that checkpoint"
        )
    try:
        model, info = model_class.from_pretrained(
            config.model, config=model_config, output_loading_info=True, ignore_mismatched_sizes=True,
            **from_pretrained_kwargs(config),
        )
    except (OSError, ValueError, SafetensorError) as exc:
        raise ValueError(f"could not load the {name} weights from {config.model!r}: {exc}") from exc
    check_loading_info(
        info, config.model, name, foreign=("",),
        hint=f"The released layout is model.* (a Qwen2Model) plus {model_class.released_head}; check --model "
             "and the format (--option format=...)",
    )
    return place(model, config)

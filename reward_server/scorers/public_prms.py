"""Scorers for the public PRM families, each fed its released format and read its way.

=====================  ==========================  ==========================================
scorer (format)        checkpoint                  score of a step
=====================  ==========================  ==========================================
prm-qwen               Qwen2.5-Math-PRM-7B/-72B,   softmax of the 2-label head at its
(qwen2.5-math-prm)     Qwen2.5-Math-7B-PRM800K     ``<extra_0>``, label 1
prm-skywork            Skywork-o1-Open-PRM-Qwen-   sigmoid of the value head at its step
(skywork-o1-prm)       2.5-1.5B / 7B               token ``"\\n"``
prm-rlhflow            RLHFlow/Llama3.1-8B-PRM-    P("+") among {"+", "-"} predicted for
(rlhflow-prm)          {Mistral,Deepseek}-Data     the assistant's reply to that step
=====================  ==========================  ==========================================

The inputs are built in ``prm_inputs`` and the Qwen/Skywork heads live in ``prm_models``
(native classes: no ``trust_remote_code``). ``prm`` (``prm_auto``) picks one of these, or
Math-Shepherd / a token-classification PRM, from the checkpoint's config.json.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import AutoModelForCausalLM, PreTrainedTokenizerBase

from reward_server.scorers.hf_common import (
    PRM_HEAD_PREFIXES,
    HFServingConfig,
    load_model,
    load_tokenizer,
    single_token_id,
)
from reward_server.scorers.hf_process import NextTokenLogits, ProcessHFScorer
from reward_server.scorers.prm_inputs import (
    QWEN_PRM_SYSTEM_PROMPT,
    PRMInput,
    qwen_math_prm_input,
    rlhflow_prm_input,
    skywork_prm_input,
)
from reward_server.scorers.prm_models import (
    Qwen2ForPrmModel,
    Qwen2ForProcessRewardModel,
    load_released_prm,
)


@dataclass
class QwenMathPRMConfig(HFServingConfig):
    step_separator: str = field(default="\n\n", metadata={
        "help": "splits responses sent without steps (Qwen: blank lines)"
    })
    system_prompt: str | None = field(default=QWEN_PRM_SYSTEM_PROMPT, metadata={
        "help": "system message (the model card's by default); None: no system turn"
    })
    separator_token: str = field(default="<extra_0>", metadata={
        "help": "token that ends every step, where scores are read"
    })


@dataclass
class SkyworkPRMConfig(HFServingConfig):
    step_separator: str = field(default="\n", metadata={"help": "splits responses sent without steps (Skywork: lines)"})
    step_token: str = field(default="\n", metadata={"help": "token appended after every step, where scores are read"})
    bos_token: str | None = field(default=None, metadata={
        "help": "text put before the problem; default: the tokenizer's bos_token"
    })


@dataclass
class RLHFlowPRMConfig(HFServingConfig):
    step_separator: str = field(default="\n\n", metadata={
        "help": "splits responses sent without steps (Deepseek data: blank lines)"
    })
    good_token: str = field(default="+", metadata={"help": "the assistant reply meaning a correct step"})
    bad_token: str = field(default="-", metadata={"help": "the reply meaning a wrong step"})


def _require_chat_template(tokenizer: PreTrainedTokenizerBase, config: HFServingConfig, family: str) -> None:
    if not tokenizer.chat_template:
        raise ValueError(
            f"the tokenizer in {config.model!r} has no chat template; the {family} format is a chat "
            "rendered by the released tokenizer's template (tokenizer_config.json or chat_template.jinja)"
        )


class QwenMathPRM(ProcessHFScorer):
    """Qwen2.5-Math-PRM: P(label 1) of the 2-label token head at each ``<extra_0>``."""

    input_format = "qwen2.5-math-prm"

    def __init__(self, config: QwenMathPRMConfig):
        tokenizer = load_tokenizer(config)
        _require_chat_template(tokenizer, config, "Qwen2.5-Math-PRM")
        super().__init__(config, load_released_prm(Qwen2ForProcessRewardModel, config), tokenizer)
        self.config: QwenMathPRMConfig = config
        self.step_separator = config.step_separator
        self.separator_id = single_token_id(tokenizer, config.separator_token, "separator_token")

    def build_input(self, prompt: str, steps: list[str]) -> PRMInput:
        return qwen_math_prm_input(
            self.tokenizer, prompt, steps, self.config.system_prompt, self.config.separator_token, self.separator_id
        )

    def read_scores(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, read_mask: torch.Tensor
    ) -> torch.Tensor:
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask)  # [B, T, 2]
        return logits[read_mask].float().softmax(dim=-1)[:, 1]


class SkyworkPRM(ProcessHFScorer):
    """Skywork-o1-Open-PRM: sigmoid of the value head at the step token after each step."""

    input_format = "skywork-o1-prm"

    def __init__(self, config: SkyworkPRMConfig):
        tokenizer = load_tokenizer(config)
        bos = config.bos_token if config.bos_token is not None else tokenizer.bos_token
        if bos is None:
            raise ValueError(
                f"the tokenizer in {config.model!r} has no bos_token; the Skywork format starts with "
                "bos_token + problem + '\\n'. Pass --option bos_token=TEXT (e.g. '' for none)"
            )
        super().__init__(config, load_released_prm(Qwen2ForPrmModel, config), tokenizer)
        self.config: SkyworkPRMConfig = config
        self.step_separator = config.step_separator
        self.bos_token = bos
        self.step_token_id = single_token_id(tokenizer, config.step_token, "step_token")

    def build_input(self, prompt: str, steps: list[str]) -> PRMInput:
        return skywork_prm_input(self.tokenizer, prompt, steps, self.bos_token, self.step_token_id)

    def read_scores(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, read_mask: torch.Tensor
    ) -> torch.Tensor:
        values = self.model(input_ids=input_ids, attention_mask=attention_mask)  # [B, T], float32
        return torch.sigmoid(values[read_mask].float())


class RLHFlowPRM(ProcessHFScorer):
    """RLHFlow PRM: a chat LM; P("+") among {"+", "-"} for its reply to each step."""

    input_format = "rlhflow-prm"

    def __init__(self, config: RLHFlowPRMConfig):
        tokenizer = load_tokenizer(config)
        _require_chat_template(tokenizer, config, "RLHFlow PRM")
        if not tokenizer.is_fast:
            raise ValueError(f"the RLHFlow format needs a fast tokenizer (tokenizer.json) in {config.model!r}")
        model = load_model(AutoModelForCausalLM, config, foreign=PRM_HEAD_PREFIXES)
        super().__init__(config, model, tokenizer)
        self.config: RLHFlowPRMConfig = config
        self.step_separator = config.step_separator
        self.good_id = single_token_id(tokenizer, config.good_token, "good_token")
        bad_id = single_token_id(tokenizer, config.bad_token, "bad_token")
        if bad_id == self.good_id:
            raise ValueError(f"good_token and bad_token are the same token (id {bad_id})")
        self.reward_token_ids = torch.tensor([self.good_id, bad_id], device=self.device)
        self._next_token_logits = NextTokenLogits(model)

    def build_input(self, prompt: str, steps: list[str]) -> PRMInput:
        return rlhflow_prm_input(self.tokenizer, prompt, steps, self.config.good_token, self.good_id)

    def read_scores(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, read_mask: torch.Tensor
    ) -> torch.Tensor:
        logits = self._next_token_logits(input_ids, attention_mask, read_mask)  # [N, vocab]
        return logits[:, self.reward_token_ids].float().softmax(dim=-1)[:, 0]

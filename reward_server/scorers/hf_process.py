"""Process reward models (PRMs) read at step-marker tokens, and the base of every HF PRM.

``ProcessHFScorer`` is what all HF process scorers share (the public families in
``public_prms`` too): steps -> the model's input with one read position per step -> one
score per step. The two generic formats here put a marker token after every step:

- ``StepTagClassifierPRM`` (a token-classification PRM such as one you trained): steps
  joined by a separator token (default ``<extra_0>``) that also ends the last step; a
  2-label token head; the step score is ``softmax(logits)[positive_label]`` at each
  separator. The model loads with ``AutoModelForTokenClassification`` (any architecture
  with a token-classification class, e.g. Qwen2/Llama with ``num_labels=2``). The released
  Qwen2.5-Math-PRM checkpoints have a head of their own: serve them with ``prm-qwen`` (or
  ``prm``), which loads them natively.
- ``StepTagCausalLMPRM`` (Math-Shepherd): a causal LM; each step is followed by a
  step tag (default ``" ки"``) and steps are joined by ``"\\n"``; the step score is
  ``P(good) / (P(good) + P(bad))`` from the next-token logits at each tag, i.e. a softmax
  over the two reward tokens (default ``"+"`` and ``"-"``).

Steps: if a sample carries spans, exactly those are scored; otherwise the response is
split on ``step_separator`` with ``reward_server.steps.split_steps`` and the spans used are
returned. The number of read positions must equal the number of steps (a step or the
prompt may contain the marker text, or the tokenizer may merge it with a neighbour);
otherwise the sample gets an error instead of scores shifted onto the wrong steps, a bug
class seen in PRM serving.
"""

from __future__ import annotations

import abc
import inspect
from dataclasses import dataclass, field

import torch
import transformers
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForTokenClassification,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from reward_server.quoting import short_repr
from reward_server.scorers.hf_common import (
    PRM_HEAD_PREFIXES,
    Encoded,
    HFModelConfig,
    HFScorer,
    encode_sample,
    load_model,
    load_tokenizer,
    single_token_id,
)
from reward_server.scorers.prm_inputs import InputFormatError, PRMInput, token_positions
from reward_server.scorers.results import INVALID_SAMPLE, error_result, step_texts
from reward_server.steps import split_steps
from reward_server.types import Result, RewardKind, Sample, StepScore


@dataclass
class StepTagClassifierConfig(HFModelConfig):
    step_separator: str = field(default="\n\n", metadata={"help": "splits responses sent without steps"})
    separator_token: str = field(default="<extra_0>", metadata={
        "help": "token after every step, where scores are read"
    })
    positive_label: int = field(default=1, metadata={"help": "label whose probability is the step score"})
    step_joiner: str = field(default="", metadata={"help": "text between a separator token and the next step"})
    prompt_separator: str = field(default="\n", metadata={"help": "text between prompt and steps (no chat template)"})
    auto_class: str = field(default="token-classification", metadata={
        "help": "'token-classification' or 'auto' (custom heads)"
    })


@dataclass
class StepTagCausalLMConfig(HFModelConfig):
    step_separator: str = field(default="\n\n", metadata={"help": "splits responses sent without steps"})
    step_tag: str = field(default=" ки", metadata={"help": "token after every step, where scores are read"})
    good_token: str = field(default="+", metadata={"help": "reward token meaning a correct step"})
    bad_token: str = field(default="-", metadata={"help": "reward token meaning a wrong step"})
    step_tag_id: int | None = field(default=None, metadata={
        "help": "token id of the tag if it is not one token alone (Math-Shepherd: 12902)"
    })
    good_token_id: int | None = field(default=None, metadata={
        "help": "token id of the good token (Math-Shepherd: 648)"
    })
    bad_token_id: int | None = field(default=None, metadata={"help": "token id of the bad token (Math-Shepherd: 387)"})
    step_joiner: str = field(default="\n", metadata={"help": "text between a step tag and the next step"})
    prompt_separator: str = field(default=" ", metadata={"help": "text between prompt and steps (no chat template)"})


class ProcessHFScorer(HFScorer):
    """What every HF process scorer shares: steps -> the model's input -> a score per step.

    A subclass says how the prompt and step texts become token ids with one read position
    per step (``build_input``) and how a padded forward becomes the scores at those
    positions (``read_scores``).
    """

    kind = RewardKind.PROCESS

    @abc.abstractmethod
    def build_input(self, prompt: str, steps: list[str]) -> PRMInput:
        """Token ids and one read position per step; raises InputFormatError for a bad sample."""

    @abc.abstractmethod
    def read_scores(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, read_mask: torch.Tensor
    ) -> torch.Tensor:
        """Step scores at the ``True`` positions of ``read_mask``, row-major, float32 ``[N]``."""

    def encode(self, sample: Sample) -> Encoded | Result:
        spans = sample.steps or split_steps(sample.response, self.step_separator)
        texts = step_texts(sample, spans)
        if isinstance(texts, Result):
            return texts
        if not spans:
            return Result(id=sample.id, metrics={"num_steps": 0.0})
        try:
            built = self.build_input(sample.prompt, texts)
        except InputFormatError as exc:
            return error_result(sample.id, INVALID_SAMPLE, f"sample {short_repr(sample.id)}: {exc}")
        assert len(built.read_positions) == len(spans), "build_input must give one position per step"
        return Encoded(built.input_ids, spans, built.read_positions)

    def forward_batch(
        self, samples: list[Sample], encoded: list[Encoded], input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> list[Result]:
        read_mask = torch.zeros_like(attention_mask, dtype=torch.bool)
        for row, enc in enumerate(encoded):
            read_mask[row, enc.read_positions] = True
        scores = self.read_scores(input_ids, attention_mask, read_mask).cpu().tolist()
        results, offset = [], 0
        for sample, enc in zip(samples, encoded, strict=True):
            row = scores[offset : offset + len(enc.spans)]
            offset += len(enc.spans)
            results.append(Result(
                id=sample.id,
                steps=[StepScore(span, score) for span, score in zip(enc.spans, row, strict=True)],
                metrics={"num_steps": float(len(enc.spans)), "num_tokens": float(len(enc.input_ids))},
            ))
        return results


class _StepMarkerPRM(ProcessHFScorer):
    """Steps joined with a marker token after each; scores read at the markers."""

    marker: str  # text placed after every step
    marker_id: int  # its token id, counted and read in the encoded input
    step_joiner: str
    prompt_separator: str

    def build_input(self, prompt: str, steps: list[str]) -> PRMInput:
        body = self.step_joiner.join(text + self.marker for text in steps)
        input_ids = encode_sample(self.tokenizer, self.config, prompt, body, self.prompt_separator)
        positions = token_positions(input_ids, self.marker_id)
        if len(positions) != len(steps):
            raise InputFormatError(
                f"{len(steps)} steps but its encoded input holds {len(positions)} "
                f"marker tokens {self.marker!r} (id {self.marker_id}); remove the marker text from "
                "the prompt/steps, or make the marker a special token so it never merges"
            )
        return PRMInput(input_ids, positions)


class StepTagClassifierPRM(_StepMarkerPRM):
    """Token-classification PRM: P(positive label) of a token head at each separator."""

    input_format = "step-tag-classifier"

    def __init__(self, config: StepTagClassifierConfig):
        classes = {"token-classification": AutoModelForTokenClassification, "auto": AutoModel}
        if config.auto_class not in classes:
            raise ValueError(f"auto_class {config.auto_class!r} is not one of {sorted(classes)}")
        model = load_model(classes[config.auto_class], config)
        super().__init__(config, model, load_tokenizer(config))
        self.config: StepTagClassifierConfig = config
        self.step_separator = config.step_separator
        self.marker = config.separator_token
        self.marker_id = single_token_id(self.tokenizer, config.separator_token, "separator_token")
        self.step_joiner = config.step_joiner
        self.prompt_separator = config.prompt_separator

    def read_scores(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, read_mask: torch.Tensor
    ) -> torch.Tensor:
        output = self.model(input_ids=input_ids, attention_mask=attention_mask)
        logits = output.logits if hasattr(output, "logits") else output[0]  # [B, T, labels]
        if not 0 <= self.config.positive_label < logits.shape[-1]:
            raise ValueError(
                f"positive_label {self.config.positive_label} is outside the model's {logits.shape[-1]} labels"
            )
        return logits[read_mask].float().softmax(dim=-1)[:, self.config.positive_label]


class StepTagCausalLMPRM(_StepMarkerPRM):
    """Math-Shepherd style PRM: P(good) among {good, bad} next tokens at each step tag."""

    input_format = "math-shepherd"

    def __init__(self, config: StepTagCausalLMConfig):
        model = load_model(AutoModelForCausalLM, config, foreign=PRM_HEAD_PREFIXES)
        super().__init__(config, model, load_tokenizer(config))
        self.config: StepTagCausalLMConfig = config
        self.step_separator = config.step_separator
        self.marker = config.step_tag
        self.marker_id = _step_tag_id(self.tokenizer, config.step_tag, config.step_tag_id)
        good = _token_id(self.tokenizer, config.good_token, config.good_token_id, "good_token")
        bad = _token_id(self.tokenizer, config.bad_token, config.bad_token_id, "bad_token")
        if good == bad:
            raise ValueError(f"good_token and bad_token are the same token (id {good})")
        self.reward_token_ids = torch.tensor([good, bad], device=self.device)
        self.step_joiner = config.step_joiner
        self.prompt_separator = config.prompt_separator
        self._next_token_logits = NextTokenLogits(model)

    def read_scores(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, read_mask: torch.Tensor
    ) -> torch.Tensor:
        logits = self._next_token_logits(input_ids, attention_mask, read_mask)  # [N, vocab]
        pair = logits[:, self.reward_token_ids].float()  # [N, 2]: good, bad
        return pair.softmax(dim=-1)[:, 0]


class NextTokenLogits:
    """A causal LM's logits at the masked positions only, ``[N, vocab]``.

    Recent transformers (those with ``modeling_utils.slice_logits_to_keep``, 5.22 on)
    project only the masked positions onto the vocabulary when given a boolean
    ``logits_to_keep``, instead of building a ``[B, T, vocab]`` tensor; older ones slice
    ``logits_to_keep`` differently, so they (and models spread over several devices) get
    the full logits, masked."""

    def __init__(self, model: PreTrainedModel):
        self.model = model
        devices = set(getattr(model, "hf_device_map", {}).values())
        self.keep_mask = (
            hasattr(transformers.modeling_utils, "slice_logits_to_keep")
            and "logits_to_keep" in inspect.signature(model.forward).parameters
            and len(devices) <= 1
        )

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.keep_mask:
            logits = self.model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=mask).logits
            if logits.dim() == 2 and logits.shape[0] == int(mask.sum()):
                return logits
            self.keep_mask = False  # this model slices logits_to_keep its own way
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits
        return logits[mask.to(logits.device)]


def _step_tag_id(tokenizer: PreTrainedTokenizerBase, tag: str, override: int | None) -> int:
    """The tag's token as it appears in running text after a step.

    SentencePiece tokenizers (Mistral, Llama 2: Math-Shepherd's) prepend "▁" to the text
    they encode, so " ки" alone encodes as "▁" + "▁ки" while "step ки" holds "▁ки": that is
    the token of the tag without its leading space, the id Math-Shepherd reads (12902)."""
    if override is not None or len(tokenizer.encode(tag, add_special_tokens=False)) == 1 or tag == tag.lstrip():
        return _token_id(tokenizer, tag, override, "step_tag")
    return _token_id(tokenizer, tag.lstrip(), None, "step_tag (without its leading space)")


def _token_id(tokenizer: PreTrainedTokenizerBase, text: str, override: int | None, what: str) -> int:
    if override is None:
        return single_token_id(tokenizer, text, what)
    if not 0 <= override < len(tokenizer):
        raise ValueError(f"{what}_id {override} is outside the tokenizer's vocabulary of {len(tokenizer)}")
    return override

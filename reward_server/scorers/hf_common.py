"""Plumbing shared by the Hugging Face scorers: config, loading, text format, batching.

How a sample becomes model input (the same rule for every HF scorer, so a score never
depends on which batch a sample landed in):

- ``chat_template=False`` (default): ``text = prompt + prompt_separator + body``, tokenized
  with the tokenizer's special tokens (e.g. BOS) added.
- ``chat_template=True``: the tokenizer's chat template renders an optional system
  message, ``prompt`` as the user turn and ``body`` as the assistant turn; the rendered
  string already holds its special tokens, so none are added when tokenizing.

``body`` is the response (outcome models) or the steps joined with their markers (PRMs).
Sequences are padded on the right: with causal attention the real tokens then keep the
positions and attention they would have alone, so a padded batch equals per-sample
forwards. Samples longer than ``max_length`` get a per-sample error, never silent
truncation (truncating a PRM input would drop steps).
"""

from __future__ import annotations

import abc
import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from safetensors import SafetensorError
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from reward_server.quoting import short_repr
from reward_server.scorers.base import Scorer
from reward_server.scorers.results import INVALID_SAMPLE, error_result
from reward_server.types import Result, Sample, Span

logger = logging.getLogger(__name__)


@dataclass
class HFServingConfig:
    """How any Hugging Face scorer loads its model and sizes its forwards."""

    model: str = field(metadata={"help": "path (or hub id) of a save_pretrained directory"})
    device: str = field(default="auto", metadata={"help": "'auto' (cuda if available), 'cpu', 'cuda', 'cuda:1', ..."})
    device_map: str | None = field(default=None, metadata={
        "help": "spread a big model over devices ('auto', 'balanced', ...: accelerate's device_map); overrides device"
    })
    dtype: str = field(default="auto", metadata={
        "help": "'auto' (the checkpoint's dtype, e.g. bfloat16), 'float32', 'bfloat16' or 'float16'"
    })
    max_batch_tokens: int = field(default=8192, metadata={"help": "padded tokens per model forward (memory bound)"})
    max_batch_samples: int = field(default=64, metadata={"help": "samples per model forward"})
    max_length: int | None = field(default=None, metadata={
        "help": "longest input in tokens; default: the model's max_position_embeddings"
    })
    trust_remote_code: bool = field(default=False, metadata={
        "help": "allow custom code shipped with the checkpoint (never needed by rpp's native PRM loaders)"
    })
    model_name: str | None = field(default=None, metadata={"help": "name reported in GetInfo; default: the model path"})

    def __post_init__(self) -> None:
        if self.max_batch_tokens < 1 or self.max_batch_samples < 1:
            raise ValueError("max_batch_tokens and max_batch_samples must be >= 1")
        if self.max_length is not None and self.max_length < 1:
            raise ValueError(f"max_length must be >= 1 (got {self.max_length}) or None for the model's limit")


@dataclass
class HFModelConfig(HFServingConfig):
    """Options of the scorers whose input text is ``prompt + separator + body`` or a chat."""

    chat_template: bool = field(default=False, metadata={
        "help": "render prompt/response with the tokenizer's chat template"
    })
    system_prompt: str | None = field(default=None, metadata={"help": "system message for the chat template"})


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_tokenizer(config: HFServingConfig) -> PreTrainedTokenizerBase:
    try:
        tokenizer = AutoTokenizer.from_pretrained(config.model, trust_remote_code=config.trust_remote_code)
    except (OSError, ValueError) as exc:
        raise ValueError(
            f"could not load a tokenizer from {config.model!r}: {str(exc).rstrip('.')}. "
            "Pass --model a directory written by save_pretrained that holds the tokenizer files."
        ) from exc
    if isinstance(config, HFModelConfig) and config.chat_template and not tokenizer.chat_template:
        raise ValueError(f"chat_template=True but the tokenizer in {config.model!r} has no chat template")
    return tokenizer


def from_pretrained_kwargs(config: HFServingConfig) -> dict[str, Any]:
    """dtype and placement arguments for ``from_pretrained``, from the scorer options."""
    if config.dtype != "auto" and config.dtype not in _DTYPES:
        raise ValueError(f"dtype {config.dtype!r} is not one of 'auto', {', '.join(map(repr, _DTYPES))}")
    kwargs: dict[str, Any] = {"dtype": _DTYPES.get(config.dtype, "auto")}
    if config.device_map is not None:
        kwargs["device_map"] = config.device_map  # accelerate places (and may shard) the weights
    return kwargs


def place(model: PreTrainedModel, config: HFServingConfig) -> PreTrainedModel:
    """The loaded model on its device (unless a device_map placed it), in eval mode."""
    if config.device_map is None:
        model = model.to(resolve_device(config.device))
    return model.eval()


# Weights of a PRM head that an LM class would silently drop: the checkpoint is another
# format (Skywork's value head, Qwen2.5-Math-PRM's score MLP).
PRM_HEAD_PREFIXES = ("v_head.", "score.")


def load_model(auto_class: Any, config: HFServingConfig, foreign: tuple[str, ...] = ()) -> PreTrainedModel:
    """Load ``config.model`` with ``auto_class`` (an ``AutoModelFor...``), in eval mode on its device.

    Refuses a checkpoint with missing or mis-shaped weights (transformers would fill them
    with random values and only log it), or with unexpected weights under ``foreign``."""
    kwargs = from_pretrained_kwargs(config)
    try:
        model, info = auto_class.from_pretrained(
            config.model, trust_remote_code=config.trust_remote_code, output_loading_info=True,
            ignore_mismatched_sizes=True, **kwargs,
        )
    except (OSError, ValueError, SafetensorError) as exc:
        raise ValueError(
            f"could not load {auto_class.__name__} from {config.model!r}: {str(exc).rstrip('.')}. "
            "Pass --model a directory written by save_pretrained (config.json + weights)."
        ) from exc
    check_loading_info(info, config.model, type(model).__name__, foreign)
    return place(model, config)


def check_loading_info(info: dict, path: str, class_name: str, foreign: tuple[str, ...] = (), hint: str = "") -> None:
    """Raise naming the missing, mis-shaped and ``foreign`` unexpected weights, if any."""
    problems = []
    if info["missing_keys"]:
        problems.append(f"missing {_key_list(info['missing_keys'])}")
    unexpected = [k for k in info["unexpected_keys"] if k.startswith(foreign)] if foreign else []
    if unexpected:
        problems.append(f"unexpected {_key_list(unexpected)}")
    if info["mismatched_keys"]:
        shapes = [f"{key} (checkpoint {tuple(ckpt)}, expected {tuple(want)})"
                  for key, ckpt, want in sorted(info["mismatched_keys"])]
        problems.append("mis-shaped " + ", ".join(shapes[:8]))
    if problems:
        raise ValueError(
            f"{path!r} does not hold {class_name} weights: {'; '.join(problems)}." + (f" {hint}" if hint else
            " Check --model, and the scorer or format (--option format=...) for this checkpoint.")
        )


def _key_list(keys: object) -> str:
    names = sorted(keys)  # type: ignore[call-overload]
    return f"{len(names)} weight(s): " + ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")


def max_input_length(model: PreTrainedModel, config: HFServingConfig) -> int:
    """The longest input the scorer accepts: the configured limit, else the model's."""
    if config.max_length is not None:
        return config.max_length
    limit = getattr(model.config.get_text_config(), "max_position_embeddings", None)
    if limit is None:
        raise ValueError(
            f"the model in {config.model!r} does not state max_position_embeddings; pass max_length"
        )
    return int(limit)


def single_token_id(tokenizer: PreTrainedTokenizerBase, text: str, what: str) -> int:
    """The id of ``text`` if the tokenizer encodes it as exactly one token, else a clear error."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) != 1:
        raise ValueError(
            f"{what} {text!r} encodes to {len(ids)} tokens {ids}, not one; use a token of the "
            f"model's vocabulary or add {text!r} to the tokenizer as a special token"
        )
    return ids[0]


def encode_sample(
    tokenizer: PreTrainedTokenizerBase,
    config: HFModelConfig,
    prompt: str,
    body: str,
    prompt_separator: str,
) -> list[int]:
    """Token ids of one sample, formatted as the module docstring says."""
    if not config.chat_template:
        return tokenizer.encode(prompt + prompt_separator + body, add_special_tokens=True)
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": body}]
    if config.system_prompt is not None:
        messages.insert(0, {"role": "system", "content": config.system_prompt})
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    return tokenizer.encode(text, add_special_tokens=False)


def plan_micro_batches(lengths: list[int], max_tokens: int, max_samples: int) -> list[list[int]]:
    """Group sample indices into forwards of at most ``max_samples`` samples whose padded
    size (``len(batch) * longest``) stays within ``max_tokens``.

    Samples are taken longest first so similar lengths share a batch (little padding).
    A sample longer than ``max_tokens`` alone still gets a batch of its own.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        # Longest first, so the first member of ``current`` sets its padded width.
        width = lengths[current[0]] if current else lengths[i]
        if current and (len(current) >= max_samples or (len(current) + 1) * width > max_tokens):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def pad_right(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token id lists to ``(input_ids, attention_mask)``, both ``[B, T]`` long tensors."""
    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        input_ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        attention_mask[row, : len(seq)] = 1
    return input_ids, attention_mask


def pad_token_id(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> int:
    """The id used for padding: the model's, else the tokenizer's pad, else its EOS.

    It is also written into the model config, which sequence-classification heads read
    to find the last real token of each row.
    """
    text_config = model.config.get_text_config()
    pad = text_config.pad_token_id
    if pad is None:
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if pad is None:
            raise ValueError("neither the model nor the tokenizer defines a pad or EOS token; add a pad token")
        logger.warning("model config has no pad_token_id; using %d from the tokenizer", pad)
        text_config.pad_token_id = pad
    return int(pad)


@dataclass
class Encoded:
    """One sample ready for the model: its token ids and, for PRMs, the step spans scored
    and the token index at which each step's score is read (same order, same length)."""

    input_ids: list[int]
    spans: list[Span] = field(default_factory=list)
    read_positions: list[int] = field(default_factory=list)


class HFScorer(Scorer):
    """Batch loop shared by the HF scorers: encode each sample, micro-batch, forward, read.

    Subclasses say how a sample is encoded (``encode``) and how a padded forward becomes
    results (``forward_batch``). The whole loop runs in a worker thread so the server's
    event loop keeps serving while the model computes.

    ``cost`` stays the default UTF-8 byte count: every token covers at least one byte, so
    the server's batch budget in bytes is a safe bound on tokens, and it needs no
    tokenization on the event loop (which would tokenize every sample twice). The exact
    budget, padded tokens per forward, is applied here (``max_batch_tokens``).
    """
    blocking = False  # the forward runs in asyncio.to_thread

    def __init__(self, config: HFServingConfig, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase):
        self.config = config
        self.model = model
        self.tokenizer = tokenizer
        self.model_name = config.model_name or config.model
        # Where inputs go: the embedding's device (the first one when a device_map spread the model).
        self.device = model.get_input_embeddings().weight.device
        self.max_length = max_input_length(model, config)
        self.pad_id = pad_token_id(model, tokenizer)

    @abc.abstractmethod
    def encode(self, sample: Sample) -> Encoded | Result:
        """Token ids for ``sample``, or a finished Result (a per-sample error, or no steps)."""

    @abc.abstractmethod
    def forward_batch(
        self, samples: list[Sample], encoded: list[Encoded], input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> list[Result]:
        """Run the model on one right-padded micro-batch and return one Result per row."""

    async def score(self, samples: list[Sample]) -> list[Result]:
        return await asyncio.to_thread(self.score_sync, samples)

    def score_sync(self, samples: list[Sample]) -> list[Result]:
        """Blocking version of ``score`` (what ``score`` runs in a thread)."""
        results: list[Result | None] = [None] * len(samples)
        ready: dict[int, Encoded] = {}
        for i, sample in enumerate(samples):
            encoded = self.encode(sample)
            if isinstance(encoded, Result):
                results[i] = encoded
            elif len(encoded.input_ids) > self.max_length:
                results[i] = error_result(
                    sample.id, INVALID_SAMPLE,
                    f"sample {short_repr(sample.id)} is {len(encoded.input_ids)} tokens, over the scorer's "
                    f"max_length {self.max_length}; shorten prompt/response or raise max_length",
                )
            else:
                ready[i] = encoded
        indices = list(ready)
        lengths = [len(ready[i].input_ids) for i in indices]
        for batch in plan_micro_batches(lengths, self.config.max_batch_tokens, self.config.max_batch_samples):
            rows = [indices[b] for b in batch]
            input_ids, attention_mask = pad_right([ready[i].input_ids for i in rows], self.pad_id)
            with torch.inference_mode():
                batch_results = self.forward_batch(
                    [samples[i] for i in rows],
                    [ready[i] for i in rows],
                    input_ids.to(self.device),
                    attention_mask.to(self.device),
                )
            for i, result in zip(rows, batch_results, strict=True):
                results[i] = result
        assert all(r is not None for r in results)
        return results  # type: ignore[return-value]

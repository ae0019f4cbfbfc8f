"""``--scorer prm``: read a PRM checkpoint's config.json, weights and tokenizer; serve it in its format.

The rules, first match wins (``detect_prm_format``):

1. ``architectures`` or ``auto_map`` names ``Qwen2ForProcessRewardModel`` -> qwen2.5-math-prm
2. ``architectures`` names ``Qwen2ForPrmModel``                          -> skywork-o1-prm
3. the weights hold ``v_head.summary.*`` (whatever the config says)       -> skywork-o1-prm
4. the weights hold ``score.0.*`` and ``score.2.*``                       -> qwen2.5-math-prm
5. a ``...ForTokenClassification`` architecture                           -> step-tag-classifier
6. a ``...ForCausalLM`` with a Llama 3 chat template (``<|eot_id|>``)     -> rlhflow-prm
7. a ``...ForCausalLM`` without a chat template whose tokenizer has the
   step tag ``ки`` as one token                                           -> math-shepherd

Anything else (a chat model of another family, which may be a policy passed by mistake)
is refused with the list of formats. The choice and its reason are logged;
``--option format=NAME`` (or the family's own ``--scorer``) overrides it. Every other
option goes to the chosen family's scorer.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open
from transformers import AutoTokenizer, PretrainedConfig

from reward_server.scorers.base import Scorer

log = logging.getLogger(__name__)

# Format name (what GetInfo reports) -> the registered scorer that serves it.
FORMAT_SCORERS = {
    "qwen2.5-math-prm": "prm-qwen",
    "skywork-o1-prm": "prm-skywork",
    "rlhflow-prm": "prm-rlhflow",
    "math-shepherd": "prm-causal",
    "step-tag-classifier": "prm-classifier",
}


@dataclass
class AutoPRMConfig:
    """The options ``prm`` reads itself; all others go to the chosen family's scorer."""

    model: str = field(metadata={"help": "path (or hub id) of the PRM checkpoint"})
    format: str = field(default="auto", metadata={"help": f"'auto' or one of {', '.join(FORMAT_SCORERS)}"})


def detect_prm_format(model: str) -> tuple[str, str]:
    """The format of the checkpoint at ``model`` and why, from its config.json, weights and tokenizer."""
    try:
        config, _ = PretrainedConfig.get_config_dict(model)
    except (OSError, ValueError) as exc:
        raise ValueError(f"--scorer prm: could not read config.json from {model!r}: {exc}") from exc
    architectures = list(config.get("architectures") or [])
    named = architectures[0] if architectures else "no architecture"
    auto_model = str((config.get("auto_map") or {}).get("AutoModel", ""))
    if "Qwen2ForProcessRewardModel" in architectures or auto_model.endswith("Qwen2ForProcessRewardModel"):
        return "qwen2.5-math-prm", "config.json names Qwen2ForProcessRewardModel (Qwen2.5-Math-PRM)"
    if "Qwen2ForPrmModel" in architectures:
        return "skywork-o1-prm", "config.json names Qwen2ForPrmModel (Skywork-o1-Open-PRM)"
    weights = weight_names(model)
    if "v_head.summary.weight" in weights:
        return "skywork-o1-prm", f"its weights hold v_head.summary (Skywork's value head); config.json names {named}"
    if {"score.0.weight", "score.2.weight"} <= weights:
        return "qwen2.5-math-prm", (
            f"its weights hold score.0/score.2 (Qwen2.5-Math-PRM's head); config.json names {named}"
        )
    if any(a.endswith("ForTokenClassification") for a in architectures):
        return "step-tag-classifier", f"config.json names {named}, a token-classification head"
    if any(a.endswith("ForCausalLM") for a in architectures):
        try:
            tokenizer = AutoTokenizer.from_pretrained(model)
        except (OSError, ValueError) as exc:
            raise ValueError(f"--scorer prm: could not load the tokenizer of {model!r}: {exc}") from exc
        if tokenizer.chat_template and "<|eot_id|>" in tokenizer.get_vocab():
            return "rlhflow-prm", f"a causal LM ({named}) with a Llama 3 chat template: RLHFlow's multi-turn format"
        if not tokenizer.chat_template and len(tokenizer.encode("ки", add_special_tokens=False)) == 1:
            return "math-shepherd", f"a causal LM ({named}) without a chat template, with the step tag 'ки'"
    raise ValueError(
        f"--scorer prm: {model!r} ({named}, model_type {config.get('model_type')!r}) matches no PRM "
        "format rpp knows: Qwen2ForProcessRewardModel or score.0/score.2 weights (Qwen2.5-Math-PRM), "
        "Qwen2ForPrmModel or v_head weights (Skywork), ...ForTokenClassification (step-tag classifier), "
        "a causal LM with a Llama 3 chat template (RLHFlow) or with the step tag 'ки' and no chat template "
        f"(Math-Shepherd). Is it a policy rather than a PRM? Name the format with --option format=NAME "
        f"({', '.join(FORMAT_SCORERS)})"
    )


def weight_names(model: str) -> set[str]:
    """The weight names of a local safetensors checkpoint (its index, or its one file's
    header); empty for anything else, which then falls to the config's architecture."""
    path = Path(model)
    index = path / "model.safetensors.index.json"
    if index.is_file():
        return set(json.loads(index.read_text()).get("weight_map", {}))
    single = path / "model.safetensors"
    if single.is_file():
        try:
            with safe_open(str(single), framework="pt") as f:
                return set(f.keys())
        except SafetensorError as exc:
            raise ValueError(f"--scorer prm: {str(single)!r} is not a readable safetensors file: {exc}") from exc
    return set()


def build_auto_prm(model: str, format: str = "auto", **options: Any) -> Scorer:  # noqa: A002 (the option's name)
    """Build the scorer for ``model``'s format (detected unless ``format`` names one)."""
    from reward_server.scorers.registry import build_scorer

    if format == "auto":
        format, reason = detect_prm_format(model)
        log.info("--scorer prm: %s is %s, because %s; serving it with --scorer %s",
                 model, format, reason, FORMAT_SCORERS[format])
    elif format in FORMAT_SCORERS.values():
        format = next(f for f, s in FORMAT_SCORERS.items() if s == format)
    elif format not in FORMAT_SCORERS:
        raise ValueError(f"--scorer prm: format {format!r} is not 'auto' or one of {', '.join(FORMAT_SCORERS)}")
    return build_scorer(FORMAT_SCORERS[format], model=model, **options)

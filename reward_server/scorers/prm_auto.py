"""``--scorer prm``: read a PRM checkpoint's config.json and tokenizer, serve it in its format.

The rules, first match wins (``detect_prm_format``):

1. ``architectures`` or ``auto_map`` names ``Qwen2ForProcessRewardModel`` -> qwen2.5-math-prm
2. ``architectures`` names ``Qwen2ForPrmModel``                          -> skywork-o1-prm
3. a ``...ForTokenClassification`` architecture                           -> step-tag-classifier
4. a ``...ForCausalLM`` architecture whose tokenizer has a chat template  -> rlhflow-prm
5. a ``...ForCausalLM`` architecture without one (Math-Shepherd)          -> math-shepherd

The choice and its reason are logged; ``--option format=NAME`` (or the family's own
``--scorer``) overrides it. Every other option goes to the chosen family's scorer.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

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
    """The format of the checkpoint at ``model`` and why, from its config.json and tokenizer."""
    try:
        config, _ = PretrainedConfig.get_config_dict(model)
    except (OSError, ValueError) as exc:
        raise ValueError(f"--scorer prm: could not read config.json from {model!r}: {exc}") from exc
    architectures = list(config.get("architectures") or [])
    auto_model = str((config.get("auto_map") or {}).get("AutoModel", ""))
    if "Qwen2ForProcessRewardModel" in architectures or auto_model.endswith("Qwen2ForProcessRewardModel"):
        return "qwen2.5-math-prm", "config.json names Qwen2ForProcessRewardModel (Qwen2.5-Math-PRM)"
    if "Qwen2ForPrmModel" in architectures:
        return "skywork-o1-prm", "config.json names Qwen2ForPrmModel (Skywork-o1-Open-PRM)"
    if any(a.endswith("ForTokenClassification") for a in architectures):
        return "step-tag-classifier", f"config.json names {architectures[0]}, a token-classification head"
    if any(a.endswith("ForCausalLM") for a in architectures):
        try:
            tokenizer = AutoTokenizer.from_pretrained(model)
        except (OSError, ValueError) as exc:
            raise ValueError(f"--scorer prm: could not load the tokenizer of {model!r}: {exc}") from exc
        if tokenizer.chat_template:
            return "rlhflow-prm", f"a causal LM ({architectures[0]}) with a chat template: RLHFlow's multi-turn format"
        return "math-shepherd", f"a causal LM ({architectures[0]}) without a chat template: Math-Shepherd's step tags"
    raise ValueError(
        f"--scorer prm: {model!r} has architectures {architectures or 'none'} (model_type "
        f"{config.get('model_type')!r}), which is no PRM format rpp knows. Known: Qwen2ForProcessRewardModel "
        "(Qwen2.5-Math-PRM), Qwen2ForPrmModel (Skywork), ...ForTokenClassification (step-tag classifier), "
        "...ForCausalLM (RLHFlow with a chat template, Math-Shepherd without). Pick one with "
        f"--option format=NAME ({', '.join(FORMAT_SCORERS)})"
    )


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

"""Scorers by name, built from keyword options: what ``rpp-reward-server --scorer NAME`` calls.

    build_scorer("hf-outcome", model="path/to/rm", max_batch_tokens=4096)
    build_scorer("math-answer", correct_score=1.0, incorrect_score=-1.0)
    build_scorer("user", function="my_rewards.py:length_penalty", kind="outcome")

Each scorer's options are the fields of its config dataclass; ``describe_scorers()``
prints them with defaults and help. Option values may be strings (from a command line):
they are converted to the field's type. Scorer modules are imported only when built, so
``math-answer`` or ``user`` never import torch.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import types
import typing
from dataclasses import dataclass
from typing import Any

from reward_server.scorers.base import Scorer


@dataclass(frozen=True)
class _Entry:
    module: str
    scorer_class: str  # a Scorer class (or one with ``from_config``); a function if ``dispatch``
    config_class: str
    summary: str
    # The scorer is a function that takes the options itself and builds another scorer
    # (``prm`` picks a PRM family); only its own config's options are checked here.
    dispatch: bool = False


SCORERS: dict[str, _Entry] = {
    "hf-outcome": _Entry(
        "reward_server.scorers.hf_outcome", "HFOutcomeScorer", "HFOutcomeConfig",
        "outcome reward model: the logit of a 1-label AutoModelForSequenceClassification",
    ),
    "prm": _Entry(
        "reward_server.scorers.prm_auto", "build_auto_prm", "AutoPRMConfig",
        "process reward from any public PRM checkpoint: picks its format from config.json and the "
        "tokenizer (logged), then takes that format's options",
        dispatch=True,
    ),
    "prm-qwen": _Entry(
        "reward_server.scorers.public_prms", "QwenMathPRM", "QwenMathPRMConfig",
        "process reward, Qwen2.5-Math-PRM (loaded natively): P(label 1) at each <extra_0> of its chat",
    ),
    "prm-skywork": _Entry(
        "reward_server.scorers.public_prms", "SkyworkPRM", "SkyworkPRMConfig",
        "process reward, Skywork-o1-Open-PRM (loaded natively): sigmoid(value head) at each step token",
    ),
    "prm-rlhflow": _Entry(
        "reward_server.scorers.public_prms", "RLHFlowPRM", "RLHFlowPRMConfig",
        "process reward, RLHFlow Llama3.1-8B-PRM: P('+') of the assistant's reply to each step",
    ),
    "prm-classifier": _Entry(
        "reward_server.scorers.hf_process", "StepTagClassifierPRM", "StepTagClassifierConfig",
        "process reward, a token-classification PRM: P(label 1) of its head at each separator token",
    ),
    "prm-causal": _Entry(
        "reward_server.scorers.hf_process", "StepTagCausalLMPRM", "StepTagCausalLMConfig",
        "process reward, Math-Shepherd style: P('+') among {'+', '-'} of a causal LM at each step tag",
    ),
    "math-answer": _Entry(
        "reward_server.scorers.math_answer", "MathAnswerScorer", "MathAnswerConfig",
        "outcome reward: the response's final answer checked against `reference` with math-verify",
    ),
    "user": _Entry(
        "reward_server.scorers.user_function", "UserFunctionScorer", "UserFunctionConfig",
        "outcome or process reward from your Python function (module:function or file.py:function)",
    ),
}


# Other names the command line accepts for a scorer.
ALIASES = {"function": "user"}


def build_scorer(name: str, **options: Any) -> Scorer:
    """Build the scorer registered as ``name`` from its options (see ``describe_scorers``)."""
    entry = _entry(name)
    module = importlib.import_module(entry.module)
    if entry.dispatch:
        own = {f.name for f in dataclasses.fields(getattr(module, entry.config_class))}
        config = _make_config(name, getattr(module, entry.config_class), {k: v for k, v in options.items() if k in own})
        rest = {k: v for k, v in options.items() if k not in own}
        return getattr(module, entry.scorer_class)(**dataclasses.asdict(config), **rest)
    config = _make_config(name, getattr(module, entry.config_class), options)
    scorer_class = getattr(module, entry.scorer_class)
    return getattr(scorer_class, "from_config", scorer_class)(config)


def scorer_options(name: str) -> dict[str, Any]:
    """Option name -> default (``dataclasses.MISSING`` for required options) of scorer ``name``."""
    entry = _entry(name)
    config_class = getattr(importlib.import_module(entry.module), entry.config_class)
    return {f.name: f.default for f in dataclasses.fields(config_class)}


def describe_scorers(name: str | None = None) -> str:
    """Human-readable list of scorers and their options, for ``--help``-style output."""
    lines: list[str] = []
    for scorer_name in [name] if name is not None else SCORERS:
        entry = _entry(scorer_name)
        config_class = getattr(importlib.import_module(entry.module), entry.config_class)
        hints = typing.get_type_hints(config_class)
        lines.append(f"{scorer_name}: {entry.summary}")
        for f in dataclasses.fields(config_class):
            default = "required" if f.default is dataclasses.MISSING else f"default {f.default!r}"
            lines.append(f"    {f.name} ({_type_name(hints[f.name])}, {default}): {f.metadata.get('help', '')}")
        if entry.dispatch:
            lines.append("    ... and the options of the scorer it picks")
    return "\n".join(lines)


def _entry(name: str) -> _Entry:
    name = ALIASES.get(name, name)
    if name not in SCORERS:
        raise ValueError(f"unknown scorer {name!r}; valid scorers: {', '.join(SCORERS)}")
    return SCORERS[name]


def _make_config(name: str, config_class: type, options: dict[str, Any]) -> Any:
    fields = {f.name: f for f in dataclasses.fields(config_class)}
    unknown = sorted(set(options) - set(fields))
    if unknown:
        raise ValueError(
            f"unknown option(s) {', '.join(map(repr, unknown))} for scorer {name!r}; "
            f"valid options: {', '.join(fields)}"
        )
    missing = [n for n, f in fields.items() if f.default is dataclasses.MISSING and n not in options]
    if missing:
        raise ValueError(f"scorer {name!r} needs option(s) {', '.join(map(repr, missing))}")
    hints = typing.get_type_hints(config_class)
    values = {key: _coerce(value, hints[key], name, key) for key, value in options.items()}
    return config_class(**values)


def _coerce(value: Any, hint: Any, scorer: str, option: str) -> Any:
    """Convert a command-line string to the option's type; a typed value is checked against it."""
    if not isinstance(value, str):
        return _checked(value, hint, scorer, option)
    allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if type(None) in allowed and value.strip().lower() in ("none", "null"):
        return None
    base = next(t for t in allowed if t is not type(None))
    try:
        if base is bool:
            if value.strip().lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(value)
            return value.strip().lower() in ("true", "1", "yes")
        return base(value)
    except ValueError:
        raise ValueError(
            f"option {option!r} of scorer {scorer!r} must be {_type_name(hint)}, got {value!r}"
        ) from None


def _checked(value: Any, hint: Any, scorer: str, option: str) -> Any:
    """A typed value (JSON from ``--option``, or Python) for a bool, int, float or str option:
    refused when it cannot be one; a number or bool for a str option is its JSON text."""
    allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None and type(None) in allowed:
        return None
    base = next(t for t in allowed if t is not type(None))
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if base is bool and (isinstance(value, bool) or value in (0, 1)):
        return bool(value)  # JSON 1 and 0, as the text "1" and "0" are read
    if base is int and number and isinstance(value, int):
        return value
    if base is float and number:
        return float(value)
    if base is str and (number or isinstance(value, bool)):
        return json.dumps(value)  # --option model_name=7 means the text "7"
    if base is str and isinstance(value, os.PathLike):
        return os.fspath(value)
    if base in (bool, int, float, str):
        raise ValueError(f"option {option!r} of scorer {scorer!r} must be {_type_name(hint)}, got {value!r}")
    return value


def _type_name(hint: Any) -> str:
    if isinstance(hint, types.UnionType):
        return " | ".join(_type_name(t) for t in typing.get_args(hint))
    return "None" if hint is type(None) else getattr(hint, "__name__", str(hint))

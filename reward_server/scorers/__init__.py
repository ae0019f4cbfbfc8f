"""Reward backends behind the ``Scorer`` interface, and the registry that builds them by name.

The scorer classes are imported lazily (PEP 562) so that importing this package, e.g.
in the math checker's worker processes or for a user function, never loads torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from reward_server.scorers.base import Scorer
from reward_server.scorers.registry import SCORERS, build_scorer, describe_scorers, scorer_options

_LAZY = {
    "HFOutcomeScorer": "reward_server.scorers.hf_outcome",
    "HFOutcomeConfig": "reward_server.scorers.hf_outcome",
    "StepTagClassifierPRM": "reward_server.scorers.hf_process",
    "StepTagClassifierConfig": "reward_server.scorers.hf_process",
    "StepTagCausalLMPRM": "reward_server.scorers.hf_process",
    "StepTagCausalLMConfig": "reward_server.scorers.hf_process",
    "MathAnswerScorer": "reward_server.scorers.math_answer",
    "MathAnswerConfig": "reward_server.scorers.math_answer",
    "UserFunctionScorer": "reward_server.scorers.user_function",
    "UserFunctionConfig": "reward_server.scorers.user_function",
}

__all__ = ["SCORERS", "Scorer", "build_scorer", "describe_scorers", "scorer_options", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

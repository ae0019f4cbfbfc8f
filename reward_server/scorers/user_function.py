"""A reward written as a plain Python function, served as an outcome or process scorer.

``spec`` names the function: ``"package.module:function"`` (imported from ``sys.path``)
or ``"path/to/file.py:function"``. Signatures:

- outcome: ``f(sample: Sample) -> float``
- process: ``f(sample: Sample, steps: list[str]) -> list[float]``, one score per step
  text; steps are the sample's spans, or the response split on ``step_separator``.

The function may be ``async def`` (awaited on the event loop, so it must not block) or a
plain ``def`` (run in a worker thread, so it may block on I/O). Samples of a batch are
scored concurrently. An exception, a non-number, a bool, NaN or infinity, or a wrong
number of step scores becomes a per-sample error naming the sample and the function.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import inspect
import math
import numbers
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reward_server.scorers.base import Scorer
from reward_server.scorers.results import BAD_SCORE, SCORER_FAILED, error_result, step_texts
from reward_server.steps import split_steps
from reward_server.types import Result, RewardKind, Sample, StepScore


@dataclass
class UserFunctionConfig:
    function: str = field(metadata={"help": "'package.module:function' or 'path/to/file.py:function'"})
    kind: str = field(default="outcome", metadata={"help": "'outcome' (returns a float) or 'process' (a float per step)"})
    step_separator: str = field(default="\n\n", metadata={"help": "splits responses sent without steps (process)"})


def load_function(spec: str) -> Callable[..., Any]:
    """Import the callable named by ``spec``; raises ValueError saying what is wrong."""
    location, sep, name = spec.rpartition(":")
    if not sep or not location or not name:
        raise ValueError(f"user function spec {spec!r} must look like 'module:function' or 'file.py:function'")
    if location.endswith(".py"):
        path = Path(location).expanduser().resolve()
        if not path.is_file():
            raise ValueError(f"user function file {str(path)!r} (from spec {spec!r}) does not exist")
        module_spec = importlib.util.spec_from_file_location(f"rpp_user_reward_{path.stem}", path)
        module = importlib.util.module_from_spec(module_spec)
        # Registered before running, as importlib's recipe does, so dataclasses and pickle
        # inside the user's file can find their own module.
        sys.modules[module_spec.name] = module
        try:
            module_spec.loader.exec_module(module)
        except Exception as exc:
            del sys.modules[module_spec.name]
            raise ValueError(f"importing {str(path)!r} for user function {spec!r} failed: {exc!r}") from exc
    else:
        try:
            module = importlib.import_module(location)
        except Exception as exc:
            raise ValueError(
                f"cannot import module {location!r} for user function {spec!r}: {exc!r}; "
                "check the name and that it is on PYTHONPATH, or give a path to a .py file"
            ) from exc
    function = getattr(module, name, None)
    if not callable(function):
        raise ValueError(f"{location!r} has no callable named {name!r} (user function spec {spec!r})")
    return function


def _as_score(value: Any) -> float | None:
    """``value`` as a finite float, or None if it is not a finite real number (bools are not)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


class UserFunctionScorer(Scorer):
    """Outcome or process reward computed by a user's Python function (sync or async)."""
    blocking = False  # sync functions run in a thread; async ones must not block

    def __init__(self, spec: str, kind: RewardKind | str = RewardKind.OUTCOME, step_separator: str = "\n\n"):
        try:
            self.kind = kind if isinstance(kind, RewardKind) else RewardKind(kind)
        except ValueError:
            raise ValueError(f"kind {kind!r} is not one of 'outcome', 'process'") from None
        if not step_separator:
            raise ValueError("step_separator must be a non-empty string")
        self.function = function = load_function(spec)
        self.spec = spec
        self.model_name = spec
        self.step_separator = step_separator
        self._is_async = inspect.iscoroutinefunction(function) or inspect.iscoroutinefunction(
            type(function).__call__  # an instance with ``async def __call__``
        )

    @classmethod
    def from_config(cls, config: UserFunctionConfig) -> UserFunctionScorer:
        return cls(config.function, config.kind, config.step_separator)

    async def score(self, samples: list[Sample]) -> list[Result]:
        return list(await asyncio.gather(*(self._score_one(s) for s in samples)))

    async def _score_one(self, sample: Sample) -> Result:
        if self.kind is RewardKind.PROCESS:
            spans = sample.steps or split_steps(sample.response, self.step_separator)
            texts = step_texts(sample, spans)
            if isinstance(texts, Result):
                return texts
            args: tuple = (sample, texts)
        else:
            args = (sample,)
        try:
            if self._is_async:
                value = await self.function(*args)
            else:
                value = await asyncio.to_thread(self.function, *args)
                if inspect.isawaitable(value):  # e.g. a functools.partial of an async function
                    value = await value
        except Exception as exc:  # noqa: BLE001 - the user's bug is reported per sample
            return error_result(sample.id, SCORER_FAILED, f"sample {sample.id!r}: user function {self.spec!r} raised {exc!r}")
        if self.kind is RewardKind.OUTCOME:
            return self._outcome_result(sample, value)
        return self._process_result(sample, spans, value)

    def _outcome_result(self, sample: Sample, value: Any) -> Result:
        score = _as_score(value)
        if score is None:
            return error_result(
                sample.id, BAD_SCORE,
                f"sample {sample.id!r}: user function {self.spec!r} returned {value!r}; an outcome "
                "function must return one finite number",
            )
        return Result(id=sample.id, outcome=score)

    def _process_result(self, sample: Sample, spans: list, value: Any) -> Result:
        if isinstance(value, str | bytes) or not isinstance(value, list | tuple):
            return error_result(
                sample.id, BAD_SCORE,
                f"sample {sample.id!r}: user function {self.spec!r} returned {type(value).__name__} "
                f"{value!r:.80}; a process function must return a list of floats, one per step",
            )
        if len(value) != len(spans):
            return error_result(
                sample.id, BAD_SCORE,
                f"sample {sample.id!r}: user function {self.spec!r} returned {len(value)} step "
                f"scores for {len(spans)} steps; return exactly one per step",
            )
        scores = [_as_score(v) for v in value]
        for k, (raw, score) in enumerate(zip(value, scores, strict=True)):
            if score is None:
                return error_result(
                    sample.id, BAD_SCORE,
                    f"sample {sample.id!r}: user function {self.spec!r} returned {raw!r} for step "
                    f"{k}; every step score must be a finite number",
                )
        return Result(
            id=sample.id,
            steps=[StepScore(span, score) for span, score in zip(spans, scores, strict=True)],
            metrics={"num_steps": float(len(spans))},
        )

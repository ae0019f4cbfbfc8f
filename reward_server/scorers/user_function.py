"""A reward written as a plain Python function, served as an outcome or process scorer.

``spec`` names the function: ``"package.module:function"`` (imported from ``sys.path``)
or ``"path/to/file.py:function"``. Signatures:

- outcome: ``f(sample: Sample) -> float``
- process: ``f(sample: Sample, steps: list[str]) -> list[float]``, one score per step
  text; steps are the sample's spans, or the response split on ``step_separator``.

The function may be ``async def`` or a plain ``def``. Where it runs (``isolation``):

- ``process`` (default): in ``workers`` spawned worker processes (``reward_server.workers``).
  A plain ``def`` runs one sample at a time per worker; past ``timeout_s`` its worker is
  killed and replaced and that sample gets a TIMEOUT error. An ``async def`` runs up to 64
  samples at once on each worker's event loop (I/O-bound rewards, a remote judge); past
  ``timeout_s`` a sample is cancelled with a TIMEOUT error, and a worker whose loop stops
  answering (a blocking call inside ``async def``) is killed with the samples it held.
  The other workers, and other callers, go on: no function can freeze the replica. Each
  worker imports the function once, so module-level state (a loaded model, a client
  session) is per worker.
- ``thread``: in the server process, as before: sync functions in threads, ``async def``
  awaited on the scorer's event loop, every sample of a batch at once. Use it for a
  function that must share in-process state; a stuck call cannot be killed there (the
  server's ``--scorer-timeout-s`` answers its callers with TIMEOUT and health goes
  NOT_SERVING until it returns).

An exception, a non-number, a bool, NaN or infinity, or a wrong number of step scores
becomes a per-sample error naming the sample and the function (quoted values cut short).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
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

from reward_server.quoting import short_repr
from reward_server.scorers.base import Scorer
from reward_server.scorers.results import (
    BAD_SCORE,
    SCORER_FAILED,
    TIMEOUT,
    error_result,
    step_texts,
)
from reward_server.steps import split_steps
from reward_server.types import Result, RewardKind, Sample, StepScore
from reward_server.workers import TaskFailed, TaskTimeout, WorkerPool

ISOLATIONS = ("process", "thread")
_SPLIT_OFF_LOOP_CHARS = 64 * 1024
ASYNC_TASKS_PER_WORKER = 64  # samples an async def function handles at once in each worker


@dataclass
class UserFunctionConfig:
    function: str = field(metadata={"help": "'package.module:function' or 'path/to/file.py:function'"})
    kind: str = field(default="outcome", metadata={
        "help": "'outcome' (returns a float) or 'process' (a float per step)"
    })
    step_separator: str = field(default="\n\n", metadata={"help": "splits responses sent without steps (process)"})
    isolation: str = field(default="process", metadata={
        "help": "'process': worker processes, a stuck call is killed after timeout_s; 'thread': in the server process"
    })
    workers: int = field(default=4, metadata={"help": "worker processes (isolation=process): samples scored at once"})
    timeout_s: float = field(default=30.0, metadata={
        "help": "seconds one sample may take (isolation=process) before its worker is killed"
    })


def load_function(spec: str) -> Callable[..., Any]:
    """Import the callable named by ``spec``; raises ValueError saying what is wrong."""
    location, sep, name = spec.rpartition(":")
    if not sep or not location or not name:
        raise ValueError(f"user function spec {spec!r} must look like 'module:function' or 'file.py:function'")
    if location.endswith(".py"):
        path = Path(location).expanduser().resolve()
        if not path.is_file():
            raise ValueError(f"user function file {str(path)!r} (from spec {spec!r}) does not exist")
        # As Python does for a script: the file's folder goes on the path, so the file can
        # import the modules beside it.
        if str(path.parent) not in sys.path:
            sys.path.insert(0, str(path.parent))
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
    if function is None:
        raise ValueError(f"{location!r} has no callable named {name!r} (user function spec {spec!r})")
    if not callable(function):
        raise ValueError(
            f"{location!r}: {name!r} is not callable (it is of type {type(function).__name__}; "
            f"user function spec {spec!r})"
        )
    return function


def _as_score(value: Any) -> float | None:
    """``value`` as a finite float, or None if it is not a finite real number (bools are not)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


class UserFunctionScorer(Scorer):
    """Outcome or process reward computed by a user's Python function (sync or async)."""
    blocking = False  # the function runs in worker processes or threads, never on the loop

    def __init__(
        self,
        spec: str,
        kind: RewardKind | str = RewardKind.OUTCOME,
        step_separator: str = "\n\n",
        isolation: str = "process",
        workers: int = 4,
        timeout_s: float = 30.0,
    ):
        try:
            self.kind = kind if isinstance(kind, RewardKind) else RewardKind(kind)
        except ValueError:
            raise ValueError(f"kind {kind!r} is not one of 'outcome', 'process'") from None
        if not step_separator:
            raise ValueError("step_separator must be a non-empty string")
        if isolation not in ISOLATIONS:
            raise ValueError(f"isolation {isolation!r} is not one of {', '.join(map(repr, ISOLATIONS))}")
        if workers < 1 or not timeout_s > 0:
            raise ValueError(f"workers must be >= 1 and timeout_s > 0 (got {workers}, {timeout_s})")
        # Imported here too, so a bad spec fails at start-up with a clear message.
        self.function = function = load_function(spec)
        self.spec = spec
        self.model_name = spec
        self.step_separator = step_separator
        self.timeout_s = timeout_s
        self._is_async = _is_async(function)
        self._pool = (
            WorkerPool(workers, make_handler, (_absolute_spec(spec),), name="user-function",
                       concurrency=ASYNC_TASKS_PER_WORKER if self._is_async else 1)
            if isolation == "process" else None
        )
        # Its workers are killed at timeout_s: the server's own timeout must come later.
        self.ends_stuck_sample_after_s = timeout_s if self._pool is not None else None
        # Batches go to free workers while another batch waits for a slow sample.
        self.max_concurrent_batches = workers if self._pool is not None else 1
        self._threads = (
            concurrent.futures.ThreadPoolExecutor(32, thread_name_prefix="user-function")
            if self._pool is None
            else None
        )

    @classmethod
    def from_config(cls, config: UserFunctionConfig) -> UserFunctionScorer:
        return cls(
            config.function, config.kind, config.step_separator, config.isolation, config.workers, config.timeout_s
        )

    def close(self) -> None:
        """Stop the worker processes (also done at exit)."""
        if self._pool is not None:
            self._pool.close()

    async def score(self, samples: list[Sample]) -> list[Result]:
        return list(await asyncio.gather(*(self._score_one(s) for s in samples)))

    async def _score_one(self, sample: Sample) -> Result:
        if self.kind is RewardKind.PROCESS:
            # Linear, but a 1 MB response of short steps still takes a fraction of a second:
            # off the event loop, so health checks and other calls are answered meanwhile.
            if len(sample.response) > _SPLIT_OFF_LOOP_CHARS:
                spans, texts = await asyncio.to_thread(self._steps, sample)
            else:
                spans, texts = self._steps(sample)
            if isinstance(texts, Result):
                return texts
            args: tuple = (sample, texts)
        else:
            args = (sample,)
        try:
            value = await self._call(args)
        except TaskTimeout as exc:
            return error_result(
                sample.id, TIMEOUT, f"sample {short_repr(sample.id)}: user function {self.spec!r} {exc}"
            )
        except (TaskFailed, Exception) as exc:  # noqa: BLE001 - the user's bug is reported per sample
            detail = str(exc) if isinstance(exc, TaskFailed) else f"{type(exc).__name__}: {exc}"
            return error_result(
                sample.id,
                SCORER_FAILED,
                f"sample {short_repr(sample.id)}: user function {self.spec!r} raised {detail[:500]}",
            )
        if self.kind is RewardKind.OUTCOME:
            return self._outcome_result(sample, value)
        if isinstance(value, list | tuple) and len(value) > 20_000:
            return await asyncio.to_thread(self._process_result, sample, spans, value)  # as for the split
        return self._process_result(sample, spans, value)

    def _steps(self, sample: Sample) -> tuple[list, list[str] | Result]:
        spans = sample.steps or split_steps(sample.response, self.step_separator)
        return spans, step_texts(sample, spans)

    async def _call(self, args: tuple) -> Any:
        if self._pool is not None:
            return await self._pool.run(args, self.timeout_s)
        if self._is_async:
            return await self.function(*args)
        # Its own executor, not the loop's default one, which asyncio.run() waits for at exit.
        value = await asyncio.get_running_loop().run_in_executor(self._threads, self.function, *args)
        if inspect.isawaitable(value):  # e.g. a functools.partial of an async function
            value = await value
        return value

    def _outcome_result(self, sample: Sample, value: Any) -> Result:
        score = _as_score(value)
        if score is None:
            return error_result(
                sample.id, BAD_SCORE,
                f"sample {short_repr(sample.id)}: user function {self.spec!r} returned {short_repr(value)}; "
                "an outcome function must return one finite number",
            )
        return Result(id=sample.id, outcome=score)

    def _process_result(self, sample: Sample, spans: list, value: Any) -> Result:
        if isinstance(value, str | bytes) or not isinstance(value, list | tuple):
            return error_result(
                sample.id, BAD_SCORE,
                f"sample {short_repr(sample.id)}: user function {self.spec!r} returned {type(value).__name__} "
                f"{short_repr(value)}; a process function must return a list of floats, one per step",
            )
        if len(value) != len(spans):
            return error_result(
                sample.id, BAD_SCORE,
                f"sample {short_repr(sample.id)}: user function {self.spec!r} returned {len(value)} step "
                f"scores for {len(spans)} steps; return exactly one per step",
            )
        scores = [_as_score(v) for v in value]
        for k, (raw, score) in enumerate(zip(value, scores, strict=True)):
            if score is None:
                return error_result(
                    sample.id, BAD_SCORE,
                    f"sample {short_repr(sample.id)}: user function {self.spec!r} returned {short_repr(raw)} for step "
                    f"{k}; every step score must be a finite number",
                )
        return Result(
            id=sample.id,
            steps=[StepScore(span, score) for span, score in zip(spans, scores, strict=True)],
            metrics={"num_steps": float(len(spans))},
        )


def _is_async(function: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(function) or inspect.iscoroutinefunction(
        type(function).__call__  # an instance with ``async def __call__``
    )


def _absolute_spec(spec: str) -> str:
    """``spec`` with a file path made absolute, so workers find it whatever their cwd."""
    location, _, name = spec.rpartition(":")
    if location.endswith(".py"):
        return f"{Path(location).expanduser().resolve()}:{name}"
    return spec


def make_handler(spec: str) -> Callable[..., Any]:
    """Runs in each worker process: load the function once, return what calls it (an
    ``async def`` for an async function, so the worker runs its samples concurrently)."""
    function = load_function(spec)
    if _is_async(function):

        async def call_async(*args: Any) -> Any:
            return await function(*args)

        return call_async
    loop = asyncio.new_event_loop()  # for a sync function that returns an awaitable

    def call(*args: Any) -> Any:
        value = function(*args)
        if inspect.isawaitable(value):
            value = loop.run_until_complete(_awaited(value))
        return value

    return call


async def _awaited(value: Any) -> Any:
    return await value

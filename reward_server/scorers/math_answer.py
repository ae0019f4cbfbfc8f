"""Outcome reward from checking the response's final answer with ``math-verify``.

The response is parsed with ``math_verify.parse`` (LaTeX first, e.g. ``\\boxed{}``, then
plain expressions such as ``Answer: 42``); the reference likewise, wrapped in ``$...$``
when it has no math delimiters so ``2\\sqrt{2}`` reads as LaTeX. ``math_verify.verify``
then compares every gold candidate with every answer candidate (numbers, fractions,
symbolic equality, sets, ...). Score: ``correct_score`` if any pair matches, else
``incorrect_score`` (an answer that cannot be found or parsed is incorrect, not an error).

Why a process pool: math-verify bounds each parse and comparison with ``signal.alarm``,
which works only in a process's main thread; in a worker thread it raises ValueError
(and with its default ``raise_on_error=False`` a caller could mistake that for a wrong
answer). So the checks run in spawned worker processes, each task in the worker's main
thread where the alarm works. A check that still hangs (C code ignores the alarm until
it returns) is cut off by ``deadline_s``: the pool is killed and restarted, and the
unfinished samples get a TIMEOUT error.
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing
import weakref
from dataclasses import dataclass, field
from multiprocessing.pool import Pool

from reward_server.quoting import short_repr
from reward_server.scorers.base import Scorer
from reward_server.scorers.results import INVALID_SAMPLE, SCORER_FAILED, TIMEOUT, error_result
from reward_server.types import Result, RewardKind, Sample


@dataclass
class MathAnswerConfig:
    correct_score: float = field(default=1.0, metadata={"help": "score of a correct final answer"})
    incorrect_score: float = field(default=0.0, metadata={"help": "score of a wrong or missing final answer"})
    timeout_s: int = field(default=5, metadata={"help": "seconds per parse / comparison (math-verify's alarm)"})
    timeout_score: float | None = field(default=None, metadata={"help": "score when a check times out; None: a TIMEOUT error"})
    workers: int = field(default=2, metadata={"help": "worker processes running the checks"})
    deadline_s: float = field(default=60.0, metadata={"help": "wall-clock limit of one score() call; stuck workers are killed"})
    model_name: str = field(default="math-verify", metadata={"help": "name reported in GetInfo"})

    def __post_init__(self) -> None:
        if self.timeout_s < 1:
            raise ValueError(f"timeout_s must be a whole number of seconds >= 1 (got {self.timeout_s})")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1 (got {self.workers})")
        if self.deadline_s < 0:
            raise ValueError(f"deadline_s must be >= 0 (got {self.deadline_s})")


@dataclass(frozen=True)
class AnswerCheck:
    """What a worker found for one sample (plain data: it crosses a process boundary)."""

    correct: bool
    answer_found: bool
    reference_found: bool
    timed_out: bool
    answer_value: float | None  # the parsed answer when it is a real number


def check_answer(response: str, reference: str, timeout_s: int) -> AnswerCheck:
    """Parse both sides and compare them with math-verify. Runs in a worker's main thread."""
    from math_verify import parse, verify
    from math_verify.errors import TimeoutException

    timed_out = False

    def parse_or_empty(text: str) -> list:
        nonlocal timed_out
        try:
            return parse(text, parsing_timeout=timeout_s, raise_on_error=True)
        except TimeoutException:
            timed_out = True
        except Exception:  # noqa: BLE001 - unparseable text is "no answer", as math-verify treats it
            pass
        return []

    def matches(gold, answer) -> bool:
        nonlocal timed_out
        try:
            return verify(gold, answer, timeout_seconds=timeout_s, raise_on_error=True)
        except TimeoutException:
            timed_out = True
        except Exception:  # noqa: BLE001 - an incomparable pair does not match
            pass
        return False

    has_delimiters = "$" in reference or "\\boxed" in reference or "\\(" in reference
    gold = parse_or_empty(reference if has_delimiters else f"${reference}$")
    answer = parse_or_empty(response)
    correct = any(matches(g, a) for g in gold for a in answer)
    return AnswerCheck(
        correct=correct,
        answer_found=bool(answer),
        reference_found=bool(gold),
        timed_out=timed_out and not correct,
        answer_value=_real_value(answer[0]) if answer else None,
    )


def _real_value(expr) -> float | None:
    try:
        value = complex(expr)
    except (TypeError, ValueError):
        return None
    return value.real if value.imag == 0 and math.isfinite(value.real) else None


def _warm_up() -> None:
    """Worker initializer: import math-verify and its grammars once, not on the first sample."""
    check_answer("\\boxed{1}", "1", 5)


class MathAnswerScorer(Scorer):
    """Outcome reward: does the response's final answer equal ``reference`` (math-verify)?"""
    blocking = False  # checks run in a process pool

    kind = RewardKind.OUTCOME

    def __init__(self, config: MathAnswerConfig | None = None):
        self.config = config or MathAnswerConfig()
        self.model_name = self.config.model_name
        self._pool: Pool | None = None

    async def score(self, samples: list[Sample]) -> list[Result]:
        loop = asyncio.get_running_loop()
        results: list[Result | None] = [None] * len(samples)
        pending: dict[int, asyncio.Future] = {}
        for i, sample in enumerate(samples):
            if sample.reference is None or not sample.reference.strip():
                results[i] = error_result(
                    sample.id, INVALID_SAMPLE,
                    f"sample {short_repr(sample.id)} has no reference answer; the math answer checker "
                    "compares the response's final answer with `reference`, so send one",
                )
                continue
            pending[i] = self._submit(loop, sample)
        if pending:
            _, unfinished = await asyncio.wait(pending.values(), timeout=self.config.deadline_s)
            if unfinished:
                self._kill_pool()  # a worker may be stuck in C code; start afresh next call
        for i, future in pending.items():
            results[i] = self._to_result(samples[i], future)
        return results  # type: ignore[return-value]

    def close(self) -> None:
        """Stop the worker processes (also done at interpreter exit)."""
        self._kill_pool()

    def _submit(self, loop: asyncio.AbstractEventLoop, sample: Sample) -> asyncio.Future:
        future = loop.create_future()
        self._get_pool().apply_async(
            check_answer,
            (sample.response, sample.reference, self.config.timeout_s),
            callback=lambda value: _settle(loop, future, value=value),
            error_callback=lambda exc: _settle(loop, future, exc=exc),
        )
        return future

    def _to_result(self, sample: Sample, future: asyncio.Future) -> Result:
        if not future.done():
            future.cancel()
            return error_result(
                sample.id, TIMEOUT, f"sample {short_repr(sample.id)}: answer check did not finish within "
                f"deadline_s={self.config.deadline_s}; the checker workers were restarted",
            )
        if future.exception() is not None:
            return error_result(sample.id, SCORER_FAILED, f"sample {short_repr(sample.id)}: answer check failed: {future.exception()!r}")
        check: AnswerCheck = future.result()
        if not check.reference_found:
            return error_result(
                sample.id, INVALID_SAMPLE, f"sample {short_repr(sample.id)}: math-verify found no answer in "
                f"reference {sample.reference!r}; send a number or LaTeX expression",
            )
        metrics = {"correct": float(check.correct), "answer_found": float(check.answer_found)}
        if check.answer_value is not None:
            metrics["answer_value"] = check.answer_value
        if check.timed_out:
            if self.config.timeout_score is None:
                return error_result(
                    sample.id, TIMEOUT, f"sample {short_repr(sample.id)}: math-verify timed out after "
                    f"{self.config.timeout_s} s parsing or comparing the answer",
                )
            metrics["timed_out"] = 1.0
            return Result(id=sample.id, outcome=self.config.timeout_score, metrics=metrics)
        score = self.config.correct_score if check.correct else self.config.incorrect_score
        return Result(id=sample.id, outcome=score, metrics=metrics)

    def _get_pool(self) -> Pool:
        if self._pool is None:
            # spawn, not fork: the server process has gRPC and torch threads.
            context = multiprocessing.get_context("spawn")
            self._pool = context.Pool(self.config.workers, initializer=_warm_up)
            weakref.finalize(self, self._pool.terminate)
        return self._pool

    def _kill_pool(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool = None


def _settle(loop: asyncio.AbstractEventLoop, future: asyncio.Future, value=None, exc=None) -> None:
    """Resolve ``future`` from the pool's result thread, on its own event loop."""

    def apply() -> None:
        if future.done():
            return  # cancelled after a deadline
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(value)

    try:
        loop.call_soon_threadsafe(apply)
    except RuntimeError:
        pass  # the loop is closed: nobody waits for this answer any more

"""Outcome reward from checking the response's final answer with ``math-verify``.

The response is parsed with ``math_verify.parse`` (LaTeX first, e.g. ``\\boxed{}``, then
plain expressions such as ``Answer: 42``); the reference likewise, wrapped in ``$...$``
when it has no math delimiters so ``2\\sqrt{2}`` reads as LaTeX. ``math_verify.verify``
then compares every gold candidate with every answer candidate (numbers, fractions,
symbolic equality, sets, ...). Score: ``correct_score`` if any pair matches, else
``incorrect_score`` (an answer that cannot be found or parsed is incorrect, not an error).

Why worker processes: math-verify bounds each parse and comparison with ``signal.alarm``,
which works only in a process's main thread; in a worker thread it raises ValueError
(and with its default ``raise_on_error=False`` a caller could mistake that for a wrong
answer). So the checks run in spawned worker processes (``reward_server.workers``), each
sample in a worker's main thread where the alarm works. A check that still hangs (C code
ignores the alarm until it returns: ``9^{9^{9^{9}}}`` inside sympy) is cut off by
``deadline_s``: that worker is killed and replaced and that sample gets a TIMEOUT error,
while the other workers go on with other samples and other callers' batches.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from dataclasses import dataclass, field

from reward_server.quoting import short_repr
from reward_server.scorers.base import Scorer
from reward_server.scorers.results import INVALID_SAMPLE, SCORER_FAILED, TIMEOUT, error_result
from reward_server.types import Result, RewardKind, Sample
from reward_server.workers import TaskFailed, TaskTimeout, WorkerPool


@dataclass
class MathAnswerConfig:
    correct_score: float = field(default=1.0, metadata={"help": "score of a correct final answer"})
    incorrect_score: float = field(default=0.0, metadata={"help": "score of a wrong or missing final answer"})
    timeout_s: int = field(default=5, metadata={"help": "seconds per parse / comparison (math-verify's alarm)"})
    timeout_score: float | None = field(default=None, metadata={
        "help": "score when a check times out; None: a TIMEOUT error"
    })
    workers: int = field(default=2, metadata={"help": "worker processes running the checks"})
    deadline_s: float = field(default=15.0, metadata={
        "help": "wall-clock limit of one sample's check; past it its worker is killed"
    })
    model_name: str = field(default="math-verify", metadata={"help": "name reported in GetInfo"})

    def __post_init__(self) -> None:
        if self.timeout_s < 1:
            raise ValueError(f"timeout_s must be a whole number of seconds >= 1 (got {self.timeout_s})")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1 (got {self.workers})")
        if not self.deadline_s > 0:
            raise ValueError(f"deadline_s must be > 0 (got {self.deadline_s})")


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


def checker_worker() -> Callable[[str, str, int], AnswerCheck]:
    """Runs in each worker: import math-verify and its grammars once, not on the first sample."""
    check_answer("\\boxed{1}", "1", 5)
    return check_answer


class MathAnswerScorer(Scorer):
    """Outcome reward: does the response's final answer equal ``reference`` (math-verify)?"""
    blocking = False  # checks run in a process pool

    kind = RewardKind.OUTCOME

    def __init__(self, config: MathAnswerConfig | None = None):
        self.config = config or MathAnswerConfig()
        self.model_name = self.config.model_name
        self._pool = WorkerPool(self.config.workers, checker_worker, name="math-verify")
        # Batches go to free workers while another batch waits on a slow sample.
        self.max_concurrent_batches = self.config.workers

    async def score(self, samples: list[Sample]) -> list[Result]:
        return list(await asyncio.gather(*(self._score_one(s) for s in samples)))

    def close(self) -> None:
        """Stop the worker processes (also done at interpreter exit)."""
        self._pool.close()

    async def _score_one(self, sample: Sample) -> Result:
        if sample.reference is None or not sample.reference.strip():
            return error_result(
                sample.id, INVALID_SAMPLE,
                f"sample {short_repr(sample.id)} has no reference answer; the math answer checker "
                "compares the response's final answer with `reference`, so send one",
            )
        try:
            check = await self._pool.run(
                (sample.response, sample.reference, self.config.timeout_s), self.config.deadline_s
            )
        except TaskTimeout:
            return self._timed_out(sample, f"the check did not finish within deadline_s={self.config.deadline_s:g}; "
                                           "its worker was killed and replaced")
        except TaskFailed as exc:
            return error_result(sample.id, SCORER_FAILED, f"sample {short_repr(sample.id)}: answer check failed: {exc}")
        return self._to_result(sample, check)

    def _timed_out(self, sample: Sample, why: str, metrics: dict[str, float] | None = None) -> Result:
        if self.config.timeout_score is None:
            return error_result(sample.id, TIMEOUT, f"sample {short_repr(sample.id)}: {why}")
        return Result(id=sample.id, outcome=self.config.timeout_score, metrics={**(metrics or {}), "timed_out": 1.0})

    def _to_result(self, sample: Sample, check: AnswerCheck) -> Result:
        if not check.reference_found:
            return error_result(
                sample.id, INVALID_SAMPLE, f"sample {short_repr(sample.id)}: math-verify found no answer in "
                f"reference {short_repr(sample.reference)}; send a number or LaTeX expression",
            )
        metrics = {"correct": float(check.correct), "answer_found": float(check.answer_found)}
        if check.answer_value is not None:
            metrics["answer_value"] = check.answer_value
        if check.timed_out:
            return self._timed_out(
                sample,
                f"math-verify timed out after {self.config.timeout_s} s parsing or comparing the answer",
                metrics,
            )
        score = self.config.correct_score if check.correct else self.config.incorrect_score
        return Result(id=sample.id, outcome=score, metrics=metrics)

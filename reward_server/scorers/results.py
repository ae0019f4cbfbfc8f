"""The helpers scorers use to build results (the per-sample error codes are in
``reward_server.contract``, re-exported here for the scorers).

A scorer answers a bad sample with a Result whose ``error`` names the sample and what
to do, so one bad sample never fails the batch it came in.
"""

from __future__ import annotations

from reward_server.contract import BAD_SCORE, INVALID_SAMPLE, SCORER_FAILED, TIMEOUT
from reward_server.quoting import short_repr
from reward_server.steps import span_texts
from reward_server.types import Result, Sample, SampleError, Span

__all__ = ["BAD_SCORE", "INVALID_SAMPLE", "SCORER_FAILED", "TIMEOUT", "error_result", "step_texts"]


def error_result(sample_id: str, code: str, message: str) -> Result:
    return Result(id=sample_id, error=SampleError(code=code, message=message))


def step_texts(sample: Sample, spans: list[Span]) -> list[str] | Result:
    """The text of each span, or an INVALID_SAMPLE result naming the first bad span.

    ``span_texts`` refuses spans that are out of range or cut a multi-byte character, so a
    step can never be silently shifted onto the wrong characters.
    """
    try:
        return span_texts(sample.response, spans)
    except ValueError as exc:
        return error_result(
            sample.id, INVALID_SAMPLE, f"sample {short_repr(sample.id)} {exc}; send byte offsets "
            "into the UTF-8 response that start and end on character boundaries",
        )

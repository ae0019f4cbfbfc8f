"""Per-sample error codes and the helpers scorers use to build results.

A scorer answers a bad sample with a Result whose ``error`` names the sample and what
to do, so one bad sample never fails the batch it came in.
"""

from __future__ import annotations

import reprlib

from reward_server.steps import span_text
from reward_server.types import Result, Sample, SampleError, Span

INVALID_SAMPLE = "INVALID_SAMPLE"  # the request is wrong: bad spans, too long, no reference
SCORER_FAILED = "SCORER_FAILED"  # the scorer could not score it: an exception, a dead worker
BAD_SCORE = "BAD_SCORE"  # a user function returned something that is not a valid score
TIMEOUT = "TIMEOUT"  # scoring took longer than the scorer's time limit


_SHORT = reprlib.Repr()  # keyword arguments only from Python 3.12
_SHORT.maxstring = _SHORT.maxother = 72
_SHORT.maxlist = _SHORT.maxtuple = 8
_SHORT.maxdict, _SHORT.maxlevel = 4, 2


def short_repr(value: object, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters: error messages quote client data and
    user values, and a quoted 12,000-character id or a huge list must not make the
    message (a gRPC trailer, a log line) too big to deliver."""
    text = _SHORT.repr(value)  # reprlib: a huge list or string is never rendered in full
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def error_result(sample_id: str, code: str, message: str) -> Result:
    return Result(id=sample_id, error=SampleError(code=code, message=message))


def step_texts(sample: Sample, spans: list[Span]) -> list[str] | Result:
    """The text of each span, or an INVALID_SAMPLE result naming the first bad span.

    ``span_text`` refuses spans that are out of range or cut a multi-byte character, so a
    step can never be silently shifted onto the wrong characters.
    """
    texts: list[str] = []
    for k, span in enumerate(spans):
        try:
            texts.append(span_text(sample.response, span))
        except ValueError as exc:
            return error_result(
                sample.id, INVALID_SAMPLE, f"sample {sample.id!r} step {k}: {exc}; send byte offsets "
                "into the UTF-8 response that start and end on character boundaries",
            )
    return texts

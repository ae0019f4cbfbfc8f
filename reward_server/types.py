"""Plain Python types for reward samples and results.

These mirror the wire messages in proto/rpp/reward/v1/reward.proto so that scorers,
the server and the learner never touch protobuf objects directly. Spans are byte
offsets ``[start, end)`` into the UTF-8 encoding of ``response``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class RewardKind(enum.Enum):
    OUTCOME = "outcome"  # one score per response
    PROCESS = "process"  # one score per reasoning step


@dataclass(frozen=True)
class Span:
    """A half-open byte range ``[start, end)`` into the UTF-8 response."""

    start: int
    end: int


@dataclass
class Sample:
    id: str
    prompt: str
    response: str
    reference: str | None = None
    # Optional step spans. Empty: a process service splits the response itself.
    steps: list[Span] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass
class StepScore:
    span: Span
    score: float


@dataclass
class SampleError:
    code: str  # e.g. "INVALID_SAMPLE", "SCORER_FAILED", "BAD_SCORE"
    message: str


@dataclass
class Result:
    id: str
    outcome: float | None = None
    steps: list[StepScore] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    error: SampleError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class ServiceInfo:
    kind: RewardKind
    model_name: str
    step_separator: str
    max_samples_per_request: int
    max_request_bytes: int
    version: str
    input_format: str = ""  # e.g. "qwen2.5-math-prm"; "" when the service does not say
    max_sample_bytes: int = 0  # 0: no per-sample limit beyond max_request_bytes
    contract_version: str = ""  # "" from servers written against contract 1.0

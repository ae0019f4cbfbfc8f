"""A reward service written from reward.proto alone, as another team would write one, with
switches that make it break one rule of the contract each (``FLAWS``).

It shares nothing with rpp's server but the generated stubs and the step-splitting rule
the .proto spells out, so a flaw here is a flaw an implementer could make:

    with contract_server("process", flaw="utf16_spans") as address: ...
"""

from __future__ import annotations

import contextlib
import math
import re
import threading
from collections.abc import Iterator
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from reward_server.contract import SERVICE_NAME
from reward_server.proto import reward_pb2 as pb
from reward_server.proto import reward_pb2_grpc
from reward_server.server import enable_reflection

SEPARATOR = "\n\n"
FLAWS = {
    "health_empty_name_only": "registers health only for the empty name (many health libraries' default)",
    "zero_limits": "leaves max_samples_per_request and max_request_bytes at 0",
    "overstated_request_bytes": "advertises 64 MiB but receives gRPC's default 4 MiB",
    "reversed_results": "answers in reverse order",
    "utf16_spans": "writes step spans as UTF-16 string indices (the JavaScript mistake)",
    "js_whitespace": "trims steps with JavaScript's \\s instead of str.isspace()",
    "whole_call_fails_on_big_sample": "fails the whole call instead of a per-sample error",
    "accepts_empty_batch": "answers an empty request with OK",
    "accepts_duplicate_ids": "scores two samples with one id",
    "nan_score": "returns NaN scores",
    "outcome_validates_steps": "an OUTCOME service that refuses malformed steps",
    "ignores_given_steps": "a PROCESS service that re-splits even when steps are given",
    "error_with_score": "sets an error and a score on one result",
    "no_auth": "takes calls without the configured token",
    "no_reflection": "serves no reflection",
    "busy_without_pushback": "answers busy without the grpc-retry-pushback-ms trailer",
}
MAX_SAMPLE_BYTES = 64 << 10
_JS_SPACE = "\t\n\u000b\u000c\r \u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"


def split(response: str, flaw: str | None) -> list[tuple[int, int]]:
    """reward.proto's splitting algorithm, written out (or with the flaw's mistake)."""
    spans, pos = [], 0
    pieces = response.split(SEPARATOR)
    for piece in pieces:
        start = pos
        pos += len(piece) + len(SEPARATOR)
        if flaw == "js_whitespace":
            m = re.search(f"[^{_JS_SPACE}](?:.*[^{_JS_SPACE}])?", piece, re.DOTALL)
        else:
            m = re.search(r"\S(?:.*\S)?", piece, re.DOTALL)  # Python's \s is str.isspace()
        if m is None:
            continue
        a, b = start + m.start(), start + m.end()  # code-point offsets into response
        if flaw == "utf16_spans":
            units = lambda text: len(text.encode("utf-16-le")) // 2  # noqa: E731
            spans.append((units(response[:a]), units(response[:b])))
        else:
            spans.append((len(response[:a].encode()), len(response[:b].encode())))
    return spans


class ContractServicer(reward_pb2_grpc.RewardServiceServicer):
    def __init__(self, kind: str, flaw: str | None, token: str | None):
        self.kind, self.flaw, self.token = kind, flaw, token
        self.busy_calls = 0  # refuse this many Score calls as busy, then serve
        self.score_calls = 0
        self._lock = threading.Lock()

    def GetInfo(self, request, context):
        zero = self.flaw == "zero_limits"
        return pb.GetInfoResponse(
            kind=pb.REWARD_KIND_PROCESS if self.kind == "process" else pb.REWARD_KIND_OUTCOME,
            model_name=f"contract-{self.kind}",
            step_separator=SEPARATOR if self.kind == "process" else "",
            max_samples_per_request=0 if zero else 256,
            max_request_bytes=0 if zero else (64 << 20 if self.flaw == "overstated_request_bytes" else 4 << 20),
            max_sample_bytes=MAX_SAMPLE_BYTES,
            contract_version="1.1",
            version="contract-servers 1",
        )

    def Score(self, request, context):
        if self.token and self.flaw != "no_auth":
            if dict(context.invocation_metadata()).get("authorization") != f"Bearer {self.token}":
                context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")
        with self._lock:
            self.score_calls += 1
            busy = self.busy_calls > 0
            self.busy_calls -= busy
        if busy:
            if self.flaw != "busy_without_pushback":
                context.set_trailing_metadata((("grpc-retry-pushback-ms", "20"),))
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "busy: queue full")
        samples = list(request.samples)
        if not samples and self.flaw != "accepts_empty_batch":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "samples: empty request")
        ids = [s.id for s in samples]
        if "" in ids:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"samples[{ids.index('')}].id: missing")
        if len(set(ids)) != len(ids) and self.flaw != "accepts_duplicate_ids":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "samples: duplicate ids")
        if len(samples) > 256 and self.flaw != "zero_limits":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "samples: over 256")
        for i, s in enumerate(samples):
            if s.steps and (self.kind == "process" or self.flaw == "outcome_validates_steps"):
                problem = self._span_problem(s)
                if problem:
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"samples[{i}] ({s.id}): {problem}")
        results = [self._score(s, context) for s in samples]
        if self.flaw == "reversed_results":
            results.reverse()
        return pb.ScoreResponse(results=results)

    @staticmethod
    def _span_problem(s: pb.Sample) -> str | None:
        data, end = s.response.encode(), 0
        for span in s.steps:
            if not (end <= span.start < span.end <= len(data)):
                return f"span [{span.start}, {span.end}) is out of order, empty or out of range"
            try:
                data[span.start : span.end].decode()
            except UnicodeDecodeError:
                return f"span [{span.start}, {span.end}) cuts a UTF-8 character"
            end = span.end
        return None

    def _score(self, s: pb.Sample, context) -> pb.SampleResult:
        size = len(s.prompt.encode()) + len(s.response.encode()) + len(s.reference.encode())
        if size > MAX_SAMPLE_BYTES:
            if self.flaw == "whole_call_fails_on_big_sample":
                context.abort(grpc.StatusCode.INTERNAL, "sample too big")
            return pb.SampleResult(
                id=s.id, error=pb.SampleError(code="INVALID_SAMPLE", message=f"{s.id}: {size} bytes")
            )
        value = math.nan if self.flaw == "nan_score" else sum(c.isdigit() for c in s.response) / max(len(s.response), 1)
        result = pb.SampleResult(id=s.id)
        if self.kind == "outcome":
            result.outcome = value
        else:
            given = [(x.start, x.end) for x in s.steps]
            for start, end in (
                split(s.response, self.flaw) if not given or self.flaw == "ignores_given_steps" else given
            ):
                result.steps.add(span=pb.Span(start=start, end=end), score=value)
        if self.flaw == "error_with_score":
            result.error.code, result.error.message = "SCORER_FAILED", "and yet a score"
        return result


@contextlib.contextmanager
def contract_server(
    kind: str, flaw: str | None = None, token: str | None = None
) -> Iterator[tuple[str, ContractServicer]]:
    """A running server on a loopback port: its address and its servicer (``busy_calls``,
    ``score_calls``)."""
    if flaw is not None and flaw not in FLAWS:
        raise ValueError(f"unknown flaw {flaw!r}")
    # gRPC's default receive limit (4 MiB) unless the server states more and means it.
    options = (
        [] if flaw in ("zero_limits", "overstated_request_bytes") else [("grpc.max_receive_message_length", 4 << 20)]
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), options=options)
    servicer = ContractServicer(kind, flaw, token)
    reward_pb2_grpc.add_RewardServiceServicer_to_server(servicer, server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = [""] if flaw == "health_empty_name_only" else ["", SERVICE_NAME]
    for name in names:
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    if flaw != "no_reflection":
        enable_reflection(server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}", servicer
    finally:
        server.stop(grace=None)

"""``rpp-reward-conformance HOST:PORT``: check a running reward service against the wire
contract (``proto/rpp/reward/v1/reward.proto``), rule by rule, whatever language it is
written in.

    rpp-reward-conformance 127.0.0.1:50051                 # kind read from GetInfo
    rpp-reward-conformance host:443 --tls-ca ca.pem --token-env REWARD_TOKEN

Each rule sends real requests and compares the answers with what the contract says; the
table names every rule, MUST or SHOULD, and what was seen where it failed. Exit code 1
when a MUST rule fails, 0 otherwise (SHOULD failures are printed as WARN). The service
must be running with a scorer that scores ordinary text (any score is fine: only the
shape of the answers is checked).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2

from reward_server.contract import (
    CONTRACT_PATH,
    CONTRACT_VERSION,
    GRPC_DEFAULT_RECEIVE_BYTES,
    SERVICE_NAME,
)
from reward_server.proto import reward_pb2 as pb
from reward_server.proto import reward_pb2_grpc
from reward_server.security import TLSConfig, channel_credentials
from reward_server.steps import split_steps
from reward_server.types import Span

MUST, SHOULD = "MUST", "SHOULD"

# Responses that catch the usual offset mistakes: multi-byte characters before each step
# (UTF-16 or code-point offsets land elsewhere), whitespace that str.isspace() and
# JavaScript's \s disagree on, and empty pieces between separators.
TRICKY_RESPONSES = [
    "Étape 1 : 3 × 4 = 12\n\n数学: 12 + 5 = 17 🙂\n\n\n\nSo the answer is 17.",
    "\u001cfirst step\u001f\n\n\ufeffsecond step\ufeff\n\n \u00a0 \n\nthird: naïve café\u2003",
    "🙂🙂 emoji first\n\n  \n\nlast",
]


@dataclass
class Outcome:
    rule: str
    level: str
    passed: bool | None  # None: skipped
    detail: str = ""


@dataclass
class Context:
    channel: grpc.Channel
    metadata: tuple
    timeout_s: float
    token: str | None
    info: pb.GetInfoResponse | None = None
    stub: reward_pb2_grpc.RewardServiceStub = field(init=False)

    def __post_init__(self) -> None:
        self.stub = reward_pb2_grpc.RewardServiceStub(self.channel)

    @property
    def process(self) -> bool:
        return self.info is not None and self.info.kind == pb.REWARD_KIND_PROCESS

    def score(self, samples: list[pb.Sample], metadata: tuple | None = None) -> pb.ScoreResponse:
        return self.stub.Score(pb.ScoreRequest(samples=samples), timeout=self.timeout_s,
                               metadata=self.metadata if metadata is None else metadata)

    def refusal(self, samples: list[pb.Sample]) -> grpc.StatusCode | None:
        """The status a request is refused with, or None when it succeeds."""
        try:
            self.score(samples)
        except grpc.RpcError as exc:
            return exc.code()
        return None


RULES: list[tuple[str, str, str, Callable[[Context], tuple[bool | None, str]]]] = []


def rule(rule_id: str, level: str, text: str):
    """Register a check: it returns (passed, detail); passed None means not applicable."""

    def register(fn):
        RULES.append((rule_id, level, text, fn))
        return fn

    return register


def sample(i: int, response: str = "The answer is 4.", steps: list[tuple[int, int]] | None = None, **kw) -> pb.Sample:
    """A sample with a prompt and a reference answer, so that verifiers which need one
    (an answer checker) score it too; scorers that do not need it ignore it."""
    msg = pb.Sample(
        id=kw.pop("id", f"conformance-{i}"), prompt=kw.pop("prompt", "What is 2 + 2?"), response=response,
        reference=kw.pop("reference", "4"), **kw,
    )
    for start, end in steps or []:
        msg.steps.add(start=start, end=end)
    return msg


def _spans(result: pb.SampleResult) -> list[tuple[int, int]]:
    return [(s.span.start, s.span.end) for s in result.steps]


def _utf16_spans(response: str, spans: list[Span]) -> list[tuple[int, int]]:
    """The spans a splitter that counts UTF-16 code units would write (JS, Java, C#)."""
    def units(text: str) -> int:
        return len(text.encode("utf-16-le")) // 2

    data = response.encode("utf-8")
    return [(units(data[: s.start].decode()), units(data[: s.end].decode())) for s in spans]


# ----------------------------------------------------------------------- GetInfo


@rule("info.kind", MUST, "GetInfo names the kind: REWARD_KIND_OUTCOME or REWARD_KIND_PROCESS")
def check_kind(ctx: Context):
    if ctx.info is None:
        return False, "GetInfo failed"
    ok = ctx.info.kind in (pb.REWARD_KIND_OUTCOME, pb.REWARD_KIND_PROCESS)
    return ok, pb.RewardKind.Name(ctx.info.kind) if ctx.info.kind in pb.RewardKind.values() else f"kind {ctx.info.kind}"


@rule("info.step_separator", MUST, "a PROCESS service names the literal it splits on; an OUTCOME one leaves it empty")
def check_separator(ctx: Context):
    if ctx.info is None:
        return None, "no GetInfo"
    if ctx.process:
        return bool(ctx.info.step_separator), f"step_separator={ctx.info.step_separator!r}"
    return ctx.info.step_separator == "", f"step_separator={ctx.info.step_separator!r}"


@rule("info.limits_stated", SHOULD, "GetInfo states max_samples_per_request and max_request_bytes (0 = unstated)")
def check_limits_stated(ctx: Context):
    if ctx.info is None:
        return None, "no GetInfo"
    i = ctx.info
    detail = f"max_samples_per_request={i.max_samples_per_request}, max_request_bytes={i.max_request_bytes}"
    return bool(i.max_samples_per_request and i.max_request_bytes), detail


@rule("info.contract_version", SHOULD, f"GetInfo.contract_version is {CONTRACT_VERSION!r}")
def check_version(ctx: Context):
    if ctx.info is None:
        return None, "no GetInfo"
    return ctx.info.contract_version == CONTRACT_VERSION, f"contract_version={ctx.info.contract_version!r}"


# ----------------------------------------------------------------------- Score


@rule("score.one_result_per_sample", MUST, "one SampleResult per Sample, in request order, with the same id")
def check_order(ctx: Context):
    ids = ["z-last", "a-first", "m 中 id", "0", "q-🙂"]
    samples = [sample(k, f"Step {k}: {k} + {k} = {2 * k}", id=i) for k, i in enumerate(ids)]
    got = [r.id for r in ctx.score(samples).results]
    return got == ids, f"sent ids {ids}, got {got}"


@rule("score.scores_finite", MUST, "a scored sample carries finite scores: outcome (OUTCOME) or one per step (PROCESS)")
def check_scores(ctx: Context):
    samples = [sample(k, r, reference="17") for k, r in enumerate(TRICKY_RESPONSES)]
    problems = []
    for s, r in zip(samples, ctx.score(samples).results, strict=False):
        if r.HasField("error"):
            problems.append(f"{s.id}: per-sample error {r.error.code}: {r.error.message}")
        elif ctx.process and (not r.steps or not all(math.isfinite(x.score) for x in r.steps)):
            problems.append(f"{s.id}: steps {[x.score for x in r.steps]}")
        elif not ctx.process and (not r.HasField("outcome") or not math.isfinite(r.outcome)):
            problems.append(f"{s.id}: outcome {r.outcome if r.HasField('outcome') else 'unset'}")
    return not problems, "; ".join(problems) or f"{len(samples)} multi-byte samples scored"


@rule("score.error_excludes_scores", MUST, "a result with an error has no outcome and no steps")
def check_error_exclusive(ctx: Context):
    samples = [sample(k, r, reference="17") for k, r in enumerate(TRICKY_RESPONSES)]
    samples.append(_oversized(ctx, len(TRICKY_RESPONSES)))
    samples = [s for s in samples if s is not None]
    bad = [r.id for r in ctx.score(samples).results if r.HasField("error") and (r.HasField("outcome") or r.steps)]
    return not bad, f"results with both an error and scores: {bad}" if bad else "no result mixes both"


def _oversized(ctx: Context, i: int) -> pb.Sample | None:
    limit = ctx.info.max_sample_bytes if ctx.info else 0
    if not limit or limit > (2 << 20):
        return None
    return sample(i, "x" * (limit + 1024))


@rule(
    "score.per_sample_error",
    MUST,
    "a sample over max_sample_bytes gets its own error; the call and the other samples succeed",
)
def check_per_sample_error(ctx: Context):
    big = _oversized(ctx, 1)
    if big is None:
        return None, "GetInfo.max_sample_bytes is 0 or over 2 MiB: nothing to send"
    try:
        results = ctx.score([sample(0), big, sample(2)]).results
    except grpc.RpcError as exc:
        return False, f"the whole call failed with {exc.code().name}: {exc.details()}"
    shape = ["error" if r.HasField("error") else "scored" for r in results]
    return shape == ["scored", "error", "scored"], f"results: {shape}"


# ----------------------------------------------------------------------- INVALID_ARGUMENT


def _invalid(ctx: Context, samples: list[pb.Sample]):
    code = ctx.refusal(samples)
    return code is grpc.StatusCode.INVALID_ARGUMENT, f"got {code.name if code else 'OK'}"


@rule("invalid.empty_batch", MUST, "a request with no samples fails with INVALID_ARGUMENT")
def check_empty(ctx: Context):
    return _invalid(ctx, [])


@rule("invalid.missing_id", MUST, "a sample without an id fails the call with INVALID_ARGUMENT")
def check_missing_id(ctx: Context):
    return _invalid(ctx, [sample(0), sample(1, id="")])


@rule("invalid.duplicate_ids", MUST, "two samples with one id fail the call with INVALID_ARGUMENT")
def check_duplicate(ctx: Context):
    return _invalid(ctx, [sample(0, id="same"), sample(1, id="same")])


@rule("invalid.too_many_samples", MUST, "more samples than max_samples_per_request fail with INVALID_ARGUMENT")
def check_too_many(ctx: Context):
    limit = ctx.info.max_samples_per_request if ctx.info else 0
    if not limit or limit > 4096:
        return None, f"max_samples_per_request={limit}: no small stated limit to exceed"
    return _invalid(ctx, [sample(k, "1") for k in range(limit + 1)])


@rule(
    "invalid.bad_spans",
    MUST,
    "PROCESS: spans out of range, inside a character, empty or overlapping fail with INVALID_ARGUMENT",
)
def check_bad_spans(ctx: Context):
    if not ctx.process:
        return None, "an OUTCOME service ignores steps"
    text = "é then 数"  # é is bytes [0, 2), 数 is [8, 11)
    cases = {"out of range": [(0, 40)], "inside é": [(1, 4)], "empty": [(3, 3)], "overlapping": [(0, 6), (3, 11)]}
    failures = []
    for name, steps in cases.items():
        code = ctx.refusal([sample(0, text, steps)])
        if code is not grpc.StatusCode.INVALID_ARGUMENT:
            failures.append(f"{name}: {code.name if code else 'OK'}")
    return not failures, "; ".join(failures) or f"all {len(cases)} refused"


@rule("outcome.ignores_steps", MUST, "OUTCOME: the steps field is ignored, even malformed spans")
def check_outcome_ignores(ctx: Context):
    if ctx.process:
        return None, "a PROCESS service reads steps"
    try:
        results = ctx.score([sample(0, "short", [(3, 99)])]).results
    except grpc.RpcError as exc:
        return False, f"refused with {exc.code().name}: {exc.details()}"
    return not results[0].HasField("error"), "scored" if not results[0].HasField("error") else results[0].error.message


# ----------------------------------------------------------------------- steps


@rule("process.given_steps", MUST, "PROCESS: given steps are scored as given: the same byte spans back, in order")
def check_given_steps(ctx: Context):
    if not ctx.process:
        return None, "OUTCOME service"
    text = "Étape 1 : 3 × 4 = 12 ; 数学 12 + 5 = 17 🙂 done"
    data = text.encode()
    cut = data.index("数".encode())
    steps = [(0, cut - 3), (cut, len(data))]  # not where the server's separator would cut
    got = _spans(ctx.score([sample(0, text, steps)]).results[0])
    return got == steps, f"sent {steps}, got {got}"


@rule(
    "process.split_without_steps",
    MUST,
    "PROCESS: without steps the server splits by the contract's algorithm, byte spans",
)
def check_split(ctx: Context):
    if not ctx.process:
        return None, "OUTCOME service"
    sep = ctx.info.step_separator or "\n\n"
    responses = [r.replace("\n\n", sep) for r in TRICKY_RESPONSES]
    results = ctx.score([sample(k, r) for k, r in enumerate(responses)]).results
    problems = []
    for k, (response, result) in enumerate(zip(responses, results, strict=False)):
        want = split_steps(response, sep)
        got = _spans(result)
        if got != [(s.start, s.end) for s in want]:
            hint = " (UTF-16 offsets: count UTF-8 bytes)" if got == _utf16_spans(response, want) else ""
            problems.append(f"response {k}: want {[(s.start, s.end) for s in want]}, got {got}{hint}")
    return not problems, "; ".join(problems) or f"{len(responses)} responses split as specified"


# ----------------------------------------------------------------------- transport


@rule(
    "size.max_request_bytes",
    MUST,
    "a request just under max_request_bytes (0: 4 MiB) is received, not refused for size",
)
def check_size(ctx: Context):
    if ctx.info is None:
        return None, "no GetInfo"
    limit = min(ctx.info.max_request_bytes or GRPC_DEFAULT_RECEIVE_BYTES, 16 << 20)
    count = min(ctx.info.max_samples_per_request or 64, 64)
    # Samples over max_sample_bytes are fine here: they get per-sample errors, and the rule
    # is only that the request is received.
    filler = "7" * (int(limit * 0.9) // count - 64)  # one step for any separator
    samples = [sample(k, filler) for k in range(count)]
    size = pb.ScoreRequest(samples=samples).ByteSize()
    try:
        ctx.score(samples)
    except grpc.RpcError as exc:
        if exc.code() is grpc.StatusCode.RESOURCE_EXHAUSTED:
            return False, f"a {size}-byte request (limit {limit}) was refused: {exc.details()}"
        return None, f"{exc.code().name}: {exc.details()}"
    return True, f"{size} bytes received"


@rule("health.service_name", SHOULD, f"grpc.health.v1 reports SERVING for {SERVICE_NAME!r}")
def check_health_full(ctx: Context):
    return _health(ctx, SERVICE_NAME)


@rule("health.empty_name", SHOULD, 'grpc.health.v1 reports SERVING for "" (the whole server)')
def check_health_empty(ctx: Context):
    return _health(ctx, "")


@rule("health.some_name", MUST, f'grpc.health.v1, if served, reports SERVING for {SERVICE_NAME!r} or ""')
def check_health_any(ctx: Context):
    seen = [_health(ctx, name) for name in (SERVICE_NAME, "")]
    if all("UNIMPLEMENTED" in d for _, d in seen):
        return True, "no health service (clients then assume healthy)"
    return any(ok for ok, _ in seen), "; ".join(d for _, d in seen)


def _health(ctx: Context, name: str):
    stub = health_pb2_grpc.HealthStub(ctx.channel)
    try:
        reply = stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=ctx.timeout_s)
    except grpc.RpcError as exc:
        return False, f"{name!r}: {exc.code().name}"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return reply.status == health_pb2.HealthCheckResponse.SERVING, f"{name!r}: {status}"


@rule("reflection.v1alpha", SHOULD, f"reflection (v1alpha) lists {SERVICE_NAME} and serves {CONTRACT_PATH}")
def check_reflection_v1alpha(ctx: Context):
    return _reflection(ctx, "grpc.reflection.v1alpha.ServerReflection")


@rule("reflection.v1", SHOULD, f"reflection (v1) lists {SERVICE_NAME} and serves {CONTRACT_PATH}")
def check_reflection_v1(ctx: Context):
    return _reflection(ctx, "grpc.reflection.v1.ServerReflection")


def _reflection(ctx: Context, service: str):
    # v1 and v1alpha messages are the same on the wire: one set of stubs asks both.
    call = ctx.channel.stream_stream(
        f"/{service}/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    requests = [reflection_pb2.ServerReflectionRequest(list_services=""),
                reflection_pb2.ServerReflectionRequest(file_by_filename=CONTRACT_PATH)]
    try:
        listed, by_name = list(call(iter(requests), timeout=ctx.timeout_s, metadata=ctx.metadata))
    except grpc.RpcError as exc:
        return False, f"{exc.code().name}"
    except ValueError:
        return False, "not one answer per request"
    names = [s.name for s in listed.list_services_response.service]
    if SERVICE_NAME not in names:
        return False, f"lists {names}"
    if by_name.HasField("error_response") or not by_name.file_descriptor_response.file_descriptor_proto:
        return False, f"{CONTRACT_PATH}: {by_name.error_response.error_message or 'not served'}"
    return True, "ok"


@rule("auth.token_required", MUST, "with a token configured, a call without it fails with UNAUTHENTICATED")
def check_auth(ctx: Context):
    if not ctx.token:
        return None, "no --token-env given"
    code = None
    try:
        ctx.score([sample(0)], metadata=())
    except grpc.RpcError as exc:
        code = exc.code()
    if code is not grpc.StatusCode.UNAUTHENTICATED:
        return False, f"a call without the token got {code.name if code else 'OK'}"
    ctx.score([sample(0)])  # and with it, the call goes through (raises otherwise)
    return True, "refused without, accepted with"


# ----------------------------------------------------------------------- running


def run_checks(ctx: Context, only_kind: str | None = None) -> list[Outcome]:
    try:
        ctx.info = ctx.stub.GetInfo(pb.GetInfoRequest(), timeout=ctx.timeout_s, metadata=ctx.metadata)
    except grpc.RpcError as exc:
        return [Outcome("info.reachable", MUST, False, f"GetInfo failed: {exc.code().name}: {exc.details()}")]
    outcomes = []
    if only_kind is not None:
        want = pb.REWARD_KIND_PROCESS if only_kind == "process" else pb.REWARD_KIND_OUTCOME
        outcomes.append(Outcome("info.expected_kind", MUST, ctx.info.kind == want,
                                f"--kind {only_kind}, GetInfo says {pb.RewardKind.Name(ctx.info.kind)}"))
    for rule_id, level, _text, fn in RULES:
        try:
            passed, detail = fn(ctx)
        except grpc.RpcError as exc:
            passed, detail = False, f"{exc.code().name}: {exc.details()}"
        except Exception as exc:  # a malformed answer: the rule fails, the run goes on
            passed, detail = False, f"{type(exc).__name__}: {exc}"
        outcomes.append(Outcome(rule_id, level, passed, detail))
    return outcomes


def format_table(outcomes: list[Outcome]) -> str:
    texts = {rule_id: text for rule_id, _, text, _ in RULES}
    texts["info.reachable"] = "GetInfo answers"
    texts["info.expected_kind"] = "GetInfo reports the kind given with --kind"
    lines = []
    for o in outcomes:
        mark = "SKIP" if o.passed is None else "PASS" if o.passed else "FAIL" if o.level == MUST else "WARN"
        lines.append(f"{mark:4}  {o.level:6}  {o.rule:28}  {texts.get(o.rule, '')}")
        if not o.passed:
            lines.append(f"{'':42}{o.detail}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="rpp-reward-conformance", description=__doc__.split("\n\n")[0])
    p.add_argument("address", help="host:port of the reward service")
    p.add_argument("--kind", choices=["outcome", "process"], help="fail unless GetInfo reports this kind")
    p.add_argument("--token-env", help="environment variable holding the bearer token (checks auth too)")
    p.add_argument("--tls-ca", help="PEM CA to verify the server (turns TLS on)")
    p.add_argument("--tls-cert", help="client certificate PEM, for mTLS")
    p.add_argument("--tls-key", help="client key PEM, for mTLS")
    p.add_argument("--tls-server-name", help="name to check in the server certificate")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per call")
    args = p.parse_args(argv)
    token = None
    if args.token_env:
        token = os.environ.get(args.token_env)
        if not token:
            p.error(f"--token-env {args.token_env}: that environment variable is not set")
    options = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]
    if args.tls_ca or args.tls_cert:
        tls = TLSConfig(args.tls_cert, args.tls_key, args.tls_ca, args.tls_server_name)
        if args.tls_server_name:
            options.append(("grpc.ssl_target_name_override", args.tls_server_name))
        channel = grpc.secure_channel(args.address, channel_credentials(tls), options=options)
    else:
        channel = grpc.insecure_channel(args.address, options=options)
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    with channel:
        outcomes = run_checks(Context(channel, metadata, args.timeout, token), args.kind)
    print(f"rpp-reward-conformance {args.address} (contract {CONTRACT_VERSION}, {CONTRACT_PATH})")
    print(format_table(outcomes))
    must_failed = [o.rule for o in outcomes if o.passed is False and o.level == MUST]
    should_failed = [o.rule for o in outcomes if o.passed is False and o.level == SHOULD]
    print(f"{len(must_failed)} MUST rule(s) failed, {len(should_failed)} SHOULD rule(s) failed"
          + (f": {', '.join(must_failed + should_failed)}" if must_failed or should_failed else ""))
    return 1 if must_failed else 0


if __name__ == "__main__":
    sys.exit(main())

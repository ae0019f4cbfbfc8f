"""Requests built to hurt a replica get short, clear answers, and the replica keeps serving.

Real servers on loopback: garbage bytes and invalid UTF-8 get INVALID_ARGUMENT (not
UNKNOWN); a 20,000-character duplicated id is refused with a message a default client can
receive; a user function's huge return value is a short per-sample BAD_SCORE; a request of
340,000 steps is split in linear time off the event loop while other calls are answered.
"""

from __future__ import annotations

import textwrap
import threading
import time
import urllib.error
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from reward_server.client import BlockingRewardClient, RewardServiceError
from reward_server.proto import reward_pb2 as pb
from reward_server.scorers.user_function import UserFunctionScorer
from reward_server.server import ServerConfig, start_in_thread
from reward_server.steps import split_steps
from reward_server.types import Sample
from tests.serving_helpers import start_server_processes, stop_server_processes

SCORE = "/rpp.reward.v1.RewardService/Score"

FUNCTIONS = textwrap.dedent(
    '''
    def length(sample):
        return float(len(sample.response))

    def huge(sample):
        return list(range(1_000_000)) if sample.response == "bad" else 1.0

    def per_step(sample, steps):
        return [float(len(s)) for s in steps]

    def slow(sample):
        import time
        time.sleep(1.5)
        return 1.0
    '''
)


@pytest.fixture(scope="module")
def functions(tmp_path_factory):
    path = tmp_path_factory.mktemp("hostile") / "hostile_rewards.py"
    path.write_text(FUNCTIONS)
    return path


@pytest.fixture()
def outcome_server(functions):
    with start_in_thread(UserFunctionScorer(f"{functions}:length"), ServerConfig(metrics_port=None)) as server:
        yield server.address


def raw_score(address: str, payload: bytes) -> grpc.RpcError:
    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary(SCORE, request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.RpcError) as failure:
            call(payload, timeout=10)
    return failure.value


def assert_still_serves(address: str) -> None:
    client = BlockingRewardClient(address, timeout_s=30)
    try:
        [result] = client.score([Sample(id="ok", prompt="q", response="four")])
        assert result.outcome == 4.0
    finally:
        client.close()


def test_garbage_and_invalid_utf8_get_invalid_argument(outcome_server):
    for payload in (b"\xff\xff\xff\xff not a protobuf", _sample_with_id(b"\xed\xa0\x80")):
        error = raw_score(outcome_server, payload)
        assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "not a valid rpp.reward.v1.ScoreRequest" in error.details() and len(error.details()) < 600
    assert_still_serves(outcome_server)


def _sample_with_id(raw_id: bytes) -> bytes:
    """A ScoreRequest whose one sample's id holds ``raw_id`` (field 1 in both, by hand)."""
    sample = b"\x0a" + bytes([len(raw_id)]) + raw_id + b"\x1a\x01x"
    return b"\x0a" + bytes([len(sample)]) + sample


def test_a_huge_duplicated_id_is_refused_with_a_short_message(outcome_server):
    long_id = "i" * 20_000
    client = BlockingRewardClient(outcome_server, timeout_s=30)
    try:
        with pytest.raises(RewardServiceError) as refused:
            client.score([Sample(id=long_id, prompt="q", response="a"), Sample(id=long_id, prompt="q", response="b")])
        assert refused.value.code == "INVALID_ARGUMENT"  # not RESOURCE_EXHAUSTED, not retried
        assert "duplicates" in refused.value.details and len(refused.value.details) < 600
    finally:
        client.close()
    assert_still_serves(outcome_server)


def test_a_huge_return_value_is_a_short_bad_score(functions):
    with start_in_thread(UserFunctionScorer(f"{functions}:huge"), ServerConfig(metrics_port=None)) as server:
        client = BlockingRewardClient(server.address, timeout_s=60)
        try:
            bad, good = client.score(
                [Sample(id="b", prompt="q", response="bad"), Sample(id="g", prompt="q", response="x")]
            )
        finally:
            client.close()
    assert bad.error.code == "BAD_SCORE" and len(bad.error.message) < 400 and "..." in bad.error.message
    assert good.outcome == 1.0


def test_340k_steps_are_split_while_other_calls_are_answered(tmp_path, functions):
    response = "\n\n".join(f"s{i % 10}" for i in range(340_000))  # 1.02 MB
    assert len(split_steps(response)) == 340_000
    procs, ready = start_server_processes(tmp_path, 1, [
        "--scorer", "user", "--kind", "process", "--function", f"{functions}:per_step",
        "--max-sample-bytes", str(2 << 20)])
    address = ready[0]["address"]
    big_client = BlockingRewardClient(address, timeout_s=120)
    client = BlockingRewardClient(address, timeout_s=30)
    try:
        client.score([Sample(id="warm", prompt="q", response="a\n\nb")])  # workers started
        done: dict[str, object] = {}
        big = threading.Thread(
            target=lambda: done.update(r=big_client.score([Sample(id="big", prompt="q", response=response)]))
        )
        big.start()
        latencies = []
        with grpc.insecure_channel(address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while big.is_alive() and len(latencies) < 100:
                started = time.perf_counter()
                assert (
                    health.Check(health_pb2.HealthCheckRequest(), timeout=10).status
                    == health_pb2.HealthCheckResponse.SERVING
                )
                [small] = client.score([Sample(id=f"small{len(latencies)}", prompt="q", response="ab\n\ncd")])
                assert [s.score for s in small.steps] == [2.0, 2.0]
                latencies.append(time.perf_counter() - started)
                time.sleep(0.05)
        big.join(timeout=120)
    finally:
        client.close()
        big_client.close()
        stop_server_processes(procs)
    [result] = done["r"]
    assert result.ok and len(result.steps) == 340_000 and result.steps[-1].score == 2.0
    assert len(latencies) >= 3, "the big request finished before the small calls could be measured"
    assert max(latencies) < 1.0, f"health + a small call took up to {max(latencies):.2f} s: {latencies}"


def test_admission_is_bounded_in_bytes_and_in_calls(functions):
    """Past max_inflight_bytes or max_concurrent_calls a call is refused at once, before its
    message is read, with RESOURCE_EXHAUSTED (clients back off and retry), and the held calls
    finish. Calls are admitted by the size they declare in rpp-request-bytes metadata (as
    RewardClient does); an undeclared one is taken to be as big as the largest message."""
    config = ServerConfig(metrics_port=None, max_inflight_bytes=1 << 20, max_concurrent_calls=2)
    scorer = UserFunctionScorer(f"{functions}:slow", isolation="thread")
    big = pb.ScoreRequest(samples=[pb.Sample(id="b", prompt="q", response="x" * 700_000)]).SerializeToString()
    small = pb.ScoreRequest(samples=[pb.Sample(id="s", prompt="q", response="x")]).SerializeToString()

    def declared(payload: bytes, size: int | None = None) -> tuple:
        return (("rpp-request-bytes", str(len(payload) if size is None else size)),)

    with start_in_thread(scorer, config) as server, grpc.insecure_channel(server.address) as channel:
        call = channel.unary_unary(SCORE, request_serializer=None, response_deserializer=pb.ScoreResponse.FromString)
        first = call.future(big, timeout=30)  # nothing held: taken without a declaration
        time.sleep(0.3)
        with pytest.raises(grpc.RpcError) as by_bytes:
            call(big, timeout=10, metadata=declared(big))  # 1.4 MB held would exceed 1 MiB
        assert by_bytes.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_inflight_bytes=1048576" in by_bytes.value.details()
        with pytest.raises(grpc.RpcError) as undeclared:
            call(small, timeout=10)  # could be up to 4 MiB: not read while 700 kB are held
        assert undeclared.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "undeclared size" in undeclared.value.details()
        second = call.future(small, timeout=30, metadata=declared(small))  # small: the 2nd call allowed
        time.sleep(0.3)
        with pytest.raises(grpc.RpcError) as by_calls:
            call(small, timeout=10, metadata=declared(small))
        assert by_calls.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_concurrent_calls=2" in by_calls.value.details()
        for refused in (by_bytes.value, undeclared.value, by_calls.value):  # busy, with gRPC's pushback trailer
            assert dict(refused.trailing_metadata()).get("grpc-retry-pushback-ms") == "50"
        assert first.result().results[0].outcome == 1.0 and second.result().results[0].outcome == 1.0
        assert call(small, timeout=30).results[0].outcome == 1.0  # room again

        # A declaration must be the truth and a number; one past the message limit is "too
        # big" (no pushback: not worth retrying).
        for metadata, code, words in [
            (declared(small, len(small) - 1), grpc.StatusCode.INVALID_ARGUMENT, "metadata said"),
            (declared(small, "12abc"), grpc.StatusCode.INVALID_ARGUMENT, "decimal integer"),
            (declared(small, 5 << 20), grpc.StatusCode.RESOURCE_EXHAUSTED, "max_request_bytes=4194304"),
        ]:
            with pytest.raises(grpc.RpcError) as bad:
                call(small, timeout=10, metadata=metadata)
            assert bad.value.code() is code and words in bad.value.details(), bad.value.details()
            assert "grpc-retry-pushback-ms" not in dict(bad.value.trailing_metadata() or ())
        assert call(small, timeout=30, metadata=declared(small)).results[0].outcome == 1.0


def test_the_metrics_port_serves_metrics_only(functions):
    scorer = UserFunctionScorer(f"{functions}:length")
    with start_in_thread(scorer, ServerConfig(metrics_port=0)) as server:
        assert_still_serves(server.address)
        base = f"http://127.0.0.1:{server.metrics_port}"
        with urllib.request.urlopen(f"{base}/metrics", timeout=10) as page:
            assert b'rpp_reward_requests_total{code="OK",method="Score"} 1.0' in page.read()
        with pytest.raises(urllib.error.HTTPError) as other:
            urllib.request.urlopen(f"{base}/debug", timeout=10)
        assert other.value.code == 404

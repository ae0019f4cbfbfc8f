"""No single sample or scorer can freeze a replica: real rpp-reward-server processes.

A user function that hangs (sync, async, or an ``async def`` that blocks its loop), or
that takes far longer than the rest, costs its own sample a TIMEOUT; a good request sent
meanwhile is answered correctly at once. A scorer stuck in the server process itself
(``isolation=thread``) turns health NOT_SERVING and back, and SIGTERM still ends the
process.
"""

from __future__ import annotations

import signal
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from reward_server.client import BlockingRewardClient, RewardServiceError
from reward_server.proto import reward_pb2 as pb
from reward_server.proto import reward_pb2_grpc
from reward_server.types import Sample
from tests.serving_helpers import start_server_processes, stop_server_processes

pytestmark = pytest.mark.slow

FUNCTIONS = textwrap.dedent(
    '''
    import asyncio
    import time

    def sync_hang(sample):
        if sample.response == "bad":
            while True:
                pass
        return float(len(sample.response))

    async def async_hang(sample):
        if sample.response == "bad":
            await asyncio.Event().wait()
        return float(len(sample.response))

    async def async_blocking(sample):
        if sample.response == "bad":
            time.sleep(3600)
        return float(len(sample.response))

    def slow(sample):
        if sample.response == "bad":
            time.sleep(6)
        return float(len(sample.response))

    def stuck_for_a_while(sample):
        if sample.response == "bad":
            time.sleep(4)
        return float(len(sample.response))
    '''
)

GOOD = [Sample(id=f"good{i}", prompt="q", response="x" * (i + 1)) for i in range(4)]


@pytest.fixture(scope="module")
def functions(tmp_path_factory):
    path = tmp_path_factory.mktemp("stuck") / "stuck_rewards.py"
    path.write_text(FUNCTIONS)
    return path


def start(tmp_path, functions, name: str, *args: str):
    procs, ready = start_server_processes(
        tmp_path, 1, ["--scorer", "user", "--function", f"{functions}:{name}", "--kind", "outcome", *args]
    )
    return procs[0], ready[0]["address"]


def health(address: str) -> int:
    with grpc.insecure_channel(address) as channel:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status


def score_good_while_bad_runs(address: str, bad_timeout_s: float):
    """Send one bad sample, then good requests while it runs; returns (bad result, good
    results, the slowest good call's latency)."""
    client = BlockingRewardClient(address, timeout_s=60, merge_samples=0)
    try:
        client.get_info()
        with ThreadPoolExecutor(1) as pool:
            bad = pool.submit(client.score, [Sample(id="bad", prompt="q", response="bad")])
            time.sleep(0.5)  # the bad sample is running now
            latencies, goods = [], []
            for sample in GOOD:
                started = time.perf_counter()
                goods.extend(client.score([sample]))
                latencies.append(time.perf_counter() - started)
            assert not bad.done(), "the bad sample finished before the good requests were sent"
            [bad_result] = bad.result(timeout=bad_timeout_s + 30)
        return bad_result, goods, max(latencies)
    finally:
        client.close()


@pytest.mark.parametrize("name", ["sync_hang", "async_hang", "async_blocking"])
def test_a_hung_user_function_costs_only_its_sample(tmp_path, functions, name):
    # timeout_s leaves the good calls time to finish first on a loaded machine (at 3 s, the
    # bad sample once timed out while the four good calls were still being answered).
    proc, address = start(tmp_path, functions, name, "--option", "timeout_s=6", "--option", "workers=2")
    try:
        bad, goods, slowest = score_good_while_bad_runs(address, bad_timeout_s=6)
        assert [g.outcome for g in goods] == [float(len(s.response)) for s in GOOD]
        assert slowest < 2.0, f"a good request waited {slowest:.2f} s behind the hung one"
        assert bad.error is not None and bad.error.code == "TIMEOUT"
        assert "'bad'" in bad.error.message
        # Cancelled by its own worker (an async function that awaits forever), or its worker
        # killed and replaced (a sync loop, or an async def that blocks its event loop).
        how = "was cancelled" if name == "async_hang" else "killed and replaced"
        assert how in bad.error.message, bad.error.message
        # The replaced worker serves again: every later call is answered.
        client = BlockingRewardClient(address, timeout_s=30)
        try:
            again = [Sample(id=f"again{i}", prompt="q", response="y" * i) for i in range(1, 13)]
            assert [r.outcome for r in client.score(again)] == [float(i) for i in range(1, 13)]
        finally:
            client.close()
        assert health(address) == health_pb2.HealthCheckResponse.SERVING
    finally:
        stop_server_processes([proc])


def test_a_slow_sample_does_not_hold_up_other_callers(tmp_path, functions):
    proc, address = start(tmp_path, functions, "slow", "--option", "workers=2")
    try:
        bad, goods, slowest = score_good_while_bad_runs(address, bad_timeout_s=6)
        assert slowest < 2.0, f"a good request waited {slowest:.2f} s behind a 6 s sample"
        assert [g.outcome for g in goods] == [float(len(s.response)) for s in GOOD]
        assert bad.ok and bad.outcome == 3.0  # slow, not wrong: it is answered in full
    finally:
        stop_server_processes([proc])


def test_a_stuck_scorer_turns_health_not_serving_and_back(tmp_path, functions):
    proc, address = start(tmp_path, functions, "stuck_for_a_while",
                          "--option", "isolation=thread", "--scorer-timeout-s", "1")
    client = BlockingRewardClient(address, timeout_s=30, merge_samples=0)
    try:
        assert health(address) == health_pb2.HealthCheckResponse.SERVING
        started = time.perf_counter()
        [bad] = client.score([Sample(id="bad", prompt="q", response="bad")])
        assert bad.error.code == "TIMEOUT" and time.perf_counter() - started < 3
        assert "scorer_timeout_s=1" in bad.error.message
        assert health(address) == health_pb2.HealthCheckResponse.NOT_SERVING
        # A caller that ignores health (rpp's client does not: it moves to other replicas)
        # is refused at once, not queued behind the stuck call.
        with grpc.insecure_channel(address) as channel, pytest.raises(grpc.RpcError) as refused:
            reward_pb2_grpc.RewardServiceStub(channel).Score(
                pb.ScoreRequest(samples=[pb.Sample(id="g", prompt="q", response="x")]), timeout=5)
        assert refused.value.code() is grpc.StatusCode.UNAVAILABLE and "stuck" in refused.value.details()
        deadline = time.monotonic() + 10
        while health(address) != health_pb2.HealthCheckResponse.SERVING:
            assert time.monotonic() < deadline, "health never came back after the call returned"
            time.sleep(0.1)
        assert [r.outcome for r in client.score(GOOD)] == [float(len(s.response)) for s in GOOD]
    finally:
        client.close()
        stop_server_processes([proc])


@pytest.mark.parametrize("isolation", ["process", "thread"])
def test_sigterm_ends_the_server_in_time_with_a_hung_function(tmp_path, functions, isolation):
    proc, address = start(tmp_path, functions, "sync_hang", "--option", f"isolation={isolation}",
                          "--option", "timeout_s=600", "--scorer-timeout-s", "700", "--grace-s", "1")
    client = BlockingRewardClient(address, timeout_s=60, retry_attempts=1)
    try:
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(client.score, [Sample(id="bad", prompt="q", response="bad")])
            time.sleep(1.0)
            started = time.perf_counter()
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=15)
            took = time.perf_counter() - started
            assert took < 1 + 5, f"SIGTERM took {took:.1f} s with a hung function (grace 1 s)"
            with pytest.raises(RewardServiceError):
                pending.result(timeout=30)
    finally:
        client.close()
        stop_server_processes([proc])


def test_a_math_bomb_does_not_hold_other_callers_hostage(tmp_path):
    """``9^{9^{9^9}}`` keeps its math-verify worker busy until its deadline; meanwhile
    every unrelated request is answered within a 5 s deadline."""
    procs, ready = start_server_processes(tmp_path, 1, ["--scorer", "math-answer", "--option", "deadline_s=10"])
    address = ready[0]["address"]
    bomb_client = BlockingRewardClient(address, timeout_s=60, merge_samples=0)
    client = BlockingRewardClient(address, timeout_s=5, merge_samples=0, retry_attempts=1)
    try:
        client.score([Sample(id="warm", prompt="q", response="Answer: 1", reference="1")])
        with ThreadPoolExecutor(1) as pool:
            bomb = pool.submit(
                bomb_client.score, [Sample(id="bomb", prompt="q", response="Answer: $9^{9^{9^{9}}}$", reference="3")]
            )
            time.sleep(0.5)
            for i in range(14):
                [result] = client.score([Sample(id=f"g{i}", prompt="q", response=f"Answer: {i}", reference=str(i))])
                assert result.outcome == 1.0
            assert not bomb.done(), "the bomb finished early: the test would prove nothing"
            [late] = bomb.result(timeout=60)
        assert late.error.code == "TIMEOUT" and "deadline_s=10" in late.error.message
    finally:
        bomb_client.close()
        client.close()
        stop_server_processes(procs)

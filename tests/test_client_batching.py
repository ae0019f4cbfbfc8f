"""The client: target lists, splitting to the server's limits, requests in flight, errors."""

from __future__ import annotations

import asyncio
import socket

import pytest

from reward_server.client import (
    BlockingRewardClient,
    RewardClient,
    RewardServiceError,
    RewardServiceUnavailable,
    channel_target,
)
from reward_server.server import ServerConfig, ServerHandle, start_in_thread
from reward_server.types import Sample
from tests.serving_helpers import SlowAsyncScorer, expected_outcome, make_samples


def test_channel_target_forms() -> None:
    assert channel_target("dns:///reward.default.svc.cluster.local:50051") == "dns:///reward.default.svc.cluster.local:50051"
    assert channel_target("127.0.0.1:5000") == "127.0.0.1:5000"
    assert channel_target(["127.0.0.1:1", "localhost:2"]) == "ipv4:127.0.0.1:1,127.0.0.1:2"
    assert channel_target("10.0.0.1:1, 10.0.0.2:2") == "ipv4:10.0.0.1:1,10.0.0.2:2"
    assert channel_target(["[::1]:1", "[::1]:2"]) == "ipv6:[::1]:1,[::1]:2"
    with pytest.raises(ValueError, match="needs the form host:port"):
        channel_target(["127.0.0.1", "127.0.0.2:1"])
    with pytest.raises(ValueError, match="no reward service address"):
        channel_target([])


def test_big_batches_are_split_to_the_advertised_size_with_several_in_flight() -> None:
    scorer = SlowAsyncScorer(delay_s=0.05)
    config = ServerConfig(max_samples_per_request=8, max_batch_samples=64, max_wait_ms=20, metrics_port=None)
    with start_in_thread(scorer, config) as server:

        async def run() -> list:
            async with RewardClient(server.address, max_in_flight=3) as client:
                return await client.score(make_samples(50))

        results = asyncio.run(run())
    assert [r.outcome for r in results] == [expected_outcome(s) for s in make_samples(50)]
    assert sum(scorer.batch_sizes) == 50
    # Requests of 8 merged on the server: more than one was in flight, never more than three.
    assert 8 < max(scorer.batch_sizes) <= 24, scorer.batch_sizes


def test_requests_are_split_to_the_advertised_byte_limit() -> None:
    scorer = SlowAsyncScorer(delay_s=0.0)
    config = ServerConfig(max_message_bytes=4096, max_sample_bytes=4096, metrics_port=None)
    samples = [Sample(f"kb{i}", "", "é" * 500) for i in range(10)]  # ~1 KB each
    with start_in_thread(scorer, config) as server:
        with BlockingRewardClient(server.address, max_in_flight=1) as client:
            results = client.score(samples)
            with pytest.raises(ValueError, match="sample 'huge' is .* over the server's advertised max_request_bytes"):
                client.score([Sample("huge", "", "z" * 5000)])
    assert [r.outcome for r in results] == [1000.0] * 10
    assert max(scorer.batch_sizes) <= 3 and sum(scorer.batch_sizes) == 10


def test_by_default_a_request_over_4_mib_is_refused_by_the_transport_and_the_client_splits_to_it() -> None:
    """The default receive limit is gRPC's 4 MiB: a bigger message is refused before Python
    sees it (too big: no pushback, so not retried), and a client that reads GetInfo never
    sends one."""
    import grpc

    from reward_server.contract import PUSHBACK_TRAILER
    from reward_server.proto import reward_pb2 as pb

    scorer = SlowAsyncScorer(delay_s=0.0)
    samples = [Sample(f"big{i}", "", "x" * (512 << 10)) for i in range(16)]  # 8.4 MB in all
    with start_in_thread(scorer, ServerConfig(metrics_port=None)) as server:
        assert server.server.servicer.info().max_request_bytes == 4 << 20
        with BlockingRewardClient(server.address) as client:
            results = client.score(samples)
        request = pb.ScoreRequest(samples=[pb.Sample(id=s.id, response=s.response) for s in samples])
        options = [("grpc.max_send_message_length", 64 << 20)]
        with grpc.insecure_channel(server.address, options=options) as channel:
            score = channel.unary_unary("/rpp.reward.v1.RewardService/Score", request_serializer=None,
                                        response_deserializer=pb.ScoreResponse.FromString)
            with pytest.raises(grpc.RpcError) as refused:
                score(request.SerializeToString(), timeout=30)
    assert [r.outcome for r in results] == [float(512 << 10)] * 16
    assert len(scorer.batch_sizes) >= 3 and sum(scorer.batch_sizes) == 16  # 8.4 MB went as 3+ requests
    assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in refused.value.details()
    assert PUSHBACK_TRAILER not in dict(refused.value.trailing_metadata() or ())


def score_rpcs(server: ServerHandle) -> int:
    """Score RPCs the server answered OK, from its own Prometheus registry."""
    value = server.server.metrics.registry.get_sample_value(
        "rpp_reward_requests_total", {"method": "Score", "code": "OK"}
    )
    return int(value or 0)


def test_small_calls_that_find_every_slot_busy_go_out_as_one_request() -> None:
    scorer = SlowAsyncScorer(delay_s=0.05)
    singles = [[Sample(f"one{i}", "q", "é" * i + "x")] for i in range(20)]
    pairs = [[Sample(f"a{i}", "", "y" * i), Sample(f"b{i}", "", "z" * (2 * i))] for i in range(5)]
    with start_in_thread(scorer, ServerConfig(metrics_port=None)) as server:

        async def run() -> list:
            async with RewardClient(server.address, max_in_flight=1) as client:
                await client.get_info()
                first = asyncio.ensure_future(client.score(singles[0]))  # finds the slot free
                gone = asyncio.ensure_future(client.score([Sample("gone", "", "w")]))
                rest = [asyncio.ensure_future(client.score(c)) for c in singles[1:] + pairs]
                await asyncio.sleep(0)  # every call has been made; none is answered yet
                gone.cancel()  # a caller that leaves a merged request takes nobody with it
                return await asyncio.gather(first, *rest)

        results = asyncio.run(run())
        rpcs = score_rpcs(server)
    for samples, got in zip(singles + pairs, results, strict=True):
        assert [r.id for r in got] == [s.id for s in samples]
        assert [r.outcome for r in got] == [expected_outcome(s) for s in samples], "results mixed between callers"
    # The first call went alone; the 25 that waited for the slot (and the cancelled one) went together.
    assert rpcs == 2 and scorer.batch_sizes == [1, 1 + 19 + 2 * 5], (rpcs, scorer.batch_sizes)


def test_merging_keeps_ids_unique_per_request_and_can_be_turned_off() -> None:
    scorer = SlowAsyncScorer(delay_s=0.02)
    calls = [[Sample("x", "", "v" * (i + 1))] for i in range(6)]  # every caller names its sample "x"
    with start_in_thread(scorer, ServerConfig(metrics_port=None)) as server:

        async def run(**kwargs) -> list:
            async with RewardClient(server.address, max_in_flight=1, **kwargs) as client:
                await client.get_info()
                return await asyncio.gather(*(client.score(c) for c in calls))

        same_ids = asyncio.run(run())
        rpcs_merging = score_rpcs(server)
        unmerged = asyncio.run(run(merge_samples=0))
        rpcs_unmerged = score_rpcs(server) - rpcs_merging
    # One request cannot hold two samples named "x", so none were merged, and none mixed up.
    assert [r[0].outcome for r in same_ids] == [float(i + 1) for i in range(6)]
    assert rpcs_merging == 6 and scorer.batch_sizes[:6] == [1] * 6
    assert [r[0].outcome for r in unmerged] == [float(i + 1) for i in range(6)] and rpcs_unmerged == 6


def test_a_bad_call_in_a_merged_request_fails_alone() -> None:
    scorer = SlowAsyncScorer(delay_s=0.02)
    good = [[Sample(f"g{i}", "", "ok" * (i + 1))] for i in range(5)]
    bad = [Sample("bad", "", "abc"), Sample("bad", "", "abd")]  # one id twice: the server refuses it
    with start_in_thread(scorer, ServerConfig(metrics_port=None)) as server:

        async def run() -> list:
            async with RewardClient(server.address, max_in_flight=1) as client:
                await client.get_info()
                calls = [good[0], good[1], bad, *good[2:]]  # bad waits for the slot with good[1:]
                return await asyncio.gather(*(client.score(c) for c in calls), return_exceptions=True)

        outcomes = asyncio.run(run())
    error = outcomes.pop(2)
    assert isinstance(error, RewardServiceError) and error.code == "INVALID_ARGUMENT"
    assert "samples[1].id: 'bad' duplicates samples[0].id" in str(error)
    assert [r[0].outcome for r in outcomes] == [2.0 * (i + 1) for i in range(5)]


@pytest.mark.parametrize("moment", ["merged-waiting", "merged-not-started", "resent-alone", "unmerged-waiting"])
def test_closing_the_client_ends_every_call_with_client_closed(moment: str) -> None:
    # A scorer slow enough that close() always comes while a call is still being scored.
    with start_in_thread(SlowAsyncScorer(delay_s=1.0), ServerConfig(metrics_port=None)) as server:

        async def run() -> list:
            client = RewardClient(
                server.address, max_in_flight=1, merge_samples=0 if moment == "unmerged-waiting" else 64
            )
            await client.get_info()
            first = asyncio.ensure_future(client.score([Sample("first", "", "r")]))
            await asyncio.sleep(0)  # the first call takes the only slot
            if moment == "resent-alone":  # a bad call makes the merged request come back refused
                others = [[Sample("bad", "", "abc"), Sample("bad", "", "abd")], [Sample("good", "", "ok")]]
            else:
                others = [[Sample(f"c{i}", "", "r")] for i in range(3)]
            calls = [asyncio.ensure_future(client.score(c)) for c in others]
            if moment == "resent-alone":
                await asyncio.wait([calls[0]])  # refused merged, then refused alone: "good" is re-sent now
            else:
                await asyncio.sleep(0 if moment == "merged-not-started" else 0.05)
            await client.close()
            outcomes = await asyncio.wait_for(asyncio.gather(first, *calls, return_exceptions=True), 10)
            with pytest.raises(RewardServiceError, match="CLIENT_CLOSED: this RewardClient is closed"):
                await client.score(make_samples(1))
            return outcomes

        outcomes = asyncio.run(run())
    if moment == "resent-alone":  # the first was answered and the bad call refused before close()
        assert outcomes[0][0].outcome == 1.0 and outcomes[1].code == "INVALID_ARGUMENT"
        outcomes = outcomes[2:]
    # No caller hangs, none sees a bare CancelledError: every one is told the client closed.
    assert all(isinstance(o, RewardServiceError) and o.code == "CLIENT_CLOSED" for o in outcomes), outcomes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_no_live_replica_raises_unavailable_naming_the_addresses() -> None:
    targets = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
    with BlockingRewardClient(targets, name="prm", timeout_s=10, retry_attempts=2) as client:
        with pytest.raises(RewardServiceUnavailable) as info:
            client.score(make_samples(1))
    text = str(info.value)
    assert "'prm'" in text and targets[0] in text and targets[1] in text and "UNAVAILABLE" in text


def test_every_call_has_a_deadline() -> None:
    with start_in_thread(SlowAsyncScorer(delay_s=3.0), ServerConfig(metrics_port=None, grace_s=0.1)) as server:
        with BlockingRewardClient(server.address, timeout_s=0.5) as client:
            client.get_info()
            with pytest.raises(RewardServiceError) as info:
                client.score(make_samples(1))
    assert info.value.code == "DEADLINE_EXCEEDED" and "raise timeout_s" in str(info.value)


def test_empty_input_needs_no_call() -> None:
    with BlockingRewardClient(f"127.0.0.1:{free_port()}") as client:
        assert client.score([]) == []

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
from reward_server.server import ServerConfig, start_in_thread
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

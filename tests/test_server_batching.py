"""Dynamic batching over a real server: merged batches, un-mixed results, failure isolation,
backpressure."""

from __future__ import annotations

import asyncio
import math

import grpc

from reward_server.client import RewardClient
from reward_server.proto import reward_pb2 as pb
from reward_server.proto import reward_pb2_grpc
from reward_server.server import ServerConfig, start_in_thread
from reward_server.types import RewardKind, Sample, Span
from tests.serving_helpers import LengthScorer, SlowAsyncScorer, expected_outcome, make_samples


def test_32_concurrent_clients_get_their_own_results_from_merged_batches() -> None:
    scorer = LengthScorer(delay_s=0.02)  # a blocking "forward": requests pile up meanwhile
    config = ServerConfig(max_batch_samples=64, max_wait_ms=5, metrics_port=None)
    with start_in_thread(scorer, config) as server:

        async def caller(client: RewardClient, task: int) -> None:
            # Each task's samples have distinct lengths, so a mix-up would change the scores.
            samples = [Sample(f"t{task}-{k}", "q", "é" * task + "x" * k) for k in range(3)]
            for _ in range(2):
                results = await client.score(samples)
                assert [r.id for r in results] == [s.id for s in samples]
                assert [r.outcome for r in results] == [expected_outcome(s) for s in samples]

        async def run() -> None:
            # merge_samples=0: every call is its own request, so any merging is the server's.
            async with RewardClient(server.address, merge_samples=0) as client:
                await asyncio.gather(*(caller(client, t) for t in range(32)))

        asyncio.run(run())
    assert sum(scorer.batch_sizes) == 32 * 2 * 3
    assert max(scorer.batch_sizes) > 3, f"no batch merged two requests: {scorer.batch_sizes}"
    assert max(scorer.batch_sizes) <= 64


def test_batches_respect_the_cost_budget_and_an_oversized_sample_runs_alone() -> None:
    scorer = SlowAsyncScorer(delay_s=0.01)
    # cost = prompt + response bytes; 10-byte samples, a budget of 35 fits three of them.
    config = ServerConfig(max_batch_samples=64, max_batch_bytes=35, max_wait_ms=20, metrics_port=None)
    with start_in_thread(scorer, config) as server:

        async def run() -> list:
            async with RewardClient(server.address) as client:
                samples = [Sample(f"s{i}", "", "0123456789") for i in range(7)] + [Sample("huge", "", "z" * 100)]
                return await client.score(samples)

        results = asyncio.run(run())
    assert [r.outcome for r in results] == [10.0] * 7 + [100.0]
    assert scorer.batch_sizes == [3, 3, 1, 1]


def test_the_default_cost_is_utf8_bytes() -> None:
    scorer = LengthScorer()
    assert scorer.cost(Sample("a", "q?", "42")) == 4
    assert scorer.cost(Sample("b", "é", "日本x😀")) == 2 + (3 + 3 + 1 + 4)


def test_a_failing_scorer_costs_its_batch_not_the_server() -> None:
    scorer = LengthScorer(fail_when="BOOM", nan_when="NAN")
    with start_in_thread(scorer, ServerConfig(metrics_port=None)) as server:

        async def run() -> None:
            async with RewardClient(server.address) as client:
                failed = await client.score([Sample("a", "", "fine"), Sample("b", "", "BOOM")])
                assert [r.error.code for r in failed] == ["SCORER_FAILED"] * 2
                assert "RuntimeError: backend crashed on 'BOOM'" in failed[1].error.message
                assert "length-outcome" in failed[1].error.message
                nan = await client.score([Sample("n", "", "NAN"), Sample("m", "", "ok")])
                assert nan[0].error.code == "BAD_SCORE" and "sample 'n'" in nan[0].error.message
                assert nan[0].outcome is None and nan[1].outcome == 2.0
                again = await client.score(make_samples(4))
                assert all(r.ok for r in again)

        asyncio.run(run())


class WrongIdScorer(LengthScorer):
    async def score(self, samples: list[Sample]) -> list:
        results = await super().score(samples)
        return list(reversed(results))


def test_results_out_of_order_become_scorer_failed_errors() -> None:
    with start_in_thread(WrongIdScorer(), ServerConfig(metrics_port=None)) as server:

        async def run() -> list:
            async with RewardClient(server.address) as client:
                return await client.score([Sample("a", "", "x"), Sample("b", "", "yy")])

        results = asyncio.run(run())
    assert [r.error.code for r in results] == ["SCORER_FAILED"] * 2
    assert "expected 'a'" in results[0].error.message


def test_process_service_splits_or_scores_exactly_the_given_steps() -> None:
    with start_in_thread(LengthScorer(RewardKind.PROCESS), ServerConfig(metrics_port=None)) as server:

        async def run() -> list:
            async with RewardClient(server.address) as client:
                info = await client.get_info()
                assert info.kind is RewardKind.PROCESS and info.step_separator == "\n\n"
                text = "déjà\n\nvu 🙂"
                return await client.score([Sample("split", "", text), Sample("given", "", text, steps=[Span(0, 3)])])

        split, given = asyncio.run(run())
    assert [(s.span, s.score) for s in split.steps] == [(Span(0, 6), 6.0), (Span(8, 15), 7.0)]
    assert [(s.span, s.score) for s in given.steps] == [(Span(0, 3), 3.0)]


def test_queue_over_its_bound_answers_resource_exhausted() -> None:
    scorer = SlowAsyncScorer(delay_s=0.5)
    config = ServerConfig(max_batch_samples=4, max_queue=8, max_samples_per_request=8, metrics_port=None)
    with start_in_thread(scorer, config) as server:

        async def run() -> list:
            async with grpc.aio.insecure_channel(server.address) as channel:
                stub = reward_pb2_grpc.RewardServiceStub(channel)

                async def call(k: int):
                    req = pb.ScoreRequest(samples=[pb.Sample(id=f"{k}-{i}", response="r") for i in range(8)])
                    try:
                        return await stub.Score(req, timeout=20)
                    except grpc.aio.AioRpcError as exc:
                        return exc

                return await asyncio.gather(*(call(k) for k in range(4)))

        outcomes = asyncio.run(run())
    refused = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
    served = [o for o in outcomes if not isinstance(o, grpc.aio.AioRpcError)]
    assert refused and served
    assert all(e.code() is grpc.StatusCode.RESOURCE_EXHAUSTED and "max_queue=8" in e.details() for e in refused)
    # Busy, not too big (contract 1.1): gRPC's server-pushback trailer says when to retry.
    assert all(dict(e.trailing_metadata()).get("grpc-retry-pushback-ms") == "50" for e in refused)
    assert all(math.isclose(r.results[0].outcome, 1.0) for r in served)

"""Continuous batching and where the scorer runs, on the batcher itself (no network)."""

from __future__ import annotations

import asyncio
import threading

from reward_server.batching import BatchingConfig, DynamicBatcher
from reward_server.scorers.base import Scorer
from reward_server.types import Result, RewardKind, Sample


class GatedScorer(Scorer):
    """Records every batch and the thread it ran on; the first batch waits for ``gate``."""

    kind = RewardKind.OUTCOME
    model_name = "gated"

    def __init__(self, blocking: bool = True) -> None:
        self.blocking = blocking
        self.batch_sizes: list[int] = []
        self.threads: set[int] = set()
        self.started = threading.Event()
        self.gate = threading.Event()
        self.gate.set()

    async def score(self, samples: list[Sample]) -> list[Result]:
        self.batch_sizes.append(len(samples))
        self.threads.add(threading.get_ident())
        self.started.set()
        while not self.gate.is_set():
            await asyncio.sleep(0.005)
        return [Result(id=s.id, outcome=float(len(s.response))) for s in samples]


def one(i: int) -> list[Sample]:
    return [Sample(f"s{i}", "", "x" * i)]


def test_an_idle_scorer_runs_a_lone_request_at_once_and_a_busy_one_merges_what_queued() -> None:
    scorer = GatedScorer()
    scorer.gate.clear()

    async def run() -> None:
        batcher = DynamicBatcher(scorer, BatchingConfig(max_wait_ms=0))
        first = asyncio.ensure_future(batcher.submit(one(1)))
        await asyncio.to_thread(scorer.started.wait, 5)
        assert scorer.batch_sizes == [1]  # nobody waited for more work to arrive
        rest = [asyncio.ensure_future(batcher.submit(one(i))) for i in range(2, 7)]
        await asyncio.sleep(0.05)
        assert scorer.batch_sizes == [1]  # one batch at a time: the rest queue meanwhile
        scorer.gate.set()
        results = await asyncio.wait_for(asyncio.gather(first, *rest), 10)
        assert [r[0].outcome for r in results] == [float(i) for i in range(1, 7)]
        await batcher.close()

    asyncio.run(run())
    assert scorer.batch_sizes == [1, 5]


def test_max_wait_applies_to_an_idle_scorer_only() -> None:
    scorer = GatedScorer()
    scorer.gate.clear()

    async def run() -> None:
        # A lone request waits up to max_wait for company; a full batch does not wait.
        batcher = DynamicBatcher(scorer, BatchingConfig(max_batch_samples=4, max_wait_ms=60_000))
        full = asyncio.ensure_future(batcher.submit([Sample(f"f{i}", "", "y") for i in range(4)]))
        await asyncio.to_thread(scorer.started.wait, 5)
        # Queued while the scorer is busy: taken as soon as it is free, no 60 s timer.
        late = asyncio.ensure_future(batcher.submit(one(3)))
        await asyncio.sleep(0.02)
        scorer.gate.set()
        await asyncio.wait_for(asyncio.gather(full, late), 10)
        await batcher.close()

    asyncio.run(run())
    assert scorer.batch_sizes == [4, 1]

    waiting = GatedScorer()

    async def lone() -> None:
        batcher = DynamicBatcher(waiting, BatchingConfig(max_wait_ms=500))
        first = asyncio.ensure_future(batcher.submit(one(1)))
        await asyncio.sleep(0.1)  # an idle scorer waits for company, up to max_wait
        assert waiting.batch_sizes == []
        await asyncio.wait_for(asyncio.gather(first, batcher.submit(one(2))), 10)
        await batcher.close()

    asyncio.run(lone())
    assert waiting.batch_sizes == [2]


def test_non_blocking_scorers_run_on_the_server_loop_and_blocking_ones_on_their_thread() -> None:
    for blocking in (False, True):
        scorer = GatedScorer(blocking=blocking)

        async def run(scorer: GatedScorer = scorer) -> int:
            batcher = DynamicBatcher(scorer, BatchingConfig())
            results = await asyncio.gather(*(batcher.submit(one(i)) for i in range(1, 9)))
            assert [r[0].outcome for r in results] == [float(i) for i in range(1, 9)]
            await batcher.close()
            return threading.get_ident()

        loop_thread = asyncio.run(run())
        assert (scorer.threads == {loop_thread}) is (not blocking), (blocking, scorer.threads, loop_thread)
        assert sum(scorer.batch_sizes) == 8


def test_a_server_timeout_at_or_below_the_scorers_own_stuck_sample_timeout_is_refused() -> None:
    """A user function's worker is killed at its timeout_s; a server timeout that fires
    first would fail the whole batch and keep health NOT_SERVING until then."""
    scorer = GatedScorer(blocking=False)
    scorer.ends_stuck_sample_after_s = 30.0

    async def build(scorer_timeout_s: float) -> None:
        await DynamicBatcher(scorer, BatchingConfig(scorer_timeout_s=scorer_timeout_s)).close()

    for too_short in (10.0, 30.0):
        try:
            asyncio.run(build(too_short))
        except ValueError as exc:
            assert f"scorer_timeout_s={too_short:g} s" in str(exc) and "timeout_s=30 s" in str(exc)
        else:
            raise AssertionError(f"scorer_timeout_s={too_short} was accepted")
    asyncio.run(build(31.0))
    asyncio.run(build(0.0))  # no server limit: only the scorer's own

"""Dynamic batching: concurrent requests are merged into scorer batches.

Every sample of every request goes into one FIFO queue. A worker takes the longest
prefix of the queue that fits ``max_batch_samples`` and ``max_batch_cost`` (the sum of
``Scorer.cost``), makes ONE scorer call for it and hands each caller its own results.

Continuous batching (Hugging Face TEI's design): when the scorer is free, the worker takes
whatever is queued now and runs it at once; while the scorer is busy, new work piles up,
so the next batch is bigger. Under load the batch size adapts to the arrival rate and no
sample waits for a timer. ``max_wait_ms`` (default 0) optionally lets an idle scorer wait
that long after the oldest queued sample arrived for the batch to fill (Triton's "max
queue delay"); work that queued while the scorer was busy never waits for it.

Where the scorer runs. A scorer whose ``score`` may block (a torch forward called directly
in ``async def score``: ``Scorer.blocking`` is True or absent) runs on its own thread with
its own event loop, one hand-off per batch, so it never stalls the gRPC event loop: health
checks are answered and the next requests are received and parsed while the model
computes. A scorer that declares ``blocking = False`` (it only awaits: it offloads heavy
work with ``asyncio.to_thread``, an executor or a remote call, or it is trivially cheap)
runs on the server's event loop and saves the two cross-thread wake-ups per batch.

Backpressure: at most ``max_queue`` samples wait; ``submit`` refuses more with QueueFull
(the server answers RESOURCE_EXHAUSTED and clients back off) instead of growing a queue
without limit.

Failure isolation: if the scorer raises, or breaks its contract (wrong number of
results, wrong ids), every sample of that batch gets a SCORER_FAILED error and the
batcher carries on. A result with a NaN or missing score gets BAD_SCORE.

Stuck scorers: a scorer call that outlives ``scorer_timeout_s`` is abandoned: its samples
get TIMEOUT errors at once and the batcher counts the scorer as stuck until the call
returns (``on_stuck(True)``, then ``on_stuck(False)``; the server turns that into health
NOT_SERVING). While it is stuck, queued and new work is refused with ScorerStuck (the
server answers UNAVAILABLE, so clients retry on another replica) instead of waiting behind
a call that may never end. A scorer with ``max_concurrent_batches`` > 1 (a worker pool)
gets that many batches at once, so one slow batch does not hold up the next.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

from reward_server.contract import BAD_SCORE, SCORER_FAILED, TIMEOUT
from reward_server.loop_thread import LoopThread
from reward_server.quoting import short_repr
from reward_server.scorers.base import Scorer
from reward_server.types import Result, RewardKind, Sample, SampleError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchingConfig:
    max_batch_samples: int = 64
    max_batch_cost: int = 262_144  # in Scorer.cost units (UTF-8 bytes by default)
    max_wait_ms: float = 0.0  # 0: continuous batching, an idle scorer never waits for a batch to fill
    max_queue: int = 4096  # samples waiting for a batch, across all callers
    scorer_timeout_s: float = 120.0  # one scorer call; then its samples get TIMEOUT (0: no limit)

    def __post_init__(self) -> None:
        for name in ("max_batch_samples", "max_batch_cost", "max_queue"):
            if getattr(self, name) < 1:
                raise ValueError(f"BatchingConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.max_wait_ms < 0:
            raise ValueError(f"BatchingConfig.max_wait_ms must be >= 0, got {self.max_wait_ms}")
        if self.scorer_timeout_s < 0:
            raise ValueError(f"BatchingConfig.scorer_timeout_s must be >= 0 (0: no limit), got {self.scorer_timeout_s}")


def check_stuck_sample_timeout(scorer: Scorer, scorer_timeout_s: float) -> None:
    """Refuse a server timeout that fires before the scorer ends a stuck sample itself.

    A user function's hung sample is killed with its worker after the function's
    ``timeout_s``, costing only that sample a TIMEOUT. If the server gives up on the batch
    first, every caller in it gets TIMEOUT and health stays NOT_SERVING until the worker is
    killed (measured: 26 s with the default timeout_s of 30 and a 4 s scorer timeout)."""
    own = getattr(scorer, "ends_stuck_sample_after_s", None)
    if own is None or not scorer_timeout_s or own < scorer_timeout_s:
        return
    raise ValueError(
        f"scorer {scorer.model_name!r} ends a stuck sample itself after timeout_s={own:g} s, but "
        f"scorer_timeout_s={scorer_timeout_s:g} s (--scorer-timeout-s) gives up on the whole batch first: "
        "a hung sample would answer every caller of its batch TIMEOUT and keep health NOT_SERVING until "
        f"its worker is killed. Set the scorer's timeout_s below {scorer_timeout_s:g} (--option "
        f"timeout_s=...) or --scorer-timeout-s above {own:g}"
    )


class QueueFull(Exception):
    """The batcher's queue cannot take the request; retry later or elsewhere."""


class BatcherClosed(Exception):
    """The batcher is draining and accepts no new work."""


class ScorerStuck(Exception):
    """A scorer call outlived its timeout and has not returned; no work is taken meanwhile."""


# Called after every scorer batch: (number of samples, total cost, seconds in the scorer).
BatchObserver = Callable[[int, int, float], None]


@dataclass
class _Request:
    """One caller's samples in the queue; batches take consecutive samples from it."""

    samples: list[Sample]
    costs: list[int]
    future: asyncio.Future[list[Result]]
    enqueued_at: float
    results: list[Result | None]
    taken: int = 0  # samples already handed to a batch
    missing: int = 0  # results not yet filled in


# A slice [start, end) of one request's samples, taken into a batch.
_Segment = tuple[_Request, int, int]


def runs_on_event_loop(scorer: Scorer) -> bool:
    """True if ``scorer`` declares that its ``score`` never blocks (``blocking = False``)."""
    return getattr(scorer, "blocking", True) is False


class _ScorerThread:
    """Runs ``scorer.score`` coroutines on a dedicated thread with its own event loop."""

    def __init__(self, scorer: Scorer) -> None:
        self._scorer = scorer
        self._io = LoopThread(f"scorer-{scorer.model_name}")

    async def score(self, samples: list[Sample]) -> list[Result]:
        return await self._io.run_async(self._scorer.score(samples))

    def stop(self, wait: bool = True) -> None:
        self._io.stop(wait)


def check_results(samples: list[Sample], results: object, kind: RewardKind) -> list[Result]:
    """Enforce the Scorer contract on one batch.

    Raises ValueError if the batch as a whole is broken (not a list, wrong length, ids out
    of order); returns the results with BAD_SCORE errors for individual unusable scores.
    """
    if not isinstance(results, list) or len(results) != len(samples):
        got = f"{len(results)} results" if isinstance(results, list) else type(results).__name__
        raise ValueError(f"scorer returned {got} for {len(samples)} samples; need one Result per sample")
    checked = results
    outcome_kind = kind is RewardKind.OUTCOME
    isfinite = math.isfinite
    for i, (sample, result) in enumerate(zip(samples, results, strict=True)):
        if not isinstance(result, Result) or result.id != sample.id:
            got = repr(result.id) if isinstance(result, Result) else type(result).__name__
            raise ValueError(
                f"scorer result {i} has id {got}, expected {short_repr(sample.id)}; results must keep the sample order"
            )
        if result.error is not None:
            continue
        if outcome_kind and result.outcome is not None and isfinite(result.outcome):
            continue  # the usual outcome result: nothing to check further
        problem = _score_problem(sample, result, kind)
        if problem:
            if checked is results:
                checked = list(results)  # copy on the first bad score; never change the scorer's list
            checked[i] = Result(id=sample.id, metrics=result.metrics,
                                error=SampleError(BAD_SCORE, f"sample {short_repr(sample.id)}: {problem}"))
    return checked


def _score_problem(sample: Sample, result: Result, kind: RewardKind) -> str | None:
    if kind is RewardKind.OUTCOME:
        if result.outcome is None or not math.isfinite(result.outcome):
            return f"outcome scorer returned outcome={result.outcome!r}; need a finite float"
        return None
    bad = [s.score for s in result.steps if not math.isfinite(s.score)]
    if bad:
        return f"process scorer returned non-finite step scores {bad}"
    if sample.steps and [s.span for s in result.steps] != sample.steps:
        return (
            f"process scorer returned {len(result.steps)} steps but the request gave "
            f"{len(sample.steps)} spans; it must score exactly the given steps"
        )
    if result.outcome is not None and not math.isfinite(result.outcome):
        return f"process scorer returned outcome={result.outcome!r}; need a finite float or none"
    return None


class DynamicBatcher:
    """Merges concurrent ``submit`` calls into scorer batches. Construct inside its event loop."""

    def __init__(
        self,
        scorer: Scorer,
        config: BatchingConfig,
        on_batch: BatchObserver | None = None,
        on_stuck: Callable[[bool], None] | None = None,
    ):
        check_stuck_sample_timeout(scorer, config.scorer_timeout_s)
        self._scorer = scorer
        self._config = config
        self._on_batch = on_batch
        self._on_stuck = on_stuck
        self._slots = asyncio.Semaphore(max(1, int(getattr(scorer, "max_concurrent_batches", 1))))
        self._running: set[asyncio.Task] = set()  # batches being scored
        self._abandoned: set[asyncio.Future] = set()  # scorer calls past their timeout
        self._queue: collections.deque[_Request] = collections.deque()
        self._queued_samples = 0  # samples in the queue not yet taken into a batch
        self._queued_cost = 0
        self._arrived = asyncio.Event()
        self._fill: asyncio.Future[None] | None = None  # set while an idle scorer waits for a fuller batch
        self._closed = False
        self._runner = None if runs_on_event_loop(scorer) else _ScorerThread(scorer)
        self._loop = asyncio.get_running_loop()
        self._worker = self._loop.create_task(self._work(), name="batcher")

    @property
    def stuck(self) -> bool:
        """A scorer call outlived ``scorer_timeout_s`` and is still running."""
        return bool(self._abandoned)

    @property
    def calls_left_running(self) -> bool:
        """A scorer call is still running (after ``close`` gave up waiting, or abandoned)."""
        return bool(self._abandoned) or any(not t.done() for t in self._running)

    @property
    def queue_depth(self) -> int:
        """Samples waiting for a batch (not counting the batch being scored)."""
        return self._queued_samples

    async def submit(self, samples: list[Sample]) -> list[Result]:
        """Score ``samples`` as part of whatever batches form; results in the same order."""
        if self._closed:
            raise BatcherClosed("the reward server is shutting down")
        if self._abandoned:
            raise ScorerStuck(self._stuck_message())
        if self._queued_samples + len(samples) > self._config.max_queue:
            raise QueueFull(
                f"{self._queued_samples} samples are queued and {len(samples)} more would exceed "
                f"max_queue={self._config.max_queue}; retry with backoff or add replicas"
            )
        if not samples:
            return []
        loop = self._loop
        cost = self._scorer.cost
        costs = [cost(s) for s in samples]
        n = len(samples)
        request = _Request(samples, costs, loop.create_future(), loop.time(), [None] * n, missing=n)
        self._queue.append(request)
        self._queued_samples += n
        self._queued_cost += sum(costs)
        if not self._arrived.is_set():
            self._arrived.set()
        if self._fill is not None and self._batch_is_full():
            self._wake_filler()
        # A cancelled caller (deadline, disconnect) cancels this future; the worker skips it.
        return await request.future

    async def close(self) -> None:
        """Refuse new work, finish what is queued, stop the scorer thread (a stuck call is
        left behind: see ``stuck``)."""
        self._closed = True
        self._arrived.set()
        self._wake_filler()
        if self._abandoned:
            self._worker.cancel()  # it may wait for a slot a stuck call holds
        await asyncio.gather(self._worker, return_exceptions=True)
        if self._running:
            await asyncio.wait(self._running)
        if self._runner is not None:
            self._runner.stop(wait=not self._abandoned)

    def _stuck_message(self) -> str:
        return (
            f"the scorer {self._scorer.model_name!r} is stuck: a call has run past "
            f"scorer_timeout_s={self._config.scorer_timeout_s:g} and not returned; this replica "
            "reports NOT_SERVING until it does: retry on another replica"
        )

    # ------------------------------------------------------------------ worker side

    async def _work(self) -> None:
        max_wait = self._config.max_wait_ms / 1000
        idle = True  # the queue was empty and the scorer free when the oldest queued work arrived
        while True:
            self._drop_cancelled()
            if not self._queue:
                if self._closed:
                    return
                self._arrived.clear()
                await self._arrived.wait()
                idle = not self._running  # work that arrives while a batch runs never waits
                continue
            if idle and max_wait > 0 and not self._closed and not self._batch_is_full():
                await self._wait_to_fill(self._queue[0].enqueued_at + max_wait)
            idle = False  # what queues while this batch is scored is taken at once afterwards
            # Wait for a free slot (for most scorers: the previous batch to finish); what
            # queues meanwhile joins this batch.
            await self._slots.acquire()
            batch = self._take_batch()
            if not batch:
                self._slots.release()
                continue
            task = self._loop.create_task(self._score(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _wait_to_fill(self, deadline: float) -> None:
        """An idle scorer waits until the batch is full, the batcher closes or ``deadline``."""
        delay = deadline - self._loop.time()
        if delay <= 0:
            return
        self._fill = self._loop.create_future()
        timer = self._loop.call_later(delay, self._wake_filler)
        try:
            await self._fill
        finally:
            timer.cancel()
            self._fill = None

    def _wake_filler(self) -> None:
        if self._fill is not None and not self._fill.done():
            self._fill.set_result(None)

    def _drop_cancelled(self) -> None:
        while self._queue and self._queue[0].future.done():
            dropped = self._queue.popleft()
            self._queued_samples -= len(dropped.samples) - dropped.taken
            self._queued_cost -= sum(dropped.costs[dropped.taken :])

    def _batch_is_full(self) -> bool:
        return (
            self._queued_samples >= self._config.max_batch_samples
            or self._queued_cost >= self._config.max_batch_cost
        )

    def _take_batch(self) -> list[_Segment]:
        """The longest queue prefix within both budgets, as slices of the queued requests."""
        max_samples, max_cost = self._config.max_batch_samples, self._config.max_batch_cost
        batch: list[_Segment] = []
        count = cost = 0
        while self._queue and count < max_samples:
            request = self._queue[0]
            if request.future.done():
                self._drop_cancelled()
                continue
            start = i = request.taken
            end = min(len(request.samples), start + max_samples - count)
            costs = request.costs
            taken_cost = 0
            while i < end:
                c = costs[i]
                # A sample larger than the whole budget still runs, alone.
                if count and cost + c > max_cost:
                    break
                cost += c
                taken_cost += c
                count += 1
                i += 1
            if i > start:
                batch.append((request, start, i))
                request.taken = i
                self._queued_samples -= i - start
                self._queued_cost -= taken_cost
            if i < len(request.samples):
                break  # a budget is spent
            self._queue.popleft()
        return batch

    async def _score(self, batch: list[_Segment]) -> None:
        if len(batch) == 1 and batch[0][1] == 0 and batch[0][2] == len(batch[0][0].samples):
            samples = batch[0][0].samples  # the usual case under load: one whole request
        else:
            samples = [s for request, start, end in batch for s in request.samples[start:end]]
        loop = self._loop
        started = loop.time()
        call = asyncio.ensure_future(
            self._scorer.score(samples) if self._runner is None else self._runner.score(samples)
        )
        timeout = self._config.scorer_timeout_s or None
        try:
            scored = await asyncio.wait_for(asyncio.shield(call), timeout)
            results = check_results(samples, scored, self._scorer.kind)
        except TimeoutError:
            self._abandon(call)
            message = (
                f"the scorer {self._scorer.model_name!r} did not finish the batch holding this sample "
                f"({len(samples)} samples) within scorer_timeout_s={timeout:g}"
            )
            results = [
                Result(id=s.id, error=SampleError(TIMEOUT, f"sample {short_repr(s.id)}: {message}")) for s in samples
            ]
        except Exception as exc:  # the server must survive any scorer failure
            log.exception("scorer %r failed on a batch of %d samples", self._scorer.model_name, len(samples))
            message = (
                f"scorer {self._scorer.model_name!r} failed on the batch holding this sample "
                f"({len(samples)} samples): {type(exc).__name__}: {exc}"
            )
            results = [Result(id=s.id, error=SampleError(SCORER_FAILED, message)) for s in samples]
        finally:
            if call not in self._abandoned:
                self._slots.release()
        elapsed = loop.time() - started
        offset = 0
        cost = 0
        for request, start, end in batch:
            n = end - start
            if n == len(request.results):
                request.results = results[offset : offset + n] if len(batch) > 1 else results
            else:
                request.results[start:end] = results[offset : offset + n]
            offset += n
            request.missing -= n
            if self._on_batch is not None:
                cost += sum(request.costs[start:end])
            if request.missing == 0 and not request.future.done():
                request.future.set_result(request.results)  # type: ignore[arg-type]
        if self._on_batch is not None:
            self._on_batch(len(samples), cost, elapsed)

    def _abandon(self, call: asyncio.Future) -> None:
        """``call`` is past its timeout: answer nobody else until it returns."""
        log.error("%s", self._stuck_message())
        self._abandoned.add(call)
        if len(self._abandoned) == 1 and self._on_stuck is not None:
            self._on_stuck(True)
        # Work queued behind a call that may never end goes elsewhere now.
        stuck = ScorerStuck(self._stuck_message())
        while self._queue:
            request = self._queue.popleft()
            if not request.future.done():
                request.future.set_exception(stuck)
        self._queued_samples = self._queued_cost = 0

        def returned(done: asyncio.Future) -> None:
            if not done.cancelled():
                done.exception()  # retrieved: the batch was answered with TIMEOUT already
            self._abandoned.discard(done)
            self._slots.release()
            log.warning("the scorer %r returned from a call abandoned after its timeout", self._scorer.model_name)
            if not self._abandoned and self._on_stuck is not None:
                self._on_stuck(False)

        call.add_done_callback(returned)

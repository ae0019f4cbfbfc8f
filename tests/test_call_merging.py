"""The call merger on its own, with a fake ``send``: which calls are merged, which ids may
share a request, a bad call failing alone, callers that leave, and closing."""

from __future__ import annotations

import asyncio

import pytest

from reward_server.merging import CallMerger
from reward_server.types import Result, Sample


class BadSample(ValueError):
    """What the fake server raises for a request holding a sample with id "bad"."""


class FakeService:
    """``send`` records each request's ids and answers after ``gate`` opens; a request with
    a sample "bad" fails as the caller's fault, "boom" as the server's."""

    def __init__(self, slots: int = 1) -> None:
        self.slots = asyncio.Semaphore(slots)
        self.requests: list[list[str]] = []
        self.gate = asyncio.Event()
        self.gate.set()

    async def send(self, samples: list[Sample]) -> list[Result]:
        self.requests.append([s.id for s in samples])
        await self.gate.wait()
        if any(s.id == "boom" for s in samples):
            raise RuntimeError("the server broke")
        if any(s.id == "bad" for s in samples):
            raise BadSample(f"bad sample in {[s.id for s in samples]}")
        return [Result(s.id, outcome=float(len(s.response))) for s in samples]

    async def send_alone(self, samples: list[Sample]) -> list[Result]:
        async with self.slots:
            return await self.send(samples)

    def merger(self) -> CallMerger:
        return CallMerger(
            slots=self.slots, send_in_slot=self.send, send_alone=self.send_alone,
            callers_fault=lambda e: isinstance(e, BadSample), closed_error=lambda: RuntimeError("CLIENT_CLOSED"),
        )

    async def call(self, merger: CallMerger, samples: list[Sample], limit: int = 64) -> list[Result]:
        """What RewardClient.score does: merge when every slot is busy, else send alone."""
        if merger.should_merge(samples, limit):
            return await merger.join(samples, limit)
        return await self.send_alone(samples)


def samples(*ids: str) -> list[Sample]:
    return [Sample(i, "", "x" * (k + 1)) for k, i in enumerate(ids)]


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 10))


async def hold_the_slot() -> tuple[FakeService, CallMerger, asyncio.Future]:
    """A service with one slot, held by a call ("x") that is not answered until ``gate`` opens."""
    service = FakeService()
    merger = service.merger()
    service.gate.clear()
    first = asyncio.ensure_future(service.call(merger, samples("x")))
    await asyncio.sleep(0)  # "x" holds the only slot
    return service, merger, first


async def while_busy(calls: list[list[Sample]], limit: int = 64) -> tuple[FakeService, list]:
    """``calls`` arrive while the only slot is held (so they are merged); then the server
    answers. Returns the service and every call's outcome, "x" first."""
    service, merger, first = await hold_the_slot()
    waiting = [asyncio.ensure_future(service.call(merger, c, limit)) for c in calls]
    await asyncio.sleep(0)
    service.gate.set()
    return service, await asyncio.gather(first, *waiting, return_exceptions=True)


def test_calls_that_find_every_slot_busy_go_out_together_each_with_its_results() -> None:
    service, outcomes = run(while_busy([samples(f"w{k}", f"v{k}") for k in range(3)]))
    assert service.requests == [["x"], ["w0", "v0", "w1", "v1", "w2", "v2"]]  # 4 calls, 2 requests
    assert [[r.id for r in res] for res in outcomes] == [["x"], ["w0", "v0"], ["w1", "v1"], ["w2", "v2"]]
    assert [r.outcome for r in outcomes[2]] == [1.0, 2.0]


def test_a_free_slot_is_never_waited_for_and_big_calls_are_not_merged() -> None:
    async def main():
        service = FakeService(slots=2)
        merger = service.merger()
        assert not merger.should_merge(samples("a"), 64)  # a slot is free
        async with service.slots:
            async with service.slots:
                assert merger.should_merge(samples("a"), 64)
                assert not merger.should_merge(samples(*[f"s{k}" for k in range(64)]), 64)  # not fewer than the limit

    run(main())


def test_ids_are_unique_per_merged_request_and_the_limit_holds() -> None:
    calls = [samples("a", "b"), samples("a"), samples("c", "d"), samples("e", "f")]
    service, _ = run(while_busy(calls, limit=4))
    # "a" twice starts a second request; a 5th sample would pass the limit of 4: a third.
    assert service.requests == [["x"], ["a", "b"], ["a", "c", "d"], ["e", "f"]]
    assert all(len(set(r)) == len(r) for r in service.requests)


def test_a_callers_fault_is_resent_alone_and_reaches_only_that_caller() -> None:
    service, outcomes = run(while_busy([samples("g1", "g2"), samples("bad"), samples("g3")]))
    assert service.requests[1] == ["g1", "g2", "bad", "g3"]  # merged, refused ...
    assert sorted(map(tuple, service.requests[2:])) == [("bad",), ("g1", "g2"), ("g3",)]  # ... then each alone
    assert isinstance(outcomes[2], BadSample) and "['bad']" in str(outcomes[2])
    assert [r.id for r in outcomes[1]] == ["g1", "g2"] and [r.id for r in outcomes[3]] == ["g3"]


def test_a_server_fault_fails_every_merged_caller_once_each() -> None:
    service, outcomes = run(while_busy([samples("boom"), samples("y")]))
    assert service.requests == [["x"], ["boom", "y"]]  # not resent: no caller caused it
    assert all(isinstance(o, RuntimeError) and "the server broke" in str(o) for o in outcomes[1:])


def test_a_caller_that_leaves_does_not_disturb_the_others() -> None:
    async def main():
        service, merger, first = await hold_the_slot()
        leaving, staying = (asyncio.ensure_future(service.call(merger, samples(i))) for i in ("l", "s"))
        await asyncio.sleep(0)
        leaving.cancel()
        service.gate.set()
        return await first, await staying, leaving

    _, staying, leaving = run(main())
    assert [r.id for r in staying] == ["s"] and leaving.cancelled()


@pytest.mark.parametrize("moment", ["waiting", "not-started"])
def test_cancel_all_ends_every_merged_call_with_the_closed_error(moment: str) -> None:
    async def main():
        service, merger, first = await hold_the_slot()
        waiting = [asyncio.ensure_future(service.call(merger, samples(f"c{k}"))) for k in range(3)]
        await asyncio.sleep(0 if moment == "not-started" else 0.01)
        merger.cancel_all()
        outcomes = await asyncio.gather(*waiting, return_exceptions=True)
        service.gate.set()
        await first
        return outcomes

    outcomes = run(main())
    assert all(isinstance(o, RuntimeError) and str(o) == "CLIENT_CLOSED" for o in outcomes)

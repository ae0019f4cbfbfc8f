"""Merging small concurrent calls into one request, for ``RewardClient``.

A call that finds every request slot busy does not wait as a request of its own: it joins
the next merged request, which takes the small calls waiting with it (up to a sample
limit, never two samples with the same id) and goes out when a slot frees. Each caller
gets its own slice of the results. When the server refuses a merged request for a reason
one call's own samples can cause (INVALID_ARGUMENT: a bad span, a duplicate id), each
call is sent again alone, so the error reaches only the call that caused it.

The merger knows nothing of gRPC: it is given the slots and two coroutines, one that
sends a merged request inside the slot it holds and one that sends a call on its own.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from reward_server.types import Result, Sample

Send = Callable[[list[Sample]], Awaitable[list[Result]]]


@dataclass
class _MergedCalls:
    """Small calls waiting for a free slot, to go out as one request."""

    samples: list[Sample] = field(default_factory=list)
    ids: set[str] = field(default_factory=set)
    calls: list[tuple[asyncio.Future[list[Result]], int, int]] = field(default_factory=list)  # (future, start, end)


class CallMerger:
    """``send_in_slot(samples)`` sends a merged request; the merger holds one of ``slots``
    while it runs. ``send_alone(samples)`` sends one call again on its own (taking slots
    itself). ``callers_fault(error)``: could this error come from one call's own samples?
    ``closed_error()``: the error for callers whose request was cancelled by ``close``.
    ``copy_error(error)``: one exception object per waiting caller."""

    def __init__(
        self,
        *,
        slots: asyncio.Semaphore,
        send_in_slot: Send,
        send_alone: Send,
        callers_fault: Callable[[BaseException], bool],
        closed_error: Callable[[], BaseException],
        copy_error: Callable[[BaseException], BaseException] = lambda e: e,
    ) -> None:
        self._slots = slots
        self._send_in_slot, self._send_alone_fn = send_in_slot, send_alone
        self._callers_fault, self._closed_error, self._copy_error = callers_fault, closed_error, copy_error
        self._merging: _MergedCalls | None = None  # the merged request still taking calls
        self._tasks: set[asyncio.Task] = set()  # merged and re-sent requests: strong references until done

    def should_merge(self, samples: Sequence[Sample], limit: int) -> bool:
        """Merge a call of fewer than ``limit`` samples when every slot is busy; a call that
        finds a slot free is never delayed."""
        return len(samples) < limit and self._slots.locked()

    async def join(self, samples: Sequence[Sample], limit: int) -> list[Result]:
        """The results of ``samples``, sent within a merged request of at most ``limit`` samples."""
        merged = self._merging
        ids = [s.id for s in samples]
        if merged is None or len(merged.samples) + len(samples) > limit or not merged.ids.isdisjoint(ids):
            merged = self._merging = _MergedCalls()
            send = asyncio.ensure_future(self._send(merged))
            self._tasks.add(send)
            # A done-callback, not code in _send: it runs even when cancel_all() cancels the
            # task before its first step, so no caller is left waiting.
            send.add_done_callback(functools.partial(self._answer, merged))
        future: asyncio.Future[list[Result]] = asyncio.get_running_loop().create_future()
        start = len(merged.samples)
        merged.samples.extend(samples)
        merged.ids.update(ids)
        merged.calls.append((future, start, len(merged.samples)))
        return await future  # a cancelled caller cancels only its own future

    def cancel_all(self) -> None:
        """Cancel every merged and re-sent request; their callers get ``closed_error()``."""
        for task in list(self._tasks):
            task.cancel()

    async def _send(self, merged: _MergedCalls) -> list[Result]:
        async with self._slots:
            if self._merging is merged:
                self._merging = None  # sent from here on: later calls start the next one
            return await self._send_in_slot(merged.samples)

    def _answer(self, merged: _MergedCalls, send: asyncio.Task) -> None:
        """Hand each caller of a merged request its own slice of the results, or the error."""
        self._tasks.discard(send)
        if self._merging is merged:
            self._merging = None
        error = self._closed_error() if send.cancelled() else send.exception()
        calls = [(future, start, end) for future, start, end in merged.calls if not future.done()]
        if error is None:
            results = send.result()
            for future, start, end in calls:
                future.set_result(results[start:end])
        elif len(merged.calls) > 1 and self._callers_fault(error):
            # One call's bad sample must not fail the others: each call goes again, alone (the
            # scores are recomputed for the rare merged request that was split and half sent).
            for future, start, end in calls:
                self._send_alone(merged.samples[start:end], future)
        else:
            for future, _, _ in calls:
                future.set_exception(self._copy_error(error))

    def _send_alone(self, samples: list[Sample], future: asyncio.Future[list[Result]]) -> None:
        send = asyncio.ensure_future(self._send_alone_fn(samples))
        self._tasks.add(send)
        future.add_done_callback(lambda f: send.cancel() if f.cancelled() else None)  # its caller left

        def answer(send: asyncio.Task) -> None:
            self._tasks.discard(send)
            error = self._closed_error() if send.cancelled() else send.exception()
            if future.done():
                return
            if error is None:
                future.set_result(send.result())
            else:
                future.set_exception(error)

        send.add_done_callback(answer)

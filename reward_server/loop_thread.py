"""An asyncio event loop running on its own daemon thread, for code on another thread.

The gRPC client, the learner's reward clients and the server's threaded scorers each need
an event loop that is not the caller's: synchronous code drives async clients through it,
and a scorer's coroutines run on it without blocking the server's loop.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")


class LoopThread:
    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def submit(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        """Schedule ``coro`` on the loop; a concurrent Future of its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the loop and block the calling thread until it is done."""
        return self.submit(coro).result()

    async def run_async(self, coro: Coroutine[Any, Any, T]) -> T:
        """Await ``coro`` run on this loop, from a coroutine on another loop."""
        return await asyncio.wrap_future(self.submit(coro))

    def stop(self, wait: bool = True, timeout_s: float = 10.0) -> None:
        """Stop the loop; with ``wait``, join the thread and close the loop."""
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        if wait:
            self._thread.join(timeout=timeout_s)
            if not self._thread.is_alive():
                self.loop.close()

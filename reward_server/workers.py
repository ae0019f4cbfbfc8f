"""Worker processes for scoring code that may hang: a stuck task costs its own timeout.

Why processes: a Python thread cannot be stopped, so a user function that never returns
(or C code that ignores signals, as a huge ``9^{9^{9^9}}`` does inside sympy) would hold
its thread, and with it the replica, forever. A process can be killed. Each task runs in
the main thread of one spawned worker (``signal.alarm`` works there, which math-verify
needs); a task that outlives its timeout gets its worker SIGKILLed and replaced, and only
that task fails. The other workers go on with their tasks.

    pool = WorkerPool(size=4, setup=my_module.make_handler, setup_args=("spec",), name="user")
    value = await pool.run(("sample", ["step"]), timeout_s=30)   # TaskTimeout / TaskFailed

``setup(*setup_args)`` runs once in each worker and returns the handler that every task's
arguments are applied to; it must be importable by name (spawned workers import it).
Results come back on one reader thread per worker, so a large answer never blocks the
event loop while it is read.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import multiprocessing
import os
import signal
import threading
import weakref
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

log = logging.getLogger(__name__)

_MAX_ERROR_CHARS = 500


class TaskTimeout(Exception):
    """The task did not finish within its timeout; its worker was killed and replaced."""


class TaskFailed(Exception):
    """The task raised in the worker (the message holds the exception's type and text)."""


def _die_with_parent(parent_pid: int) -> None:
    """Linux: be SIGKILLed when the server process dies, even if a task is stuck."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return  # not Linux: an idle worker still exits when its pipe closes
    if os.getppid() != parent_pid:
        os._exit(1)  # the parent died before prctl took effect


def _worker_main(conn: Connection, setup: Callable[..., Callable[..., Any]], setup_args: tuple, parent_pid: int) -> None:
    _die_with_parent(parent_pid)
    handler = setup(*setup_args)
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return  # the server is gone
        if message is None:
            return
        task_id, args = message
        try:
            reply = (task_id, True, handler(*args))
        except BaseException as exc:  # noqa: BLE001 - reported to the caller, the worker lives on
            reply = (task_id, False, f"{type(exc).__name__}: {exc}"[:_MAX_ERROR_CHARS])
        try:
            conn.send(reply)
        except Exception as exc:  # noqa: BLE001 - e.g. an answer that cannot be pickled
            conn.send((task_id, False, f"the answer could not be sent back: {type(exc).__name__}: {exc}"[:_MAX_ERROR_CHARS]))


class _Worker:
    def __init__(self, pool: WorkerPool, index: int):
        self.pool, self.index = pool, index
        parent, child = pool.context.Pipe()
        self.process = pool.context.Process(
            target=_worker_main, args=(child, pool.setup, pool.setup_args, os.getpid()),
            name=f"{pool.name}-worker-{index}", daemon=True,
        )
        self.process.start()
        child.close()
        self.conn = parent
        self.task: tuple[int, asyncio.Future] | None = None
        self._reader = threading.Thread(target=self._read, name=f"{pool.name}-reader-{index}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                task_id, ok, value = self.conn.recv()
            except (EOFError, OSError):
                self.pool.worker_died(self)
                return
            self.pool.task_done(self, task_id, ok, value)

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=5)
        self.conn.close()


class WorkerPool:
    """``size`` spawned worker processes; ``run`` awaits one task's answer with a timeout."""

    def __init__(self, size: int, setup: Callable[..., Callable[..., Any]], setup_args: tuple = (), name: str = "pool"):
        if size < 1:
            raise ValueError(f"a worker pool needs at least 1 worker (got {size})")
        self.size, self.setup, self.setup_args, self.name = size, setup, setup_args, name
        # spawn, not fork: the server process has gRPC and torch threads.
        self.context = multiprocessing.get_context("spawn")
        self._lock = threading.Lock()
        self._ids = itertools.count()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._idle: collections.deque[_Worker] = collections.deque()
        self._workers: list[_Worker] = []
        # (task id, args, done, started) of tasks waiting for a free worker
        self._waiting: collections.deque[tuple[int, tuple, asyncio.Future, asyncio.Future]] = collections.deque()
        self.replaced = 0  # workers killed for a timeout or found dead, and started anew
        self._finalizer: weakref.finalize | None = None

    def start(self) -> None:
        """Start the workers (``run`` does it on first use)."""
        with self._lock:
            if self._workers:
                return
            self._workers = [_Worker(self, i) for i in range(self.size)]
            self._idle.extend(self._workers)
            # The list object is shared, so workers replaced later are killed too.
            self._finalizer = weakref.finalize(self, WorkerPool._kill_all, self._workers)

    async def run(self, args: tuple, timeout_s: float) -> Any:
        """The handler's answer for ``args``; TaskTimeout after ``timeout_s`` of running
        (time spent waiting for a free worker does not count), TaskFailed if it raised."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            with self._lock:
                busy = self._waiting or any(w.task is not None for w in self._workers)
            if busy and self._loop is not None and not self._loop.is_closed():
                raise RuntimeError(f"worker pool {self.name!r} is busy on another event loop")
            self._loop = loop  # e.g. a scorer used by asyncio.run() first, then by a server
        self.start()
        started = loop.create_future()  # set when a worker takes the task
        done = loop.create_future()
        task_id = next(self._ids)
        self._dispatch(task_id, args, done, started)
        try:
            await started
            return await asyncio.wait_for(asyncio.shield(done), timeout_s)
        except TimeoutError:
            self._replace_running(task_id, "timed out")
            raise TaskTimeout(f"did not finish within {timeout_s:g} s; its worker was killed and replaced") from None
        except asyncio.CancelledError:
            self._forget(task_id)
            raise

    def close(self) -> None:
        """Stop every worker (also done when the pool is garbage collected or at exit)."""
        with self._lock:
            workers = list(self._workers)
            self._workers.clear()
            self._idle.clear()
            self._loop = None
        for worker in workers:
            try:
                worker.conn.send(None)
            except OSError:
                pass
        WorkerPool._kill_all(workers)

    # ------------------------------------------------------------------ bookkeeping

    def _dispatch(self, task_id: int, args: tuple, done: asyncio.Future, started: asyncio.Future) -> None:
        with self._lock:
            if not self._idle:
                self._waiting.append((task_id, args, done, started))
                return
            worker = self._idle.popleft()
            worker.task = (task_id, done)
        if not worker.process.is_alive():  # died while idle (e.g. while no loop was running)
            worker.task = None
            with self._lock:
                self._waiting.appendleft((task_id, args, done, started))
            self._replace(worker)
            return
        self._send(worker, task_id, args, done, started)

    def _send(self, worker: _Worker, task_id: int, args: tuple, done: asyncio.Future, started: asyncio.Future) -> None:
        try:
            worker.conn.send((task_id, args))
        except Exception as exc:  # noqa: BLE001 - unpicklable arguments, or a dead worker
            self._settle(done, False, f"could not send the task to a worker: {type(exc).__name__}: {exc}")
            self._after_task(worker)
        if not started.done():
            started.set_result(None)

    def _next(self, worker: _Worker) -> None:
        """Give ``worker`` (now free) the next waiting task, or mark it idle."""
        with self._lock:
            while self._waiting:
                task_id, args, done, started = self._waiting.popleft()
                if not done.cancelled():
                    worker.task = (task_id, done)
                    break
            else:
                worker.task = None
                if worker in self._workers:
                    self._idle.append(worker)
                return
        self._send(worker, task_id, args, done, started)

    def _after_task(self, worker: _Worker) -> None:
        self._call_soon(self._next, worker)

    def _call_soon(self, callback: Callable[..., Any], *args: Any) -> None:
        """Run ``callback`` on the pool's event loop, from any thread."""
        loop = self._loop
        if loop is None:
            return
        try:
            loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:
            pass  # the loop is closed; a dead worker is found at the next dispatch

    def task_done(self, worker: _Worker, task_id: int, ok: bool, value: Any) -> None:
        """From a reader thread: the worker answered ``task_id``."""
        current = worker.task
        if current is None or current[0] != task_id:
            return
        self._call_soon(self._settle, current[1], ok, value)
        self._call_soon(self._next, worker)

    def worker_died(self, worker: _Worker) -> None:
        """From a reader thread: the worker's pipe closed (it crashed, or was killed)."""
        self._call_soon(self._on_death, worker)

    def _on_death(self, worker: _Worker) -> None:
        if worker not in self._workers:
            return  # killed on purpose and already replaced
        if worker.task is not None:
            code = worker.process.exitcode
            self._settle(worker.task[1], False, f"the worker process died (exit code {code}) while running it")
        self._replace(worker)

    def _replace_running(self, task_id: int, why: str) -> None:
        for worker in list(self._workers):
            if worker.task is not None and worker.task[0] == task_id:
                log.warning("%s worker %d %s; killing it and starting a new one", self.name, worker.index, why)
                self._replace(worker)
                return

    def _replace(self, worker: _Worker) -> None:
        with self._lock:
            if worker not in self._workers:
                return
            position = self._workers.index(worker)
            if worker in self._idle:
                self._idle.remove(worker)
        worker.kill()
        fresh = _Worker(self, worker.index)
        with self._lock:
            self._workers[position] = fresh
        self.replaced += 1
        self._next(fresh)

    def _forget(self, task_id: int) -> None:
        """A caller gave up: drop its task if it still waits; a running one is left to finish."""
        with self._lock:
            self._waiting = collections.deque(t for t in self._waiting if t[0] != task_id)

    @staticmethod
    def _settle(future: asyncio.Future, ok: bool, value: Any) -> None:
        if future.done():
            return
        if ok:
            future.set_result(value)
        else:
            future.set_exception(TaskFailed(value))

    @staticmethod
    def _kill_all(workers: list[_Worker]) -> None:
        for worker in workers:
            try:
                worker.kill()
            except Exception:  # noqa: BLE001 - best effort at exit
                pass

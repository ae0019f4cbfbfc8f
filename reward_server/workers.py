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
arguments are applied to; it must be importable by name (spawned workers import it). A
worker takes tasks once its setup is done, and a task's timeout counts from when a worker
takes it, so start-up and queueing never count against it.

A plain handler runs one task at a time per worker, and the pool kills a worker whose
task runs past its timeout. An ``async def`` handler (``concurrency`` > 1) runs up to
``concurrency`` tasks at once on the worker's event loop, as I/O-bound reward functions
(a remote judge) need; the worker cancels a task past its timeout itself, and the pool
kills the worker only if it stops answering (a handler that blocks its loop), failing the
tasks it held. Answers come back on one
reader thread per worker (a large answer never blocks the event loop while it is read);
all bookkeeping happens on the event loop of the caller.

Each worker's math libraries (OpenMP, MKL, OpenBLAS: torch and numpy) get one thread
unless the environment says otherwise, as PyTorch's DataLoader workers do: a pool is many
processes on the same cores, and each taking every core oversubscribes them (README,
"Threads").
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import itertools
import logging
import multiprocessing
import os
import signal
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

log = logging.getLogger(__name__)

_MAX_ERROR_CHARS = 500
_READY = None  # the task id of the message a worker sends once its setup is done
_ASYNC_GRACE_S = 5.0  # an async worker that misses a task's timeout by this much is stuck
_THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


class TaskTimeout(Exception):
    """The task did not finish within its timeout; its worker was killed and replaced."""


class TaskFailed(Exception):
    """The task raised in the worker (the message holds the exception's type and text),
    or no worker could run it."""


# ----------------------------------------------------------------------------- the worker side


def _die_with_parent(parent_pid: int) -> None:
    """Linux: be SIGKILLed when the server process dies, even if a task is stuck."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return  # not Linux: an idle worker still exits when its pipe closes
    if os.getppid() != parent_pid:
        os._exit(1)  # the parent died before prctl took effect


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:_MAX_ERROR_CHARS]


def _send(conn: Connection, reply: tuple) -> None:
    try:
        conn.send(reply)
    except Exception as exc:  # noqa: BLE001 - e.g. an answer that cannot be pickled
        conn.send((reply[0], False, f"the answer could not be sent back: {_describe(exc)}"))


def _worker_main(
    conn: Connection, setup: Callable[..., Callable[..., Any]], setup_args: tuple, parent_pid: int
) -> None:
    _die_with_parent(parent_pid)
    threads = os.environ.get("OMP_NUM_THREADS", "1")  # the user's choice, if any, for every library
    for variable in _THREAD_VARIABLES:  # before setup imports the scoring code and its libraries
        os.environ.setdefault(variable, threads)
    try:
        handler = setup(*setup_args)
    except BaseException as exc:  # noqa: BLE001 - reported to the pool, which stops starting workers
        conn.send((_READY, False, f"worker setup failed: {_describe(exc)}"))
        return
    conn.send((_READY, True, None))
    if inspect.iscoroutinefunction(handler):
        _serve_async(conn, handler)
        return
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return  # the server is gone
        if message is None:
            return
        task_id, args, _timeout = message  # the pool kills this worker past the timeout
        try:
            reply = (task_id, True, handler(*args))
        except BaseException as exc:  # noqa: BLE001 - reported to the caller, the worker lives on
            reply = (task_id, False, _describe(exc))
        _send(conn, reply)


def _serve_async(conn: Connection, handler: Callable[..., Any]) -> None:
    """Run tasks concurrently on one event loop; a task past its timeout is cancelled here."""
    loop = asyncio.new_event_loop()

    async def run(task_id: int, args: tuple, timeout_s: float) -> None:
        try:
            reply = (task_id, True, await asyncio.wait_for(handler(*args), timeout_s))
        except TimeoutError:
            reply = (task_id, None, f"did not finish within {timeout_s:g} s and was cancelled")
        except BaseException as exc:  # noqa: BLE001 - reported to the caller, the worker lives on
            reply = (task_id, False, _describe(exc))
        _send(conn, reply)

    def receive() -> None:
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                message = None
            if message is None:
                loop.call_soon_threadsafe(loop.stop)
                return
            loop.call_soon_threadsafe(lambda m=message: loop.create_task(run(*m)))

    threading.Thread(target=receive, name="task-receiver", daemon=True).start()
    loop.run_forever()


# ----------------------------------------------------------------------------- the pool side


@dataclass(eq=False)
class _Task:
    id: int
    args: tuple
    done: asyncio.Future
    started: asyncio.Future  # set when a worker takes it
    timeout_s: float = 0.0


@dataclass(eq=False)
class _Worker:
    process: multiprocessing.process.BaseProcess
    conn: Connection
    index: int
    ready: bool = False  # setup done: it takes tasks
    tasks: dict[int, _Task] = field(default_factory=dict)  # running on it, by id
    reader: threading.Thread | None = field(default=None, repr=False)

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=5)
        self.conn.close()


class WorkerPool:
    """``size`` spawned worker processes; ``run`` awaits one task's answer with a timeout."""

    def __init__(
        self,
        size: int,
        setup: Callable[..., Callable[..., Any]],
        setup_args: tuple = (),
        name: str = "pool",
        concurrency: int = 1,
    ):
        if size < 1 or concurrency < 1:
            raise ValueError(f"a worker pool needs at least 1 worker and 1 task per worker (got {size}, {concurrency})")
        self.size, self.setup, self.setup_args, self.name = size, setup, setup_args, name
        self.concurrency = concurrency  # tasks at once per worker (> 1: its handler is async def)
        # spawn, not fork: the server process has gRPC and torch threads.
        self._context = multiprocessing.get_context("spawn")
        self._ids = itertools.count()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._workers: list[_Worker] = []
        self._waiting: collections.deque[_Task] = collections.deque()
        self._broken: str | None = None  # why workers cannot start (their setup raised)
        self.replaced = 0  # workers killed for a timeout or found dead, and started anew
        # The list object is shared with the finalizer, so replaced workers are killed too.
        weakref.finalize(self, WorkerPool._kill_all, self._workers)

    async def run(self, args: tuple, timeout_s: float) -> Any:
        """The handler's answer for ``args``; TaskTimeout after ``timeout_s`` of running,
        TaskFailed if it raised or the worker died."""
        self._bind(asyncio.get_running_loop())
        if not self._workers:
            self._workers.extend(self._spawn(i) for i in range(self.size))
        if self._broken:
            raise TaskFailed(self._broken)
        loop = self._loop
        task = _Task(next(self._ids), args, loop.create_future(), loop.create_future(), timeout_s)
        task.done.add_done_callback(_retrieve)  # a caller that gave up never reads it
        self._waiting.append(task)
        self._pump()
        # An async worker cancels its own late tasks; it is killed only if it stops answering.
        limit = timeout_s if self.concurrency == 1 else timeout_s + _ASYNC_GRACE_S
        try:
            await task.started
            return await asyncio.wait_for(asyncio.shield(task.done), limit)
        except TimeoutError:
            self._kill_running(task, f"ran past {limit:g} s")
            raise TaskTimeout(f"did not finish within {limit:g} s; its worker was killed and replaced") from None
        except asyncio.CancelledError:
            if task in self._waiting:
                self._waiting.remove(task)
            raise

    def close(self) -> None:
        """Stop every worker (also done when the pool is garbage collected or at exit)."""
        workers = list(self._workers)
        self._workers.clear()
        for worker in workers:
            try:
                worker.conn.send(None)
            except OSError:
                pass
        WorkerPool._kill_all(workers)

    # ------------------------------------------------------------------ bookkeeping (event loop)

    def _bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Serve callers on ``loop`` (a scorer may be used by asyncio.run() first, then a server)."""
        if self._loop is loop:
            return
        if self._loop is not None and not self._loop.is_closed() and (
            self._waiting or any(w.tasks for w in self._workers)
        ):
            raise RuntimeError(f"worker pool {self.name!r} is busy on another event loop")
        self._loop = loop
        self._waiting.clear()
        for worker in self._workers:
            worker.tasks.clear()  # an answer still on its way is for a loop that is gone

    def _spawn(self, index: int) -> _Worker:
        parent, child = self._context.Pipe()
        process = self._context.Process(
            target=_worker_main, args=(child, self.setup, self.setup_args, os.getpid()),
            name=f"{self.name}-worker-{index}", daemon=True,
        )
        process.start()
        child.close()
        worker = _Worker(process, parent, index)
        worker.reader = threading.Thread(
            target=self._read, args=(worker,), name=f"{self.name}-reader-{index}", daemon=True
        )
        worker.reader.start()
        return worker

    def _read(self, worker: _Worker) -> None:
        """A worker's reader thread: every message goes to the event loop."""
        while True:
            try:
                task_id, ok, value = worker.conn.recv()
            except (EOFError, OSError):
                self._call_soon(self._on_exit, worker)
                return
            if task_id is _READY and ok:
                worker.ready = True  # also seen if the loop that would hear of it is gone
            self._call_soon(self._on_message, worker, task_id, ok, value)

    def _call_soon(self, callback: Callable[..., Any], *args: Any) -> None:
        loop = self._loop
        if loop is None:
            return
        try:
            loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:
            pass  # the loop is closed; _bind resets the state for the next one

    def _pump(self) -> None:
        """Hand waiting tasks to the least busy workers with room."""
        while self._waiting:
            free = [w for w in self._workers if w.ready and len(w.tasks) < self.concurrency]
            if not free:
                return
            worker = min(free, key=lambda w: len(w.tasks))
            if not worker.process.is_alive():
                self._replace(worker)
                continue
            task = self._waiting.popleft()
            worker.tasks[task.id] = task
            try:
                worker.conn.send((task.id, task.args, task.timeout_s))
            except Exception as exc:  # noqa: BLE001 - unpicklable arguments, or a dead worker
                del worker.tasks[task.id]
                _settle(task.done, False, f"could not send the task to a worker: {_describe(exc)}")
            if not task.started.done():
                task.started.set_result(None)

    def _on_message(self, worker: _Worker, task_id: int | None, ok: bool | None, value: Any) -> None:
        if worker not in self._workers:
            return  # killed and replaced already
        if task_id is _READY:
            if not ok:
                self._broken = str(value)
                log.error("%s workers cannot start: %s", self.name, value)
                while self._waiting:
                    task = self._waiting.popleft()
                    _settle(task.done, False, self._broken)
                    if not task.started.done():
                        task.started.set_result(None)
            self._pump()
            return
        task = worker.tasks.pop(task_id, None)
        if task is not None:
            if ok is None:  # the worker cancelled it past its timeout
                if not task.done.done():
                    task.done.set_exception(TaskTimeout(str(value)))
            else:
                _settle(task.done, ok, value)
        self._pump()

    def _on_exit(self, worker: _Worker) -> None:
        if worker not in self._workers:
            return  # killed on purpose and replaced already
        for task in worker.tasks.values():
            _settle(task.done, False, f"the worker process died (exit code {worker.process.exitcode}) while running it")
        worker.tasks.clear()
        if self._broken is None:
            self._replace(worker)
            self._pump()

    def _kill_running(self, task: _Task, why: str) -> None:
        for worker in list(self._workers):
            if task.id in worker.tasks:
                log.warning(
                    "%s worker %d: a task %s; killing the worker and starting a new one", self.name, worker.index, why
                )
                del worker.tasks[task.id]
                for other in worker.tasks.values():  # they shared its blocked event loop
                    _settle(other.done, False, f"its worker was killed because another task on it {why}")
                worker.tasks.clear()
                self._replace(worker)
                self._pump()
                return

    def _replace(self, worker: _Worker) -> None:
        position = self._workers.index(worker)
        worker.kill()
        self._workers[position] = self._spawn(worker.index)
        self.replaced += 1

    @staticmethod
    def _kill_all(workers: list[_Worker]) -> None:
        for worker in list(workers):
            try:
                worker.kill()
            except Exception:  # noqa: BLE001 - best effort at exit
                pass


def _settle(future: asyncio.Future, ok: bool, value: Any) -> None:
    if future.done():
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(TaskFailed(value))


def _retrieve(future: asyncio.Future) -> None:
    if not future.cancelled():
        future.exception()

"""The reward client the learner uses: ``RewardClient``, one gRPC channel over many replicas.

The pieces it is built from, one job a module:
- ``reward_server.channel``: the channel (targets, round_robin, health-checked balancing,
  gRPC's retries of UNAVAILABLE, keepalive, message limits, TLS);
- ``reward_server.splitting``: big batches split into requests of the server's advertised
  size (GetInfo), several in flight;
- ``reward_server.merging``: small calls that find every slot busy merged into one request;
- ``reward_server.retry``: a busy server's RESOURCE_EXHAUSTED retried after its pushback, a
  too-big one not (the contract tells them apart by gRPC's ``grpc-retry-pushback-ms`` trailer).

What this module adds: the calls themselves, with a deadline and the bearer token on each;
a server whose health service knows only the empty name is checked under that name; errors
(``RewardServiceError``) say which service, which addresses and what happened, with a hint.
The names above it is built from are importable from here too.

Create a ``RewardClient`` inside the event loop that will use it (grpc.aio channels
belong to one loop). ``BlockingRewardClient`` runs one on a private loop for scripts.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from reward_server import convert
from reward_server.channel import DEFAULT_MAX_MESSAGE_BYTES, channel_target, open_channel, service_config
from reward_server.contract import (
    BAD_INFO,
    CLIENT_CLOSED,
    PROTOCOL_ERROR,
    REQUEST_BYTES_METADATA,
    REQUEST_TOO_LARGE,
    SERVICE_NAME,
    UNHEALTHY,
)
from reward_server.loop_thread import LoopThread
from reward_server.merging import CallMerger
from reward_server.proto import reward_pb2 as pb
from reward_server.proto import reward_pb2_grpc
from reward_server.retry import busy_retry_delay, is_size_refusal
from reward_server.security import TLSConfig, bearer_metadata
from reward_server.splitting import split_requests
from reward_server.types import Result, Sample, ServiceInfo

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "BlockingRewardClient",
    "RewardClient",
    "RewardServiceError",
    "RewardServiceUnavailable",
    "busy_retry_delay",
    "channel_target",
    "is_size_refusal",
    "service_config",
    "split_requests",
]

_HINTS = {
    "UNAVAILABLE": "no replica answered after retries; are the reward servers running and reachable?",
    "DEADLINE_EXCEEDED": "no answer within the deadline; raise timeout_s, add replicas or shrink batches",
    "UNAUTHENTICATED": "the server wants a bearer token: pass token= (the server's --token)",
    "RESOURCE_EXHAUSTED": "the servers stayed overloaded through every retry; add replicas or slow down",
    REQUEST_TOO_LARGE: "not retried: the server receives less than its GetInfo.max_request_bytes says "
    "(0 there means gRPC's default, 4 MiB); advertise the real limit or raise the server's receive limit",
}
_log = logging.getLogger(__name__)


class RewardServiceError(RuntimeError):
    """A reward service call failed; names the service, its addresses and what happened."""

    def __init__(self, service: str, targets: str, code: str, details: str) -> None:
        self.service, self.targets, self.code, self.details = service, targets, code, details
        hint = _HINTS.get(code)
        super().__init__(
            f"reward service {service!r} at {targets}: {code}: {details}" + (f" ({hint})" if hint else "")
        )


class RewardServiceUnavailable(RewardServiceError):
    """Every replica was unreachable after retries."""


def _score_bytes_rpc(channel: grpc.aio.Channel) -> grpc.aio.UnaryUnaryMultiCallable:
    """Score taking the request already serialized: the client serializes it once, for its
    size and for the wire (the generated stub would serialize it again)."""
    return channel.unary_unary(
        f"/{SERVICE_NAME}/Score", request_serializer=None,
        response_deserializer=pb.ScoreResponse.FromString, _registered_method=True,
    )


def _copy_error(exc: BaseException) -> BaseException:
    """One exception object per waiting caller, so that their tracebacks do not pile up on one."""
    if isinstance(exc, RewardServiceError):
        return type(exc)(exc.service, exc.targets, exc.code, exc.details)
    return exc


def _callers_fault(exc: BaseException) -> bool:
    """An error that one call's own samples can cause: the server's INVALID_ARGUMENT (a bad
    span, a duplicate id) or the client's own ValueError (a sample over the byte limit)."""
    return isinstance(exc, ValueError) or (isinstance(exc, RewardServiceError) and exc.code == "INVALID_ARGUMENT")


class RewardClient:
    """Async client of one reward service (all its replicas).

    ``max_in_flight`` requests run at once. A call of fewer than ``merge_samples`` samples
    that finds every slot busy joins the next merged request instead of queueing as its own
    (``reward_server.merging``: each caller gets its own results, and a call whose samples
    the server refuses fails alone). Many concurrent single-sample callers (an agent loop
    scoring each trajectory as it ends) then cost a few RPCs instead of one each, and a call
    that finds a slot free is never delayed. ``merge_samples`` 0 or 1 sends every call as
    its own request(s).

    ``close()`` ends every call still running or waiting with a CLIENT_CLOSED error.
    """

    def __init__(
        self,
        targets: str | Sequence[str],
        *,
        name: str = "reward",
        timeout_s: float = 120.0,
        max_in_flight: int = 4,
        merge_samples: int = 64,
        token: str | None = None,
        tls: TLSConfig | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        retry_attempts: int = 5,
    ) -> None:
        if timeout_s <= 0 or max_in_flight < 1 or merge_samples < 0:
            raise ValueError(
                "RewardClient: need timeout_s > 0, max_in_flight >= 1 and merge_samples >= 0, got "
                f"timeout_s={timeout_s}, max_in_flight={max_in_flight}, merge_samples={merge_samples}"
            )
        self.name = name
        self.merge_samples = merge_samples
        self.target = channel_target(targets)
        self.timeout_s = timeout_s
        self._max_message_bytes = max_message_bytes
        self._retry_attempts = retry_attempts
        self._tls = tls
        self._metadata = bearer_metadata(token) if token else ()
        self._health_service = SERVICE_NAME
        self._channel = self._open_channel(self._health_service)
        self._stub = reward_pb2_grpc.RewardServiceStub(self._channel)
        self._score_rpc = _score_bytes_rpc(self._channel)
        self._slots = asyncio.Semaphore(max_in_flight)
        self._info: ServiceInfo | None = None
        self._info_call: asyncio.Future[ServiceInfo] | None = None
        self._merger = CallMerger(
            slots=self._slots,
            send_in_slot=lambda samples: self._score_split(samples, self._info, hold_slot=False),
            send_alone=lambda samples: self._score_split(samples, self._info),
            callers_fault=_callers_fault,
            closed_error=lambda: self._closed_error("call"),
            copy_error=_copy_error,
        )
        self._closed = False

    def _open_channel(self, health_service: str | None) -> grpc.aio.Channel:
        """The channel to every replica; ``health_service`` None: no health checking (a probe)."""
        return open_channel(
            self.target, tls=self._tls, max_message_bytes=self._max_message_bytes,
            retry_attempts=self._retry_attempts, health_service=health_service,
        )

    async def _health_statuses(self) -> dict[str, str]:
        """What the server's health service says for the full service name and for "", over a
        channel without health checking: status names, or NOT_FOUND / the failure code."""
        probe = self._open_channel(None)
        stub = health_pb2_grpc.HealthStub(probe)
        statuses = {}
        try:
            for service in (SERVICE_NAME, ""):
                try:
                    reply = await stub.Check(
                        health_pb2.HealthCheckRequest(service=service), timeout=min(self.timeout_s, 5.0),
                        metadata=self._metadata,
                    )
                    statuses[service] = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
                except grpc.aio.AioRpcError as exc:
                    statuses[service] = exc.code().name
        finally:
            await probe.close()
        return statuses

    async def _unhealthy_error(self, exc: grpc.aio.AioRpcError) -> RewardServiceError | None:
        """After gRPC found no healthy replica: switch health checking to "" where the server
        registers only that (and return None: try again), or an error saying what its
        health service reports."""
        statuses = await self._health_statuses()
        full, empty = statuses[SERVICE_NAME], statuses[""]
        if self._health_service == SERVICE_NAME and full == "NOT_FOUND" and empty == "SERVING":
            _log.warning(
                "reward service %r at %s: its health service has no entry for %s, only for \"\"; "
                "checking \"\" instead (register both names, see reward.proto)", self.name, self.target, SERVICE_NAME,
            )
            old, self._health_service = self._channel, ""
            self._channel = self._open_channel("")
            self._stub = reward_pb2_grpc.RewardServiceStub(self._channel)
            self._score_rpc = _score_bytes_rpc(self._channel)
            await old.close()
            return None
        if full == "NOT_FOUND" and empty == "NOT_FOUND":
            seen = f"has no entry for {SERVICE_NAME} nor for \"\""
        else:
            seen = f"reports {full} for {SERVICE_NAME} and {empty} for \"\""
        return RewardServiceUnavailable(
            self.name, self.target, UNHEALTHY,
            f"{exc.details()}: the server's grpc.health.v1 service {seen}; it must report SERVING for "
            f"{SERVICE_NAME} (or \"\") while it takes calls",
        )

    async def get_info(self) -> ServiceInfo:
        """The service's kind and limits (asked once, then cached; concurrent callers share the call)."""
        if self._info is not None:
            return self._info
        self._check_open()
        call = self._info_call
        if call is None or (call.done() and (call.cancelled() or call.exception() is not None)):
            call = self._info_call = asyncio.ensure_future(self._fetch_info())  # the first, or a retry
        try:
            return await asyncio.shield(call)
        except RewardServiceError as exc:
            raise _copy_error(exc) from None

    async def _fetch_info(self) -> ServiceInfo:
        for first_try in (True, False):
            try:
                msg = await self._stub.GetInfo(pb.GetInfoRequest(), timeout=self.timeout_s, metadata=self._metadata)
                break
            except grpc.aio.AioRpcError as exc:
                if exc.code() is grpc.StatusCode.UNAVAILABLE and "unhealthy" in (exc.details() or ""):
                    error = await self._unhealthy_error(exc)
                    if error is None and first_try:
                        continue  # now checking health under ""
                    if error is not None:
                        raise error from None
                raise self._error(exc, "GetInfo") from None
            except (asyncio.CancelledError, grpc.aio.UsageError):
                self._raise_if_closed("GetInfo")
                raise
        try:
            self._info = convert.info_from_proto(msg)
        except ValueError as exc:
            raise RewardServiceError(self.name, self.target, BAD_INFO, str(exc)) from None
        return self._info

    async def score(self, samples: Sequence[Sample]) -> list[Result]:
        """One result per sample, same order. Splits to the server's limits, several requests in flight;
        a small call made while every slot is busy is merged with others (see the class doc)."""
        self._check_open()
        if not samples:
            return []
        info = self._info or await self.get_info()
        merge_limit = min(self.merge_samples, info.max_samples_per_request)
        if self._merger.should_merge(samples, merge_limit):
            return await self._merger.join(samples, merge_limit)
        return await self._score_split(samples, info)

    async def _score_split(
        self, samples: Sequence[Sample], info: ServiceInfo, *, hold_slot: bool = True
    ) -> list[Result]:
        """``samples`` as requests within the server's limits; ``hold_slot=False``: the caller holds one
        slot already and the requests go out one after another in it."""
        max_bytes = min(info.max_request_bytes or self._max_message_bytes, self._max_message_bytes)
        send = self._score_request if hold_slot else self._call
        if len(samples) <= info.max_samples_per_request:
            # The usual case: one request. Built in place and sized once, not per sample.
            request = convert.score_request(samples)
            # Serialized once, here: the size decides the split, is declared to the server
            # and is what goes out (upb's ByteSize() costs as much as serializing).
            payload = request.SerializeToString()
            if len(payload) <= int(max_bytes * 0.95):
                return await send(request, payload)
            chunks = list(split_requests(request.samples, info.max_samples_per_request, max_bytes))
        else:
            messages = [convert.sample_to_proto(s) for s in samples]
            chunks = list(split_requests(messages, info.max_samples_per_request, max_bytes))
        if len(chunks) == 1 or not hold_slot:
            return [r for chunk in chunks for r in await send(pb.ScoreRequest(samples=chunk))]
        tasks = [asyncio.ensure_future(self._score_request(pb.ScoreRequest(samples=chunk))) for chunk in chunks]
        try:
            parts = await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:  # one failed chunk fails the call: stop the others now
                task.cancel()
            raise
        return [result for part in parts for result in part]

    async def _score_request(self, request: pb.ScoreRequest, payload: bytes | None = None) -> list[Result]:
        async with self._slots:
            return await self._call(request, payload)

    async def _call(self, request: pb.ScoreRequest, payload: bytes | None = None) -> list[Result]:
        """One Score RPC; the caller holds a slot. ``payload``: ``request`` serialized, where
        the caller has it already."""
        self._check_open()  # it may have waited for the slot while the client closed
        if payload is None:
            payload = request.SerializeToString()
        # The size up front lets the server admit the call before reading it.
        metadata = (*self._metadata, (REQUEST_BYTES_METADATA, str(len(payload))))
        for attempt in range(self._retry_attempts):
            try:
                response = await self._score_rpc(payload, timeout=self.timeout_s, metadata=metadata)
                break
            except grpc.aio.AioRpcError as exc:
                delay = busy_retry_delay(exc, attempt)
                if delay is None or attempt + 1 == self._retry_attempts:
                    raise self._error(exc, "Score") from None
            except (asyncio.CancelledError, grpc.aio.UsageError):
                self._raise_if_closed("Score")
                raise
            await asyncio.sleep(delay)
            self._check_open()
        got = [r.id for r in response.results]
        want = [s.id for s in request.samples]
        if got != want:
            raise RewardServiceError(
                self.name, self.target, PROTOCOL_ERROR,
                f"Score returned ids {got[:5]}... for samples {want[:5]}... ({len(got)} vs {len(want)}); "
                "the server broke the one-result-per-sample-in-order contract",
            )
        return convert.results_from_proto(response)

    def _error(self, exc: grpc.aio.AioRpcError, method: str) -> RewardServiceError:
        code = exc.code().name
        details = f"{method}: {exc.details()}"
        if exc.code() is grpc.StatusCode.UNAVAILABLE:
            # The core's debug string names the address that failed; worth its length here.
            return RewardServiceUnavailable(self.name, self.target, code, f"{details} [{exc.debug_error_string()}]")
        if exc.code() is grpc.StatusCode.RESOURCE_EXHAUSTED and busy_retry_delay(exc, 0) is None:
            return RewardServiceError(self.name, self.target, REQUEST_TOO_LARGE, details)
        return RewardServiceError(self.name, self.target, code, details)

    def _closed_error(self, what: str) -> RewardServiceError:
        return RewardServiceError(
            self.name, self.target, CLIENT_CLOSED, f"the client was closed before this {what} was answered"
        )

    def _check_open(self) -> None:
        if self._closed:
            raise RewardServiceError(self.name, self.target, CLIENT_CLOSED, "this RewardClient is closed")

    def _raise_if_closed(self, method: str) -> None:
        """Inside ``except CancelledError``: if close() cut the RPC off (not the caller's own
        cancellation), raise CLIENT_CLOSED instead of a bare CancelledError."""
        task = asyncio.current_task()
        if self._closed and task is not None and task.cancelling() == 0:
            raise self._closed_error(method) from None

    async def close(self) -> None:
        """Close the channel; every call still running or waiting fails with CLIENT_CLOSED."""
        self._closed = True
        self._merger.cancel_all()
        await self._channel.close()

    async def __aenter__(self) -> RewardClient:
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.close()


class BlockingRewardClient:
    """RewardClient for synchronous code: runs it on a private event loop thread."""

    def __init__(self, targets: str | Sequence[str], **kwargs) -> None:
        self._io = LoopThread("reward-client")

        async def make() -> RewardClient:  # a channel belongs to the loop that creates it
            return RewardClient(targets, **kwargs)

        try:
            self._client = self._io.run(make())
        except BaseException:
            self._io.stop()
            raise

    def get_info(self) -> ServiceInfo:
        return self._io.run(self._client.get_info())

    def score(self, samples: Sequence[Sample]) -> list[Result]:
        return self._io.run(self._client.score(samples))

    def close(self) -> None:
        if self._io.running and not self._io.loop.is_closed():
            self._io.run(self._client.close())
            self._io.stop()

    def __enter__(self) -> BlockingRewardClient:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

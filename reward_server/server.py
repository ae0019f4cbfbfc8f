"""The gRPC reward server: RewardService + health + reflection + Prometheus metrics.

One process serves one Scorer. Requests are validated (convert.py), merged into scorer
batches (batching.py) and answered one result per sample. Lifecycle:

    start  -> health SERVING for "" and rpp.reward.v1.RewardService
    drain  -> health NOT_SERVING (load balancers and health-checking clients move away),
              new Score calls get UNAVAILABLE (clients retry on another replica),
              in-flight calls finish within the grace period, then the port closes.

``start_in_thread`` runs a server on a background thread for tests and notebooks;
``serve`` runs one in the foreground with SIGTERM/SIGINT wired to drain (the CLI).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import signal
import threading
import time
from dataclasses import dataclass

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

from reward_server import convert
from reward_server.batching import (
    BatcherClosed,
    BatchingConfig,
    DynamicBatcher,
    QueueFull,
    ScorerStuck,
)
from reward_server.contract import (
    CONTRACT_VERSION,
    GRPC_DEFAULT_RECEIVE_BYTES,
    PUSHBACK_TRAILER,
    REQUEST_BYTES_METADATA,
    SERVICE_NAME,
)
from reward_server.metrics import ServerMetrics
from reward_server.proto import reward_pb2 as pb
from reward_server.proto import reward_pb2_grpc
from reward_server.quoting import short_repr
from reward_server.scorers.base import Scorer
from reward_server.security import BearerTokenInterceptor, TLSConfig, server_credentials
from reward_server.types import Result, RewardKind, ServiceInfo

log = logging.getLogger(__name__)

_SMALL_REQUEST_BYTES = 64 << 10  # admitted whatever the byte budget (at most max_concurrent_calls of them)
_MAX_RESPONSE_BYTES = 64 << 20
_STEPS_OFF_LOOP = 20_000  # responses with more steps are built off the event loop
VERSION = "rpp 0.1.0"


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"  # loopback unless told otherwise: a reward server is not public
    port: int = 0  # 0: any free port (read it from ServerHandle.address or the ready file)
    max_batch_samples: int = 64  # samples per scorer call
    max_batch_bytes: int = 262_144  # Scorer.cost budget per scorer call (UTF-8 bytes, an upper bound on tokens)
    # Continuous batching: an idle scorer takes what is queued at once (0), or waits up to this
    # long after the oldest queued sample arrived for the batch to fill. Work that queued while
    # the scorer was busy never waits.
    max_wait_ms: float = 0.0
    max_queue: int = 4096  # queued samples before RESOURCE_EXHAUSTED
    # One scorer call; past it the batch's samples get TIMEOUT and, until the call returns,
    # health says NOT_SERVING and new calls get UNAVAILABLE (0: no limit).
    scorer_timeout_s: float = 120.0
    max_samples_per_request: int = 1024  # advertised in GetInfo; clients split to it
    max_sample_bytes: int = 1 << 20  # prompt + response + reference; larger -> per-sample error
    # Largest Score request gRPC receives (advertised in GetInfo; clients split to it). gRPC's
    # own default; a bigger one is refused by the transport without reaching Python, and a
    # call that does not declare its size counts as this big until it is read.
    max_message_bytes: int = GRPC_DEFAULT_RECEIVE_BYTES
    # Admission: serialized Score requests held at once (queued or being scored), and Score
    # calls at once; past either, RESOURCE_EXHAUSTED before the message is read. With
    # them the memory for requests is bounded (README, "What a replica guarantees").
    max_inflight_bytes: int = 128 << 20
    max_concurrent_calls: int = 256
    token: str | None = None  # bearer token; None: no auth
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    tls_client_ca_file: str | None = None  # set: mTLS, client certificates required
    metrics_port: int | None = 0  # 0: any free port; None: no metrics endpoint
    metrics_host: str | None = None  # where /metrics listens (plain HTTP, no auth); default: host
    grace_s: float = 10.0  # drain: how long in-flight calls may take to finish
    max_connection_age_s: float = 300.0  # clients reconnect (and re-resolve DNS) this often

    def __post_init__(self) -> None:
        if self.max_inflight_bytes < 1 or self.max_concurrent_calls < 1:
            raise ValueError("ServerConfig.max_inflight_bytes and max_concurrent_calls must be >= 1")
        if self.max_queue < self.max_samples_per_request:
            raise ValueError(
                f"ServerConfig.max_queue ({self.max_queue}) must be >= max_samples_per_request "
                f"({self.max_samples_per_request}), or a full-size request could never be accepted"
            )
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ValueError("ServerConfig: TLS needs both tls_cert_file and tls_key_file")
        if self.tls_client_ca_file and not self.tls_cert_file:
            raise ValueError("ServerConfig: mTLS (tls_client_ca_file) also needs tls_cert_file and tls_key_file")

    def batching(self) -> BatchingConfig:
        return BatchingConfig(
            self.max_batch_samples, self.max_batch_bytes, self.max_wait_ms, self.max_queue, self.scorer_timeout_s
        )

    def grpc_options(self) -> list[tuple[str, int]]:
        return [
            ("grpc.max_receive_message_length", self.max_message_bytes),
            # Responses are built here, not received: one of 1024 samples with 300 steps each
            # is over 4 MiB, and the client's receive limit (64 MiB) is the one that matters.
            ("grpc.max_send_message_length", max(self.max_message_bytes, _MAX_RESPONSE_BYTES)),
            ("grpc.max_connection_age_ms", int(self.max_connection_age_s * 1000)),
            ("grpc.max_connection_age_grace_ms", int(self.grace_s * 1000)),
            # Clients ping every 30 s when idle; allow it instead of answering "too many pings".
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
            ("grpc.keepalive_permit_without_calls", 1),
            # Refuse to share a fixed port with another process (silent split traffic otherwise).
            ("grpc.so_reuseport", 0),
            # Back-pressure: a Score call's message stays with its sender until admission reads
            # it. With BDP probing the transport grows each stream's window and takes whole
            # unread messages in (32 pending 4 MiB calls: 164 MiB; without it 37 MiB). A read
            # still opens the window to the message's size.
            ("grpc.http2.bdp_probe", 0),
            # Without BDP each stream's window starts at 64 KiB, so a request a little bigger
            # (64 samples of 1 KB: 70 KB) stalls mid-message for a window update: batches lost
            # a quarter of their throughput. A 256 KiB initial window lets such a message in
            # at once. The price: up to 256 KiB taken in per waiting or refused call (1 MiB
            # doubled the small-call p99 under a flood of oversized requests).
            ("grpc.http2.lookahead_bytes", 256 << 10),
        ]


class BindError(OSError):
    """The server could not listen on its address."""


# Busy refusals carry gRPC's server-pushback trailer: "retry after this many ms". Without
# it a RESOURCE_EXHAUSTED means "too big, do not retry" (the contract, reward.proto).
BUSY_PUSHBACK = ((PUSHBACK_TRAILER, "50"),)


REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"


def enable_reflection(server: grpc.Server | grpc.aio.Server) -> None:
    """Server reflection under both names clients ask for: grpc.reflection.v1 (grpcurl,
    newer clients) and v1alpha. grpcio-reflection implements v1alpha only; the v1 messages
    are the same on the wire, so v1 is routed to the same servicer."""
    names = (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME, REFLECTION_V1)
    aio = isinstance(server, grpc.aio.Server)
    servicer = (reflection.aio.ReflectionServicer if aio else reflection.ReflectionServicer)(names)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(REFLECTION_V1, {
        "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
            servicer.ServerReflectionInfo,
            request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
            response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
        ),
    }),))


class _RpcFailure(Exception):
    def __init__(self, code: grpc.StatusCode, details: str, trailing_metadata: tuple = ()) -> None:
        super().__init__(details)
        self.code, self.details, self.trailing_metadata = code, details, trailing_metadata


class RewardServicer(reward_pb2_grpc.RewardServiceServicer):
    def __init__(self, scorer: Scorer, config: ServerConfig, batcher: DynamicBatcher, metrics: ServerMetrics):
        self._scorer, self._config, self._batcher, self._metrics = scorer, config, batcher, metrics
        self.draining = False
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._refusals = RateLimitedLog(log, per_s=10.0, burst=10)
        self._bytes_in_flight = 0  # serialized Score requests admitted and not yet answered
        self._calls_in_flight = 0

    def info(self) -> ServiceInfo:
        return ServiceInfo(
            kind=self._scorer.kind,
            model_name=self._scorer.model_name,
            step_separator=self._scorer.step_separator if self._scorer.kind is RewardKind.PROCESS else "",
            max_samples_per_request=self._config.max_samples_per_request,
            max_request_bytes=self._config.max_message_bytes,
            version=VERSION,
            input_format=self._scorer.input_format,
            max_sample_bytes=self._config.max_sample_bytes,
            contract_version=CONTRACT_VERSION,
        )

    async def wait_idle(self) -> None:
        await self._idle.wait()

    async def GetInfo(self, request: pb.GetInfoRequest, context) -> pb.GetInfoResponse:
        self._metrics.requests.labels("GetInfo", "OK").inc()
        return convert.info_to_proto(self.info())

    async def score_call(self, _request_stream, context) -> pb.ScoreResponse:
        """Score, admitted before its message is read: within the call budget, and within
        the byte budget by the size the client declares in ``rpp-request-bytes`` metadata
        (or, undeclared, the largest message accepted). Refused calls are never read, so a
        flood costs neither their bytes nor the CPU to receive them; their messages stay
        with the senders (HTTP/2 flow control). The handler is request-streaming only to
        decide when to read: on the wire Score is unary, one message each way."""
        declared = self._declared_bytes(context)
        if declared is not None and declared < 0:
            await self._invalid(context, f"{REQUEST_BYTES_METADATA} metadata must be the serialized request's size "
                                         "in bytes, a decimal integer")
        if declared is not None and declared > self._config.max_message_bytes:
            # Too big, not busy: no pushback, so clients do not retry it (the contract).
            self._metrics.requests.labels("Score", "RESOURCE_EXHAUSTED").inc()
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"the request is {declared} bytes, more than max_request_bytes="
                                f"{self._config.max_message_bytes}; split it (GetInfo.max_request_bytes)")
        reserved = self._config.max_message_bytes if declared is None else declared
        refusal = self._admission_refusal(reserved, declared is not None)
        if refusal:
            self._metrics.requests.labels("Score", "RESOURCE_EXHAUSTED").inc()
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, refusal, trailing_metadata=BUSY_PUSHBACK)
        self._bytes_in_flight += reserved
        self._calls_in_flight += 1
        try:
            raw = await self._read_one(context)
            if declared is not None and len(raw) != declared:
                await self._invalid(context, f"the request is {len(raw)} bytes, but its {REQUEST_BYTES_METADATA} "
                                             f"metadata said {declared}: send the serialized ScoreRequest's size")
            self._bytes_in_flight += len(raw) - reserved
            reserved = len(raw)
            return await self._parse_and_score(raw, context)
        finally:
            self._bytes_in_flight -= reserved
            self._calls_in_flight -= 1

    def _declared_bytes(self, context) -> int | None:
        for key, value in context.invocation_metadata() or ():
            if key == REQUEST_BYTES_METADATA:
                return int(value) if value.isdigit() and len(value) <= 12 else -1
        return None

    async def _read_one(self, context) -> bytes:
        raw = await context.read()
        if raw is grpc.aio.EOF:
            await self._invalid(context, "Score got no request message: send one ScoreRequest")
        if await context.read() is not grpc.aio.EOF:
            await self._invalid(context, "Score is unary: send exactly one ScoreRequest per call")
        return raw

    async def _invalid(self, context, details: str) -> None:
        """INVALID_ARGUMENT for the call, counted and logged (rate-limited); raises."""
        self._metrics.requests.labels("Score", "INVALID_ARGUMENT").inc()
        self._refusals.warning("refused a Score request from %s: %s", context.peer(), details)
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, details)

    def _admission_refusal(self, size: int, declared: bool) -> str | None:
        cfg = self._config
        if self._calls_in_flight >= cfg.max_concurrent_calls:
            return (f"reward server overloaded: {self._calls_in_flight} Score calls in flight, the limit "
                    f"(max_concurrent_calls={cfg.max_concurrent_calls}); retry with backoff or add replicas")
        # A request bigger than the whole budget is still taken when nothing else is held, and
        # small ones always are (they cost little): a flood of big requests never locks out
        # the small calls of other callers, nor health-like probes of the service.
        if (
            size > _SMALL_REQUEST_BYTES
            and self._bytes_in_flight
            and self._bytes_in_flight + size > cfg.max_inflight_bytes
        ):
            what = (f"{size} more" if declared else
                    f"a request of undeclared size (up to max_message_bytes={cfg.max_message_bytes}; declare it "
                    f"in {REQUEST_BYTES_METADATA} metadata to be admitted by its size)")
            return (f"reward server overloaded: {self._bytes_in_flight} request bytes held and {what} would "
                    f"exceed max_inflight_bytes={cfg.max_inflight_bytes}; retry with backoff or add replicas")
        return None

    async def _parse_and_score(self, raw: bytes, context) -> pb.ScoreResponse:
        """A payload that is no ScoreRequest (garbage, or a string that is not valid UTF-8,
        as protobufjs writes for a lone surrogate) gets INVALID_ARGUMENT naming the problem,
        not grpc's UNKNOWN and a logged traceback."""
        try:
            request = pb.ScoreRequest.FromString(raw)
        except DecodeError as exc:
            await self._invalid(context, (
                f"the request is not a valid rpp.reward.v1.ScoreRequest ({len(raw)} bytes): "
                f"{short_repr(str(exc), 200)}; "
                "serialize a ScoreRequest, with every string valid UTF-8"
            ))
        return await self.Score(request, context, request_bytes=len(raw))

    async def info_bytes(self, raw: bytes, context) -> pb.GetInfoResponse:
        try:
            request = pb.GetInfoRequest.FromString(raw)
        except DecodeError:
            self._metrics.requests.labels("GetInfo", "INVALID_ARGUMENT").inc()
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "the request is not a valid rpp.reward.v1.GetInfoRequest"
            )
        return await self.GetInfo(request, context)

    async def Score(self, request: pb.ScoreRequest, context, request_bytes: int | None = None) -> pb.ScoreResponse:
        started = time.perf_counter()
        self._in_flight += 1
        self._idle.clear()
        try:
            response = await self._score(request, request_bytes)
            code = "OK"
        except _RpcFailure as failure:
            code = failure.code.name
            if failure.code is grpc.StatusCode.INVALID_ARGUMENT:
                self._refusals.warning("refused a Score request from %s: %s", context.peer(), failure.details)
            await context.abort(failure.code, failure.details, trailing_metadata=failure.trailing_metadata)
        except asyncio.CancelledError:
            code = "CANCELLED"  # the client went away or its deadline passed
            raise
        finally:
            metrics = self._metrics
            (metrics.score_ok if code == "OK" else metrics.requests.labels("Score", code)).inc()
            metrics.score_latency.observe(time.perf_counter() - started)
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()
        return response

    async def _score(self, request: pb.ScoreRequest, request_bytes: int | None) -> pb.ScoreResponse:
        if self.draining:
            raise _RpcFailure(
                grpc.StatusCode.UNAVAILABLE, "this reward server is draining (shutting down); retry on another replica"
            )
        try:
            samples = convert.parse_score_request(
                request, self._config.max_samples_per_request, with_steps=self._scorer.kind is RewardKind.PROCESS
            )
        except convert.InvalidRequest as exc:
            raise _RpcFailure(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
        self._metrics.samples.inc(len(samples))
        rejected = convert.oversized_samples(request, self._config.max_sample_bytes, request_bytes)
        accepted = [s for i, s in enumerate(samples) if i not in rejected] if rejected else samples
        try:
            scored = await self._batcher.submit(accepted) if accepted else []
        except QueueFull as exc:
            raise _RpcFailure(
                grpc.StatusCode.RESOURCE_EXHAUSTED, f"reward server overloaded: {exc}", BUSY_PUSHBACK
            ) from None
        except (BatcherClosed, ScorerStuck) as exc:
            raise _RpcFailure(grpc.StatusCode.UNAVAILABLE, str(exc)) from None
        if rejected:
            rest = iter(scored)
            scored = [
                Result(id=s.id, error=rejected[i]) if i in rejected else next(rest) for i, s in enumerate(samples)
            ]
        steps = 0
        for result in scored:
            steps += len(result.steps)
            if result.error is not None:
                self._metrics.sample_errors.labels(result.error.code).inc()
        if steps > _STEPS_OFF_LOOP:
            # Building a message of 340,000 steps takes about a second: in a thread, so the
            # event loop (health, other calls) keeps getting the interpreter meanwhile.
            return await asyncio.to_thread(convert.score_response, scored)
        return convert.score_response(scored)


def add_reward_servicer(servicer: RewardServicer, server: grpc.aio.Server) -> None:
    """``reward_pb2_grpc.add_RewardServiceServicer_to_server``, with the requests handed over
    as bytes: the servicer parses them and answers a bad payload with INVALID_ARGUMENT."""
    handlers = {
        # Request-streaming so that admission runs before the message is read (score_call).
        "Score": grpc.stream_unary_rpc_method_handler(
            servicer.score_call, request_deserializer=None, response_serializer=pb.ScoreResponse.SerializeToString
        ),
        "GetInfo": grpc.unary_unary_rpc_method_handler(
            servicer.info_bytes, request_deserializer=None, response_serializer=pb.GetInfoResponse.SerializeToString
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)


class RateLimitedLog:
    """At most ``burst`` lines per ``per_s`` seconds, then one line saying how many were
    dropped: a flood of bad requests must not flood the log."""

    def __init__(self, logger: logging.Logger, per_s: float, burst: int):
        self._log, self._per_s, self._burst = logger, per_s, burst
        self._window_start = -float("inf")
        self._count = self._dropped = 0

    def warning(self, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._window_start >= self._per_s:
            if self._dropped:
                self._log.warning("... and %d more refused requests in the last %.0f s", self._dropped, self._per_s)
            self._window_start, self._count, self._dropped = now, 0, 0
        if self._count < self._burst:
            self._count += 1
            self._log.warning(message, *args)
        else:
            self._dropped += 1


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class RewardServer:
    """One grpc.aio server around one scorer. ``start`` and ``drain`` run in its event loop."""

    def __init__(self, scorer: Scorer, config: ServerConfig) -> None:
        self.scorer, self.config = scorer, config
        self.address = ""
        self.metrics_port: int | None = None
        self._closed = asyncio.Event()

    async def start(self) -> None:
        cfg = self.config
        self.metrics = ServerMetrics(queue_depth=lambda: self._batcher.queue_depth)
        self._batcher = DynamicBatcher(
            self.scorer, cfg.batching(), on_batch=self.metrics.observe_batch, on_stuck=self._scorer_stuck
        )
        interceptors = [BearerTokenInterceptor(cfg.token)] if cfg.token else []
        self._server = grpc.aio.server(options=cfg.grpc_options(), interceptors=interceptors)
        self.servicer = RewardServicer(self.scorer, cfg, self._batcher, self.metrics)
        add_reward_servicer(self.servicer, self._server)
        self._health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        enable_reflection(self._server)
        bind = _host_port(cfg.host, cfg.port)
        try:
            if cfg.tls_cert_file:
                tls = TLSConfig(cfg.tls_cert_file, cfg.tls_key_file, cfg.tls_client_ca_file)
                port = self._server.add_secure_port(bind, server_credentials(tls))
            else:
                port = self._server.add_insecure_port(bind)
        except RuntimeError:
            port = 0  # grpcio raises "Failed to bind" where older versions returned 0
        if port == 0:
            raise BindError(
                f"cannot listen on {bind}: the address is in use (another server on that port?) or not "
                "this machine's; pick another --port, or --port 0 for any free one"
            )
        await self._server.start()
        self.address = _host_port(cfg.host, port)
        if cfg.metrics_port is not None:
            self.metrics_port = self.metrics.serve(cfg.metrics_host or cfg.host, cfg.metrics_port)
        for service in ("", SERVICE_NAME):
            await self._health.set(service, health_pb2.HealthCheckResponse.SERVING)

    @property
    def scorer_stuck(self) -> bool:
        """A scorer call outlived its timeout and has not returned."""
        return self._batcher.stuck

    @property
    def scorer_calls_left_running(self) -> bool:
        return self._batcher.calls_left_running

    def _scorer_stuck(self, stuck: bool) -> None:
        """Health follows the scorer: NOT_SERVING while a call is stuck past its timeout."""
        if self.servicer.draining:
            return
        status = health_pb2.HealthCheckResponse.NOT_SERVING if stuck else health_pb2.HealthCheckResponse.SERVING
        for service in ("", SERVICE_NAME):
            asyncio.ensure_future(self._health.set(service, status))

    async def drain(self, grace_s: float | None = None) -> None:
        """NOT_SERVING, refuse new calls, let in-flight calls finish within ``grace_s``, close."""
        if self.servicer.draining:
            await self._closed.wait()
            return
        grace = self.config.grace_s if grace_s is None else grace_s
        log.info("draining reward server %s (grace %.1f s)", self.address, grace)
        self.servicer.draining = True
        await self._health.enter_graceful_shutdown()
        try:
            await asyncio.wait_for(self.servicer.wait_idle(), grace)
        except TimeoutError:
            log.warning("grace period of %.1f s over; cancelling the calls still running", grace)
        await self._server.stop(grace=0.2)  # in-flight calls are done; this ends watch streams
        try:
            await asyncio.wait_for(self._batcher.close(), timeout=max(grace, 1.0))
        except TimeoutError:
            log.warning("the scorer did not finish its last batch within the grace period")
        self.metrics.stop()
        self._closed.set()
        log.info("reward server %s stopped", self.address)

    async def wait_closed(self) -> None:
        await self._closed.wait()


class ServerHandle:
    """A server running on a background thread; ``stop`` drains it."""

    def __init__(self, server: RewardServer, loop: asyncio.AbstractEventLoop, thread: threading.Thread):
        self._server, self._loop, self._thread = server, loop, thread
        self.address: str = server.address
        self.metrics_port: int | None = server.metrics_port

    @property
    def server(self) -> RewardServer:
        return self._server

    def stop(self, grace_s: float | None = None) -> None:
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._server.drain(grace_s), self._loop).result()
        self._thread.join(timeout=30)

    def __enter__(self) -> ServerHandle:
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop(grace_s=1.0)


def start_in_thread(scorer: Scorer, config: ServerConfig | None = None) -> ServerHandle:
    """Start a reward server on a daemon thread; returns once it is serving."""
    config = config or ServerConfig()
    ready: concurrent.futures.Future[tuple[RewardServer, asyncio.AbstractEventLoop]] = concurrent.futures.Future()

    async def main() -> None:
        server = RewardServer(scorer, config)
        try:
            await server.start()
        except BaseException as exc:
            ready.set_exception(exc)
            return
        ready.set_result((server, asyncio.get_running_loop()))
        await server.wait_closed()

    thread = threading.Thread(target=asyncio.run, args=(main(),), name="reward-server", daemon=True)
    thread.start()
    server, loop = ready.result(timeout=60)
    return ServerHandle(server, loop, thread)


async def serve(scorer: Scorer, config: ServerConfig, on_ready=None) -> bool:
    """Run a server until SIGTERM/SIGINT, then drain. ``on_ready(server)`` runs once serving.

    Returns whether a scorer call was still running at the end, stuck or past the grace
    period (the caller should then exit without waiting for the thread it holds)."""
    server = RewardServer(scorer, config)
    await server.start()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda s=sig: (log.info("received %s", signal.Signals(s).name),
                                                    loop.create_task(server.drain())))
    if on_ready is not None:
        on_ready(server)
    await server.wait_closed()
    return server.scorer_calls_left_running

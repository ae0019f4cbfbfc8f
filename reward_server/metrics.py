"""Prometheus metrics of one reward server, served on a side HTTP port.

Each server owns its own CollectorRegistry, so several servers in one process (tests,
benchmarks) never clash over metric names. The side port serves ``GET /metrics`` only
(404 for anything else) over plain HTTP with no auth, even when the gRPC port has TLS or
a token: its counters are not secret, but bind it to a private address
(``--metrics-host``) or turn it off (``--metrics-port -1``) where that matters.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import prometheus_client as prom

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass  # scrapes every few seconds would flood stderr


class ServerMetrics:
    def __init__(self, queue_depth: Callable[[], int]) -> None:
        self.registry = prom.CollectorRegistry()
        r = self.registry
        self.requests = prom.Counter(
            "rpp_reward_requests", "RPCs answered, by method and gRPC status code.", ["method", "code"], registry=r
        )
        self.latency = prom.Histogram(
            "rpp_reward_request_latency_seconds", "Time to answer one RPC.", ["method"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.samples = prom.Counter("rpp_reward_samples", "Samples received in Score requests.", registry=r)
        self.sample_errors = prom.Counter(
            "rpp_reward_sample_errors", "Per-sample errors returned, by error code.", ["code"], registry=r
        )
        self.batch_size = prom.Histogram(
            "rpp_reward_batch_size", "Samples per scorer call (after merging requests).",
            buckets=_BATCH_BUCKETS, registry=r,
        )
        self.batch_seconds = prom.Histogram(
            "rpp_reward_batch_seconds", "Time spent in one scorer call.", buckets=_LATENCY_BUCKETS, registry=r
        )
        # Children resolved once: ``labels()`` costs a lock and a dict lookup on every call.
        self.score_ok = self.requests.labels("Score", "OK")
        self.score_latency = self.latency.labels("Score")
        queue = prom.Gauge("rpp_reward_queue_depth", "Samples waiting for a scorer batch.", registry=r)
        queue.set_function(queue_depth)
        self._http: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def observe_batch(self, size: int, cost: int, seconds: float) -> None:
        del cost  # the token budget is the batcher's business; size and time are what ops watch
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)

    def serve(self, host: str, port: int) -> int:
        """Start the /metrics HTTP endpoint on a daemon thread; returns the bound port."""
        metrics_app = prom.make_wsgi_app(self.registry)

        def only_metrics(environ, start_response):
            if environ.get("PATH_INFO") != "/metrics":
                start_response("404 Not Found", [("Content-Type", "text/plain")])
                return [b"only /metrics is served here\n"]
            return metrics_app(environ, start_response)

        self._http = make_server(
            host, port, only_metrics, prom.exposition.ThreadingWSGIServer, handler_class=_QuietHandler
        )
        self._thread = threading.Thread(target=self._http.serve_forever, name="metrics-http", daemon=True)
        self._thread.start()
        return self._http.server_port

    def stop(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None

"""The gRPC channel of ``RewardClient``: one channel over every replica of a service.

What the channel does (all of it is standard gRPC, set in the service config):
- round_robin over every address (``ipv4:`` lists or a ``dns:///`` name; for Kubernetes
  point ``dns:///`` at a headless Service so every pod is an address);
- health-checked balancing: a replica whose grpc.health.v1 status is NOT_SERVING (e.g.
  draining) gets no new calls;
- retries with exponential backoff on UNAVAILABLE, so a dead replica costs a retry, not a
  sample. The per-RPC retry buffer is raised to the message limit, because gRPC silently
  skips retries for requests larger than it;
- keepalive pings, message limits matching the server, TLS when asked for.

This module only sets the channel up; what goes over it is ``reward_server.client``'s.
"""

from __future__ import annotations

import ipaddress
import json
import socket
from collections.abc import Sequence

import grpc

from reward_server.contract import SERVICE_NAME
from reward_server.security import TLSConfig, channel_credentials

DEFAULT_MAX_MESSAGE_BYTES = 64 << 20


def channel_target(targets: str | Sequence[str]) -> str:
    """One gRPC target for a set of replicas.

    ``"dns:///reward.ns.svc:50051"`` and other URIs pass through; ``"host:port"`` is a
    single server; a list (or comma-separated string) of ``host:port`` becomes an
    ``ipv4:``/``ipv6:`` address list, hostnames resolved once, here.
    """
    if isinstance(targets, str):
        if ":///" in targets or targets.startswith(("ipv4:", "ipv6:", "unix:")):
            return targets
        targets = [t.strip() for t in targets.split(",") if t.strip()]
    if not targets:
        raise ValueError("no reward service address given; pass 'host:port', a list of them, or 'dns:///name:port'")
    if len(targets) == 1:
        return targets[0]
    addresses = [_resolve(t) for t in targets]
    families = {ipaddress.ip_address(host).version for host, _ in addresses}
    if families == {4}:
        return "ipv4:" + ",".join(f"{h}:{p}" for h, p in addresses)
    if families == {6}:
        return "ipv6:" + ",".join(f"[{h}]:{p}" for h, p in addresses)
    raise ValueError(f"reward service addresses {list(targets)} mix IPv4 and IPv6; use one family")


def _resolve(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"reward service address {address!r} needs the form host:port")
    host = host.strip("[]")
    try:
        ipaddress.ip_address(host)
        return host, int(port)
    except ValueError:
        pass
    try:
        info = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ValueError(f"cannot resolve reward service host {host!r}: {exc}") from exc
    return str(info[0][4][0]), int(port)


def service_config(retry_attempts: int, health_service: str = SERVICE_NAME) -> str:
    """The gRPC service config: round_robin, health checking under ``health_service``,
    retries of UNAVAILABLE with backoff (``retry_attempts`` tries in all; 1: no retries, as
    gRPC refuses a policy of 1). RESOURCE_EXHAUSTED is retried by ``RewardClient`` itself:
    only a busy server's (with a pushback trailer) may be retried."""
    if retry_attempts < 1:
        raise ValueError(f"retry_attempts must be >= 1 (tries in all), got {retry_attempts}")
    method: dict = {"name": [{"service": SERVICE_NAME}]}
    if retry_attempts > 1:
        method["retryPolicy"] = {
            "maxAttempts": retry_attempts,  # gRPC caps this at 5
            "initialBackoff": "0.05s",
            "maxBackoff": "2s",
            "backoffMultiplier": 2,
            "retryableStatusCodes": ["UNAVAILABLE"],
        }
    return json.dumps({
        "loadBalancingConfig": [{"round_robin": {}}],
        "healthCheckConfig": {"serviceName": health_service},
        "methodConfig": [method],
    })


def open_channel(
    target: str, *, tls: TLSConfig | None, max_message_bytes: int, retry_attempts: int, health_service: str | None
) -> grpc.aio.Channel:
    """The channel to every replica at ``target``; ``health_service`` None: no health checking
    and no service config (a probe of the health service itself)."""
    options = [
        ("grpc.enable_retries", 1),
        ("grpc.per_rpc_retry_buffer_size", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
    ]
    if health_service is not None:
        options.append(("grpc.service_config", service_config(retry_attempts, health_service)))
    if tls is None:
        return grpc.aio.insecure_channel(target, options=options)
    if tls.server_name:
        options.append(("grpc.ssl_target_name_override", tls.server_name))
    return grpc.aio.secure_channel(target, channel_credentials(tls), options=options)

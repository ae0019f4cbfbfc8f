"""Transport security and authentication, shared by the server and the client.

- TLS / mTLS: PEM files. Give the server a client CA and it requires client certificates.
- Bearer token: the client sends ``authorization: Bearer <token>`` metadata on every call;
  the server's interceptor refuses calls without it (UNAUTHENTICATED). The health
  service is exempt because Kubernetes' native gRPC probes cannot send metadata.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from pathlib import Path

import grpc

_EXEMPT_PREFIXES = ("/grpc.health.v1.Health/",)


@dataclass(frozen=True)
class TLSConfig:
    """PEM files for one side of a TLS connection.

    Server: ``cert_file`` + ``key_file`` are its identity; ``ca_file`` (optional) is the CA
    that client certificates must chain to, and setting it turns on mTLS.
    Client: ``ca_file`` verifies the server (None: the system roots); ``cert_file`` +
    ``key_file`` (optional) are the client identity for mTLS; ``server_name`` overrides
    the name checked against the server certificate (for IP targets or test CAs).
    """

    cert_file: str | None = None
    key_file: str | None = None
    ca_file: str | None = None
    server_name: str | None = None


def _read(path: str | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read the {what} PEM file {path!r}: {exc.strerror}") from exc


def server_credentials(tls: TLSConfig) -> grpc.ServerCredentials:
    if not (tls.cert_file and tls.key_file):
        raise ValueError("server TLS needs both cert_file and key_file (PEM); got "
                         f"cert_file={tls.cert_file!r}, key_file={tls.key_file!r}")
    client_ca = _read(tls.ca_file, "client CA")
    return grpc.ssl_server_credentials(
        [(_read(tls.key_file, "server key"), _read(tls.cert_file, "server certificate"))],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


def channel_credentials(tls: TLSConfig) -> grpc.ChannelCredentials:
    if bool(tls.cert_file) != bool(tls.key_file):
        raise ValueError("client TLS: give both cert_file and key_file for mTLS, or neither")
    return grpc.ssl_channel_credentials(
        root_certificates=_read(tls.ca_file, "CA"),
        private_key=_read(tls.key_file, "client key"),
        certificate_chain=_read(tls.cert_file, "client certificate"),
    )


def bearer_metadata(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def _deny_handler(kind: grpc.RpcMethodHandler, details: str) -> grpc.RpcMethodHandler:
    async def deny(_request, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, details)

    # The refusal must have the same streaming shape as the method it replaces.
    if kind.request_streaming and kind.response_streaming:
        return grpc.stream_stream_rpc_method_handler(deny)
    if kind.request_streaming:
        return grpc.stream_unary_rpc_method_handler(deny)
    if kind.response_streaming:
        return grpc.unary_stream_rpc_method_handler(deny)
    return grpc.unary_unary_rpc_method_handler(deny)


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Refuses calls whose ``authorization`` metadata is not ``Bearer <token>``."""

    def __init__(self, token: str) -> None:
        if not token:
            raise ValueError("bearer token must be non-empty (omit it to turn auth off)")
        self._expected = f"Bearer {token}".encode()

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(_EXEMPT_PREFIXES):
            return handler
        sent = dict(handler_call_details.invocation_metadata or ()).get("authorization")
        if sent is None:
            return _deny_handler(handler, "missing 'authorization: Bearer <token>' metadata; "
                                          "this reward server requires a token")
        if not hmac.compare_digest(sent.encode(), self._expected):
            return _deny_handler(handler, "wrong bearer token in 'authorization' metadata")
        return handler

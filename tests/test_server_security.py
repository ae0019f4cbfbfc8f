"""TLS, mTLS and bearer-token auth with certificates generated in the test."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from reward_server.client import RewardClient, RewardServiceError
from reward_server.security import TLSConfig
from reward_server.server import ServerConfig, start_in_thread
from tests.serving_helpers import LengthScorer, expected_outcome, make_samples, write_test_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return write_test_pki(Path(tmp_path_factory.mktemp("pki")))


def score_once(address: str, **client_kwargs) -> list:
    async def run() -> list:
        async with RewardClient(address, timeout_s=10, retry_attempts=2, **client_kwargs) as client:
            return await client.score(make_samples(2))

    return asyncio.run(run())


def test_tls_server_is_reachable_only_over_tls(pki: dict[str, str]) -> None:
    config = ServerConfig(tls_cert_file=pki["server_cert"], tls_key_file=pki["server_key"], metrics_port=None)
    with start_in_thread(LengthScorer(), config) as server:
        results = score_once(server.address, tls=TLSConfig(ca_file=pki["ca"], server_name="localhost"))
        assert [r.outcome for r in results] == [expected_outcome(s) for s in make_samples(2)]
        with pytest.raises(RewardServiceError) as info:
            score_once(server.address)  # plaintext against a TLS port
        assert info.value.code == "UNAVAILABLE"


def test_mtls_requires_a_client_certificate(pki: dict[str, str]) -> None:
    config = ServerConfig(
        tls_cert_file=pki["server_cert"], tls_key_file=pki["server_key"], tls_client_ca_file=pki["ca"],
        metrics_port=None,
    )
    with start_in_thread(LengthScorer(), config) as server:
        with_cert = TLSConfig(ca_file=pki["ca"], cert_file=pki["client_cert"], key_file=pki["client_key"])
        results = score_once(server.address, tls=with_cert)
        assert all(r.ok for r in results) and len(results) == 2
        with pytest.raises(RewardServiceError) as info:
            score_once(server.address, tls=TLSConfig(ca_file=pki["ca"]))
        assert info.value.code == "UNAVAILABLE"


def test_token_auth_refuses_missing_or_wrong_tokens_but_not_health_probes() -> None:
    config = ServerConfig(token="s3cret", metrics_port=None)
    with start_in_thread(LengthScorer(), config) as server:
        assert all(r.ok for r in score_once(server.address, token="s3cret"))
        for token, reason in ((None, "missing 'authorization"), ("guess", "wrong bearer token")):
            with pytest.raises(RewardServiceError) as info:
                score_once(server.address, token=token)
            assert info.value.code == "UNAUTHENTICATED" and reason in str(info.value)

        async def probe() -> int:  # Kubernetes' gRPC probe sends no metadata
            async with grpc.aio.insecure_channel(server.address) as channel:
                reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
                return reply.status

        assert asyncio.run(probe()) == health_pb2.HealthCheckResponse.SERVING


def test_without_a_token_configured_any_caller_is_served() -> None:
    with start_in_thread(LengthScorer(), ServerConfig(metrics_port=None)) as server:
        assert all(r.ok for r in score_once(server.address, token="ignored"))
        assert all(r.ok for r in score_once(server.address))

"""Health, drain, reflection, metrics and the CLI entry point, on real servers."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from reward_server.client import BlockingRewardClient
from reward_server.contract import SERVICE_NAME
from reward_server.proto import reward_pb2 as pb
from reward_server.proto import reward_pb2_grpc
from reward_server.server import ServerConfig, start_in_thread
from reward_server.types import RewardKind, Sample
from tests.serving_helpers import LengthScorer, SlowAsyncScorer, make_samples

ROOT = Path(__file__).resolve().parents[1]
SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


def test_drain_turns_health_off_refuses_new_calls_and_finishes_in_flight_ones() -> None:
    server = start_in_thread(SlowAsyncScorer(delay_s=1.0), ServerConfig(grace_s=10, metrics_port=None))

    async def run() -> None:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = reward_pb2_grpc.RewardServiceStub(channel)
            health = health_pb2_grpc.HealthStub(channel)

            async def status(service: str) -> int:
                reply = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
                return reply.status

            assert await status(SERVICE_NAME) == SERVING and await status("") == SERVING
            in_flight = asyncio.ensure_future(
                stub.Score(pb.ScoreRequest(samples=[pb.Sample(id="slow", response="abc")]), timeout=20)
            )
            await asyncio.sleep(0.3)  # the call is now inside the scorer
            drain = asyncio.ensure_future(asyncio.to_thread(server.stop))
            await asyncio.sleep(0.2)
            assert await status(SERVICE_NAME) == NOT_SERVING and await status("") == NOT_SERVING
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.Score(pb.ScoreRequest(samples=[pb.Sample(id="new", response="x")]), timeout=5)
            assert refused.value.code() is grpc.StatusCode.UNAVAILABLE and "draining" in refused.value.details()
            reply = await in_flight
            assert reply.results[0].id == "slow" and reply.results[0].outcome == 3.0
            await drain
            with pytest.raises(grpc.aio.AioRpcError) as closed:
                await status("")
            assert closed.value.code() is grpc.StatusCode.UNAVAILABLE

    asyncio.run(run())


def test_reflection_lists_the_service_and_resolves_its_messages() -> None:
    with start_in_thread(LengthScorer(), ServerConfig(metrics_port=None)) as server:
        with grpc.insecure_channel(server.address) as channel:
            db = ProtoReflectionDescriptorDatabase(channel)
            services = set(db.get_services())
            file = db.FindFileContainingSymbol(SERVICE_NAME)
    assert {SERVICE_NAME, "grpc.health.v1.Health"} <= services
    assert {m.name for m in file.message_type} >= {"Sample", "ScoreRequest", "SampleResult", "GetInfoResponse"}


def metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert match, f"{name} not in /metrics"
    return float(match.group(1))


def test_metrics_are_per_server_and_count_requests_batches_and_errors() -> None:
    config = ServerConfig(max_samples_per_request=16)
    with start_in_thread(LengthScorer(nan_when="NAN"), config) as a, start_in_thread(LengthScorer(), config) as b:
        with BlockingRewardClient(a.address) as client:
            info = client.get_info()
            assert (info.kind, info.max_samples_per_request, info.max_request_bytes) == (
                RewardKind.OUTCOME, 16, config.max_message_bytes)
            client.score(make_samples(40))  # split into 16 + 16 + 8
            client.score(make_samples(1, text="NAN"))
        text_a = urllib.request.urlopen(f"http://127.0.0.1:{a.metrics_port}/metrics", timeout=5).read().decode()
        text_b = urllib.request.urlopen(f"http://127.0.0.1:{b.metrics_port}/metrics", timeout=5).read().decode()
    assert metric(text_a, 'rpp_reward_requests_total{code="OK",method="Score"}') == 4
    assert metric(text_a, "rpp_reward_samples_total") == 41
    assert metric(text_a, "rpp_reward_batch_size_sum") == 41
    assert metric(text_a, 'rpp_reward_sample_errors_total{code="BAD_SCORE"}') == 1
    assert metric(text_a, "rpp_reward_queue_depth") == 0
    assert metric(text_a, 'rpp_reward_request_latency_seconds_count{method="Score"}') == 4
    assert "rpp_reward_samples_total 0.0" in text_b


def test_cli_writes_the_ready_file_serves_and_drains_on_sigterm(tmp_path: Path) -> None:
    ready = tmp_path / "ready.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "reward_server.cli", "--scorer", "tests.serving_helpers:LengthScorer",
         "--kind", "process", "--port", "0", "--ready-file", str(ready)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "RPP_REWARD_TOKEN": "tok"},
    )
    try:
        for _ in range(600):
            if ready.exists() or proc.poll() is not None:
                break
            time.sleep(0.05)
        assert ready.exists(), f"server never became ready: {proc.communicate(timeout=5)[0]}"
        info = json.loads(ready.read_text())
        assert info["pid"] == proc.pid and info["address"].startswith("127.0.0.1:")
        with BlockingRewardClient(info["address"], token="tok") as client:
            assert client.get_info().kind is RewardKind.PROCESS
            (result,) = client.score([Sample("one", "q", "a\n\nbé")])
            assert [s.score for s in result.steps] == [1.0, 3.0]
    finally:
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=30)[0]
    assert proc.returncode == 0, output
    assert f"on {info['address']}" in output and "token auth on" in output
    assert "draining" in output


def test_exit_with_parent_stops_a_server_whose_launcher_was_killed(tmp_path):
    """A launcher killed with SIGKILL cannot stop its children: --exit-with-parent makes the
    server notice its parent is gone and drain by itself instead of living on as an orphan."""
    ready = tmp_path / "ready.json"
    server_cmd = [
        sys.executable, "-m", "reward_server.cli", "--scorer", "user", "--kind", "outcome",
        "--function", "examples/custom_reward_service.py:brevity_reward",
        "--port", "0", "--metrics-port", "-1", "--ready-file", str(ready), "--exit-with-parent",
    ]
    # The launcher: a Python process that starts the server, then waits forever.
    launcher_code = (
        "import subprocess, sys, time; "
        f"subprocess.Popen({server_cmd!r}, start_new_session=True); time.sleep(600)"
    )
    launcher = subprocess.Popen([sys.executable, "-c", launcher_code], cwd=Path(__file__).parents[1])
    try:
        deadline = time.monotonic() + 60
        while not ready.is_file():
            assert time.monotonic() < deadline, "the server never became ready"
            time.sleep(0.1)
        server_pid = json.loads(ready.read_text())["pid"]
        with BlockingRewardClient(json.loads(ready.read_text())["address"], timeout_s=10) as client:
            assert client.score([Sample(id="a", prompt="p", response="4", reference="4")])[0].ok
        launcher.kill()
        launcher.wait()
        deadline = time.monotonic() + 30
        while _alive(server_pid):
            assert time.monotonic() < deadline, "the orphaned server kept running"
            time.sleep(0.2)
    finally:
        launcher.kill()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by init) counts as gone.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False

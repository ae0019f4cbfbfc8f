"""One client over three server processes: traffic reaches all of them, and losing replicas
mid-stream (SIGKILL, then a SIGTERM drain) costs retries, not results."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from pathlib import Path

import pytest

from reward_server.client import RewardClient
from reward_server.types import Sample
from tests.serving_helpers import expected_outcome, start_server_processes


def start_replicas(tmp_path: Path, n: int) -> tuple[list[subprocess.Popen], list[dict]]:
    return start_server_processes(tmp_path, n, [
        "--scorer", "tests.serving_helpers:LengthScorer", "--option", "pid_metric=true",
        "--option", "delay_s=0.005", "--max-samples-per-request", "2", "--grace-s", "5",
    ])


@pytest.mark.slow
def test_three_replicas_share_traffic_and_survive_a_kill_and_a_drain(tmp_path: Path) -> None:
    procs, infos = start_replicas(tmp_path, 3)
    pids = [info["pid"] for info in infos]
    served_by: list[set[int]] = []  # per round: the replicas that answered

    async def one_round(client: RewardClient, round_no: int) -> None:
        samples = [Sample(f"r{round_no}-{k}", "", "y" * (round_no % 50) + "é" * k) for k in range(8)]
        results = await client.score(samples)  # 8 samples, 4 requests of 2
        assert [r.id for r in results] == [s.id for s in samples]
        assert [r.outcome for r in results] == [expected_outcome(s) for s in samples], "lost or mixed results"
        served_by.append({int(r.metrics["pid"]) for r in results})

    async def run() -> None:
        targets = [info["address"] for info in infos]
        async with RewardClient(targets, name="orm", timeout_s=30, max_in_flight=4) as client:
            assert (await client.get_info()).max_samples_per_request == 2
            for round_no in range(30):
                await one_round(client, round_no)
            assert set().union(*served_by) == set(pids), "round_robin did not reach every replica"

            stream = asyncio.ensure_future(asyncio.gather(*(one_round(client, 100 + r) for r in range(60))))
            await asyncio.sleep(0.1)
            assert not stream.done()
            procs[0].kill()  # mid-stream, no goodbye
            await asyncio.sleep(0.2)
            assert not stream.done()
            procs[1].send_signal(signal.SIGTERM)  # a graceful drain, also mid-stream
            await stream
            for round_no in range(10):
                await one_round(client, 200 + round_no)
            assert served_by[-1] == {pids[2]}

    try:
        asyncio.run(run())
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.communicate(timeout=30)
    assert procs[1].returncode == 0, "the SIGTERM-drained replica should exit cleanly"

"""The quickstart command end to end, shortened (``--fast``): real reward-server processes on
loopback ports, a real SFT'd tiny Qwen2, real REINFORCE++ steps with dense PRM credit."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_fast_quickstart_trains_against_real_grpc_services(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "quickstart", "--fast", "--output-dir", str(out),
            "--cache-dir", str(tmp_path / "cache"),
        ],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        stdout, stderr = proc.communicate(timeout=840)
    except subprocess.TimeoutExpired:
        proc.terminate()  # SIGTERM, not SIGKILL: the quickstart then stops its services
        stdout, stderr = proc.communicate(timeout=30)
        pytest.fail(f"quickstart --fast did not finish in 840 s:\n{stdout[-2000:]}{stderr[-2000:]}")
    assert proc.returncode == 0, stdout[-3000:] + stderr[-3000:]
    figures = json.loads((out / "quickstart.json").read_text())

    # The services were really called over gRPC: their Prometheus Score counters, read from
    # each service's metrics port before shutdown, moved (one call or more per step).
    steps = figures["steps"]
    assert figures["score_requests"]["answer"] >= steps
    assert figures["score_requests"]["steps"] >= steps

    # Reward rises: the mean training reward of the last 5 steps beats that of the first 3.
    first = figures["outcome_weighted_first"] + figures["process_sum_first"]
    last = figures["outcome_weighted_last"] + figures["process_sum_last"]
    assert last > first, figures
    # ... and so does held-out greedy accuracy, by well over sampling noise on 64 problems
    # (it climbs from about 30% to over 90% in 10 steps on this machine).
    assert figures["accuracy_after"] >= figures["accuracy_before"] + 0.15, figures

    # The table was printed, the plot written, and no service process outlived the run.
    assert "held-out accuracy" in stdout and "Score calls" in stdout
    assert (out / "curves.png").stat().st_size > 0
    for pid in figures["service_pids"].values():
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)

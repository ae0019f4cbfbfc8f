"""Run ``rpp-reward-server`` as child processes, the way a user deploys it, and stop them.

Each service gets its own session (process group), so a Ctrl-C in the terminal reaches the
quickstart only; the quickstart then stops every service with SIGTERM (graceful drain) and,
past the grace period, SIGKILL. Its request counters are read back from the Prometheus port.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

REQUESTS_METRIC = "rpp_reward_requests"  # counter, labels: method, code


@dataclass
class RewardServiceProcess:
    name: str
    process: subprocess.Popen
    address: str
    metrics_port: int
    log_path: Path

    def score_requests(self) -> int:
        """Score RPCs answered so far (any status), read from the service's /metrics."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as reply:
            text = reply.read().decode()
        total = 0.0
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == f"{REQUESTS_METRIC}_total" and sample.labels.get("method") == "Score":
                    total += sample.value
        return int(total)

    def stop(self, grace_s: float = 5.0) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(grace_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_service(
    name: str, server_args: list[str], log_dir: Path, timeout_s: float = 120.0
) -> RewardServiceProcess:
    """Start ``rpp-reward-server SERVER_ARGS`` on a free loopback port; wait until it serves."""
    log_dir.mkdir(parents=True, exist_ok=True)
    ready_file = Path(tempfile.mkdtemp(prefix=f"rpp-{name}-")) / "ready.json"
    log_path = log_dir / f"{name}.log"
    command = [
        sys.executable, "-m", "reward_server.cli", *server_args,
        "--host", "127.0.0.1", "--port", "0", "--metrics-port", "0", "--ready-file", str(ready_file),
        "--exit-with-parent",  # no orphaned services even if the quickstart is SIGKILLed
    ]
    with log_path.open("w") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    deadline = time.monotonic() + timeout_s
    while not ready_file.is_file():
        if process.poll() is not None:
            raise RuntimeError(
                f"reward service {name!r} exited with code {process.returncode} before serving; "
                f"its log is {log_path}:\n{log_path.read_text()[-2000:]}"
            )
        if time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(
                f"reward service {name!r} did not start serving within {timeout_s:.0f} s; see {log_path}"
            )
        time.sleep(0.1)
    ready = json.loads(ready_file.read_text())
    ready_file.unlink()
    ready_file.parent.rmdir()
    return RewardServiceProcess(name, process, ready["address"], ready["metrics_port"], log_path)


class RewardServices(ExitStack):
    """A context manager that owns several services and stops them all on exit."""

    def __init__(self) -> None:
        super().__init__()
        self.services: dict[str, RewardServiceProcess] = {}

    def start_all(self, specs: dict[str, list[str]], log_dir: Path) -> dict[str, RewardServiceProcess]:
        """Start every service at once (their start-ups overlap); stop all if one fails."""
        with ThreadPoolExecutor(len(specs)) as pool:
            futures = {name: pool.submit(start_service, name, args, log_dir) for name, args in specs.items()}
            errors = []
            for name, future in futures.items():
                try:
                    service = future.result()
                except RuntimeError as exc:
                    errors.append(str(exc))
                    continue
                self.services[name] = service
                self.callback(service.stop)
        if errors:
            self.close()
            raise RuntimeError("\n".join(errors))
        return self.services

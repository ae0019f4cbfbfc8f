"""A reward service in another language: examples/node_reward_service (Node.js, written
from reward.proto alone) passes rpp-reward-conformance, and rpp-train trains against it.

Needs Node.js and npm (the npm registry, for `npm ci` the first time). CI sets
RPP_REQUIRE_NODE=1 so that a missing Node fails instead of skipping.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import grpc
import pytest

from reward_server.conformance import Context, format_table, run_checks
from rpp_learner.config import config_from_dict
from rpp_learner.trainer import Trainer
from tests.helpers.learner_rewards import run_config
from tests.helpers.tiny_models import build_tiny_policy

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "node_reward_service"

pytestmark = pytest.mark.slow

if shutil.which("node") is None or shutil.which("npm") is None:
    if os.environ.get("RPP_REQUIRE_NODE"):
        raise RuntimeError("RPP_REQUIRE_NODE is set but node/npm are not on PATH")
    pytest.skip("Node.js and npm are not installed here", allow_module_level=True)


@pytest.fixture(scope="module")
def node_modules() -> Path:
    modules = EXAMPLE / "node_modules"
    lock = EXAMPLE / "package-lock.json"
    if not modules.exists() or modules.stat().st_mtime < lock.stat().st_mtime:
        proc = subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=EXAMPLE, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return modules


def _start(script: str, token: str | None) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, **({"RPP_TOKEN": token} if token else {})}
    proc = subprocess.Popen(["node", script, "--port", "0"], cwd=EXAMPLE, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    line = proc.stdout.readline()
    match = re.search(r"listening on (127\.0\.0\.1:\d+)", line)
    if match is None:
        proc.kill()
        raise AssertionError(f"node {script} did not start: {line}{proc.stdout.read()}")
    return proc, match.group(1)


@pytest.fixture(scope="module")
def node_services(node_modules) -> Iterator[dict[str, str]]:
    started = {kind: _start(f"{kind}.js", token="node-token") for kind in ("outcome", "process")}
    try:
        yield {kind: address for kind, (_, address) in started.items()}
    finally:
        for proc, _ in started.values():
            proc.terminate()
            proc.wait(timeout=10)
            proc.stdout.close()


@pytest.mark.parametrize("kind", ["outcome", "process"])
def test_node_service_passes_conformance(node_services, kind):
    metadata = (("authorization", "Bearer node-token"),)
    with grpc.insecure_channel(node_services[kind], options=[("grpc.max_send_message_length", 64 << 20)]) as channel:
        outcomes = run_checks(Context(channel, metadata, 60.0, "node-token"), kind)
    table = format_table(outcomes)
    assert not [o.rule for o in outcomes if o.passed is False], table
    assert {o.rule for o in outcomes if o.passed} >= {
        "score.one_result_per_sample", "health.service_name", "reflection.v1"
    }


def test_rpp_train_against_the_node_services(tmp_path, node_services):
    policy_dir = build_tiny_policy(tmp_path / "policy")
    handles = {"outcome": SimpleNamespace(address=node_services["outcome"]),
               "process": SimpleNamespace(address=node_services["process"])}
    cfg = run_config(tmp_path, policy_dir, handles, total_steps=2,
                     logging={"progress_bar": False, "tensorboard": False, "plot": False})
    for service in cfg["rewards"]["services"]:
        service["token"] = "node-token"
    with Trainer(config_from_dict(cfg)) as trainer:
        assert {i.model_name for i in trainer.service_infos.values()} == {
            "node-last-number-check", "node-addition-checker"
        }
        trainer.train()
    steps = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
             if '"reward/outcome_weighted"' in line]
    assert len(steps) == 2, steps
    assert all(m["reward/failed"] == 0 for m in steps), steps  # every response got both rewards
    assert sum(m["reward/steps_per_response"] for m in steps) > 0, steps  # process scores were placed on tokens

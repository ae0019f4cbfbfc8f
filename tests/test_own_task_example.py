"""examples/own_task, run the way README's "Your own task" says: the reward functions served
with the commands given there, scoring as documented, and rpp-train with the example config
and a model of one's own (here a tiny one)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from reward_server.client import BlockingRewardClient
from reward_server.types import Sample
from tests.helpers.tiny_models import build_tiny_policy
from tests.serving_helpers import start_server_processes, stop_server_processes

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples/own_task"
OUTCOME = ["--scorer", "user", "--function", "examples/own_task/rewards.py:final_answer"]
PROCESS = ["--scorer", "user", "--function", "examples/own_task/rewards.py:line_scores", "--kind", "process",
           "--step-separator", "\\n"]  # what the shell passes for '\n'

WORKED = "7 + 5 = 12\n12 * 2 = 24\n24 - 4 = 20\nAnswer: 20"


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    """Both services, started as README says; {name: address}."""
    procs, addresses = [], {}
    try:
        for name, args in (("answer", OUTCOME), ("lines", PROCESS)):
            started, ready = start_server_processes(tmp_path_factory.mktemp(name), 1, args)
            procs += started
            addresses[name] = ready[0]["address"]
        yield addresses
    finally:
        stop_server_processes(procs)


def test_the_example_rewards_score_as_documented(services):
    prompt = "Compute 7 + 5 * 2 - 4 from left to right, one operation per line, then write 'Answer: N'.\n"
    right = Sample("right", prompt, WORKED, reference="20")
    slip = Sample("slip", prompt, WORKED.replace("= 24", "= 25"), reference="20")
    chatty = Sample("chatty", prompt, "Let me see.\n" + WORKED, reference="20")
    with BlockingRewardClient(services["answer"]) as client:
        assert [r.outcome for r in client.score([right, slip, chatty])] == [1.0, 1.0, 1.0]
        assert client.score([Sample("no", prompt, "20", reference="20")])[0].outcome == 0.0  # no Answer: line
    with BlockingRewardClient(services["lines"]) as client:
        scores = [[s.score for s in r.steps] for r in client.score([right, slip, chatty])]
    assert scores == [[1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 1.0, 1.0], [0.5, 1.0, 1.0, 1.0, 1.0]]


def test_the_shipped_problems_are_what_make_problems_writes(tmp_path):
    shipped = {name: (EXAMPLE / name).read_text() for name in ("problems.jsonl", "heldout.jsonl")}
    subprocess.run([sys.executable, str(EXAMPLE / "make_problems.py"), str(tmp_path)], check=True)
    assert {name: (tmp_path / name).read_text() for name in shipped} == shipped
    first = json.loads(shipped["problems.jsonl"].splitlines()[0])
    assert first["prompt"].startswith("Compute ") and first["reference"].lstrip("-").isdigit()


@pytest.mark.slow
def test_rpp_train_runs_the_example_config_with_your_own_model(tmp_path, services):
    policy = build_tiny_policy(tmp_path / "my_model")
    run_dir = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "rpp_learner", "--config", "examples/own_task/run.yaml",
         "--model.path", str(policy), "--total_steps", "2", "--eval.every_steps", "2", "--eval.max_prompts", "8",
         "--output_dir", str(run_dir), "--logging.progress_bar", "false",
         "--rewards.services.0.targets", json.dumps([services["answer"]]),
         "--rewards.services.1.targets", json.dumps([services["lines"]])],
        cwd=ROOT, capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "reward service 'lines': process" in proc.stdout and "splits steps on '\\n'" in proc.stdout
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "reward/total" in r] == [1, 2]
    assert "eval/accuracy" in rows[-1]
    assert (run_dir / "checkpoints/step_000002/policy/config.json").is_file()

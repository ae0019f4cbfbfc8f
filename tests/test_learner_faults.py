"""Reward faults during training: a dead replica, every replica dead, per-sample errors."""

from __future__ import annotations

import contextlib
import json
import signal
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from rpp_learner import cli
from rpp_learner.trainer import Trainer, TrainingStopped
from tests.helpers.learner_rewards import PROMPTS, build, reward_services, run_config
from tests.helpers.tiny_models import build_tiny_policy
from tests.serving_helpers import start_server_processes, stop_server_processes

QUIET = {"progress_bar": False, "tensorboard": False, "plot": False}


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory):
    return build_tiny_policy(tmp_path_factory.mktemp("policy"))


SLOW_OUTCOME = ["--scorer", "user", "--kind", "outcome", "--max-samples-per-request", "2",
                "--function", "tests.helpers.learner_rewards:digit_share_marked_slow"]


@contextlib.contextmanager
def replica_processes(tmp_path: Path, n: int):
    """``n`` outcome replicas as real server processes; each leaves a marker file per sample
    it starts scoring (``<pid>-<sample id>`` in the yielded folder) and takes 0.3 s over it."""
    marks = tmp_path / "marks"
    marks.mkdir()
    procs, infos = start_server_processes(tmp_path, n, SLOW_OUTCOME, env={"RPP_TEST_MARK_DIR": str(marks)})
    try:
        yield procs, {f"outcome{i}" if i else "outcome": SimpleNamespace(address=info["address"])
                      for i, info in enumerate(infos)}, marks
    finally:
        stop_server_processes(procs)


def kill_on_first_request(marks: Path, step: int, victims, scored_by: int | None = None) -> threading.Thread:
    """SIGKILL ``victims`` as soon as a replica (the one with pid ``scored_by``, or any)
    starts scoring a sample of ``step``: the kill lands while requests are in flight."""
    prefix = f"{scored_by}-s{step}-" if scored_by is not None else None

    def started() -> bool:
        names = [f.name for f in marks.iterdir()]
        if prefix is not None:
            return any(n.startswith(prefix) for n in names)
        return any(n.split("-", 1)[1].startswith(f"s{step}-") for n in names)

    def watch() -> None:
        deadline = time.monotonic() + 120
        while not started() and time.monotonic() < deadline:
            time.sleep(0.005)
        for proc in victims:
            proc.kill()

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


@pytest.mark.slow
def test_replica_killed_mid_request_loses_no_sample(tmp_path, policy_dir):
    with replica_processes(tmp_path, 2) as (procs, services, marks):
        cfg = build(run_config(tmp_path, policy_dir, services, total_steps=3, logging=QUIET))
        with Trainer(cfg) as trainer:
            trainer.train(stop_after=1)
            # SIGKILL replica 0 once it is itself scoring a step-2 sample.
            pid0 = procs[0].pid
            killer = kill_on_first_request(marks, 2, victims=[procs[0]], scored_by=pid0)
            summary = trainer.train()
            killer.join(5)
    assert procs[0].returncode == -signal.SIGKILL, "replica 0 was not killed during step 2"
    in_flight = [f.name for f in marks.iterdir() if f.name.startswith(f"{pid0}-s2-")]
    assert in_flight, "the kill did not land on a request in flight"
    # Every sample of steps 2 and 3 was scored, the ones replica 0 died holding included.
    assert summary["steps"] == 3
    assert [m["reward/failed"] for m in summary["history"]] == [0.0, 0.0]


@pytest.mark.slow
def test_every_replica_killed_mid_step_saves_checkpoint_and_exits_3(tmp_path, policy_dir, capsys):
    with replica_processes(tmp_path, 2) as (procs, services, marks):
        cfg = run_config(tmp_path, policy_dir, services, total_steps=3, logging=QUIET)
        cfg["rewards"]["services"][0]["timeout_s"] = 5.0
        config_path = tmp_path / "run.yaml"
        config_path.write_text(yaml.safe_dump(cfg))
        kill_on_first_request(marks, 2, victims=procs)
        code = cli.main(["--config", str(config_path)])
    message = capsys.readouterr().err
    assert code == TrainingStopped.exit_code == 3, message
    assert all(p.returncode == -signal.SIGKILL for p in procs)
    # The message names the service and every address, and says how to go on.
    assert "'outcome'" in message and all(s.address.split(":")[-1] in message for s in services.values())
    assert "--checkpoint.resume latest" in message
    state = json.loads((tmp_path / "run/checkpoints/step_000001/trainer_state.json").read_text())
    assert state["step"] == 1
    assert cli.EXIT_CONFIG != TrainingStopped.exit_code


def test_per_sample_errors_are_masked_and_counted(tmp_path, policy_dir):
    """The outcome function raises for prompts with an odd reference: those samples get a
    per-sample error, leave the update (mask 0, advantage 0) and are counted."""
    with reward_services(outcome="fail_on_odd_reference") as services:
        cfg = build(run_config(
            tmp_path, policy_dir, services, logging={**QUIET, "save_rollouts": True},
            rewards={"max_failure_fraction": 0.75},
        ))
        with Trainer(cfg) as trainer:
            summary = trainer.train()
    saved = torch.load(tmp_path / "run/rollouts/step_000001_rank0.pt", weights_only=False)
    odd = torch.tensor([PROMPTS.index(p) % 2 == 1 for p in saved["prompts"]])  # reference = index
    assert odd.any() and (~odd).any()
    assert torch.equal(saved["valid"], ~odd)
    assert saved["mask"][odd].sum() == 0 and saved["advantages"][odd].abs().sum() == 0
    assert saved["mask"][~odd].sum() > 0
    last = summary["last"]
    assert last["reward/failed"] == odd.sum().item() and last["reward/failed/outcome"] == odd.sum().item()
    assert last["reward/failed_frac"] == pytest.approx(odd.float().mean().item())


def test_too_many_failures_stop_the_run(tmp_path, policy_dir):
    with reward_services(outcome="fail_on_odd_reference", process=False) as services:
        cfg = build(run_config(tmp_path, policy_dir, services, logging=QUIET, rewards={"max_failure_fraction": 0.1}))
        with pytest.raises(TrainingStopped, match=r"more than rewards.max_failure_fraction=0.1.*odd references"):
            with Trainer(cfg) as trainer:
                trainer.train()


"""Reward faults during training: a dead replica, every replica dead, per-sample errors."""

from __future__ import annotations

import json

import pytest
import torch

from rpp_learner import cli
from rpp_learner.trainer import Trainer, TrainingStopped
from tests.helpers.learner_rewards import PROMPTS, build, reward_services, run_config
from tests.helpers.tiny_models import build_tiny_policy

QUIET = {"progress_bar": False, "tensorboard": False, "plot": False}


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory):
    return build_tiny_policy(tmp_path_factory.mktemp("policy"))


@pytest.mark.slow
def test_one_replica_killed_loses_no_sample(tmp_path, policy_dir):
    with reward_services(process=False, outcome_replicas=2) as services:
        cfg = build(run_config(tmp_path, policy_dir, services, total_steps=3, logging=QUIET))
        assert len(cfg.rewards.services[0].targets) == 2
        with Trainer(cfg) as trainer:
            trainer.train(stop_after=1)
            services["outcome1"].stop(grace_s=0.1)  # one of the two replicas dies mid-run
            summary = trainer.train()
    assert summary["steps"] == 3
    assert [m["reward/failed"] for m in summary["history"]] == [0.0, 0.0]


@pytest.mark.slow
def test_every_replica_killed_saves_checkpoint_and_stops(tmp_path, policy_dir):
    with reward_services(process=False, outcome_replicas=2) as services:
        cfg = build(run_config(tmp_path, policy_dir, services, total_steps=3, logging=QUIET))
        with Trainer(cfg) as trainer:
            trainer.train(stop_after=1)
            for handle in services.values():
                handle.stop(grace_s=0.1)
            with pytest.raises(TrainingStopped) as info:
                trainer.train()
    message = str(info.value)
    assert "'outcome'" in message and all(t.split(":")[-1] in message for t in cfg.rewards.services[0].targets)
    assert "--checkpoint.resume latest" in message
    state = json.loads((tmp_path / "run/checkpoints/step_000001/trainer_state.json").read_text())
    assert state["step"] == 1
    assert TrainingStopped.exit_code != 0 and cli.EXIT_CONFIG != TrainingStopped.exit_code


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


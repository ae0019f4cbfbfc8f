"""Short training runs: the reward rises on an easy toy task; resume continues exactly."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from rpp_learner.trainer import Trainer
from tests.helpers.learner_rewards import build, reward_services, run_config
from tests.helpers.tiny_models import build_tiny_policy

QUIET = {"progress_bar": False, "tensorboard": False, "plot": False}


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory):
    return build_tiny_policy(tmp_path_factory.mktemp("policy"))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("estimator", "algo"),
    [
        ("reinforce_pp", {"kl_coef": 0.001}),
        # The baseline variant keeps KL out of the reward and uses the report's k2 loss.
        ("reinforce_pp_baseline", {"kl_coef": 0.0, "kl_loss_coef": 1e-3, "kl_loss_estimator": "k2"}),
    ],
)
def test_toy_reward_rises(tmp_path, policy_dir, estimator, algo):
    """Reward = share of digit characters in the response: a random tiny model starts near
    0.1 and can raise it by shifting probability to digit tokens."""
    with reward_services(process=False) as services:
        cfg = build(run_config(
            tmp_path, policy_dir, services, total_steps=20, logging=QUIET,
            algo={"estimator": estimator, **algo},
            rollout={
                "prompts_per_step": 4, "samples_per_prompt": 4, "max_new_tokens": 8, "generation_batch_prompts": 4,
            },
            optim={"lr": 5e-3, "mini_batch_size": 8, "micro_batch_size": 8},
        ))
        with Trainer(cfg) as trainer:
            rewards = [m["reward/outcome_weighted"] for m in trainer.train()["history"]]
    start, end = sum(rewards[:4]) / 4, sum(rewards[-4:]) / 4
    assert end > start + 0.15 and end > 2 * start, f"{estimator}: reward {start:.3f} -> {end:.3f}: {rewards}"


def _metrics_without_times(path):
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]


@pytest.mark.slow
@pytest.mark.parametrize("pipeline_depth", [0, 1], ids=["synchronous", "pipelined"])
def test_resume_continues_exactly(tmp_path, policy_dir, pipeline_depth):
    """4 steps straight == 2 steps, a fresh Trainer resuming from the checkpoint, 2 more.
    Pipelined, the checkpoint holds the rollout sampled ahead for step 3, by weights that no
    checkpoint has."""
    sections = dict(
        total_steps=4,
        logging=QUIET,
        rollout={"prompts_per_step": 4, "samples_per_prompt": 2, "max_new_tokens": 8, "generation_batch_prompts": 2,
                 "pipeline_depth": pipeline_depth},
        algo={"ppo_epochs": 2, "normalize_reward": True},
        optim={"lr": 1e-3, "mini_batch_size": 4, "micro_batch_size": 2, "lr_scheduler": "linear", "warmup_steps": 3},
    )
    with reward_services() as services:
        straight = tmp_path / "straight"
        straight.mkdir()
        with Trainer(build(run_config(straight, policy_dir, services, **sections))) as trainer:
            trainer.train()

        split = tmp_path / "split"
        split.mkdir()
        with Trainer(build(run_config(split, policy_dir, services, **sections))) as trainer:
            trainer.train(stop_after=2)
        assert (split / "run/checkpoints/step_000002/rank0_state.pt").is_file() == bool(pipeline_depth)
        resumed = build(run_config(split, policy_dir, services, **sections, checkpoint={"resume": "latest"}))
        with Trainer(resumed) as trainer:
            assert trainer.step == 2
            trainer.train()

    a = AutoModelForCausalLM.from_pretrained(straight / "run/checkpoints/step_000004/policy").state_dict()
    b = AutoModelForCausalLM.from_pretrained(split / "run/checkpoints/step_000004/policy").state_dict()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)
    straight_metrics = _metrics_without_times(straight / "run/metrics.jsonl")
    assert straight_metrics == _metrics_without_times(split / "run/metrics.jsonl")
    lags = [m["rollout/policy_lag"] for m in straight_metrics if "rollout/policy_lag" in m]
    assert lags == ([0.0, 1.0, 1.0, 1.0] if pipeline_depth else [0.0] * 4)
    assert not (split / "run/checkpoints/step_000004/rank0_state.pt").exists()  # nothing sampled past the end
    state = json.loads((split / "run/checkpoints/step_000004/trainer_state.json").read_text())
    assert state["step"] == 4 and state["data_position"] == 16 and state["reward_stats"]["count"] == 32

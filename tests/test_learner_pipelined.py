"""The pipelined (one step off-policy) mode: step t+1 is sampled before update t, the clipped
ratio uses the sampling weights' log-probs, a resume continues exactly, and 2 processes
equal 1 (tests/test_learner_distributed.py runs that one)."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from rpp_learner.config import ConfigError
from rpp_learner.forward import batched_logprobs
from rpp_learner.trainer import Trainer
from tests.helpers.learner_rewards import build, reward_services, run_config
from tests.helpers.saved_rollouts import load_rollouts
from tests.helpers.tiny_models import build_tiny_policy

QUIET = {"progress_bar": False, "tensorboard": False, "plot": False}
PIPELINED = {"prompts_per_step": 4, "samples_per_prompt": 2, "max_new_tokens": 8, "generation_batch_prompts": 2,
             "pipeline_depth": 1}


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory):
    return build_tiny_policy(tmp_path_factory.mktemp("policy"))


def _logprobs_under(weights_dir, saved: dict) -> torch.Tensor:
    model = AutoModelForCausalLM.from_pretrained(weights_dir).eval()
    return batched_logprobs(model, saved["prompt_ids"], saved["prompt_mask"], saved["response_ids"],
                            saved["response_mask"], micro_batch_size=8, temperature=1.0, device="cpu")


@pytest.mark.slow
def test_step_t_plus_1_is_sampled_before_update_t_and_its_ratio_uses_those_weights(tmp_path, policy_dir):
    with reward_services() as services:
        cfg = build(run_config(
            tmp_path, policy_dir, services, total_steps=3, rollout=PIPELINED, algo={"kl_coef": 0.01, "ppo_epochs": 2},
            logging={**QUIET, "save_rollouts": True}, checkpoint={"every_steps": 1, "keep_last": 5},
        ))
        with Trainer(cfg) as trainer:
            history = trainer.train()["history"]
    run = tmp_path / "run"
    versions = [load_rollouts(run, step)[0]["policy_version"] for step in (1, 2, 3)]
    # Steps 1 and 2 both come from the initial weights, step 3 from those after update 1.
    assert [v.unique().tolist() for v in versions] == [[0], [0], [1]]
    assert [m["rollout/policy_lag"] for m in history] == [0.0, 1.0, 1.0]
    weights = {0: policy_dir, 1: run / "checkpoints/step_000001/policy", 2: run / "checkpoints/step_000002/policy"}
    for step, sampled_by in ((2, 0), (3, 1)):
        saved = load_rollouts(run, step)[0]
        mask = saved["response_mask"].bool()
        # pi_old of the ratio = the log-probs of the weights that sampled the step...
        torch.testing.assert_close(saved["old_logp"][mask], _logprobs_under(weights[sampled_by], saved)[mask],
                                   atol=1e-5, rtol=0)
        # ...not those of the weights the update starts from, a step newer.
        current = _logprobs_under(weights[step - 1], saved)
        assert (saved["old_logp"][mask] - current[mask]).abs().max() > 1e-4
    assert all(m["time/next_rollout_s"] > 0 for m in history[:-1])
    assert history[-1]["time/next_rollout_s"] < history[0]["time/next_rollout_s"]  # nothing sampled after the last


def _metrics_without_times(path):
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]


@pytest.mark.slow
def test_pipelined_resume_continues_exactly(tmp_path, policy_dir):
    """4 steps straight == 2 steps, a fresh Trainer resuming from the checkpoint (which holds
    the rollout sampled ahead for step 3, by weights no checkpoint has), 2 more."""
    sections = dict(
        total_steps=4, logging=QUIET, rollout=PIPELINED,
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
        assert (split / "run/checkpoints/step_000002/rank0_state.pt").is_file()
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
    assert [m["rollout/policy_lag"] for m in straight_metrics if "rollout/policy_lag" in m] == [0.0, 1.0, 1.0, 1.0]
    assert not (split / "run/checkpoints/step_000004/rank0_state.pt").exists()  # nothing sampled past the end


def test_pipeline_depth_other_than_0_or_1_is_refused(tmp_path, policy_dir):
    with pytest.raises(ConfigError, match="rollout.pipeline_depth must be 0 .* or 1"):
        build(run_config(tmp_path, policy_dir, {}, rollout={"pipeline_depth": 2}))

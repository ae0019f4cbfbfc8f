"""The pipelined (one step off-policy) mode: step t+1 is sampled before update t and the
clipped ratio uses the sampling weights' log-probs. That a resume continues exactly and 2
processes equal 1 is tested with the synchronous mode's tests (test_learner_train.py,
test_learner_distributed.py), run in both modes."""

from __future__ import annotations

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


def test_pipeline_depth_other_than_0_or_1_is_refused(tmp_path, policy_dir):
    with pytest.raises(ConfigError, match="rollout.pipeline_depth must be 0 .* or 1"):
        build(run_config(tmp_path, policy_dir, {}, rollout={"pipeline_depth": 2}))

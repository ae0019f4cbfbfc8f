"""The on-policy shortcut: with one optimiser step per rollout and no KL in the reward, the
old-policy forward is skipped and the update's own log-probs, detached, are pi_old."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from rpp_learner.trainer import Trainer
from tests.helpers.learner_rewards import build, reward_services, run_config
from tests.helpers.saved_rollouts import load_rollouts
from tests.helpers.tiny_models import build_tiny_policy

QUIET = {"progress_bar": False, "tensorboard": False, "plot": False}


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory):
    return build_tiny_policy(tmp_path_factory.mktemp("policy"))


@pytest.mark.parametrize("shared_prompt", [True, False])
def test_the_skipped_old_policy_forward_equals_the_computed_one(tmp_path, policy_dir, shared_prompt):
    """On policy with no KL in the reward, the trainer skips the old-policy forward and takes
    the update's own log-probs, detached, as pi_old. Forcing the forward back on must give
    the same pi_old and the same update."""
    results = {}
    with reward_services() as services:
        for skip in (True, False):
            (tmp_path / f"skip-{skip}").mkdir()
            cfg = build(run_config(
                tmp_path / f"skip-{skip}", policy_dir, services, algo={"kl_coef": 0.0},
                optim={"mini_batch_size": 8, "micro_batch_size": 4, "shared_prompt_forward": shared_prompt},
                logging={**QUIET, "save_rollouts": True},
            ))
            with Trainer(cfg) as trainer:
                assert trainer.skip_old_forward  # one optimiser step per rollout, no KL in the reward
                trainer.skip_old_forward = skip
                metrics = trainer.train()["history"][0]
                weights = [p.detach().clone() for p in trainer.acc.unwrap_model(trainer.policy).parameters()]
            results[skip] = (load_rollouts(tmp_path / f"skip-{skip}" / "run", 1)[0], metrics, weights)
    (skipped, m_skipped, w_skipped), (computed, m_computed, w_computed) = results[True], results[False]
    assert torch.equal(skipped["response_ids"], computed["response_ids"])  # the same samples
    mask = skipped["response_mask"].bool()
    assert mask.sum() > 0
    torch.testing.assert_close(skipped["old_logp"][mask], computed["old_logp"][mask], atol=1e-5, rtol=0)
    assert m_skipped["loss"] == pytest.approx(m_computed["loss"], abs=1e-6)
    for a, b in zip(w_skipped, w_computed, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    assert any(not torch.equal(a, b) for a, b in zip(w_skipped, [p for p in AutoModelForCausalLM.from_pretrained(
        policy_dir).parameters()], strict=True))  # the update moved the weights

"""The on-policy shortcut: with one optimiser step per rollout, the old-policy forward is
skipped and the update's own log-probs, detached, are pi_old: with no KL in the reward, or
with it when one micro-batch holds the whole rollout (the first forward's log-probs then
feed the KL reward before the first loss)."""

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


@pytest.mark.parametrize("kl_coef, micro", [(0.0, 4), (0.01, 8)], ids=["no-kl-2-micro", "kl-in-reward-1-micro"])
@pytest.mark.parametrize("shared_prompt", [True, False])
def test_the_skipped_old_policy_forward_equals_the_computed_one(tmp_path, policy_dir, shared_prompt, kl_coef, micro):
    """On policy, the trainer skips the old-policy forward and takes the update's own
    log-probs, detached, as pi_old. Forcing the forward back on must give the same pi_old,
    the same KL, and the same update."""
    results = {}
    with reward_services() as services:
        for skip in (True, False):
            (tmp_path / f"skip-{skip}").mkdir()
            cfg = build(run_config(
                tmp_path / f"skip-{skip}", policy_dir, services, algo={"kl_coef": kl_coef},
                optim={"mini_batch_size": 8, "micro_batch_size": micro, "shared_prompt_forward": shared_prompt},
                logging={**QUIET, "save_rollouts": True}, total_steps=2,  # step 2: pi_old != pi_ref
            ))
            with Trainer(cfg) as trainer:
                assert trainer.skip_old_forward  # one optimiser step per rollout
                trainer.skip_old_forward = skip
                metrics = trainer.train()["history"][-1]
                weights = [p.detach().clone() for p in trainer.acc.unwrap_model(trainer.policy).parameters()]
            results[skip] = (load_rollouts(tmp_path / f"skip-{skip}" / "run", 2)[0], metrics, weights)
    (skipped, m_skipped, w_skipped), (computed, m_computed, w_computed) = results[True], results[False]
    assert torch.equal(skipped["response_ids"], computed["response_ids"])  # the same samples
    mask = skipped["response_mask"].bool()
    assert mask.sum() > 0
    torch.testing.assert_close(skipped["old_logp"][mask], computed["old_logp"][mask], atol=1e-5, rtol=0)
    assert m_skipped["loss"] == pytest.approx(m_computed["loss"], abs=1e-6)
    if kl_coef:
        assert m_skipped["kl"] > 1e-6  # the KL reward is really in these advantages
    assert m_skipped["kl"] == pytest.approx(m_computed["kl"], abs=1e-7)
    torch.testing.assert_close(skipped["dense_rewards"], computed["dense_rewards"], atol=1e-6, rtol=0)
    torch.testing.assert_close(skipped["advantages"], computed["advantages"], atol=1e-5, rtol=0)
    for a, b in zip(w_skipped, w_computed, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    assert any(not torch.equal(a, b) for a, b in zip(w_skipped, [p for p in AutoModelForCausalLM.from_pretrained(
        policy_dir).parameters()], strict=True))  # the update moved the weights


def test_the_old_policy_forward_runs_when_the_kl_reward_spans_micro_batches(tmp_path, policy_dir):
    """KL in the reward and two micro-batches: every token's advantage needs pi_old of the
    whole response before the first loss, which the first micro-batch's forward cannot give."""
    with reward_services() as services:
        cfg = build(run_config(tmp_path, policy_dir, services, algo={"kl_coef": 0.01},
                               optim={"mini_batch_size": 8, "micro_batch_size": 4}, logging=QUIET))
        with Trainer(cfg) as trainer:
            assert not trainer.skip_old_forward
            metrics = trainer.train()["history"][0]
    assert metrics["kl"] == pytest.approx(0.0, abs=1e-6)  # pi_old == pi_ref before the first update

"""A sample whose reward failed stays out of its group's statistics (mean, std, size):
its placeholder outcome (0) must not shift the baseline of the samples that were scored."""

from __future__ import annotations

import pytest
import torch

from rpp_learner.algorithms.advantages import AdvantageInputs, compute_advantages, group_mean_std
from rpp_learner.trainer import Trainer
from tests.helpers.learner_rewards import build, reward_services, run_config
from tests.helpers.tiny_models import build_tiny_policy

# Two groups of four; sample 1 of group 0 and sample 2 of group 1 failed (outcome 0).
OUTCOME = torch.tensor([1.0, 0.0, 0.5, 0.3, 0.2, 0.4, 0.0, 0.6])
VALID = torch.tensor([True, False, True, True, True, True, False, True])
GROUPS = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
# Hand-computed over the scored members: group 0 {1.0, 0.5, 0.3} mean 0.6, deviations
# (0.4, -0.1, -0.3), unbiased std sqrt(0.26 / 2); group 1 {0.2, 0.4, 0.6} mean 0.4,
# deviations (-0.2, 0, 0.2), std 0.2.
CENTRED = torch.tensor([0.4, 0.0, -0.1, -0.3, -0.2, 0.0, 0.0, 0.2])
STD = torch.tensor([0.13**0.5] * 4 + [0.2] * 4)


def _inputs(valid=VALID) -> AdvantageInputs:
    mask = valid.long().unsqueeze(1)  # one token per response; failed samples masked out
    return AdvantageInputs(
        mask=mask, kl=torch.zeros(8, 1), outcome=OUTCOME,
        step_token_index=torch.full((8, 1), -1), step_scores=torch.zeros(8, 1),
        group_index=GROUPS, truncated=torch.zeros(8, dtype=torch.bool), valid=valid,
    )


def test_group_statistics_count_scored_samples_only():
    mean, std, size = group_mean_std(OUTCOME, GROUPS, VALID)
    assert mean.dtype == std.dtype == torch.float64  # rounded by the callers, after dividing
    torch.testing.assert_close(mean.float(), torch.tensor([0.6] * 4 + [0.4] * 4))
    torch.testing.assert_close(std.float(), STD)
    assert size.tolist() == [3] * 8


@pytest.mark.parametrize(
    ("estimator", "want"),
    [
        ("reinforce_pp_baseline", CENTRED),
        ("dr_grpo", CENTRED),
        ("grpo", CENTRED / (STD + 1e-6)),
        ("rloo", CENTRED * 3 / 2),  # leave-one-out over the 3 scored members
    ],
)
def test_group_estimators_ignore_failed_samples(estimator, want):
    out = compute_advantages(estimator, _inputs(), whiten=False)
    torch.testing.assert_close(out.advantages[:, 0], want * VALID)
    # The failed samples' outcome does not matter at all.
    changed = compute_advantages(
        estimator, AdvantageInputs(**{**_inputs().__dict__, "outcome": OUTCOME + 5.0 * ~VALID}), whiten=False
    )
    torch.testing.assert_close(changed.advantages, out.advantages)


def test_rloo_sample_with_no_scored_group_mate_gets_zero():
    valid = torch.tensor([True, False, False, False, True, True, True, True])
    out = compute_advantages("rloo", _inputs(valid), whiten=False)
    assert out.advantages[0, 0] == 0.0


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory):
    return build_tiny_policy(tmp_path_factory.mktemp("policy"))


def test_trainer_baseline_excludes_failed_samples(tmp_path, policy_dir):
    """End to end: the service fails one sample of every group of four; the outcome placed
    at each scored sample's last token is R minus the mean of its group's *scored* samples."""
    with reward_services(outcome="fail_every_fourth_sample", process=False) as services:
        cfg = build(run_config(
            tmp_path, policy_dir, services,
            logging={"progress_bar": False, "tensorboard": False, "plot": False, "save_rollouts": True},
            rewards={"max_failure_fraction": 0.5},
            algo={"estimator": "reinforce_pp_baseline", "kl_coef": 0.0},
            rollout={
                "prompts_per_step": 2, "samples_per_prompt": 4, "max_new_tokens": 8, "generation_batch_prompts": 2,
            },
            optim={"mini_batch_size": 8, "micro_batch_size": 4},
        ))
        with Trainer(cfg) as trainer:
            trainer.train()
    saved = torch.load(tmp_path / "run/rollouts/step_000001_rank0.pt", weights_only=False)
    valid, outcome = saved["valid"], saved["outcome"]
    assert valid.tolist() == [True, True, True, False] * 2
    for g in range(2):
        rows = torch.arange(4 * g, 4 * g + 4)
        baseline = outcome[rows][valid[rows]].mean()
        for i in rows[valid[rows]].tolist():
            last = int(saved["mask"][i].sum()) - 1
            assert saved["dense_rewards"][i, last].item() == pytest.approx(
                outcome[i].item() - baseline.item(), abs=1e-6
            )
        assert saved["mask"][rows[~valid[rows]]].sum() == 0

"""The logged reward metrics, on hand-computed numbers: each name says what it averages."""

from __future__ import annotations

import pytest
import torch

from rpp_learner.rollout.base import RolloutBatch
from rpp_learner.scoring import ScoredBatch
from rpp_learner.step_stats import rollout_metrics


def test_reward_metrics_say_what_they_average():
    # Three responses: two scored (3 placed steps and 1 placed step), one whose services failed.
    response_mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]], dtype=torch.float32)
    batch = RolloutBatch(
        prompt_ids=torch.zeros(3, 1, dtype=torch.long), prompt_mask=torch.ones(3, 1),
        response_ids=torch.zeros(3, 4, dtype=torch.long), response_mask=response_mask,
        truncated=torch.tensor([True, False, False]),
    )
    scored = ScoredBatch(
        outcome=torch.tensor([1.0, 0.5, 0.0]),
        step_token_index=torch.tensor([[0, 1, 3], [1, -1, -1], [0, 2, -1]]),
        step_scores=torch.tensor([[0.9, 0.6, 0.3], [0.2, 0.0, 0.0], [1.0, 1.0, 0.0]]),
        valid=torch.tensor([True, True, False]),
        step_weights=torch.full((3, 3), 2.0),
    )
    mask = response_mask * scored.valid.unsqueeze(1)
    logp = torch.zeros(3, 4)
    m = rollout_metrics(batch, scored, mask, logp, logp)

    assert m["reward/outcome_weighted"] == pytest.approx((1.0 + 0.5) / 2)
    # per response: 2 * (0.9 + 0.6 + 0.3) = 3.6 and 2 * 0.2 = 0.4
    assert m["reward/process_sum"] == pytest.approx((3.6 + 0.4) / 2)
    # per placed step: (3.6 + 0.4) over 4 steps, not over 2 responses
    assert m["reward/process_step_mean"] == pytest.approx(4.0 / 4)
    assert m["reward/steps_per_response"] == pytest.approx(4 / 2)
    assert m["reward/total"] == pytest.approx(0.75 + 2.0)
    assert m["reward/failed"] == 1 and m["reward/failed_frac"] == pytest.approx(1 / 3)
    assert m["response_length"] == pytest.approx(9 / 3) and m["truncated_frac"] == pytest.approx(1 / 3)
    assert m["kl"] == 0.0
    assert "reward/process" not in m and "reward/outcome" not in m  # the old, ambiguous names

"""Properties of the REINFORCE++ math on random batches (hypothesis)."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rpp_learner.algorithms import (
    AdvantageInputs,
    CreditInputs,
    compute_advantages,
    masked_whiten,
    min_step_returns,
    process_returns,
    returns_to_go,
)


@st.composite
def batches(draw, min_tokens: int = 1):
    """A right-padded batch with random KL, outcomes and steps on valid tokens."""
    b = draw(st.integers(1, 5))
    t = draw(st.integers(max(1, min_tokens), 40))
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, t + 1, (b,), generator=gen)
    lengths[0] = max(int(lengths[0]), min_tokens)  # at least one valid token
    mask = (torch.arange(t) < lengths.unsqueeze(-1)).long()
    s = draw(st.integers(0, 6))
    index = torch.full((b, s), -1, dtype=torch.long)
    for row in range(b):
        for j in range(s):
            if lengths[row] > 0 and torch.rand(1, generator=gen).item() < 0.7:
                index[row, j] = torch.randint(0, int(lengths[row]), (1,), generator=gen).item()
    return AdvantageInputs(
        mask=mask,
        kl=torch.randn(b, t, generator=gen).abs() * 0.1,
        outcome=torch.randn(b, generator=gen) * 3,
        step_token_index=index,
        step_scores=torch.rand(b, s, generator=gen),
        group_index=torch.randint(0, 2, (b,), generator=gen),
        truncated=torch.zeros(b, dtype=torch.bool),
    )


@settings(max_examples=60, deadline=None)
@given(batches(min_tokens=2))
def test_whitened_values_have_mean_0_and_variance_1(inputs):
    values = torch.randn(inputs.mask.shape, dtype=torch.float64) * 5 + 3
    mask = inputs.mask.bool()
    var = values[mask].var(unbiased=False).item()
    whitened = masked_whiten(values, inputs.mask)
    valid = whitened[mask]
    assert abs(valid.mean().item()) < 1e-9
    # variance 1 up to the 1e-8 in the denominator: var / (var + 1e-8)
    assert abs(valid.var(unbiased=False).item() - var / (var + 1e-8)) < 1e-9
    assert (whitened[~mask] == 0).all()


@settings(max_examples=60, deadline=None)
@given(
    batches(min_tokens=2), st.sampled_from(["sum", "min"]), st.sampled_from(["reinforce_pp", "reinforce_pp_baseline"])
)
def test_reinforce_pp_advantages_are_whitened_over_valid_tokens(inputs, credit, estimator):
    out = compute_advantages(estimator, inputs, kl_coef=0.05, credit=credit, process_coef=0.5)
    mask = inputs.mask.bool()
    var = out.returns[mask].double().var(unbiased=False).item()
    valid = out.advantages[mask].double()
    assert abs(valid.mean().item()) < 1e-4
    assert abs(valid.var(unbiased=False).item() - var / (var + 1e-8)) < 1e-4


@settings(max_examples=60, deadline=None)
@given(batches(), st.sampled_from([0.0, 0.05, 0.5, 0.9, 1.0]))
def test_returns_follow_the_recursion(inputs, gamma):
    rewards = torch.randn(inputs.mask.shape, dtype=torch.float64)
    g = returns_to_go(rewards, inputs.mask, gamma)
    mask = inputs.mask.bool()
    next_g = torch.cat([g[:, 1:], torch.zeros_like(g[:, :1])], dim=-1)
    expected = torch.where(mask, rewards + gamma * next_g, torch.zeros_like(g))
    torch.testing.assert_close(g, expected, atol=1e-9, rtol=1e-9)


def test_discounting_stays_exact_over_many_chunks():
    # gamma 0.05 rescales in chunks of 76 tokens: 300 tokens cross three chunk borders.
    rewards = torch.randn(2, 300, dtype=torch.float64)
    mask = torch.ones(2, 300)
    g = returns_to_go(rewards, mask, 0.05)
    expected, running = torch.zeros_like(rewards), torch.zeros(2, dtype=torch.float64)
    for t in reversed(range(300)):
        running = rewards[:, t] + 0.05 * running
        expected[:, t] = running
    torch.testing.assert_close(g, expected, atol=1e-12, rtol=1e-12)


@settings(max_examples=60, deadline=None)
@given(batches(), st.sampled_from(["sum", "min"]), st.sampled_from(["reinforce_pp", "reinforce_pp_baseline"]))
def test_padding_never_receives_reward_or_advantage(inputs, credit, estimator):
    out = compute_advantages(estimator, inputs, kl_coef=0.05, credit=credit, process_coef=0.5)
    padding = ~inputs.mask.bool()
    for tensor in (out.dense_rewards, out.returns, out.advantages):
        assert (tensor[padding] == 0).all()


@settings(max_examples=80, deadline=None)
@given(batches())
def test_min_credit_is_the_minimum_of_the_future_steps(inputs):
    p = torch.randn(inputs.step_scores.shape)
    got = min_step_returns(inputs.step_token_index, p, inputs.mask)
    b, t = inputs.mask.shape
    for row in range(b):
        for pos in range(t):
            steps = [(inputs.step_token_index[row, j].item(), p[row, j].item()) for j in range(p.shape[1])
                     if inputs.step_token_index[row, j] >= 0]
            future = [value for index, value in steps if index >= pos]
            if not inputs.mask[row, pos] or not steps:
                assert got[row, pos].item() == 0.0
            elif not future:  # past the last reward token: PURE's last step runs to EOS
                last = max(index for index, _ in steps)
                assert got[row, pos].item() == min(value for index, value in steps if index == last)
            else:
                assert got[row, pos].item() == min(future)  # exactly the minimum of future steps


def _credit_inputs(inputs: AdvantageInputs, p: torch.Tensor) -> CreditInputs:
    return CreditInputs(
        mask=inputs.mask, step_token_index=inputs.step_token_index, step_rewards=p,
        step_scores=inputs.step_scores, step_weights=torch.ones_like(p), outcome=inputs.outcome,
        group_index=inputs.group_index, valid=torch.ones_like(inputs.outcome, dtype=torch.bool),
    )


@settings(max_examples=80, deadline=None)
@given(batches())
def test_min_credit_never_exceeds_sum_credit_for_nonnegative_steps(inputs):
    """With step rewards >= 0, sum credit adds every future step and min takes the weakest
    one: a policy cannot raise its min-mode return by adding more positive steps. (Past
    the last reward token sum credit has nothing left, while min keeps the last step's
    value: compared up to the last reward token.)"""
    p = torch.rand(inputs.step_scores.shape) * (inputs.step_token_index >= 0)
    total = process_returns("sum", _credit_inputs(inputs, p))
    least = process_returns("min", _credit_inputs(inputs, p))
    positions = torch.arange(inputs.mask.shape[1]).view(1, -1)
    last = inputs.step_token_index.amax(-1, keepdim=True) if p.shape[1] else torch.full((len(p), 1), -1)
    covered = positions <= last
    assert (least[covered] <= total[covered] + 1e-6).all()
    # Equality exactly where one step lies ahead (sum of one term = its minimum).
    ahead = ((inputs.step_token_index.unsqueeze(1) >= positions.unsqueeze(-1))
             & (inputs.step_token_index >= 0).unsqueeze(1)).sum(-1)
    one = (ahead == 1) & inputs.mask.bool()
    torch.testing.assert_close(least[one], total[one], atol=1e-6, rtol=0)


@settings(max_examples=60, deadline=None)
@given(batches())
def test_without_kl_and_process_reinforce_pp_is_the_whitened_outcome(inputs):
    out = compute_advantages("reinforce_pp", inputs, kl_coef=0.0, process_coef=0.0)
    broadcast = inputs.outcome.clamp(-10, 10).unsqueeze(-1) * inputs.mask
    torch.testing.assert_close(out.advantages, masked_whiten(broadcast, inputs.mask), atol=1e-5, rtol=0)

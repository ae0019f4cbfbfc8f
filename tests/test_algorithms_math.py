"""Every algorithm function against numbers computed by hand (arithmetic in comments)."""

from __future__ import annotations

import math

import pytest
import torch

from rpp_learner.algorithms import (
    AdvantageInputs,
    RunningMeanStd,
    aggregate,
    assemble_dense_rewards,
    compute_advantages,
    kl_penalty,
    masked_whiten,
    min_step_returns,
    pad_steps,
    policy_loss,
    returns_to_go,
    transform_step_scores,
)

T = torch.tensor


def close(actual: torch.Tensor, expected, atol: float = 1e-6) -> None:
    torch.testing.assert_close(actual.double(), torch.as_tensor(expected, dtype=torch.float64), atol=atol, rtol=0)


# ---------------------------------------------------------------- KL


def test_kl_estimators_by_hand():
    logp, ref = T([0.0, -1.0]), T([-0.5, -0.5])  # log_ratio = [0.5, -0.5]
    close(kl_penalty(logp, ref, "k1"), [0.5, -0.5])
    close(kl_penalty(logp, ref, "k2"), [0.125, 0.125])  # 0.5 * 0.25
    # k3 = exp(-lr) - 1 + lr: exp(-0.5) - 0.5 = 0.1065307, exp(0.5) - 1.5 = 0.1487213
    close(kl_penalty(logp, ref, "k3"), [math.exp(-0.5) - 0.5, math.exp(0.5) - 1.5])
    assert kl_penalty(logp.half(), ref.half()).dtype == torch.float32


def test_kl_is_clamped_and_k3_gradient_stays_finite():
    logp = T([30.0, 0.0], requires_grad=True)
    ref = T([0.0, 30.0])
    for kind in ("k1", "k2", "k3"):
        kl = kl_penalty(logp, ref, kind)
        assert kl.abs().max().item() == 10.0
    kl_penalty(logp, ref, "k3").sum().backward()
    assert torch.isfinite(logp.grad).all()
    with pytest.raises(ValueError, match="choose one of k1, k2, k3"):
        kl_penalty(logp, ref, "k4")


# ---------------------------------------------------------------- rewards


def _example():
    mask = T([[1, 1, 1, 0], [1, 1, 0, 0]])
    kl = T([[0.1, 0.2, 0.3, 9.0], [0.5, 0.5, 9.0, 9.0]])
    outcome = T([1.0, 20.0])  # 20 is clipped to 10
    index, scores = T([[0, 2], [1, -1]]), T([[0.9, 0.4], [0.2, 0.7]])  # 0.7: no step
    return mask, kl, outcome, index, scores


def test_assemble_dense_rewards_by_hand():
    mask, kl, outcome, index, scores = _example()
    r = assemble_dense_rewards(
        mask, kl, outcome, index, scores, kl_coef=0.1, process_coef=0.5, score_transform="centered"
    )
    # row 0: -0.1*[0.1, 0.2, 0.3] + [0, 0, 1] = [-0.01, -0.02, 0.97]; padding 0
    # row 1: -0.1*[0.5, 0.5] + [0, clip(20)=10] = [-0.05, 9.95]
    close(r.kl_outcome, [[-0.01, -0.02, 0.97, 0], [-0.05, 9.95, 0, 0]])
    # steps: 0.5*(0.9-0.5) = 0.2 at t0, 0.5*(0.4-0.5) = -0.05 at t2; row 1: 0.5*(0.2-0.5) = -0.15 at t1
    close(r.steps, [[0.2, -0.05], [-0.15, 0]])
    close(r.process, [[0.2, 0, -0.05, 0], [0, -0.15, 0, 0]])


def test_step_score_transforms_and_outcome_coef():
    close(transform_step_scores(T([0.25, 1.0]), "log"), [math.log(0.25), 0.0])
    close(transform_step_scores(T([0.0]), "log"), [math.log(1e-6)])
    mask, kl, outcome, index, scores = _example()
    r = assemble_dense_rewards(mask, kl, outcome, index, scores, kl_coef=0.0, outcome_coef=0.5, process_coef=0.0)
    close(r.kl_outcome, [[0, 0, 0.5, 0], [0, 5.0, 0, 0]])  # 0.5 * 1, 0.5 * clip(20) = 5
    with pytest.raises(ValueError, match="unknown step score transform 'sqrt'"):
        transform_step_scores(T([0.5]), "sqrt")


def test_step_on_padding_is_an_error_naming_the_step():
    mask, kl, outcome, _, scores = _example()
    with pytest.raises(ValueError, match="sequence 1, step 0: reward token 3 is a padding token"):
        assemble_dense_rewards(mask, kl, outcome, T([[0, 2], [3, -1]]), scores, kl_coef=0.0)


def test_pad_steps():
    index, scores = pad_steps([[3, 7], [], [1]], [[0.5, 0.25], [], [1.0]])
    assert index.tolist() == [[3, 7], [-1, -1], [1, -1]]
    assert scores.tolist() == [[0.5, 0.25], [0.0, 0.0], [1.0, 0.0]]


# ---------------------------------------------------------------- returns and credit


def test_returns_to_go_by_hand():
    r = T([[0.19, -0.02, 0.92, 5.0]])  # the 5.0 sits on padding and must be ignored
    mask = T([[1, 1, 1, 0]])
    # gamma 1: [0.19 - 0.02 + 0.92, -0.02 + 0.92, 0.92, 0] = [1.09, 0.90, 0.92, 0]
    close(returns_to_go(r, mask), [[1.09, 0.90, 0.92, 0]])
    # gamma 0.5: G2 = 0.92, G1 = -0.02 + 0.46 = 0.44, G0 = 0.19 + 0.22 = 0.41
    close(returns_to_go(r, mask, gamma=0.5), [[0.41, 0.44, 0.92, 0]])
    close(returns_to_go(r, mask, gamma=0.0), [[0.19, -0.02, 0.92, 0]])
    with pytest.raises(ValueError, match="gamma must be in"):
        returns_to_go(r, mask, gamma=1.5)


def test_min_credit_by_hand():
    mask = T([[1, 1, 1, 1, 1, 0]])
    # steps at t1 (0.5), t2 (-0.2), t4 (0.3)
    index, p = T([[4, 1, 2]]), T([[0.3, 0.5, -0.2]])  # order of steps does not matter
    # t0, t1: min(0.5, -0.2, 0.3) = -0.2; t2: min(-0.2, 0.3) = -0.2; t3, t4: 0.3; padding 0
    close(min_step_returns(index, p, mask), [[-0.2, -0.2, -0.2, 0.3, 0.3, 0]])
    # no steps at all: 0 everywhere
    close(min_step_returns(T([[-1]]), T([[9.0]]), mask), [[0.0] * 6])


def _inputs(mask, kl, outcome, index, scores, groups=None, truncated=None):
    b = mask.shape[0]
    return AdvantageInputs(
        mask=mask,
        kl=kl,
        outcome=outcome,
        step_token_index=index,
        step_scores=scores,
        group_index=torch.zeros(b, dtype=torch.long) if groups is None else groups,
        truncated=torch.zeros(b, dtype=torch.bool) if truncated is None else truncated,
    )


def test_reinforce_pp_returns_sum_and_min_credit_by_hand():
    mask, kl, outcome, index, scores = _example()
    inputs = _inputs(mask, kl, outcome, index, scores)
    kw = dict(kl_coef=0.1, process_coef=0.5, score_transform="centered", whiten=False)
    out = compute_advantages("reinforce_pp", inputs, credit="sum", **kw)
    # r row 0 = kl_outcome + process = [0.19, -0.02, 0.92]; G = [1.09, 0.90, 0.92]
    # r row 1 = [-0.05, 9.95 - 0.15 = 9.80];                G = [9.75, 9.80]
    close(out.returns, [[1.09, 0.90, 0.92, 0], [9.75, 9.80, 0, 0]], atol=1e-5)
    close(out.dense_rewards, [[0.19, -0.02, 0.92, 0], [-0.05, 9.80, 0, 0]], atol=1e-6)
    out = compute_advantages("reinforce_pp", inputs, credit="min", **kw)
    # rtg(kl_outcome) row 0 = [0.94, 0.95, 0.97]; P = min of later steps (0.2 @ t0, -0.05 @ t2)
    # = [-0.05, -0.05, -0.05] -> [0.89, 0.90, 0.92]; row 1: [9.90, 9.95] + [-0.15, -0.15]
    close(out.returns, [[0.89, 0.90, 0.92, 0], [9.75, 9.80, 0, 0]], atol=1e-5)


# ---------------------------------------------------------------- whitening and estimators


def test_masked_whiten_by_hand():
    values, mask = T([[1.0, 2.0, 3.0, 100.0]]), T([[1, 1, 1, 0]])
    # mean 2, var (1 + 0 + 1) / 3 = 2/3, 1/sqrt(2/3) = 1.2247449
    close(masked_whiten(values, mask), [[-1.2247449, 0.0, 1.2247449, 0.0]])
    close(masked_whiten(values, mask, shift_mean=False), [[1.2247449, 2.4494897, 3.6742346, 0.0]])
    with pytest.raises(ValueError, match="no valid token"):
        masked_whiten(values, torch.zeros_like(mask))


def test_reinforce_pp_baseline_by_hand():
    mask = T([[1, 1, 0], [1, 1, 1]])
    zero = torch.zeros(2, 3)
    inputs = _inputs(mask, zero, T([1.0, 0.0]), T([[-1], [-1]]), T([[0.0], [0.0]]))
    out = compute_advantages("reinforce_pp_baseline", inputs)
    # group mean 0.5: returns row 0 = [0.5, 0.5], row 1 = [-0.5, -0.5, -0.5]
    close(out.returns, [[0.5, 0.5, 0], [-0.5, -0.5, -0.5]])
    # 5 tokens: mean -0.1, var 0.25 - 0.01 = 0.24, std 0.4898979
    # (0.5 + 0.1) / 0.4898979 = 1.2247449; (-0.5 + 0.1) / 0.4898979 = -0.8164966
    close(out.advantages, [[1.2247449, 1.2247449, 0], [-0.8164966] * 3], atol=1e-5)


def _outcome_only_inputs(outcome, groups):
    b = len(outcome)
    mask = torch.ones(b, 2, dtype=torch.long)
    return _inputs(mask, torch.zeros(b, 2), T(outcome), torch.full((b, 1), -1), torch.zeros(b, 1), T(groups))


def test_group_estimators_by_hand():
    inputs = _outcome_only_inputs([1.0, 0.0, 1.0, 1.0], [0, 0, 1, 1])
    # group 0: mean 0.5, unbiased std sqrt(0.25 + 0.25) = 0.7071068 -> +-0.5 / (0.7071068 + 1e-6)
    # group 1: mean 1, std 0 -> 0 / 1e-6 = 0
    a = 0.5 / (math.sqrt(0.5) + 1e-6)
    close(compute_advantages("grpo", inputs).advantages[:, 0], [a, -a, 0, 0], atol=1e-5)
    close(compute_advantages("dr_grpo", inputs).advantages[:, 0], [0.5, -0.5, 0, 0])
    # rloo: 1 - 0 = 1, 0 - 1 = -1; group 1: 1 - 1 = 0
    close(compute_advantages("rloo", inputs).advantages[:, 1], [1, -1, 0, 0])
    # group of 3, [3, 0, 0]: 3 - (0 + 0)/2 = 3, 0 - (3 + 0)/2 = -1.5
    three = _outcome_only_inputs([3.0, 0.0, 0.0], [7, 7, 7])
    close(compute_advantages("rloo", three).advantages[:, 0], [3, -1.5, -1.5])


def test_group_estimators_refuse_dense_terms_and_bad_names():
    inputs = _outcome_only_inputs([1.0, 0.0], [0, 0])
    with pytest.raises(ValueError, match="set kl_coef=0"):
        compute_advantages("grpo", inputs, kl_coef=0.01)
    with_steps = _inputs(inputs.mask, inputs.kl, inputs.outcome, T([[1], [-1]]), T([[0.5], [0.0]]))
    with pytest.raises(ValueError, match="cannot credit process rewards"):
        compute_advantages("rloo", with_steps)
    with pytest.raises(ValueError, match="at least 2 samples"):
        compute_advantages("rloo", _outcome_only_inputs([1.0, 0.0], [0, 1]))
    with pytest.raises(ValueError, match="choose one of reinforce_pp, reinforce_pp_baseline, grpo"):
        compute_advantages("ppo", inputs)
    with pytest.raises(ValueError, match="unknown credit mode 'max'"):
        compute_advantages("reinforce_pp", with_steps, credit="max")


def test_truncated_responses_penalised_or_dropped():
    mask = T([[1, 1], [1, 1]])
    inputs = _inputs(mask, torch.zeros(2, 2), T([1.0, 1.0]), T([[-1], [-1]]), T([[0.0], [0.0]]),
                     truncated=T([False, True]))  # fmt: skip
    out = compute_advantages("reinforce_pp", inputs, truncated_outcome=-1.0, whiten=False)
    close(out.returns, [[1, 1], [-1, -1]])  # the truncated response's outcome became -1
    out = compute_advantages("reinforce_pp", inputs, drop_truncated=True, whiten=False)
    assert out.mask.tolist() == [[1, 1], [0, 0]]
    close(out.returns, [[1, 1], [0, 0]])


def test_dropping_a_truncated_response_drops_its_process_steps_too():
    # Row 1 is truncated and carries a step at token 0 (score 0.5): dropped, it gets neither
    # reward nor advantage; row 0's step (0.25 at token 0) + outcome 1 stay: G = [1.25, 1].
    mask = T([[1, 1], [1, 1]])
    inputs = _inputs(mask, torch.zeros(2, 2), T([1.0, 1.0]), T([[0], [0]]), T([[0.25], [0.5]]),
                     truncated=T([False, True]))  # fmt: skip
    out = compute_advantages("reinforce_pp", inputs, drop_truncated=True, whiten=False)
    assert out.mask.tolist() == [[1, 1], [0, 0]]
    close(out.returns, [[1.25, 1.0], [0.0, 0.0]])
    close(out.dense_rewards, [[0.25, 1.0], [0.0, 0.0]])


# ---------------------------------------------------------------- loss


def test_clipped_loss_and_clip_fraction_by_hand():
    ratio = T([[1.5, 0.5, 1.5, 0.5]])
    old = torch.zeros(1, 4)
    logp = ratio.log().requires_grad_()
    adv = T([[1.0, 1.0, -1.0, -1.0]])
    mask = torch.ones(1, 4)
    loss, m = policy_loss(logp, old, adv, mask)
    # per token -min(r A, clip(r, 0.8, 1.2) A): [-1.2 (clipped), -0.5, 1.5, 0.8 (clipped)]
    # token mean = (-1.2 - 0.5 + 1.5 + 0.8) / 4 = 0.15; clipped 2 of 4
    close(loss, 0.15)
    close(m["clip_fraction"], 0.5)
    loss.backward()
    # clipped tokens get no gradient; d/dlogp (-A r)/4 = -A r / 4: -0.5/4, 1.5/4
    close(logp.grad, [[0.0, -0.125, 0.375, 0.0]])
    loss_hi, _ = policy_loss(ratio.log(), old, adv, mask, clip_high=0.28)
    close(loss_hi, (-1.28 - 0.5 + 1.5 + 0.8) / 4)  # 0.13


def test_dual_clip_bounds_negative_advantages_only():
    logp = T([[math.log(5.0), math.log(5.0)]])
    adv = T([[-1.0, 1.0]])
    loss, _ = policy_loss(
        logp, torch.zeros(1, 2), adv, torch.ones(1, 2), dual_clip=3.0, aggregation="seq_mean_token_mean"
    )
    # A = -1: max(5, 1.2) = 5, bounded by -c A = 3; A = +1: max(-5, -1.2) = -1.2 -> (3 - 1.2) / 2
    close(loss, 0.9)
    with pytest.raises(ValueError, match="dual_clip must be > 1"):
        policy_loss(logp, torch.zeros(1, 2), adv, torch.ones(1, 2), dual_clip=0.5)


def test_aggregations_by_hand():
    values, mask = T([[1.0, 3.0, 99.0], [5.0, 99.0, 99.0]]), T([[1, 1, 0], [1, 0, 0]])
    close(aggregate(values, mask, "token_mean"), 3.0)  # (1 + 3 + 5) / 3
    close(aggregate(values, mask, "token_mean", num_tokens=6), 1.5)  # 9 / 6 tokens of the step
    close(aggregate(values, mask, "seq_mean_token_mean"), 3.5)  # (2 + 5) / 2
    with pytest.raises(ValueError, match="choose one of token_mean"):
        aggregate(values, mask, "sum")


def test_kl_and_entropy_loss_terms():
    logp = T([[-1.0, -2.0]])
    ref = T([[-1.5, -2.0]])
    entropy = T([[0.5, 1.5]])
    loss, m = policy_loss(logp, logp, torch.zeros(1, 2), torch.ones(1, 2), ref_logp=ref, kl_loss_coef=0.1,
                          entropy=entropy, entropy_coef=0.01)  # fmt: skip
    # pg 0 (A = 0); k2 = [0.125, 0] -> mean 0.0625; entropy mean 1.0 -> 0.1*0.0625 - 0.01*1
    close(loss, 0.00625 - 0.01)
    close(m["kl_loss"], 0.0625)
    close(m["entropy"], 1.0)
    close(m["approx_kl"], 0.0)


def test_running_mean_std_merges_batches():
    rms = RunningMeanStd()
    rms.update(T([1.0, 2.0, 3.0]))
    rms.update(T([4.0, 5.0]))
    # all of 1..5: mean 3, population var (4 + 1 + 0 + 1 + 4) / 5 = 2
    assert rms.count == 5 and abs(rms.mean - 3.0) < 1e-12 and abs(rms.var - 2.0) < 1e-12
    close(rms.normalize(T([3.0, 3.0 + math.sqrt(2.0)])), [0.0, 1.0])
    restored = RunningMeanStd()
    restored.load_state_dict(rms.state_dict())
    assert restored.state_dict() == rms.state_dict()

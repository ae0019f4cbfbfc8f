"""Credit modes beyond sum and min, the registries a config selects from, and the edges an
independent check of the algorithms found. Every expected number is computed by hand in
the comments."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
import yaml

from rpp_learner.algorithms import (
    CREDIT_MODES,
    ESTIMATORS,
    AdvantageInputs,
    compute_advantages,
    first_error_returns,
    min_step_returns,
    outcome_centered_step_rewards,
    register_credit_mode,
    register_estimator,
)
from rpp_learner.config import ConfigError, config_from_dict, load_config

T = torch.tensor


def close(got, want, atol=1e-6):
    torch.testing.assert_close(got.float(), T(want, dtype=torch.float32), atol=atol, rtol=0)


def inputs(mask, outcome, index, scores, groups=None, valid=None, weights=None, truncated=None):
    b = mask.shape[0]
    return AdvantageInputs(
        mask=mask, kl=torch.zeros(mask.shape), outcome=outcome, step_token_index=index, step_scores=scores,
        group_index=torch.zeros(b, dtype=torch.long) if groups is None else groups,
        truncated=torch.zeros(b, dtype=torch.bool) if truncated is None else truncated,
        valid=valid, step_weights=weights,
    )


# ------------------------------------------------------------------ outcome-centred (PROGRS)


def test_outcome_centered_step_rewards_by_hand():
    # One prompt, four responses: two correct (R = 1), two wrong (R = 0).
    index = T([[1, 3], [2, -1], [0, 2], [1, -1]])
    p = T([[0.5, 0.5], [-0.5, 0.0], [-0.5, 0.5], [0.5, 0.0]])
    outcome = T([1.0, 1.0, 0.0, 0.0])
    groups = T([0, 0, 0, 0])
    # R = 1 steps: 0.5, 0.5, -0.5 -> mean 1/6;  R = 0 steps: -0.5, 0.5, 0.5 -> mean 1/6
    got = outcome_centered_step_rewards(index, p, outcome, groups, torch.ones(4, dtype=torch.bool))
    third = 1 / 3
    close(got, [[third, third], [-2 * third, 0.0], [-2 * third, third], [third, 0.0]])
    # Response 3 failed to score: the R = 0 class is response 2 alone, mean (-0.5 + 0.5) / 2 = 0.
    valid = T([True, True, True, False])
    got = outcome_centered_step_rewards(index, p, outcome, groups, valid)
    close(got[2], [-0.5, 0.5])
    # Two prompts never share a mean: the same numbers under different prompts centre apart.
    got = outcome_centered_step_rewards(index, p, outcome, T([0, 1, 0, 1]), torch.ones(4, dtype=torch.bool))
    close(got[0], [0.0, 0.0])  # its class (prompt 0, R = 1) is itself: mean 0.5


def test_outcome_centered_credit_sums_the_centred_rewards():
    # Through compute_advantages: score s, transform "centered" (s - 0.5), alpha 1.
    mask = torch.ones(2, 4, dtype=torch.long)
    index = T([[1, 3], [2, -1]])
    scores = T([[1.0, 1.0], [0.0, 0.0]])  # p = +0.5, +0.5 | -0.5
    out = compute_advantages(
        "reinforce_pp", inputs(mask, T([1.0, 1.0]), index, scores), kl_coef=0.0,
        credit="outcome_centered", score_transform="centered", whiten=False,
    )
    # Both responses are correct (one class): mean of 0.5, 0.5, -0.5 = 1/6.
    # c = [1/3, 1/3 | -2/3]; return = R + suffix sum of c.
    third = 1 / 3
    close(out.returns, [[1 + 2 * third, 1 + 2 * third, 1 + third, 1 + third],
                        [1 - 2 * third, 1 - 2 * third, 1 - 2 * third, 1.0]], atol=1e-5)
    # The process part averages to zero within the class: summed over steps, 0.
    assert abs(float(out.step_rewards[out.step_rewards != 0].sum())) > 0  # raw p are not centred
    centred = outcome_centered_step_rewards(index, out.step_rewards, T([1.0, 1.0]), T([0, 0]), T([True, True]))
    assert abs(float(centred.sum())) < 1e-6


# ------------------------------------------------------------------ first error (VPPO)


def test_first_error_credit_by_hand():
    mask = torch.ones(4, 6, dtype=torch.long)
    # Steps end at t1, t3, t5; raw scores; the second step is rejected (0.2 < 0.5).
    index = T([[1, 3, 5]] * 4)
    scores = T([[0.9, 0.2, 0.8], [0.9, 0.2, 0.8], [0.9, 0.7, 0.8], [0.1, 0.9, 0.9]])
    weights = torch.full((4, 3), 0.5)
    incorrect = T([True, False, True, True])
    got = first_error_returns(index, scores, weights, incorrect, mask, reject_below=0.5)
    close(got, [
        [0.5, 0.5, -0.5, -0.5, -0.5, -0.5],  # verified prefix t0..t1, penalised from t2
        [0.0] * 6,  # a correct response is left to the outcome
        [0.0] * 6,  # wrong, but the PRM rejects no step: nothing to locate
        [-0.5] * 6,  # the first step is wrong: no verified prefix
    ])


def test_first_error_reads_raw_scores_and_step_order():
    mask = torch.ones(1, 6, dtype=torch.long)
    index, scores = T([[5, 1, 3]]), T([[0.1, 0.9, 0.3]])  # steps given out of order
    out = compute_advantages(
        "reinforce_pp", inputs(mask, T([0.0]), index, scores, weights=T([[2.0, 2.0, 2.0]])),
        kl_coef=0.0, credit="first_error", score_transform="log", process_coef=0.5, whiten=False,
    )
    # By token order the scores are 0.9 (t1), 0.3 (t3), 0.1 (t5): the first rejected is at t3,
    # whatever the transform (log) does to p; w = alpha 0.5 * service weight 2 = 1.
    close(out.returns, [[1.0, 1.0, -1.0, -1.0, -1.0, -1.0]])


# ------------------------------------------------------------------ min: the tail after the last step


def test_min_credit_tail_takes_the_last_steps_value():
    mask = T([[1, 1, 1, 1, 1, 1, 0]])
    index, p = T([[1, 3]]), T([[-0.2, 0.3]])
    # t0, t1: min(-0.2, 0.3); t2, t3: 0.3; t4, t5 (the answer line, EOS): still step 2's 0.3.
    close(min_step_returns(index, p, mask), [[-0.2, -0.2, 0.3, 0.3, 0.3, 0.3, 0.0]])


# ------------------------------------------------------------------ group statistics


def test_grpo_keeps_fp64_until_after_the_division():
    # fp32 holds 1e6 and 1e6 + 0.0625 but not their mean 1e6 + 0.03125: rounding the mean
    # first gives advantages (0, 1.41); the exact ones are (-1/sqrt 2, +1/sqrt 2).
    mask = torch.ones(2, 1, dtype=torch.long)
    outcome = T([1e6, 1e6 + 0.0625], dtype=torch.float32)
    out = compute_advantages(
        "grpo", inputs(mask, outcome, torch.full((2, 0), -1), torch.zeros(2, 0)), kl_coef=0.0,
        reward_clip=(-1e7, 1e7),
    )
    close(out.advantages[:, 0], [-(0.5**0.5), 0.5**0.5], atol=1e-4)


def test_dropped_truncated_rows_leave_their_group_statistics():
    mask = torch.ones(3, 2, dtype=torch.long)
    truncated = T([False, True, False])
    x = inputs(mask, T([1.0, 0.0, 0.5]), torch.full((3, 0), -1), torch.zeros(3, 0), truncated=truncated)
    out = compute_advantages("grpo", x, kl_coef=0.0, drop_truncated=True, truncated_outcome=-1.0)
    # Over {1.0, 0.5}: mean 0.75, std sqrt(0.125) -> +-0.7071; the dropped row gets nothing.
    close(out.advantages[:, 0], [0.5**0.5, 0.0, -(0.5**0.5)], atol=1e-4)
    assert out.mask[1].sum() == 0


def test_a_lone_scored_sample_gets_zero_and_is_counted():
    mask = torch.ones(4, 1, dtype=torch.long)
    x = inputs(mask, T([1.0, 0.0, 0.7, 0.2]), torch.full((4, 0), -1), torch.zeros(4, 0),
               groups=T([0, 0, 1, 1]), valid=T([True, True, True, False]))
    out = compute_advantages("grpo", x, kl_coef=0.0)
    assert out.advantages[2, 0] == 0.0  # nobody to compare with
    assert out.metrics["advantages/lone_samples"] == 1.0  # of 4: the trainer logs 0.25


# ------------------------------------------------------------------ registries and config


BASE = {
    "model": {"path": "org/model"},
    "data": {"train_path": "prompts.jsonl"},
    "rewards": {"services": [
        {"name": "answer", "kind": "outcome", "targets": ["127.0.0.1:1"]},
        {"name": "prm", "kind": "process", "targets": ["127.0.0.1:2"]},
    ]},
}


def with_algo(**algo):
    return {**BASE, "algo": algo}


@pytest.fixture
def clean_registries():
    before = set(ESTIMATORS), set(CREDIT_MODES)
    yield
    for name in set(ESTIMATORS) - before[0]:
        del ESTIMATORS[name]
    for name in set(CREDIT_MODES) - before[1]:
        del CREDIT_MODES[name]
    for module in [m for m in sys.modules if m.startswith("rpp_test_plugin")]:
        del sys.modules[module]


def test_duplicate_registrations_are_refused(clean_registries):
    with pytest.raises(ValueError, match="credit mode 'sum' is already registered"):
        register_credit_mode("sum")(lambda x: x.mask.float())
    with pytest.raises(ValueError, match="advantage estimator 'grpo' is already registered"):
        register_estimator("grpo", whiten_by_default=False)(lambda i, c: None)


def test_a_users_own_credit_mode_and_estimator_are_selected_from_yaml(tmp_path, monkeypatch, clean_registries):
    (tmp_path / "rpp_test_plugin.py").write_text(textwrap.dedent("""
        import torch
        from rpp_learner.algorithms import register_credit_mode, register_estimator
        from rpp_learner.algorithms.advantages import reinforce_pp

        @register_credit_mode("last_step_only")
        def last_step_only(x):
            # P_t = the reward of the last step, on every token
            last = torch.where(x.step_token_index >= 0, x.step_rewards, torch.zeros_like(x.step_rewards))
            return last[:, -1:].expand_as(x.mask).float() * x.mask

        register_estimator("my_reinforce", whiten_by_default=False)(reinforce_pp)
    """))
    monkeypatch.chdir(tmp_path)  # plugins are found from the working directory too
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(with_algo(
        plugins=["rpp_test_plugin"], estimator="my_reinforce", process_credit="last_step_only"
    )))
    cfg = load_config(path)
    assert (cfg.algo.estimator, cfg.algo.process_credit) == ("my_reinforce", "last_step_only")
    mask = torch.ones(1, 3, dtype=torch.long)
    out = compute_advantages(cfg.algo.estimator, inputs(mask, T([0.0]), T([[0, 1]]), T([[0.2, 0.6]])),
                             kl_coef=0.0, credit=cfg.algo.process_credit)
    close(out.advantages, [[0.6, 0.6, 0.6]])  # not whitened: the plugin's own default


@pytest.mark.parametrize(("algo", "message"), [
    ({"estimator": "ppo"}, "algo.estimator: 'ppo' is not registered; choose one of 'reinforce_pp'"),
    ({"process_credit": "max"}, "algo.process_credit: 'max' is not registered"),
    ({"step_score_transform": "sqrt"}, "algo.step_score_transform: 'sqrt' is not registered"),
    ({"plugins": ["no_such_rpp_plugin"]}, "algo.plugins.0: cannot import 'no_such_rpp_plugin'"),
    ({"estimator": "grpo", "kl_coef": 0.01}, "grpo gives one advantage per response and cannot take KL"),
    ({"estimator": "rloo", "process_credit": "sum"}, "rloo reduces each response to one number"),
    ({"process_credit": "first_error", "normalize_reward": True}, "normalize_reward shifts it"),
])
def test_config_refuses_what_the_registries_cannot_run(algo, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(with_algo(**algo))


def test_group_credit_needs_groups():
    data = {**with_algo(process_credit="outcome_centered"), "rollout": {"samples_per_prompt": 1}}
    with pytest.raises(ConfigError, match="outcome_centered compares the responses to one prompt"):
        config_from_dict({**data, "optim": {"mini_batch_size": 64}})


def test_estimator_defaults_follow_their_papers_where_unset(capsys):
    cfg = config_from_dict(with_algo(estimator="reinforce_pp_baseline"))
    # The report's v9: KL as a k2 loss term, none in the reward.
    assert (cfg.algo.kl_coef, cfg.algo.kl_loss_coef, cfg.algo.kl_loss_estimator) == (0.0, 1e-3, "k2")
    assert "algo.estimator reinforce_pp_baseline: using its defaults kl_coef=0.0" in capsys.readouterr().err
    # What a run sets is kept.
    cfg = config_from_dict(with_algo(estimator="reinforce_pp_baseline", kl_coef=0.005))
    assert (cfg.algo.kl_coef, cfg.algo.kl_loss_coef) == (0.005, 1e-3)
    # reinforce_pp keeps the report's k1-in-reward defaults.
    assert config_from_dict(BASE).algo.kl_coef == 0.01


def test_accelerate_gradient_accumulation_is_refused(tmp_path):
    """accelerate would divide rpp's already-normalised loss by the accumulation steps."""
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(BASE))
    env = {**os.environ, "ACCELERATE_GRADIENT_ACCUMULATION_STEPS": "4"}
    proc = subprocess.run([sys.executable, "-m", "rpp_learner", "--config", str(path)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode != 0
    assert "gradient_accumulation_steps=4" in proc.stderr and "optim.mini_batch_size" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(("reduce", "want"), [("mean", [0.5 + 0.5 * 0.6, 0.5 + 0.0]), ("min", [0.5 + 0.5 * 0.2, 0.5])])
def test_a_reduced_process_service_folds_its_step_scores_into_the_outcome(reduce, want):
    """reduce: mean|min gives one number per response (what GRPO needs); nothing is placed."""
    from reward_server.types import Result, Span, StepScore
    from rpp_learner.config import RewardServiceConfig
    from rpp_learner.scoring import assemble_scores

    services = [RewardServiceConfig(name="answer", kind="outcome", targets=["x:1"], weight=0.5),
                RewardServiceConfig(name="prm", kind="process", targets=["x:2"], weight=0.5, reduce=reduce)]
    steps = [StepScore(Span(0, 1), 1.0), StepScore(Span(2, 3), 0.2)]
    results = {"answer": [Result(id="a", outcome=1.0), Result(id="b", outcome=1.0)],
               "prm": [Result(id="a", steps=steps), Result(id="b", steps=[])]}  # b: no step counts 0
    scored = assemble_scores(results, services, ["x\ny", ""], [[1, 2, 3], []], [False, False])
    close(scored.outcome, want)
    assert scored.valid.all() and (scored.step_token_index < 0).all()

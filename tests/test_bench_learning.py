"""The learning benchmark's bookkeeping: steps to a target, and the goal check that
decides whether dense credit paid (hand-made accuracy curves, no training)."""

from __future__ import annotations

from bench.bench_learning import ORM_ONLY, goal_check, steps_to_target, summarize


def run(seed: int, curve: list[tuple[int, float]], **extra) -> dict:
    return {"seed": seed, "accuracy_before": 0.05, "accuracy_curve": curve, "accuracy_after": curve[-1][1],
            "kl_last": 0.01, "time_rl_s": 1.0, **extra}


def test_steps_to_target_is_the_first_evaluated_step_at_or_above_it():
    curve = [(2, 0.1), (4, 0.5), (6, 0.4), (8, 0.9)]
    assert steps_to_target(curve, 0.5) == 4 and steps_to_target(curve, 0.9) == 8
    assert steps_to_target(curve, 0.95) is None


def test_goal_met_only_when_the_best_dense_mode_is_twice_as_fast_on_every_seed():
    orm = [run(0, [(5, 0.3), (10, 0.8)]), run(1, [(5, 0.2), (10, 0.7)])]
    fast = [run(0, [(5, 0.85), (10, 0.9)]), run(1, [(5, 0.7), (10, 0.75)])]  # ORM's finals by step 5
    slow_on_one_seed = [run(0, [(5, 0.85), (10, 0.9)]), run(1, [(5, 0.6), (10, 0.75)])]
    below = [run(0, [(5, 0.1), (10, 0.5)]), run(1, [(5, 0.1), (10, 0.5)])]

    lines = goal_check({ORM_ONLY: orm, "learned PRM, min": fast, "learned PRM, sum": below}, steps=10)
    assert "goal 1" in lines[0] and "MET (learned PRM, min" in lines[0]
    assert lines[1].endswith("NOT MET (learned PRM, sum)")  # it ends below ORM-only's 75%

    lines = goal_check({ORM_ONLY: orm, "learned PRM, min": slow_on_one_seed}, steps=10)
    assert "NOT MET (learned PRM, min: seed 0: step 5" in lines[0] and "seed 1: step 10" in lines[0]
    assert lines[1].endswith(": MET")
    assert goal_check({"learned PRM, min": fast}, steps=10) == ["goal check: needs the ORM-only variant"]


def test_summary_rows_carry_mean_spread_and_steps_to_target():
    rows = summarize({ORM_ONLY: [run(0, [(5, 0.3), (10, 0.8)]), run(1, [(5, 0.6), (10, 0.6)])]}, target=0.5)
    (row,) = rows
    assert row["after_mean"] == 0.7 and row["after_per_seed"] == [0.8, 0.6]
    assert row["steps_to_target"] == [10, 5] and round(row["after_std"], 4) == 0.1414
    assert row["steps_first"] is None  # ORM only places no step scores


def test_sum_is_off_only_for_column_lines_that_do_not_add_up():
    from bench.bench_learning import _sum_is_off

    assert _sum_is_off("9+6+7+2=23") and not _sum_is_off("9+6+7+2=24")
    assert not _sum_is_off("Answer: 2305") and not _sum_is_off("9+6=") and not _sum_is_off(" 1+2+0=3 ")

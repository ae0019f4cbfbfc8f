"""The quickstart task: generator, splits, demonstrations and the exact step checker."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quickstart.rewards import step_scores
from quickstart.task import (
    STEP_SEPARATOR,
    Problem,
    TaskConfig,
    check_steps,
    demonstration,
    final_answer,
    parse_prompt,
    sample_problems,
    solution,
    split_of,
)
from reward_server.types import Sample

problems = st.builds(
    lambda n, xs: Problem(tuple(xs[:n])),
    st.integers(2, 3),
    st.lists(st.integers(100, 9999), min_size=3, max_size=3),
)


def test_worked_example_from_the_docstring():
    problem = Problem((4753, 2869))
    assert problem.prompt == "Add 4753 + 2869\n"
    assert solution(problem) == "3+9+0=12\n5+6+1=12\n7+8+1=16\n4+2+1=7\nAnswer: 7622"


@given(problems)
def test_correct_solution_scores_one_everywhere(problem):
    response = solution(problem)
    assert final_answer(response) == problem.answer
    steps = response.split(STEP_SEPARATOR)
    assert check_steps(problem, steps) == [1.0] * (problem.digits + 1)


@given(problems)
def test_prompt_round_trips(problem):
    assert parse_prompt(problem.prompt) == problem


def test_dropped_carry_is_wrong_only_where_it_happens():
    problem = Problem((4753, 2869))
    steps = ["3+9+0=12", "5+6+0=11", "7+8+1=16", "4+2+1=7", "Answer: 7612"]
    # Line 2 forgot the carry; line 3 correctly carries the 1 from line 2's (wrong) 11, and
    # the answer reads the written lines back faithfully: only line 2 is a wrong move.
    assert check_steps(problem, steps) == [1.0, 0.0, 1.0, 1.0, 1.0]
    assert final_answer(STEP_SEPARATOR.join(steps)) != problem.answer


@pytest.mark.parametrize(
    "steps, expected",
    [
        (["3+9+0=13", "5+6+1=12", "7+8+1=16", "4+2+1=7", "Answer: 7623"], [0.0, 1.0, 1.0, 1.0, 1.0]),
        (["3+8+0=11", "5+6+1=12", "7+8+1=16", "4+2+1=7", "Answer: 7621"], [0.0, 1.0, 1.0, 1.0, 1.0]),
        (["3+9+0=12", "5+6+1=12", "7+8+1=16", "Answer: 1622"], [1.0, 1.0, 1.0, 0.0]),
        (["3+9+0=12", "5+6+1=12", "7+8+1=16", "4+2+1=7", "Answer: 7622", "Answer: 7622"], [1.0] * 5 + [0.0]),
        (["3+9=12", "5+6+1=12"], [0.0, 1.0]),  # the carry term is missing
        (["3+9+0=12", "Answer: 12"], [1.0, 0.0]),
        (["3+9+0=012"], [0.0]),
        (["  3+9+0=12  "], [1.0]),
        (["3+9+0=12", "5+6+1=12", "7+8+1=16", "4+2+1=7", "4+2+0=6"], [1.0, 1.0, 1.0, 1.0, 0.0]),
        ([], []),
    ],
)
def test_step_checker_cases(steps, expected):
    assert check_steps(Problem((4753, 2869)), steps) == expected


def test_final_carry_becomes_the_leading_digits():
    problem = Problem((999, 999, 999))
    response = solution(problem)
    assert response.splitlines()[-2] == "9+9+9+2=29"
    assert final_answer(response) == 2997
    assert check_steps(problem, response.splitlines()) == [1.0] * 4


def test_splits_do_not_overlap_and_are_deterministic():
    config = TaskConfig(digits=3)
    train = sample_problems(2000, "train", seed=1, config=config)
    heldout = sample_problems(200, "heldout", seed=1, config=config)
    assert not set(train) & set(heldout)
    assert len(set(train)) == 2000
    assert all(split_of(p, config.heldout_percent) == "heldout" for p in heldout)
    assert sample_problems(50, "train", seed=1, config=config) == train[:50]
    assert sample_problems(50, "train", seed=2, config=config) != train[:50]


def test_difficulty_knobs():
    problems = sample_problems(20, "train", seed=0, config=TaskConfig(digits=5, operands=3))
    assert all(len(p.operands) == 3 and all(10_000 <= x <= 99_999 for x in p.operands) for p in problems)


def test_asking_for_more_problems_than_exist_is_refused():
    with pytest.raises(ValueError, match="raise digits or operands"):
        sample_problems(1000, "heldout", seed=0, config=TaskConfig(digits=1))


def test_bad_config_names_the_field():
    with pytest.raises(ValueError, match="carry_slip"):
        TaskConfig(carry_slip=1.5)
    with pytest.raises(ValueError, match="operands"):
        TaskConfig(operands=1)


@settings(max_examples=50)
@given(problems, st.integers(0, 2**32))
def test_teacher_answer_is_wrong_exactly_when_a_step_is(problem, seed):
    response = demonstration(problem, random.Random(seed), carry_slip=0.5, sum_slip=0.3)
    scores = check_steps(problem, response.split(STEP_SEPARATOR))
    assert scores[-1] == 1.0  # the teacher reads its own lines back faithfully
    # A slip changes the answer, except when two slips cancel (rare, but possible).
    if all(s == 1.0 for s in scores):
        assert final_answer(response) == problem.answer


def test_teacher_slip_rates_match_the_config():
    rng = random.Random(0)
    config = TaskConfig(digits=3, carry_slip=0.6, sum_slip=0.0)
    dropped = due = 0
    for problem in sample_problems(3000, "train", seed=0, config=config):
        lines = demonstration(problem, rng, config.carry_slip, config.sum_slip).split(STEP_SEPARATOR)
        for previous, line in zip(lines[:-2], lines[1:-1], strict=True):
            if int(previous.split("=")[1]) >= 10:
                due += 1
                dropped += line.split("=")[0].endswith("+0")
    assert 0.55 < dropped / due < 0.65


def test_process_reward_function_reads_the_problem_from_the_prompt():
    sample = Sample(id="a", prompt="Add 4753 + 2869\n", response="")
    assert step_scores(sample, ["3+9+0=12", "5+6+0=11"]) == [1.0, 0.0]
    with pytest.raises(ValueError, match="not a quickstart addition prompt"):
        step_scores(Sample(id="b", prompt="What is 2+2?", response=""), ["4"])

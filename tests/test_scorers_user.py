"""User reward functions: sync and async, module and file specs, and every way to get it wrong."""

from __future__ import annotations

import asyncio
import textwrap

import pytest

from reward_server.scorers import build_scorer
from reward_server.scorers.user_function import UserFunctionScorer
from reward_server.steps import split_steps
from reward_server.types import RewardKind, Sample, Span

USER_CODE = textwrap.dedent(
    '''
    import asyncio
    from dataclasses import dataclass

    @dataclass
    class Unused:  # dataclasses need the module registered while it loads
        x: int = 0

    def length(sample):
        return float(len(sample.response))

    async def async_length(sample):
        await asyncio.sleep(0)
        return len(sample.response) / 2

    def per_step(sample, steps):
        return [float(len(s)) for s in steps]

    async def async_per_step(sample, steps):
        return [1.0] * len(steps)

    def raises(sample):
        raise RuntimeError("reward backend down")

    def nan(sample):
        return float("nan")

    def infinite(sample):
        return float("inf")

    def text(sample):
        return "0.5"

    def boolean(sample):
        return True

    def short(sample, steps):
        return [0.0] * (len(steps) - 1)

    def scalar_for_steps(sample, steps):
        return 1.0

    def none_step(sample, steps):
        return [None] * len(steps)

    in_flight = 0

    async def concurrency_seen(sample):
        global in_flight
        in_flight += 1
        seen = in_flight
        await asyncio.sleep(0.3)
        in_flight -= 1
        return float(seen)
    '''
)


@pytest.fixture(scope="module")
def user_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("user") / "my_rewards.py"
    path.write_text(USER_CODE)
    return path


def run(scorer, samples):
    return asyncio.run(scorer.score(samples))


SAMPLES = [
    Sample(id="a", prompt="q", response="Step one.\n\nStep two 🙂."),
    Sample(id="b", prompt="q", response="计算 21。"),
]


def test_sync_and_async_outcome_functions(user_file):
    for name, divisor in (("length", 1), ("async_length", 2)):
        results = run(UserFunctionScorer(f"{user_file}:{name}", "outcome"), SAMPLES)
        assert [r.outcome for r in results] == [len(s.response) / divisor for s in SAMPLES]


def test_module_spec(user_file, monkeypatch):
    monkeypatch.syspath_prepend(str(user_file.parent))
    scorer = build_scorer("user", function="my_rewards:per_step", kind="process")
    assert scorer.kind is RewardKind.PROCESS
    (a, b) = run(scorer, SAMPLES)
    assert [s.span for s in a.steps] == split_steps(SAMPLES[0].response)
    assert [s.score for s in a.steps] == [len("Step one."), len("Step two 🙂.")]
    assert len(b.steps) == 1


def test_process_function_scores_exactly_the_given_steps(user_file):
    sample = Sample(id="given", prompt="q", response="abc def ghi", steps=[Span(0, 3), Span(4, 11)])
    (result,) = run(UserFunctionScorer(f"{user_file}:per_step", "process"), [sample])
    assert [(s.span, s.score) for s in result.steps] == [(Span(0, 3), 3.0), (Span(4, 11), 7.0)]
    (result,) = run(UserFunctionScorer(f"{user_file}:async_per_step", "process"), [sample])
    assert [s.score for s in result.steps] == [1.0, 1.0]


@pytest.mark.parametrize(
    ("name", "kind", "code", "words"),
    [
        ("raises", "outcome", "SCORER_FAILED", "reward backend down"),
        ("nan", "outcome", "BAD_SCORE", "finite number"),
        ("infinite", "outcome", "BAD_SCORE", "finite number"),
        ("text", "outcome", "BAD_SCORE", "'0.5'"),
        ("boolean", "outcome", "BAD_SCORE", "True"),
        ("short", "process", "BAD_SCORE", "1 step scores for 2 steps"),
        ("scalar_for_steps", "process", "BAD_SCORE", "list of floats"),
        ("none_step", "process", "BAD_SCORE", "step 0"),
    ],
)
def test_bad_functions_give_per_sample_errors_naming_sample_and_function(user_file, name, kind, code, words):
    spec = f"{user_file}:{name}"
    results = run(UserFunctionScorer(spec, kind), SAMPLES[:1])
    (result,) = results
    assert result.error is not None and result.error.code == code
    assert "'a'" in result.error.message and spec in result.error.message and words in result.error.message


def test_bad_span_is_a_per_sample_error(user_file):
    sample = Sample(id="cut", prompt="q", response="计算", steps=[Span(0, 1)])
    (result,) = run(UserFunctionScorer(f"{user_file}:per_step", "process"), [sample])
    assert result.error.code == "INVALID_SAMPLE" and "'cut'" in result.error.message


def test_bad_specs_fail_at_construction(user_file, tmp_path):
    with pytest.raises(ValueError, match="must look like"):
        UserFunctionScorer("no_colon_here")
    with pytest.raises(ValueError, match="does not exist"):
        UserFunctionScorer(f"{tmp_path}/missing.py:f")
    with pytest.raises(ValueError, match="cannot import module 'no_such_module_rpp'"):
        UserFunctionScorer("no_such_module_rpp:f")
    with pytest.raises(ValueError, match="no callable named 'missing'"):
        UserFunctionScorer(f"{user_file}:missing")
    broken = tmp_path / "broken.py"
    broken.write_text("raise ImportError('needs a GPU')\n")
    with pytest.raises(ValueError, match="needs a GPU"):
        UserFunctionScorer(f"{broken}:f")
    with pytest.raises(ValueError, match="kind 'both'"):
        UserFunctionScorer(f"{user_file}:length", "both")


def test_an_async_function_scores_many_samples_at_once_in_one_worker(user_file):
    """I/O-bound rewards (a remote judge) need concurrency: one worker holds every sample."""
    scorer = UserFunctionScorer(f"{user_file}:concurrency_seen", workers=1)
    try:
        results = run(scorer, [Sample(id=f"c{i}", prompt="q", response="r") for i in range(16)])
    finally:
        scorer.close()
    assert max(r.outcome for r in results) == 16.0


def test_worker_processes_give_math_libraries_one_thread_unless_told(tmp_path, monkeypatch):
    """A pool is many processes on the same cores: torch in each gets one thread, as in
    PyTorch's DataLoader workers, unless the environment sets OMP_NUM_THREADS."""
    path = tmp_path / "threads_reward.py"
    path.write_text("import torch\n\ndef threads(sample):\n    return float(torch.get_num_threads())\n")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert run(UserFunctionScorer(f"{path}:threads", "outcome", workers=2), SAMPLES[:1])[0].outcome == 1.0
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert run(UserFunctionScorer(f"{path}:threads", "outcome", workers=2), SAMPLES[:1])[0].outcome == 2.0

"""The math-verify answer checker, run in its worker processes."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import pytest

from reward_server.scorers.math_answer import MathAnswerConfig, MathAnswerScorer
from reward_server.types import Sample


@pytest.fixture(scope="module")
def scorer():
    scorer = MathAnswerScorer(MathAnswerConfig(workers=1, correct_score=1.0, incorrect_score=-1.0))
    yield scorer
    scorer.close()


def run(scorer, samples):
    return asyncio.run(scorer.score(samples))


CASES = [  # (response, reference, correct?)
    ("Answer: 42", "42", True),
    ("So 6 × 7 gives the final answer \\boxed{42}.", "42", True),
    ("Answer: 41", "42", False),
    ("Therefore the answer is $\\frac{1}{2}$.", "0.5", True),
    ("The answer is 1/2", "\\frac{1}{2}", True),
    ("\\boxed{\\frac{2}{4}}", "$\\frac12$", True),
    ("\\boxed{2\\sqrt{2}}", "2\\sqrt{2}", True),
    ("\\boxed{3}", "2\\sqrt{2}", False),
    ("计算完毕 🙂 答案是 \\boxed{21}", "21", True),
]


def test_correct_and_incorrect_answers(scorer):
    samples = [Sample(id=f"m{i}", prompt="q", response=r, reference=ref) for i, (r, ref, _) in enumerate(CASES)]
    results = run(scorer, samples)
    assert [r.id for r in results] == [s.id for s in samples]
    for (response, reference, correct), result in zip(CASES, results, strict=True):
        assert result.ok, result.error
        assert result.outcome == (1.0 if correct else -1.0), (response, reference)
        assert result.metrics["correct"] == float(correct)
        assert result.metrics["answer_found"] == 1.0
    assert results[0].metrics["answer_value"] == 42.0
    assert results[3].metrics["answer_value"] == 0.5


def test_unparseable_answer_is_incorrect_and_bad_reference_is_an_error(scorer):
    samples = [
        Sample(id="no-answer", prompt="q", response="I am not sure, sorry.", reference="42"),
        Sample(id="no-ref", prompt="q", response="Answer: 42"),
        Sample(id="blank-ref", prompt="q", response="Answer: 42", reference="  "),
        Sample(id="junk-ref", prompt="q", response="Answer: 42", reference="$$"),  # math-verify reads nothing in it
    ]
    no_answer, no_ref, blank_ref, junk_ref = run(scorer, samples)
    assert no_answer.ok and no_answer.outcome == -1.0 and no_answer.metrics["answer_found"] == 0.0
    for result in (no_ref, blank_ref):
        assert result.error.code == "INVALID_SAMPLE" and "no reference" in result.error.message
    assert junk_ref.error.code == "INVALID_SAMPLE" and "'junk-ref'" in junk_ref.error.message


def test_checker_works_from_a_thread_with_its_own_event_loop(scorer):
    # The server may run its event loop off the main thread (start_in_thread), where
    # math-verify's signal-based timeout cannot run in-process.
    box = {}
    thread = __import__("threading").Thread(
        target=lambda: box.update(r=run(scorer, [Sample(id="t", prompt="q", response="\\boxed{7}", reference="7")]))
    )
    thread.start()
    thread.join()
    assert box["r"][0].outcome == 1.0


def test_a_math_bomb_costs_its_own_deadline_and_its_worker_is_replaced():
    # 9^(9^(9^9)) keeps sympy in C code that ignores math-verify's alarm.
    scorer = MathAnswerScorer(MathAnswerConfig(workers=2, deadline_s=3))
    try:
        bomb = Sample(id="bomb", prompt="q", response="Answer: $9^{9^{9^{9}}}$", reference="3")
        good = [Sample(id=f"g{i}", prompt="q", response=f"Answer: {i}", reference=str(i)) for i in range(6)]
        started = time.perf_counter()
        late, *rest = run(scorer, [bomb, *good])
        assert late.error.code == "TIMEOUT" and "deadline_s=3" in late.error.message
        assert [r.outcome for r in rest] == [1.0] * 6
        assert time.perf_counter() - started < 3 + 10
        (ok,) = run(scorer, [good[0]])  # the replaced worker serves
        assert ok.ok and ok.outcome == 1.0
    finally:
        scorer.close()


def test_importing_the_checker_does_not_import_torch():
    code = (
        "import sys, reward_server.scorers.math_answer, reward_server.scorers.user_function; "
        "print('torch' in sys.modules)"
    )
    assert subprocess.check_output([sys.executable, "-c", code], text=True).strip() == "False"

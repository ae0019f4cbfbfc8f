"""Building scorers by name, as the server CLI does."""

from __future__ import annotations

import pytest

from reward_server.scorers import SCORERS, build_scorer, describe_scorers, scorer_options
from reward_server.scorers.math_answer import MathAnswerScorer


def test_unknown_scorer_and_unknown_option_list_the_valid_ones():
    with pytest.raises(
        ValueError,
        match="valid scorers: hf-outcome, prm, prm-qwen, prm-skywork, prm-rlhflow, "
        "prm-classifier, prm-causal, math-answer, user",
    ):
        build_scorer("hf-outcomes")
    with pytest.raises(ValueError, match="unknown option\\(s\\) 'temprature'.*valid options: correct_score"):
        build_scorer("math-answer", temprature=1.0)
    with pytest.raises(ValueError, match="needs option\\(s\\) 'model'"):
        build_scorer("hf-outcome")


def test_string_options_are_converted_to_their_types():
    scorer = build_scorer("math-answer", correct_score="2.5", workers="1", timeout_score="none")
    assert isinstance(scorer, MathAnswerScorer)
    assert (scorer.config.correct_score, scorer.config.workers, scorer.config.timeout_score) == (2.5, 1, None)
    with pytest.raises(ValueError, match="option 'workers' of scorer 'math-answer' must be int, got 'many'"):
        build_scorer("math-answer", workers="many")


def test_every_scorer_documents_its_options():
    text = describe_scorers()
    for name in SCORERS:
        assert text.count(f"\n{name}: ") + text.startswith(f"{name}: ") == 1
        for option in scorer_options(name):
            assert f"    {option} (" in text
    assert "model (str, required)" in describe_scorers("prm-causal")

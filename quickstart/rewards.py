"""The quickstart's process reward, served as a user function by ``rpp-reward-server``::

    rpp-reward-server --scorer user --kind process --step-separator '\\n' \\
        --function quickstart.rewards:step_scores

Each step is checked exactly against the problem in the prompt: 1.0 if it is a correct
move given the steps before it, 0.0 if not (see ``quickstart.task.check_steps``). The
outcome reward is the stock math-verify scorer (``--scorer math-answer``) comparing the
``Answer:`` line with the reference sum.
"""

from __future__ import annotations

from quickstart.task import STEP_SEPARATOR, check_steps, parse_prompt
from reward_server.steps import span_text, split_steps
from reward_server.types import Sample


def step_scores(sample: Sample, steps: list[str]) -> list[float]:
    """One score per step text: 1.0 for a correct step, 0.0 for a wrong one.

    Raises ValueError for a prompt that is not a quickstart problem; the server turns that
    into a per-sample error naming the sample, and keeps serving.
    """
    return check_steps(parse_prompt(sample.prompt), steps)


def mean_step_score(sample: Sample) -> float:
    """The process reward collapsed to one number: the share of correct steps (0 if none).

    Served as an *outcome* user function, for estimators that take one score per response
    (GRPO): ``--scorer user --kind outcome --function quickstart.rewards:mean_step_score``.
    """
    spans = split_steps(sample.response, STEP_SEPARATOR)  # as the process service splits
    scores = step_scores(sample, [span_text(sample.response, span) for span in spans])
    return sum(scores) / len(scores) if scores else 0.0

"""The quickstart's process reward, served as a user function by ``rpp-reward-server``::

    rpp-reward-server --scorer user --kind process --step-separator '\\n' \\
        --function quickstart.rewards:step_scores

Each step is checked exactly against the problem in the prompt: 1.0 if it is a correct
move given the steps before it, 0.0 if not (see ``quickstart.task.check_steps``). The
outcome reward is the stock math-verify scorer (``--scorer math-answer``) comparing the
``Answer:`` line with the reference sum.
"""

from __future__ import annotations

from quickstart.task import check_steps, parse_prompt
from reward_server.types import Sample


def step_scores(sample: Sample, steps: list[str]) -> list[float]:
    """One score per step text: 1.0 for a correct step, 0.0 for a wrong one.

    Raises ValueError for a prompt that is not a quickstart problem; the server turns that
    into a per-sample error naming the sample, and keeps serving.
    """
    return check_steps(parse_prompt(sample.prompt), steps)


"""Rewards for a task of your own: chained arithmetic, worked one operation per line.

The policy is asked for, e.g., ``Compute 7 + 5 * 2 - 4 from left to right`` and should write

    7 + 5 = 12
    12 * 2 = 24
    24 - 4 = 20
    Answer: 20

Served as two reward services (README, "Your own task"):

    rpp-reward-server --scorer user --function examples/own_task/rewards.py:final_answer --port 50051
    rpp-reward-server --scorer user --function examples/own_task/rewards.py:line_scores --kind process \\
        --step-separator '\\n' --port 50052

``final_answer`` is the outcome: 1 when the last ``Answer:`` line equals the reference.
``line_scores`` is the process reward: the server splits the response on the step
separator (one line = one step) and passes the lines; each gets 1 if it is a correct
``a op b = c`` or the right answer line, 0 if it is a wrong one, and 0.5 for anything else.
"""

from __future__ import annotations

import operator
import re

from reward_server.types import Sample

OPERATIONS = {"+": operator.add, "-": operator.sub, "*": operator.mul}
EQUATION = re.compile(r"^\s*(-?\d+)\s*([+*-])\s*(-?\d+)\s*=\s*(-?\d+)\s*$")
ANSWER = re.compile(r"^\s*Answer:\s*(-?\d+)\s*$")


def final_answer(sample: Sample) -> float:
    answers = [m.group(1) for m in map(ANSWER.match, sample.response.splitlines()) if m]
    return float(bool(answers) and answers[-1] == (sample.reference or "").strip())


def line_scores(sample: Sample, steps: list[str]) -> list[float]:
    return [_line_score(line, sample.reference) for line in steps]


def _line_score(line: str, reference: str | None) -> float:
    if m := EQUATION.match(line):
        a, op, b, c = int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4))
        return float(OPERATIONS[op](a, b) == c)
    if m := ANSWER.match(line):
        return float(m.group(1) == (reference or "").strip())
    return 0.5  # neither right nor wrong: prose, a blank the policy added

"""Column addition, written one column per line: a task whose every step can be checked.

A problem is a sum of ``operands`` numbers of ``digits`` digits each. The prompt and a
correct response look like this (steps are separated by ``STEP_SEPARATOR``, one line each)::

    Add 4753 + 2869
    3+9+0=12
    5+6+1=12
    7+8+1=16
    4+2+1=7
    Answer: 7622

Each column line is ``d1+d2+...+carry=sum``, right to left; the carry into a column is the
tens part of the previous line's sum (0 for the first column). The answer is the written
column digits read back, with the last sum in front.

A step is *correct* when it is a valid move given the problem and the lines before it (the
PRM800K / Math-Shepherd notion of a step label): the column digits are the right ones, the
carry is the tens of the previous written sum, and the sum adds up. So after a slip only the
line that slipped is wrong, and a process reward points at the exact token where it went
wrong; the final answer, checked against the true sum, is the outcome reward.

Demonstrations for supervised fine-tuning come from a sloppy teacher: it drops a carry that
is due with probability ``carry_slip`` and gets a column sum off by one with probability
``sum_slip``. The teacher's answer is consistent with its own lines, so every slip makes the
final answer wrong. A model trained to imitate it inherits those habits; reinforcement
learning has to unlearn them.

Train and held-out problems are told apart by a hash of the problem itself, so the two
splits never overlap whatever the seeds or sizes.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass
from typing import Literal

STEP_SEPARATOR = "\n"
ANSWER_PREFIX = "Answer: "

Split = Literal["train", "heldout"]

_PROMPT_RE = re.compile(r"^Add (\d+(?: \+ \d+)+)\n$")
_COLUMN_RE = re.compile(r"^(\d(?:\+\d)+)=(0|[1-9]\d*)$")
_ANSWER_RE = re.compile(r"^" + re.escape(ANSWER_PREFIX) + r"(0|[1-9]\d*)$")


@dataclass(frozen=True)
class TaskConfig:
    """Difficulty knobs and the teacher's error rates (the SFT start's headroom)."""

    digits: int = 3
    operands: int = 2
    carry_slip: float = 0.6  # P(the teacher drops a carry that is due)
    sum_slip: float = 0.1  # P(the teacher's column sum is off by one)
    heldout_percent: int = 10  # share of all problems reserved for evaluation

    def __post_init__(self) -> None:
        if not 1 <= self.digits <= 12:
            raise ValueError(f"TaskConfig.digits must be in [1, 12], got {self.digits}")
        if not 2 <= self.operands <= 9:
            raise ValueError(f"TaskConfig.operands must be in [2, 9], got {self.operands}")
        for name in ("carry_slip", "sum_slip"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"TaskConfig.{name} is a probability, got {value}")
        if not 1 <= self.heldout_percent <= 50:
            raise ValueError(
                f"TaskConfig.heldout_percent must be in [1, 50], got {self.heldout_percent}"
            )


@dataclass(frozen=True)
class Problem:
    operands: tuple[int, ...]

    @property
    def digits(self) -> int:
        return len(str(max(self.operands)))

    @property
    def answer(self) -> int:
        return sum(self.operands)

    @property
    def prompt(self) -> str:
        return "Add " + " + ".join(str(x) for x in self.operands) + "\n"

    def column(self, index: int) -> list[int]:
        """The digits of column ``index`` (0 = units), one per operand, leading zeros as 0."""
        return [(x // 10**index) % 10 for x in self.operands]


def parse_prompt(prompt: str) -> Problem:
    """The problem a prompt was made from; raises ValueError for text that is not one."""
    match = _PROMPT_RE.match(prompt)
    if match is None:
        raise ValueError(f"not a quickstart addition prompt: {prompt!r} (expected 'Add A + B\\n')")
    return Problem(tuple(int(x) for x in match.group(1).split(" + ")))


def split_of(problem: Problem, heldout_percent: int = 10) -> Split:
    """Which split ``problem`` belongs to: a stable hash of its prompt, so never both."""
    digest = hashlib.sha256(problem.prompt.encode()).digest()
    return "heldout" if int.from_bytes(digest[:8], "big") % 100 < heldout_percent else "train"


def max_distinct(split: Split, config: TaskConfig) -> int:
    """How many distinct problems ``sample_problems`` can draw from ``split`` (half of it,
    so that rejection sampling always ends quickly)."""
    space = (9 * 10 ** (config.digits - 1)) ** config.operands
    share = config.heldout_percent if split == "heldout" else 100 - config.heldout_percent
    return space * share // 200


def sample_problems(n: int, split: Split, seed: int, config: TaskConfig) -> list[Problem]:
    """``n`` distinct problems of ``split``, drawn deterministically from ``seed``."""
    if n > max_distinct(split, config):
        raise ValueError(
            f"asked for {n} distinct {split} problems but at most {max_distinct(split, config)} "
            f"can be drawn with digits={config.digits}, operands={config.operands}: "
            "raise digits or operands, or ask for fewer"
        )
    low, high = 10 ** (config.digits - 1), 10**config.digits - 1
    rng = random.Random(f"{split}:{seed}")
    seen: set[Problem] = set()
    problems: list[Problem] = []
    while len(problems) < n:
        problem = Problem(tuple(rng.randint(low, high) for _ in range(config.operands)))
        if problem not in seen and split_of(problem, config.heldout_percent) == split:
            seen.add(problem)
            problems.append(problem)
    return problems


def format_column(digits: list[int], carry: int, total: int) -> str:
    return "+".join(str(d) for d in [*digits, carry]) + f"={total}"


def assemble_answer(sums: list[int]) -> int:
    """Read written column sums back: units of each, right to left, the last sum in front."""
    if not sums:
        raise ValueError("assemble_answer needs at least one column sum")
    text = str(sums[-1]) + "".join(str(s % 10) for s in reversed(sums[:-1]))
    return int(text)


def demonstration(
    problem: Problem, rng: random.Random, carry_slip: float = 0.0, sum_slip: float = 0.0
) -> str:
    """A worked response by a teacher that slips at the given rates (0, 0: always right)."""
    lines: list[str] = []
    sums: list[int] = []
    carry = 0
    for index in range(problem.digits):
        digits = problem.column(index)
        if carry and rng.random() < carry_slip:
            carry = 0  # the classic slip: the carry is forgotten
        total = sum(digits) + carry
        if rng.random() < sum_slip:
            total = total - 1 if total and rng.random() < 0.5 else total + 1
        lines.append(format_column(digits, carry, total))
        sums.append(total)
        carry = total // 10
    lines.append(f"{ANSWER_PREFIX}{assemble_answer(sums)}")
    return STEP_SEPARATOR.join(lines)


def solution(problem: Problem) -> str:
    """The correct worked response."""
    return demonstration(problem, random.Random(0))


def check_steps(problem: Problem, steps: list[str]) -> list[float]:
    """1.0 for each step that is a correct move given the problem and the steps before it.

    Column ``i`` must hold the digits of column ``i``, the carry written by line ``i - 1``
    (the tens of its sum), and their sum. The answer line must come right after the last
    column and read the written sums back. Anything else (a malformed line, a missing or
    extra column, text after the answer) scores 0.0.
    """
    scores: list[float] = []
    sums: list[int] = []
    answered = False
    for text in steps:
        text = text.strip()
        ok = False
        if answered:
            ok = False  # nothing may follow the answer
        elif (answer := _ANSWER_RE.match(text)) is not None:
            answered = True
            ok = len(sums) == problem.digits and int(answer.group(1)) == assemble_answer(sums)
        elif (column := parse_column(text)) is not None:
            terms, total = column
            index = len(sums)
            expected_carry = sums[-1] // 10 if sums else 0
            ok = (
                index < problem.digits
                and terms == [*problem.column(index), expected_carry]
                and total == sum(terms)
            )
            sums.append(total)
        scores.append(1.0 if ok else 0.0)
    return scores


def parse_column(step: str) -> tuple[list[int], int] | None:
    """A column line ``d1+d2+...+carry=sum`` as (its terms, its written sum); None if the
    step is not one."""
    column = _COLUMN_RE.match(step.strip())
    if column is None:
        return None
    return [int(t) for t in column.group(1).split("+")], int(column.group(2))


def final_answer(response: str) -> int | None:
    """The number on the response's ``Answer:`` line, or None if there is none."""
    for line in response.split(STEP_SEPARATOR):
        if (match := _ANSWER_RE.match(line.strip())) is not None:
            return int(match.group(1))
    return None

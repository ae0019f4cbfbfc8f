"""The two settings of the learning benchmark: a task, the SFT start made for it, and the
RL run that goes with it.

- ``easy``: the quickstart. Two 3-digit operands; the greedy SFT start drops every due carry
  and is right about a third of the time, so outcome reward is already frequent.
- ``hard``: three 3-digit operands. Nearly every column has a carry the teacher may drop,
  the greedy SFT start is right about 1 time in 20 and a sample at temperature 1 rarely
  more: outcome reward is sparse, which is where step credit has something to add. Copying
  three operands' digits is harder, so its SFT sees twice the demonstrations (with the
  quickstart's 49,152 the start also copies wrong digits, which no step label explains).
  Measured: greedy 0.5% right, but 13% of temperature-1 samples are, enough for outcome
  reward alone to find the carries within a few steps.
- ``sparse``: ``hard`` with a teacher that drops 90% of due carries. Measured: greedy 5%
  right (it drops every carry, so only carry-free sums come out right), 8-9% of
  temperature-1 samples (1,024 held-out problems): rarer outcome reward than ``hard``.
  Its learned PRM's worked solutions come from a teacher that drops 30% of due carries:
  with the SFT teacher's 90%, a due carry is wrong so often in the PRM's data that the
  PRM learns the base rate and rejects the right carries RL teaches.
"""

from __future__ import annotations

from dataclasses import dataclass

from quickstart.sft import SFTConfig
from quickstart.task import TaskConfig


@dataclass(frozen=True)
class Setting:
    task: TaskConfig
    sft: SFTConfig
    max_new_tokens: int  # the response budget: a hard response is 4 lines of 4 terms
    rl_steps: int
    target: float  # held-out accuracy for the benchmark's steps-to-target column
    # The carry slip of the teacher that writes the learned PRM's worked solutions
    # (PRMConfig.teacher_carry_slip); None: the task's own.
    prm_teacher_carry_slip: float | None = None
    prm_teacher_sum_slip: float | None = None  # PRMConfig.teacher_sum_slip; None: the task's


SETTINGS: dict[str, Setting] = {
    "easy": Setting(TaskConfig(), SFTConfig(), max_new_tokens=48, rl_steps=30, target=0.9),
    "hard": Setting(TaskConfig(digits=3, operands=3), SFTConfig(examples=98304), max_new_tokens=64,
                    rl_steps=40, target=0.5),
    "sparse": Setting(TaskConfig(digits=3, operands=3, carry_slip=0.9), SFTConfig(examples=98304),
                      max_new_tokens=64, rl_steps=40, target=0.5, prm_teacher_carry_slip=0.3),
}

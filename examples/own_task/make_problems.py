"""Writes problems.jsonl (training) and heldout.jsonl beside this file (or into the folder
given); deterministic, so the shipped files are what it writes.

    python examples/own_task/make_problems.py [OUT_DIR]
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

from rewards import OPERATIONS  # this folder is on sys.path when run as a script


def problem(rng: random.Random) -> dict[str, str]:
    numbers = [rng.randint(1, 9) for _ in range(rng.randint(3, 4))]
    ops = [rng.choice(list(OPERATIONS)) for _ in numbers[1:]]
    value = numbers[0]
    for op, n in zip(ops, numbers[1:], strict=True):
        value = OPERATIONS[op](value, n)
    expression = " ".join([str(numbers[0]), *(f"{op} {n}" for op, n in zip(ops, numbers[1:], strict=True))])
    prompt = f"Compute {expression} from left to right, one operation per line, then write 'Answer: N'.\n"
    return {"prompt": prompt, "reference": str(value)}


def main() -> None:
    rng = random.Random(0)
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent
    for name, count in (("problems.jsonl", 400), ("heldout.jsonl", 100)):
        (out / name).write_text("".join(json.dumps(problem(rng)) + "\n" for _ in range(count)))


if __name__ == "__main__":
    main()

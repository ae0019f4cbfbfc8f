"""``rpp-quickstart`` (or ``python -m quickstart``): REINFORCE++ with a PRM on a CPU, in minutes.

    rpp-quickstart                      # seed 0, dense PRM credit ("sum"), default steps
    rpp-quickstart --credit min --seed 1
    rpp-quickstart --fast               # a shortened run (the end-to-end test uses it)
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from dataclasses import replace
from pathlib import Path

import transformers

from quickstart.run import QuickstartConfig, format_table, run
from quickstart.sft import SFTConfig
from quickstart.task import TaskConfig


def fast_config(cfg: QuickstartConfig) -> QuickstartConfig:
    """A shortened run: the same SFT start (cached), 10 RL steps, 64 held-out problems.

    The SFT is not shortened: an under-trained start copies the wrong digits out of the
    prompt, and RL from there is too slow and noisy to show anything in a few steps."""
    return replace(cfg, steps=10, eval_prompts=64, eval_every=5)


def parse_args(argv: list[str] | None) -> QuickstartConfig:
    d = QuickstartConfig()
    p = argparse.ArgumentParser(prog="rpp-quickstart", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--steps", type=int, default=None, help=f"RL steps (default {d.steps}; --fast: 10)")
    p.add_argument("--credit", choices=["sum", "min", "outcome_centered", "first_error", "none"], default=d.credit,
                   help="dense PRM credit mode (README, 'Credit modes'); none = outcome reward only")
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--output-dir", type=Path, default=d.output_dir)
    p.add_argument("--cache-dir", type=Path, default=d.cache_dir,
                   help="where the SFT checkpoint is cached (env RPP_CACHE_DIR)")
    p.add_argument("--fast", action="store_true", help="shortened run for tests and a first look")
    args = p.parse_args(argv)
    cfg = QuickstartConfig(
        seed=args.seed, credit=args.credit, lr=args.lr, output_dir=args.output_dir,
        cache_dir=args.cache_dir, task=TaskConfig(), sft=SFTConfig(),
    )
    if args.fast:
        cfg = fast_config(cfg)
    if args.steps is not None:
        cfg = replace(cfg, steps=args.steps, eval_every=_largest_divisor(args.steps, cfg.eval_every))
    return cfg


def _largest_divisor(n: int, at_most: int) -> int:
    return max(d for d in range(1, min(n, at_most) + 1) if n % d == 0)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is built locally
    transformers.logging.disable_progress_bar()  # one progress bar (the learner's) is enough
    cfg = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so the reward services are stopped either way.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    try:
        figures = run(cfg)
    except KeyboardInterrupt:
        print("\nrpp-quickstart: interrupted; reward services stopped", file=sys.stderr)
        return 130
    print()
    print(format_table(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())

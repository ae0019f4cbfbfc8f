"""Multi-process on CPU: make ``accelerate launch --num_processes N --cpu -m rpp_learner`` work.

accelerate runs CPU jobs with more than one process only through ``mpirun``; without it,
``--cpu`` starts a single process that does not know N was asked for. This module spots
that case (the simple launcher sets MASTER_ADDR only when N > 1), reads N from the
``accelerate launch`` command line of the parent process with accelerate's own parser,
and starts the N workers with ``torch.distributed.run``; accelerate then sees WORLD_SIZE
and ACCELERATE_USE_CPU and sets up gloo DDP (MULTI_CPU) in every worker.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

_LAUNCH_TOKENS = ("launch", "accelerate.commands.launch", "accelerate/commands/launch.py")


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes")


def _requested_processes() -> int:
    """``--num_processes`` of the parent ``accelerate launch`` command (1 if not found)."""
    try:
        argv = Path(f"/proc/{os.getppid()}/cmdline").read_bytes().decode().split("\0")
    except OSError:
        return 1
    starts = [i for i, a in enumerate(argv) if a.endswith(_LAUNCH_TOKENS)]
    if not starts:
        return 1
    from accelerate.commands.launch import launch_command_parser

    args, _ = launch_command_parser().parse_known_args(argv[starts[0] + 1 :])
    return int(args.num_processes or 1)


def relaunch_cpu_workers(argv: list[str]) -> int | None:
    """Run N CPU workers and return their exit code, or None when this is not needed."""
    if "WORLD_SIZE" in os.environ:
        # Started by torchrun or accelerate's multi-GPU launcher: on a machine without a
        # GPU, accelerate only goes distributed (gloo) when told to use the CPU.
        import torch

        if not torch.cuda.is_available():
            os.environ["ACCELERATE_USE_CPU"] = "true"
        return None
    if not (_truthy("ACCELERATE_USE_CPU") and "MASTER_ADDR" in os.environ):
        return None
    n = _requested_processes()
    if n <= 1:
        return None
    cmd = [
        sys.executable, "-m", "torch.distributed.run",
        "--nproc_per_node", str(n),
        "--master_addr", os.environ["MASTER_ADDR"],
        "--master_port", os.environ.get("MASTER_PORT", "29500"),
        "-m", "rpp_learner", *argv,
    ]
    return subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}).returncode

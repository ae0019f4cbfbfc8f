"""Checkpoints that resume exactly.

Layout of ``<output_dir>/checkpoints/step_000010/``:

    policy/              the policy in Hugging Face format (from_pretrained loads it) + tokenizer
    optimizer.pt         AdamW state, full (unsharded) and keyed by parameter name
    scheduler.pt         learning-rate schedule
    trainer_state.json   step, data position, running reward statistics
    rng_rank{r}.pt       python / torch (/ cuda) RNG states of every process
    rank{r}_state.pt     pipelined mode: the rollout sampled ahead for the next step, per process

A checkpoint is written under a temporary name and renamed when complete, so a crash
while saving never leaves a half checkpoint that ``latest`` would pick.

Model and optimiser state go through torch.distributed.checkpoint's full state dicts: with
FSDP2 they are gathered from the shards, so a checkpoint is the same whether it was saved
by one process, DDP or FSDP2, and any of them can resume from it.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)

from rpp_learner.models import quiet_progress_bars
from rpp_learner.sharding import hf_parameter_name

STATE_FILE = "trainer_state.json"


def checkpoint_root(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    output_dir: str | Path,
    *,
    accelerator: Accelerator,
    policy: torch.nn.Module,
    tokenizer,
    optimizer: torch.optim.Optimizer,
    scheduler,
    state: dict[str, Any],
    keep_last: int = 2,
    rank_state: dict[str, Any] | None = None,
) -> Path:
    """Save everything needed to resume at ``state["step"]``; every process must call this.
    ``rank_state``: this process's own state beyond its RNG (the pipelined mode's rollout)."""
    root = checkpoint_root(output_dir)
    final = root / f"step_{state['step']:06d}"
    tmp = root / f".{final.name}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    torch.save(_rng_state(), tmp / f"rng_rank{accelerator.process_index}.pt")
    if rank_state is not None:
        torch.save(rank_state, tmp / f"rank{accelerator.process_index}_state.pt")
    # Every process takes part (under FSDP2 these gather the shards); the main one gets it all.
    full_on_main = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_state = get_model_state_dict(policy, options=full_on_main)
    optimizer_state = get_optimizer_state_dict(policy, optimizer, options=full_on_main)
    if accelerator.is_main_process:
        model = accelerator.unwrap_model(policy)
        with quiet_progress_bars():  # no "Writing model shards" bar at every checkpoint
            model.save_pretrained(tmp / "policy", state_dict=_without_tied_copies(model, model_state))
        tokenizer.save_pretrained(tmp / "policy")
        torch.save(optimizer_state, tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=2))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        _prune(root, keep_last)
    accelerator.wait_for_everyone()
    return final


def _without_tied_copies(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the second name of each tied parameter (e.g. ``lm_head.weight`` tied to the
    embeddings). Gathered from shards, the two are separate tensors, which transformers
    would save twice since it spots ties by shared storage; from_pretrained re-ties them."""
    every = {hf_parameter_name(n) for n, _ in model.named_parameters(remove_duplicate=False)}
    tied = every - {hf_parameter_name(n) for n, _ in model.named_parameters()}
    return {name: tensor for name, tensor in state.items() if name not in tied}


def _prune(root: Path, keep_last: int) -> None:
    if keep_last <= 0:
        return
    for old in sorted(root.glob("step_*"))[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)


def find_checkpoint(resume: str, output_dir: str | Path) -> Path:
    """``resume`` is a checkpoint directory or "latest" (the newest one in output_dir)."""
    if resume == "latest":
        found = sorted(checkpoint_root(output_dir).glob("step_*"))
        if not found:
            raise FileNotFoundError(f"checkpoint.resume=latest but {checkpoint_root(output_dir)} has no checkpoint")
        return found[-1]
    path = Path(resume)
    if not (path / STATE_FILE).is_file():
        raise FileNotFoundError(f"checkpoint.resume={resume!r} is not a checkpoint directory (no {STATE_FILE})")
    return path


def load_rank_state(path: Path, rank: int) -> dict[str, Any] | None:
    """What ``save_checkpoint(rank_state=...)`` saved for process ``rank``, if anything."""
    file = path / f"rank{rank}_state.pt"
    return torch.load(file, weights_only=False) if file.is_file() else None


def load_checkpoint(path: Path, *, accelerator: Accelerator, policy, optimizer, scheduler) -> dict[str, Any]:
    """Restore optimiser, scheduler and this process's RNG; return the trainer state.

    The policy weights are loaded by the caller with ``from_pretrained(path / "policy")``,
    before ``accelerator.prepare``. Every process reads the full optimiser state; under
    FSDP2 each keeps its own shard of it.
    """
    # mmap: the processes of one machine share the file's pages instead of each holding a copy.
    optimizer_state = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=False, mmap=True)
    set_optimizer_state_dict(policy, optimizer, optimizer_state, options=StateDictOptions(full_state_dict=True))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
    rng_file = path / f"rng_rank{accelerator.process_index}.pt"
    if rng_file.is_file():  # absent when resuming with more processes than saved
        _set_rng_state(torch.load(rng_file, weights_only=False))
    return json.loads((path / STATE_FILE).read_text())

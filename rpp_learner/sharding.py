"""What changes when accelerate shards the policy (FSDP2), and what is refused.

Under ``accelerate launch --use_fsdp --fsdp_version 2`` every process holds a shard of
each parameter (a DTensor). Three places need the full weights and gather them:

- checkpoints (``rpp_learner.checkpoint``): full model and optimiser state dicts, so a
  checkpoint loads with ``from_pretrained`` and resumes with any number of processes;
- rollouts: the rollout engine generates from its own full copy (see ``Trainer``),
  refreshed from ``full_parameters`` after every update, as vLLM's copy is;
- the grad-norm metric, which FSDP2 returns as a DTensor.

The frozen reference model is sharded the same way (``shard_frozen``), so it costs 1/N of
its size per process.

torch.distributed.checkpoint's state-dict functions handle plain, DDP and FSDP2 models
alike, so the code paths are the same with and without sharding.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from torch.distributed.tensor import DTensor

from rpp_learner.config import ConfigError


def refuse_unsupported_sharding(accelerator: Accelerator) -> None:
    """FSDP1 and DeepSpeed would train, but checkpoints and rollouts need full weights in
    ways this learner only implements for FSDP2; refuse them up front with what to use."""
    kind = accelerator.distributed_type
    if kind == DistributedType.DEEPSPEED:
        raise RuntimeError(
            "rpp_learner does not support DeepSpeed: its engine owns the optimiser and checkpoint "
            "state. Shard with FSDP2 instead (`accelerate launch --use_fsdp --fsdp_version 2 ...`) or use DDP."
        )
    if kind == DistributedType.FSDP and not accelerator.is_fsdp2:
        raise RuntimeError(
            "rpp_learner supports FSDP2 only; this run uses FSDP1. Set `fsdp_version: 2` in the "
            "accelerate config or pass `--fsdp_version 2` to accelerate launch."
        )


def refuse_gradient_accumulation(accelerator: Accelerator) -> None:
    """rpp normalises each micro-batch's loss by the mini-batch's token (or sequence) count
    itself (algorithms.loss), so ``accelerator.backward`` dividing it again by
    gradient_accumulation_steps would shrink every gradient by that factor. Mini-batches
    are already accumulated over micro-batches: refuse any other setting."""
    steps = accelerator.gradient_accumulation_steps
    if steps != 1:
        raise ConfigError(
            f"the accelerate config sets gradient_accumulation_steps={steps}; rpp_learner accumulates "
            "micro-batches into each optimiser step itself and normalises the loss over the whole "
            f"mini-batch, so accelerate would divide every gradient by {steps} again. Remove "
            "gradient_accumulation_steps from the accelerate config (or ACCELERATE_GRADIENT_ACCUMULATION_STEPS) "
            "and set optim.mini_batch_size / optim.micro_batch_size instead."
        )


def describe_parallelism(accelerator: Accelerator) -> str:
    """One line for the start of a run: how many processes, and how the policy is held."""
    n = accelerator.num_processes
    if accelerator.distributed_type == DistributedType.FSDP:
        how = "FSDP2: policy, optimiser state and reference sharded"
    elif n > 1:
        how = "DDP: a full copy of the model on each"
    else:
        how = "one process"
    if (
        os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true"
        and accelerator.distributed_type != DistributedType.FSDP
    ):
        # accelerate drops FSDP without a word where it does not support it (CPU processes).
        why = " (it does not on CPU)" if accelerator.device.type == "cpu" else ""
        how += f"; FSDP was requested but accelerate did not enable it{why}"
    return f"{n} process{'es' if n > 1 else ''} on {accelerator.device.type} ({how})"


def is_sharded(model: torch.nn.Module) -> bool:
    return any(isinstance(p, DTensor) for p in model.parameters())


def shard_frozen(model: torch.nn.Module) -> torch.nn.Module:
    """Shard a frozen model over all processes with FSDP2: one unit per decoder layer (the
    model's ``_no_split_modules``) and one for the rest, as accelerate shards the policy.
    Its forwards become collectives, so every process must run the same number of them;
    the trainer's equal per-process shares of the batch guarantee that."""
    from torch.distributed.fsdp import fully_shard

    layer_classes = set(getattr(model, "_no_split_modules", None) or [])
    for module in model.modules():
        if type(module).__name__ in layer_classes:
            fully_shard(module, reshard_after_forward=True)
    # The root too: its default keeps embeddings, final norm and head gathered after the
    # forward, waiting for a backward pass that a frozen model never runs.
    fully_shard(model, reshard_after_forward=True)
    return model


def full_parameters(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, full tensor) for every parameter, on every process, on the model's device.

    Sharded: each parameter is all-gathered as it is reached, so the peak extra memory is
    one full parameter, not a full copy of the model. These are collectives: every process
    must consume the whole iterator, in the same order. Unsharded: the parameters
    themselves, detached, without copies. Names are the Hugging Face names, what
    ``load_weights`` and ``from_pretrained`` expect (see ``hf_parameter_name``).
    """
    inner = model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
    for name, param in inner.named_parameters():
        tensor = param.detach()
        if isinstance(tensor, DTensor):
            # With fsdp_offload_params the shards live on the CPU; gather on the mesh's device.
            tensor = tensor.to(tensor.device_mesh.device_type).full_tensor()
        yield hf_parameter_name(name), tensor


def hf_parameter_name(name: str) -> str:
    """The Hugging Face name of a parameter of a wrapped policy: without the prefixes that
    torch.compile (``_orig_mod.``) and activation checkpointing
    (``._checkpoint_wrapped_module``) add when accelerate applies them."""
    return name.replace("._checkpoint_wrapped_module", "").replace("_orig_mod.", "")


def as_float(value: torch.Tensor | float) -> float:
    """A scalar metric as a float; FSDP2 returns some (e.g. the grad norm) as a DTensor."""
    if isinstance(value, DTensor):
        value = value.full_tensor()
    return float(value)

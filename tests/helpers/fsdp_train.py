"""Run rpp_learner's Trainer under accelerate's FSDP2 on CPU processes (gloo):

    python -m torch.distributed.run --standalone --nproc_per_node 2 -m tests.helpers.fsdp_train CONFIG [STOP_AFTER]

accelerate turns FSDP on for accelerator backends only (CUDA, XPU, ...): with ``--cpu`` it
falls back to DDP (``AcceleratorState``). FSDP2 itself runs on gloo, so this launcher
builds the Accelerator with an FSDP2 plugin and sets the distributed type accelerate sets
on GPUs. Everything after that is accelerate's and torch's real FSDP2 code: ``prepare``
shards the policy with ``fully_shard``, and the gradient clipping, reduce-scatters and
state dicts run on the shards.
"""

from __future__ import annotations

import os
import sys

from accelerate import Accelerator, FullyShardedDataParallelPlugin
from accelerate.utils import DistributedType
from torch.distributed.tensor import DTensor

from rpp_learner.config import load_config
from rpp_learner.sharding import is_sharded
from rpp_learner.trainer import Trainer


def fsdp2_accelerator() -> Accelerator:
    os.environ["ACCELERATE_USE_CPU"] = "true"
    plugin = FullyShardedDataParallelPlugin(
        fsdp_version=2,
        auto_wrap_policy="transformer_based_wrap",
        transformer_cls_names_to_wrap=["Qwen2DecoderLayer"],
        reshard_after_forward=True,
        state_dict_type="FULL_STATE_DICT",
        cpu_ram_efficient_loading=False,
    )
    acc = Accelerator(fsdp_plugin=plugin)
    acc.state.distributed_type = DistributedType.FSDP
    acc.state.fsdp_plugin = plugin
    assert acc.is_fsdp2 and acc.num_processes > 1
    return acc


def main(config_path: str, stop_after: int | None) -> None:
    with Trainer(load_config(config_path, []), accelerator=fsdp2_accelerator()) as trainer:
        assert is_sharded(trainer.acc.unwrap_model(trainer.policy)), "the policy was not sharded"
        assert trainer.engine.owns_weights
        assert is_sharded(trainer.ref_model), "the reference model was not sharded"
        trainer.train(stop_after=stop_after)
        # Still sharded after its forwards: no full copy of any reference weight kept.
        assert all(isinstance(p, DTensor) for p in trainer.ref_model.parameters())


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else None)

"""Which sharded set-ups the learner accepts, and the unsharded side of full_parameters.
The sharded side runs for real in test_learner_fsdp.py (FSDP2 on 2 processes)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.utils import DistributedType
from transformers import AutoModelForCausalLM

from rpp_learner.sharding import (
    as_float,
    describe_parallelism,
    full_parameters,
    hf_parameter_name,
    is_sharded,
    refuse_unsupported_sharding,
)
from tests.helpers.tiny_models import build_tiny_policy

REPO = Path(__file__).resolve().parents[1]


def _launched_with(kind: DistributedType, fsdp2: bool = False) -> SimpleNamespace:
    """The two attributes of an Accelerator the check reads (DeepSpeed is not installed here)."""
    return SimpleNamespace(distributed_type=kind, is_fsdp2=fsdp2)


def test_deepspeed_is_refused_with_what_to_use_instead():
    with pytest.raises(RuntimeError, match=r"DeepSpeed.*--fsdp_version 2"):
        refuse_unsupported_sharding(_launched_with(DistributedType.DEEPSPEED))


def test_fsdp1_is_refused_with_the_setting_that_fixes_it():
    with pytest.raises(RuntimeError, match=r"FSDP2 only.*fsdp_version: 2"):
        refuse_unsupported_sharding(_launched_with(DistributedType.FSDP, fsdp2=False))


@pytest.mark.parametrize("kind", [DistributedType.NO, DistributedType.MULTI_CPU, DistributedType.MULTI_GPU])
def test_unsharded_and_ddp_runs_are_accepted(kind):
    refuse_unsupported_sharding(_launched_with(kind))


def test_fsdp2_is_accepted():
    refuse_unsupported_sharding(_launched_with(DistributedType.FSDP, fsdp2=True))


def test_the_start_of_a_run_says_how_the_model_is_held():
    from accelerate import Accelerator

    acc = Accelerator()  # not cpu=True: the state is shared with the other tests in this process
    assert describe_parallelism(acc) == f"1 process on {acc.device.type} (one process)"


def test_the_start_of_a_run_says_when_accelerate_dropped_fsdp(monkeypatch):
    from accelerate import Accelerator

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # what `accelerate launch --use_fsdp --cpu` sets
    acc = Accelerator()
    if acc.distributed_type == DistributedType.FSDP:
        pytest.skip("FSDP is enabled here")
    line = describe_parallelism(acc)
    assert "(one process; FSDP was requested but accelerate did not enable it" in line


def test_full_parameters_of_an_unsharded_model_are_its_own_tensors(tmp_path):
    model = AutoModelForCausalLM.from_pretrained(build_tiny_policy(tmp_path / "p"))
    assert not is_sharded(model)
    pairs = list(full_parameters(model))
    own = dict(model.named_parameters())
    assert [name for name, _ in pairs] == list(own)  # HF names, tied weights once
    for name, tensor in pairs:
        assert tensor.data_ptr() == own[name].data_ptr() and not tensor.requires_grad
    assert as_float(torch.tensor(2.5)) == 2.5


def test_wrapper_prefixes_are_stripped_from_parameter_names():
    wrapped = "_orig_mod.model.layers.0._checkpoint_wrapped_module.mlp.up_proj.weight"
    assert hf_parameter_name(wrapped) == "model.layers.0.mlp.up_proj.weight"
    assert hf_parameter_name("lm_head.weight") == "lm_head.weight"


def test_the_shipped_fsdp2_accelerate_config_is_valid():
    config = load_config_from_file(str(REPO / "deploy/accelerate/fsdp2.yaml"))
    assert config.distributed_type == DistributedType.FSDP
    assert config.fsdp_config["fsdp_version"] == 2

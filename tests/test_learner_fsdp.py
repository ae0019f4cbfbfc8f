"""FSDP2: 2 CPU processes with a sharded policy train exactly as one process does, and a
sharded run stopped and resumed from its checkpoint continues exactly.

The two processes run accelerate's FSDP2 on gloo (see tests/helpers/fsdp_train.py); the
run has the KL in the reward (reference and old-policy forwards on the shards) and two
epochs (optimiser steps) per rollout with gradient accumulation. One mini-batch per epoch:
with several, each process shuffles its own share, so N processes form different
mini-batches than one process does (as under DDP).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from tests.helpers.learner_rewards import reward_services, run_config
from tests.helpers.saved_rollouts import joined, load_rollouts
from tests.helpers.tiny_models import build_tiny_policy

STEPS = 3


def _run(cfg: dict, config_path, *, fsdp: bool, stop_after: int | None = None) -> None:
    config_path.write_text(yaml.safe_dump(cfg))
    if fsdp:
        cmd = [
            sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            "-m", "tests.helpers.fsdp_train", str(config_path), *([str(stop_after)] if stop_after else []),
        ]
    else:
        cmd = [sys.executable, "-m", "rpp_learner", "--config", str(config_path)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=400)
    assert proc.returncode == 0, proc.stderr[-4000:]


@pytest.mark.slow
def test_fsdp2_run_matches_one_process_and_resumes_exactly(tmp_path):
    policy_dir = build_tiny_policy(tmp_path / "policy")
    with reward_services() as services:
        cfg = run_config(
            tmp_path, policy_dir, services,
            rollout={
                "prompts_per_step": 4, "samples_per_prompt": 2, "max_new_tokens": 8, "generation_batch_prompts": 2,
            },
            optim={"lr": 1e-3, "mini_batch_size": 8, "micro_batch_size": 1},
            algo={"kl_coef": 0.01, "ppo_epochs": 2},
            logging={"progress_bar": False, "tensorboard": False, "plot": False, "save_rollouts": True},
            checkpoint={"every_steps": 1, "keep_last": 0},
            total_steps=STEPS,
        )
        cfg["data"]["eval_size"] = 0
        one_dir, fsdp_dir = tmp_path / "one", tmp_path / "fsdp"
        _run({**cfg, "output_dir": str(one_dir)}, tmp_path / "one.yaml", fsdp=False)
        # Sharded: two steps, stop (checkpoint from the shards), then resume for the third.
        _run({**cfg, "output_dir": str(fsdp_dir)}, tmp_path / "fsdp.yaml", fsdp=True, stop_after=2)
        assert not list((fsdp_dir / "rollouts").glob("step_000003_*"))
        resumed = {**cfg, "output_dir": str(fsdp_dir), "checkpoint": {**cfg["checkpoint"], "resume": "latest"}}
        _run(resumed, tmp_path / "fsdp_resume.yaml", fsdp=True)

    for step in range(1, STEPS + 1):
        a, b = load_rollouts(one_dir, step), load_rollouts(fsdp_dir, step)
        assert len(a) == 1 and len(b) == 2
        # Step 2 samples from the rollout copy refreshed after step 1's update; step 3 from
        # the one loaded at resume.
        assert torch.equal(joined(a, "response_ids"), joined(b, "response_ids")), step
        torch.testing.assert_close(joined(a, "advantages"), joined(b, "advantages"), atol=1e-5, rtol=0)
        assert joined(b, "advantages").abs().sum() > 0

    one_metrics = [json.loads(line) for line in (one_dir / "metrics.jsonl").read_text().splitlines()]
    fsdp_metrics = [json.loads(line) for line in (fsdp_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in fsdp_metrics] == [1, 2, 3]  # the resumed run appended step 3
    for ma, mb in zip(one_metrics, fsdp_metrics, strict=True):
        for key in ("loss", "reward/total", "kl", "clip_frac", "grad_norm"):
            assert ma[key] == pytest.approx(mb[key], abs=1e-5), (ma["step"], key)

    # The checkpoint written from the shards is a full Hugging Face model equal to one
    # process's, with the tied head saved once (as the embeddings).
    with safe_open(fsdp_dir / f"checkpoints/step_{STEPS:06d}/policy/model.safetensors", "pt") as saved:
        assert "lm_head.weight" not in saved.keys() and "model.embed_tokens.weight" in saved.keys()
    wa = AutoModelForCausalLM.from_pretrained(one_dir / f"checkpoints/step_{STEPS:06d}/policy").state_dict()
    wb = AutoModelForCausalLM.from_pretrained(fsdp_dir / f"checkpoints/step_{STEPS:06d}/policy").state_dict()
    start = AutoModelForCausalLM.from_pretrained(policy_dir).state_dict()
    assert any(not torch.equal(start[n], wb[n]) for n in wb)
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], atol=1e-5, rtol=0, msg=name)


@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="accelerate enables FSDP on GPUs only")
def test_fsdp2_through_accelerate_launch_on_gpus(tmp_path):
    """GPU path: the shipped accelerate config, launched as users launch it, trains, saves a
    full checkpoint from the shards and resumes from it."""
    policy_dir = build_tiny_policy(tmp_path / "policy")
    gpus = torch.cuda.device_count()
    with reward_services() as services:
        cfg = run_config(
            tmp_path, policy_dir, services,
            rollout={"prompts_per_step": 2 * gpus, "samples_per_prompt": 2, "max_new_tokens": 8},
            optim={"lr": 1e-3, "mini_batch_size": 4 * gpus, "micro_batch_size": 2},
            logging={"progress_bar": False, "tensorboard": False, "plot": False},
            total_steps=2,
        )
        config_path = tmp_path / "run.yaml"
        config_path.write_text(yaml.safe_dump(cfg))
        cmd = [
            sys.executable, "-m", "accelerate.commands.launch", "--config_file", "deploy/accelerate/fsdp2.yaml",
            "--num_processes", str(gpus), "--mixed_precision", "no",
            "-m", "rpp_learner", "--config", str(config_path),
        ]
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        for extra in ([], ["--resume"]):
            if extra:
                cfg["total_steps"] = 3
                config_path.write_text(yaml.safe_dump(cfg))
            proc = subprocess.run(cmd + extra, capture_output=True, text=True, env=env, timeout=600)
            assert proc.returncode == 0, proc.stderr[-4000:]
            assert f"{gpus} process" in proc.stdout and "(FSDP2: policy" in proc.stdout, proc.stdout[-2000:]
    run_dir = tmp_path / "run"
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps[-3:] == [1, 2, 3]
    trained = AutoModelForCausalLM.from_pretrained(run_dir / "checkpoints/step_000003/policy").state_dict()
    start = AutoModelForCausalLM.from_pretrained(policy_dir).state_dict()
    assert any(not torch.equal(start[n], trained[n]) for n in trained)

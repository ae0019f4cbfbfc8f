"""2 processes under ``accelerate launch --cpu`` compute what 1 process computes on the
same global batch: the same samples, advantages (global whitening), loss and weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM

from tests.helpers.learner_rewards import reward_services, run_config
from tests.helpers.saved_rollouts import joined, load_rollouts
from tests.helpers.tiny_models import build_tiny_policy


def _launch(tmp_path, name: str, cfg: dict, processes: int, step: int = 1) -> dict:
    run_dir = tmp_path / name
    cfg = {**cfg, "output_dir": str(run_dir)}
    config_path = tmp_path / f"{name}.yaml"
    config_path.write_text(yaml.safe_dump(cfg))
    if processes == 1:
        cmd = [sys.executable, "-m", "rpp_learner", "--config", str(config_path)]
    else:
        cmd = [
            # The command users run; rpp_learner.launch starts the CPU workers.
            sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(processes), "--cpu",
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "-m", "rpp_learner", "--config", str(config_path),
        ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"rpp-train: {processes} process" in proc.stdout, proc.stdout[-2000:]
    if processes > 1:
        assert "(DDP: a full copy of the model on each)" in proc.stdout
    rollouts = load_rollouts(run_dir, step)
    assert len(rollouts) == processes
    metrics = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[step - 1])
    return {"rollouts": rollouts, "metrics": metrics, "policy": run_dir / f"checkpoints/step_{step:06d}/policy"}


@pytest.mark.slow
@pytest.mark.parametrize("pipeline_depth", [0, 1], ids=["synchronous", "pipelined"])
def test_two_processes_equal_one(tmp_path, pipeline_depth):
    """Pipelined, step 2 is compared: its samples come from the weights before update 1, and
    each process sampled them ahead on its own."""
    policy_dir = build_tiny_policy(tmp_path / "policy")
    step = 1 + pipeline_depth
    with reward_services() as services:
        cfg = run_config(
            tmp_path, policy_dir, services, total_steps=step,
            rollout={
                "prompts_per_step": 4, "samples_per_prompt": 2, "max_new_tokens": 8, "generation_batch_prompts": 2,
                "pipeline_depth": pipeline_depth,
            },
            optim={"lr": 1e-3, "mini_batch_size": 8, "micro_batch_size": 2},
            logging={"progress_bar": False, "tensorboard": False, "plot": False, "save_rollouts": True},
        )
        cfg["data"]["eval_size"] = 0
        one = _launch(tmp_path, "one", cfg, processes=1, step=step)
        two = _launch(tmp_path, "two", cfg, processes=2, step=step)

    a, b = one["rollouts"], two["rollouts"]
    assert torch.equal(joined(a, "group_index"), joined(b, "group_index"))
    assert torch.equal(joined(a, "response_ids"), joined(b, "response_ids"))  # same samples
    torch.testing.assert_close(joined(a, "dense_rewards"), joined(b, "dense_rewards"), atol=1e-5, rtol=0)
    torch.testing.assert_close(joined(a, "advantages"), joined(b, "advantages"), atol=1e-5, rtol=0)
    assert joined(b, "advantages").abs().sum() > 0
    assert torch.equal(joined(a, "policy_version"), joined(b, "policy_version"))
    assert joined(b, "policy_version").unique().tolist() == [0]  # pipelined step 2 too: the initial weights
    torch.testing.assert_close(joined(a, "old_logp"), joined(b, "old_logp"), atol=1e-5, rtol=0)
    for key in ("loss", "reward/total", "kl", "response_length", "clip_frac", "rollout/policy_lag"):
        assert one["metrics"][key] == pytest.approx(two["metrics"][key], abs=1e-5), key
    wa = AutoModelForCausalLM.from_pretrained(one["policy"]).state_dict()
    wb = AutoModelForCausalLM.from_pretrained(two["policy"]).state_dict()
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], atol=1e-5, rtol=0, msg=name)

"""optim.mixed_precision bf16: accelerate's autocast over fp32 master weights. It trains,
checkpoints fp32 weights and resumes exactly; pi_old and pi_ref are computed alike, so the
KL is 0 before the first update. Each run is its own ``rpp-train`` process: accelerate
keeps one precision per process."""

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

from rpp_learner.forward import batched_logprobs
from tests.helpers.learner_rewards import reward_services, run_config
from tests.helpers.saved_rollouts import load_rollouts
from tests.helpers.tiny_models import build_tiny_policy


def _rpp_train(tmp_path, name: str, cfg: dict, *overrides: str) -> list[dict]:
    """One ``rpp-train`` run in ``tmp_path/name``; returns its metrics without timings."""
    run_dir = tmp_path / name
    config_path = tmp_path / f"{name}.yaml"
    config_path.write_text(yaml.safe_dump({**cfg, "output_dir": str(run_dir)}))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "rpp_learner", "--config", str(config_path), *overrides],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]


@pytest.mark.slow
def test_bf16_trains_keeps_fp32_master_weights_and_resumes_exactly(tmp_path):
    policy_dir = build_tiny_policy(tmp_path / "policy")
    with reward_services() as services:
        cfg = run_config(
            tmp_path, policy_dir, services, total_steps=4,
            algo={"kl_coef": 0.01, "ppo_epochs": 2},
            optim={"lr": 1e-3, "mini_batch_size": 4, "micro_batch_size": 2, "mixed_precision": "bf16"},
            logging={"progress_bar": False, "tensorboard": False, "plot": False, "save_rollouts": True},
        )
        cfg["data"]["eval_size"] = 0
        straight = _rpp_train(tmp_path, "straight", cfg)
        _rpp_train(tmp_path, "split", {**cfg, "total_steps": 4}, "--total_steps", "2")
        resumed = _rpp_train(tmp_path, "split", cfg, "--checkpoint.resume", "latest")

    assert resumed == straight
    assert straight[0]["kl"] == 0.0  # pi_old and pi_ref: same weights, same autocast
    weights = tmp_path / "straight/checkpoints/step_000004/policy/model.safetensors"
    with safe_open(str(weights), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float32}  # fp32 master weights saved
    a = AutoModelForCausalLM.from_pretrained(tmp_path / "straight/checkpoints/step_000004/policy").state_dict()
    b = AutoModelForCausalLM.from_pretrained(tmp_path / "split/checkpoints/step_000004/policy").state_dict()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)
    # The log-probs really were computed in bf16: close to fp32's of the same samples, not equal.
    saved = load_rollouts(tmp_path / "straight", 1)[0]
    model = AutoModelForCausalLM.from_pretrained(policy_dir).eval()
    fp32_logp = batched_logprobs(model, saved["prompt_ids"], saved["prompt_mask"], saved["response_ids"],
                                 saved["response_mask"], micro_batch_size=8, temperature=1.0, device="cpu")
    mask = saved["response_mask"].bool()
    gap = (saved["old_logp"][mask] - fp32_logp[mask]).abs().max().item()
    assert 1e-4 < gap < 0.5, gap

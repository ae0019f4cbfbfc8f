"""Learner step time, measured side by side in one process, steps interleaved
(A B A B ...), medians reported: on a shared, noisy machine only paired figures hold.

    .venv/bin/python -m bench.bench_learner            # both comparisons
    .venv/bin/python -m bench.bench_learner --only trl
    .venv/bin/python -m bench.bench_learner --only latency

1. rpp vs TRL's GRPOTrainer: the same tiny Qwen2, prompts, prompts per step, samples per
   prompt and max new tokens, HF generate on CPU with the same torch threads (one
   process), no reference model (KL off in both: beta=0 / kl_coef=0), one optimiser step
   per rollout, no gradient checkpointing on either side. rpp scores through a real gRPC
   service on loopback; TRL calls the same reward function in-process. The two trainers
   alternate: after each TRL step (timed from the end of the previous rpp step, so it
   includes TRL's batch fetch and logging) one rpp step runs. Target: rpp / TRL <= 0.8.
2. Reward latency hidden behind compute: two rpp trainers, identical but for a reward
   service that answers after 200 ms vs at once, alternate steps. Same seeds, same
   weights and the same rewards, so they do exactly the same work; the only difference
   is the latency, which must hide behind the reference and old-policy forwards (the
   calls are submitted before those forwards and collected after). The model is sized
   so those forwards take longer than 200 ms; the bench prints their time and warns if
   they do not. Target: <= 1.05.

The first step of every run is warm-up and is left out of the medians.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
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


def rpp_trainer(work: Path, policy: Path, address: str, name: str, *, steps: int, prompts: int, n: int,
                max_new_tokens: int, kl_coef: float) -> Trainer:
    data = work / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    cfg = config_from_dict({
        "model": {"path": str(policy)},
        "data": {"train_path": str(data)},
        "rollout": {"prompts_per_step": prompts, "samples_per_prompt": n, "max_new_tokens": max_new_tokens,
                    "generation_batch_prompts": prompts},
        "rewards": {"services": [{"name": "judge", "kind": "outcome", "targets": [address]}]},
        "algo": {"kl_coef": kl_coef},
        "optim": {"lr": 1e-4, "mini_batch_size": prompts * n, "micro_batch_size": prompts * n},
        "logging": {"progress_bar": False, "tensorboard": False, "plot": False, "jsonl": False},
        "checkpoint": {"keep_last": 1},
        "output_dir": str(work / f"rpp-{name}"),
        "total_steps": steps,
    })
    return Trainer(cfg)


def timed_step(trainer: Trainer) -> dict[str, float]:
    t0 = time.perf_counter()
    metrics = trainer.train_step(trainer.step + 1)
    trainer.step += 1
    return {**metrics, "wall_s": time.perf_counter() - t0}


@contextlib.contextmanager
def reward_service(fn: str):
    server = start_in_thread(
        UserFunctionScorer(f"bench.bench_learner:{fn}", "outcome"), ServerConfig(metrics_port=None)
    )
    try:
        yield server
    finally:
        server.stop(grace_s=0.5)


def interleaved_with_trl(work: Path, policy: Path, *, steps: int, prompts: int, n: int,
                         max_new_tokens: int) -> tuple[list[float], list[float]]:
    """TRL step, rpp step, TRL step, ... in one process; returns (rpp times, TRL times)."""
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    shape = {"prompts": prompts, "n": n, "max_new_tokens": max_new_tokens}
    with reward_service("digit_share") as server:
        ours = rpp_trainer(work, policy, server.address, "trl", steps=steps, kl_coef=0.0, **shape)
        rpp_times: list[float] = []

        class Interleave(TrainerCallback):
            def __init__(self):
                self.times: list[float] = []

            def on_train_begin(self, args, state, control, **kw):
                self._mark = time.perf_counter()

            def on_step_end(self, args, state, control, **kw):
                self.times.append(time.perf_counter() - self._mark)  # one full TRL step
                rpp_times.append(timed_step(ours)["wall_s"])  # then one rpp step
                self._mark = time.perf_counter()

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
        timer = Interleave()
        trainer = GRPOTrainer(
            model=str(policy),
            reward_funcs=trl_digit_share,
            args=args,
            train_dataset=Dataset.from_list([{"prompt": p} for p in PROMPTS]),
            callbacks=[timer],
        )
        trainer.train()
        ours.close()
    return rpp_times, timer.times


def _median_after_warmup(times: list[float]) -> float:
    return statistics.median(times[1:])


def _paired_ratio(num: list[float], den: list[float]) -> float:
    """Median of step-by-step ratios of neighbouring steps: both saw the same machine load."""
    return statistics.median(a / b for a, b in zip(num[1:], den[1:], strict=True))


def compare_with_trl(work: Path) -> None:
    policy = build_tiny_policy(work / "policy-small", hidden_size=64, num_layers=2)
    shape = {"steps": 9, "prompts": 8, "n": 4, "max_new_tokens": 32}
    rpp_times, trl_times = interleaved_with_trl(work, policy, **shape)
    ours, trl = _median_after_warmup(rpp_times), _median_after_warmup(trl_times)
    print(f"[trl] tiny Qwen2 (hidden 64, 2 layers), {shape['prompts']} prompts x {shape['n']} samples, "
          f"{shape['max_new_tokens']} new tokens, CPU, {torch.get_num_threads()} threads, "
          f"{shape['steps'] - 1} interleaved steps each (after 1 warm-up)")
    print(f"[trl] rpp step {ours:.3f} s | TRL GRPOTrainer step {trl:.3f} s | ratio rpp/TRL = {ours / trl:.2f} "
          f"(medians; target <= 0.8) | median of paired ratios {_paired_ratio(rpp_times, trl_times):.2f}")


def compare_latency(work: Path) -> None:
    # Sized so the reference + old-policy forwards (what the reward calls hide behind)
    # take well over 200 ms on a 2-core CPU.
    policy = build_tiny_policy(work / "policy-medium", hidden_size=256, num_layers=4)
    shape = {"steps": 7, "prompts": 8, "n": 4, "max_new_tokens": 48, "kl_coef": 0.01}
    with reward_service("digit_share") as fast_srv, reward_service("digit_share_after_200ms") as slow_srv:
        fast = rpp_trainer(work, policy, fast_srv.address, "fast", **shape)
        slow = rpp_trainer(work, policy, slow_srv.address, "slow", **shape)
        runs: dict[str, list[dict[str, float]]] = {"fast": [], "slow": []}
        for _ in range(shape["steps"]):  # A B A B ...
            runs["fast"].append(timed_step(fast))
            runs["slow"].append(timed_step(slow))
        fast.close()
        slow.close()

    def med(run: str, key: str) -> float:
        return _median_after_warmup([m[key] for m in runs[run]])

    t_fast, t_slow = med("fast", "wall_s"), med("slow", "wall_s")
    forwards = med("fast", "time/logprob_s")
    print(f"[latency] Qwen2 hidden 256, 4 layers, {shape['prompts'] * shape['n']} samples, "
          f"{shape['max_new_tokens']} new tokens, reference model on (kl_coef {shape['kl_coef']}), "
          f"{shape['steps'] - 1} interleaved steps each (after 1 warm-up)")
    print(f"[latency] ref + old-policy forwards (what the reward calls overlap): {forwards:.3f} s median; "
          f"reward wait after them: {med('fast', 'time/reward_wait_s') * 1e3:.0f} ms (0 ms service), "
          f"{med('slow', 'time/reward_wait_s') * 1e3:.0f} ms (200 ms service)")
    if forwards < 0.25:
        print("[latency] WARNING: the forwards are shorter than the 200 ms latency on this machine: "
              "the overlap cannot hide it all; use a bigger model or batch")
    print(f"[latency] reward 0 ms: step {t_fast:.3f} s | reward +200 ms: step {t_slow:.3f} s | "
          f"ratio = {t_slow / t_fast:.3f} (medians; target <= 1.05) | median of paired ratios "
          f"{_paired_ratio([m['wall_s'] for m in runs['slow']], [m['wall_s'] for m in runs['fast']]):.3f}")


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

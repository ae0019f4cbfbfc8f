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
2. Reward latency, the case of a slow reward farm. The step's own compute C is measured
   first (a synchronous step against a service that answers at once, on this machine), then
   trainers identical but for the mode (synchronous / pipelined, rollout.pipeline_depth 0 /
   1) and a service that answers each call after 0, 0.5, 1 and 3 x C take turns (A B C
   ...) of 4 consecutive steps, the first of each turn untimed (the pause before it
   would hide a pipelined trainer's latency). Each step's rollout goes out in 4 generation
   chunks, each submitted when decoded.
   Printed per trainer: median step time, its ratio to the synchronous 0-latency step, and
   the reward wait left exposed. Target: pipelined at 1 x C <= 1.1.

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

from reward_server.scorers.base import Scorer
from reward_server.scorers.user_function import UserFunctionScorer
from reward_server.server import ServerConfig, start_in_thread
from reward_server.types import Result, RewardKind, Sample
from rpp_learner.config import config_from_dict
from rpp_learner.trainer import Trainer
from tests.helpers.tiny_models import build_tiny_policy

PROMPTS = [f"Question {i}: what is {i} + {i + 1}?" for i in range(64)]


def digit_share(sample: Sample) -> float:
    text = sample.response
    return sum(c.isdigit() for c in text) / len(text) if text else 0.0


class DelayedDigitShare(Scorer):
    """digit_share, answered ``latency_s`` after each call arrives: a remote reward model."""

    kind = RewardKind.OUTCOME
    model_name = "digit-share-delayed"
    blocking = False
    max_concurrent_batches = 16  # a farm with replicas to spare: no call waits for another

    def __init__(self, latency_s: float = 0.0) -> None:
        self.latency_s = latency_s

    async def score(self, samples: list[Sample]) -> list[Result]:
        await asyncio.sleep(self.latency_s)
        return [Result(id=s.id, outcome=digit_share(s)) for s in samples]


def trl_digit_share(completions: list[str], **_) -> list[float]:
    return [digit_share(Sample(id="", prompt="", response=c)) for c in completions]


def rpp_trainer(work: Path, policy: Path, address: str, name: str, *, steps: int, prompts: int, n: int,
                max_new_tokens: int, kl_coef: float, chunks: int = 1, pipeline_depth: int = 0) -> Trainer:
    data = work / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    cfg = config_from_dict({
        "model": {"path": str(policy)},
        "data": {"train_path": str(data)},
        "rollout": {"prompts_per_step": prompts, "samples_per_prompt": n, "max_new_tokens": max_new_tokens,
                    "generation_batch_prompts": prompts // chunks, "pipeline_depth": pipeline_depth},
        "rewards": {"services": [{"name": "judge", "kind": "outcome", "targets": [address]}]},
        "algo": {"kl_coef": kl_coef},
        "optim": {"lr": 1e-4, "mini_batch_size": prompts * n, "micro_batch_size": prompts * n},
        "logging": {"progress_bar": False, "tensorboard": False, "plot": False, "jsonl": False},
        "checkpoint": {"keep_last": 1},
        "output_dir": str(work / f"rpp-{name}"),
        "total_steps": steps + 1,  # the pipelined mode samples ahead only before the last step
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


@contextlib.contextmanager
def delayed_services(latencies: list[float]):
    servers = [start_in_thread(DelayedDigitShare(latency), ServerConfig(metrics_port=None)) for latency in latencies]
    try:
        yield servers
    finally:
        for server in servers:
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


LATENCY_MULTIPLES = (0.0, 0.5, 1.0, 3.0)


def compare_latency(work: Path, rounds: int = 2, block: int = 4) -> None:
    policy = build_tiny_policy(work / "policy-medium", hidden_size=256, num_layers=4)
    steps = rounds * block
    shape = {"steps": steps, "prompts": 8, "n": 4, "max_new_tokens": 48, "kl_coef": 0.01, "chunks": 4}
    with delayed_services([0.0]) as (instant,):
        probe = rpp_trainer(work, policy, instant.address, "calibrate", **shape)
        compute = statistics.median(timed_step(probe)["wall_s"] for _ in range(3))
        probe.close()
    latencies = [m * compute for m in LATENCY_MULTIPLES]
    runs: dict[tuple[str, float], list[dict[str, float]]] = {}
    with delayed_services(latencies) as servers:
        trainers = {
            (mode, m): rpp_trainer(work, policy, server.address, f"{mode}-{m}", pipeline_depth=depth, **shape)
            for m, server in zip(LATENCY_MULTIPLES, servers, strict=True)
            for mode, depth in (("synchronous", 0), ("pipelined", 1))
        }
        for key in trainers:
            runs[key] = []
        # Trainers take turns in blocks of consecutive steps, so that they share the
        # machine's load; the first step of a block is not timed: the pause before it (the
        # other trainers' turns) would give a pipelined trainer's reward calls free time.
        for _ in range(rounds):
            for key, trainer in trainers.items():
                for i in range(block):
                    metrics = timed_step(trainer)
                    if i:
                        runs[key].append(metrics)
        for trainer in trainers.values():
            trainer.close()

    def med(key, metric: str) -> float:
        return statistics.median(m[metric] for m in runs[key])

    base = med(("synchronous", 0.0), "wall_s")
    print(f"[latency] Qwen2 hidden 256, 4 layers, {shape['prompts'] * shape['n']} samples in {shape['chunks']} "
          f"generation chunks, {shape['max_new_tokens']} new tokens, reference model on (kl_coef {shape['kl_coef']}), "
          f"{rounds} turns of {block} consecutive steps per trainer, the last {block - 1} of each timed")
    print(f"[latency] step compute C = {compute:.3f} s (synchronous step, instant service); each reward call "
          "answered after the latency below")
    header = f"{'mode':<12} {'latency':>14} {'step s':>8} {'/ sync@0':>9} {'exposed wait':>13} {'policy lag':>11}"
    print(f"[latency] {header}")
    for mode, m in runs:
        ratio = med((mode, m), "wall_s") / base
        print(f"[latency] {mode:<12} {m:>4.1f} x C {m * compute * 1e3:>5.0f} ms {med((mode, m), 'wall_s'):>8.3f} "
              f"{ratio:>9.2f} {med((mode, m), 'time/reward_wait_s') * 1e3:>10.0f} ms "
              f"{med((mode, m), 'rollout/policy_lag'):>11.0f}")
    at_1 = med(("pipelined", 1.0), "wall_s") / base
    print(f"[latency] pipelined at 1 x C: {at_1:.2f} x the synchronous 0-latency step "
          f"(target <= 1.1: {'met' if at_1 <= 1.1 else 'NOT met'})")


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

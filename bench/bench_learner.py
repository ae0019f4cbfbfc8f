"""Learner step time, measured side by side in one process, steps interleaved
(A B A B ...), medians reported: on a shared, noisy machine only paired figures hold.

    .venv/bin/python -m bench.bench_learner            # both comparisons
    .venv/bin/python -m bench.bench_learner --only trl
    .venv/bin/python -m bench.bench_learner --only latency
    .venv/bin/python -m bench.bench_learner --only shared

1. rpp vs TRL's GRPOTrainer, like for like, over a sweep (model size 0.1M / 9M / 37M
   parameters, prompts per step, new tokens), in fp32 on both sides and in bf16 autocast
   on both sides (TRL's ``bf16``, rpp's ``optim.mixed_precision``; TRL's GRPOConfig turns
   bf16 on by default, which an earlier version of this bench left on). Shared: the tiny
   Qwen2, prompts, prompts per step, samples per prompt, max new tokens, temperature 1,
   HF generate on CPU with the same torch threads (both sides in one process per point:
   accelerate keeps one precision per process), no reference model (beta=0 / kl_coef=0),
   one optimiser step per rollout, no gradient checkpointing, the same reward (rpp through
   a real gRPC service on loopback, TRL in-process), and every response exactly max new
   tokens long (EOS held back: rpp's ``rollout.min_new_tokens``, TRL's ``min_new_tokens``
   generation kwarg), so neither side decodes or trains on fewer tokens by chance.
   Generated lengths are printed for both sides. The trainers alternate steps (a TRL step
   is timed from the end of the previous rpp step, so it includes TRL's batch fetch and
   logging). Printed per point: both medians,
   the ratio, rpp's time split and the process's peak RSS. Target: rpp / TRL <= 0.8.
2. Reward latency, the case of a slow reward farm. The step's own compute C is measured
   first (a synchronous step against a service that answers at once, on this machine), then
   trainers identical but for the mode (synchronous / pipelined, rollout.pipeline_depth 0 /
   1) and a service that answers each call after 0, 0.5, 1 and 3 x C take turns (A B C
   ...) of 4 consecutive steps, the first of each turn untimed (the pause before it
   would hide a pipelined trainer's latency). Each step's rollout goes out in 4 generation
   chunks, each submitted when decoded.
   Printed per trainer: median step time, its ratio to the synchronous 0-latency step, and
   the reward wait left exposed. Target: pipelined at 1 x C <= 1.1.

3. The shared-prompt forward (``optim.shared_prompt_forward``) on and off, two trainers
   identical but for it, steps interleaved, at the 9.4M point with the reference model on:
   the old-policy + reference forwards, the update and the whole step, with their ratios.
   Then the HF engine's shared prompt prefill (rollout/hf.py) on and off, generations
   interleaved, at the same point.

The first step of every run is warm-up and is left out of the medians.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM

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
                max_new_tokens: int, kl_coef: float, chunks: int = 1, pipeline_depth: int = 0,
                precision: str = "auto", shared_prompt: bool = True, min_new_tokens: int = 0) -> Trainer:
    data = work / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    cfg = config_from_dict({
        "model": {"path": str(policy)},
        "data": {"train_path": str(data)},
        "rollout": {"prompts_per_step": prompts, "samples_per_prompt": n, "max_new_tokens": max_new_tokens,
                    "min_new_tokens": min_new_tokens,
                    "generation_batch_prompts": prompts // chunks, "pipeline_depth": pipeline_depth},
        "rewards": {"services": [{"name": "judge", "kind": "outcome", "targets": [address]}]},
        "algo": {"kl_coef": kl_coef},
        "optim": {"lr": 1e-4, "mini_batch_size": prompts * n, "micro_batch_size": prompts * n,
                  "mixed_precision": precision, "shared_prompt_forward": shared_prompt},
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
                         max_new_tokens: int, bf16: bool) -> dict[str, Any]:
    """TRL step, rpp step, TRL step, ... in this process; per-step times and lengths of both."""
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    shape = {"prompts": prompts, "n": n, "max_new_tokens": max_new_tokens}
    precision = "bf16" if bf16 else "no"
    with reward_service("digit_share") as server:
        ours = rpp_trainer(work, policy, server.address, "trl", steps=steps, kl_coef=0.0, precision=precision,
                           min_new_tokens=max_new_tokens, **shape)
        rpp_steps: list[dict[str, float]] = []

        class Interleave(TrainerCallback):
            def __init__(self):
                self.times: list[float] = []
                self.lengths: list[float] = []

            def on_train_begin(self, args, state, control, **kw):
                self._mark = time.perf_counter()

            def on_log(self, args, state, control, logs=None, **kw):
                if logs and "completions/mean_length" in logs:
                    self.lengths.append(logs["completions/mean_length"])

            def on_step_end(self, args, state, control, **kw):
                self.times.append(time.perf_counter() - self._mark)  # one full TRL step
                rpp_steps.append(timed_step(ours))  # then one rpp step
                self._mark = time.perf_counter()

        args = GRPOConfig(
            output_dir=str(work / "trl"),
            per_device_train_batch_size=prompts * n,
            num_generations=n,
            steps_per_generation=1,
            max_completion_length=max_new_tokens,
            generation_kwargs={"min_new_tokens": max_new_tokens},  # equal lengths on both sides
            temperature=1.0,
            beta=0.0,
            bf16=bf16,  # GRPOConfig's default is True: set explicitly, as rpp's precision is
            gradient_checkpointing=False,  # TRL turns it on by default; rpp does not: compare like for like
            learning_rate=1e-4,
            max_steps=steps,
            use_cpu=True,
            report_to=[],
            logging_steps=1,  # for the generated lengths; the logging is in TRL's step time
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
    return {"rpp": rpp_steps, "trl": timer.times, "trl_lengths": timer.lengths}


def _median_after_warmup(times: list[float]) -> float:
    return statistics.median(times[1:])


def _paired_ratio(num: list[float], den: list[float]) -> float:
    """Median of step-by-step ratios of neighbouring steps: both saw the same machine load."""
    return statistics.median(a / b for a, b in zip(num[1:], den[1:], strict=True))


# (name, hidden size, layers, prompts per step, new tokens, steps per side); samples per
# prompt 4. Short steps get more of them: a median of 6 steps of 0.1 s moved by 2x between
# runs on this shared machine.
TRL_SWEEP = [
    ("0.1M", 64, 2, 8, 32, 41),
    ("9M", 320, 10, 8, 32, 9),
    ("37M", 640, 10, 8, 32, 7),
    ("0.1M, 64 prompts", 64, 2, 64, 32, 17),
    ("0.1M, 256 tokens", 64, 2, 8, 256, 17),
]


def trl_point(work: Path, name: str, precision: str) -> dict[str, Any]:
    """One sweep point in this process (``--trl-point``): figures as a dict."""
    _, hidden, layers, prompts, tokens, steps = next(p for p in TRL_SWEEP if p[0] == name)
    policy = build_tiny_policy(work / "policy", hidden_size=hidden, num_layers=layers)
    params = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(policy).parameters())
    run = interleaved_with_trl(work, policy, steps=steps, prompts=prompts, n=4, max_new_tokens=tokens,
                               bf16=precision == "bf16")
    rpp_times = [m["wall_s"] for m in run["rpp"]]

    def split(key: str) -> float:
        return _median_after_warmup([m[key] for m in run["rpp"]])

    return {
        "point": name, "precision": precision, "params": params, "threads": torch.get_num_threads(),
        "rpp_s": _median_after_warmup(rpp_times), "trl_s": _median_after_warmup(run["trl"]),
        "paired_ratio": _paired_ratio(rpp_times, run["trl"]),
        "rpp_split": {k: split(f"time/{k}_s") for k in ("rollout", "logprob", "reward_wait", "update")},
        "rpp_length": split("response_length"),
        "trl_length": statistics.median(run["trl_lengths"][1:]) if len(run["trl_lengths"]) > 1 else float("nan"),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def compare_with_trl(work: Path, points: list[str], precisions: list[str]) -> None:
    """Every point in its own process (accelerate keeps one precision per process)."""
    print(f"[trl] rpp vs TRL GRPOTrainer, CPU, 4 samples per prompt, both sides in one process per point, "
          f"{torch.get_num_threads()} torch threads; medians of 6-40 interleaved steps per side after 1 warm-up")
    print(f"[trl] {'point':<18} {'params':>7} {'prec':>5} {'rpp s':>7} {'TRL s':>7} {'ratio':>6} {'paired':>7} "
          f"{'len rpp/TRL':>12} {'rpp: gen / fwd / wait / update':>31} {'peak RSS':>9}")
    for name in points:
        for precision in precisions:
            if precision == "bf16" and name not in ("0.1M", "9M", "37M"):
                continue  # the batch and length points: fp32 only
            out = work / f"point-{_slug(name)}-{precision}.json"
            proc = subprocess.run([sys.executable, "-m", "bench.bench_learner", "--trl-point", name, precision,
                                   "--out", str(out)], capture_output=True, text=True)  # TRL logs every step
            if proc.returncode != 0:
                raise RuntimeError(f"the sweep point {name} ({precision}) failed:\n{proc.stderr[-3000:]}")
            r = json.loads(out.read_text())
            split = " / ".join(f"{r['rpp_split'][k]:.2f}" for k in ("rollout", "logprob", "reward_wait", "update"))
            ratio = r["rpp_s"] / r["trl_s"]
            print(f"[trl] {name:<18} {r['params'] / 1e6:>6.1f}M {precision:>5} {r['rpp_s']:>7.3f} {r['trl_s']:>7.3f} "
                  f"{ratio:>6.2f} {r['paired_ratio']:>7.2f} {r['rpp_length']:>5.1f}/{r['trl_length']:<6.1f} "
                  f"{split:>31} {r['peak_rss_mib']:>6.0f} MiB", flush=True)
    print("[trl] target: rpp / TRL <= 0.8 at every point, like for like (fp32 vs fp32, bf16 vs bf16)")


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text)


def compare_shared_prompt(work: Path, steps: int = 7) -> None:
    """The shared-prompt forward on and off, steps interleaved, at the 9M sweep point with the
    reference model on (kl_coef 0.01: old-policy, reference and update forwards all run)."""
    policy = build_tiny_policy(work / "policy-shared", hidden_size=320, num_layers=10)
    shape = {"steps": steps, "prompts": 8, "n": 4, "max_new_tokens": 32, "kl_coef": 0.01}
    with reward_service("digit_share") as server:
        trainers = {on: rpp_trainer(work, policy, server.address, f"shared-{on}", shared_prompt=on, **shape)
                    for on in (True, False)}
        runs: dict[bool, list[dict[str, float]]] = {True: [], False: []}
        for _ in range(steps):
            for on, trainer in trainers.items():
                runs[on].append(timed_step(trainer))
        for trainer in trainers.values():
            trainer.close()

    def med(on: bool, key: str) -> float:
        return _median_after_warmup([m[key] for m in runs[on]])

    print(f"[shared] Qwen2 9.4M, {shape['prompts']} prompts x {shape['n']} samples x {shape['max_new_tokens']} tokens, "
          f"one micro-batch, reference model on; medians of {steps - 1} interleaved steps after 1 warm-up")
    for key, label in (("time/logprob_s", "old + reference forwards"), ("time/update_s", "update"),
                       ("wall_s", "whole step")):
        print(f"[shared] {label:<25} shared {med(True, key):7.3f} s   plain {med(False, key):7.3f} s   "
              f"ratio {med(True, key) / med(False, key):.2f}")


def compare_shared_prefill(work: Path, rounds: int = 12) -> None:
    """The HF engine with each prompt's prefill run once for its n samples, and with n
    copies of the prompt prefilled (as ``num_return_sequences`` does), interleaved."""
    from transformers import AutoTokenizer

    from rpp_learner.rollout import SamplingParams, eos_token_ids
    from rpp_learner.rollout.hf import HFRolloutEngine

    path = build_tiny_policy(work / "policy-prefill", hidden_size=320, num_layers=10)
    model, tok = AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    prompts = [tok(p)["input_ids"] for p in PROMPTS[:8]]
    params = SamplingParams(n=4, max_new_tokens=32)
    engines = {on: HFRolloutEngine(model, eos_token_ids(tok, model), tok.pad_token_id, batch_prompts=8,
                                   share_prompt_prefill=on) for on in (True, False)}
    times: dict[bool, list[float]] = {True: [], False: []}
    for i in range(rounds):
        for on, engine in engines.items():
            t0 = time.perf_counter()
            engine.generate(prompts, params, seed=i)
            times[on].append(time.perf_counter() - t0)
    shared, plain = _median_after_warmup(times[True]), _median_after_warmup(times[False])
    print(f"[shared] generation, 8 prompts x 4 samples x 32 tokens: prefill shared {shared:7.3f} s   "
          f"per sample {plain:7.3f} s   ratio {shared / plain:.2f} (medians of {rounds - 1}, interleaved)")


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
    parser.add_argument("--only", choices=["trl", "latency", "shared"])
    parser.add_argument("--points", nargs="+", choices=[p[0] for p in TRL_SWEEP], default=[p[0] for p in TRL_SWEEP],
                        help="TRL sweep points to run (default: all)")
    parser.add_argument("--precisions", nargs="+", choices=["fp32", "bf16"], default=["fp32", "bf16"])
    parser.add_argument("--trl-point", nargs=2, metavar=("POINT", "PRECISION"), help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.trl_point:
            args.out.write_text(json.dumps(trl_point(Path(tmp), *args.trl_point)))
            return
        if args.only in (None, "trl"):
            compare_with_trl(Path(tmp), args.points, args.precisions)
        if args.only in (None, "latency"):
            compare_latency(Path(tmp))
        if args.only in (None, "shared"):
            compare_shared_prompt(Path(tmp))
            compare_shared_prefill(Path(tmp))


if __name__ == "__main__":
    main()

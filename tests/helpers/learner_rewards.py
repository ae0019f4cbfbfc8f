"""Reward functions and run builders shared by the learner tests.

The reward functions are served by real gRPC servers through
``reward_server.scorers.user_function.UserFunctionScorer`` ("tests.helpers.learner_rewards:NAME").
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

from reward_server.scorers.user_function import UserFunctionScorer
from reward_server.server import ServerConfig, ServerHandle, start_in_thread
from reward_server.types import Sample
from rpp_learner.config import Config, config_from_dict

PROMPTS = [f"Question {i}: what is {i} + {i + 1}?" for i in range(24)]
STEP_SEPARATOR = " "  # random tiny-model text has many spaces: many steps per response


def digit_share(sample: Sample) -> float:
    """Outcome: the share of response characters that are digits (easy to raise)."""
    text = sample.response
    return sum(c.isdigit() for c in text) / len(text) if text else 0.0


def step_length_score(sample: Sample, steps: list[str]) -> list[float]:
    """Process: a step scores its length in bytes / 10 (checkable from the text alone)."""
    return [len(s.encode("utf-8")) / 10.0 for s in steps]


def fail_on_odd_reference(sample: Sample) -> float:
    """Outcome that raises (-> a per-sample error) for prompts with an odd reference."""
    if int(sample.reference) % 2:
        raise ValueError("odd references are not scored")
    return digit_share(sample)


def fail_every_fourth_sample(sample: Sample) -> float:
    """Outcome that raises for the last sample of every 4 (ids end in "-<index>"): with 4
    samples per prompt, one member of each group fails and the other three are scored."""
    if int(sample.id.rsplit("-", 1)[1]) % 4 == 3:
        raise ValueError("every fourth sample is not scored")
    return digit_share(sample)


ARRIVALS: dict[str, float] = {}  # sample id -> time.monotonic() when an in-thread server got it


def digit_share_recording_arrival(sample: Sample) -> float:
    """Outcome that notes when each sample reached the (in-thread) server."""
    ARRIVALS.setdefault(sample.id, time.monotonic())
    return digit_share(sample)


async def digit_share_marked_slow(sample: Sample) -> float:
    """Outcome for replica processes that tests kill mid-request: leaves a marker file
    ``<pid>-<sample id>`` in $RPP_TEST_MARK_DIR when the sample arrives, then takes 0.3 s."""
    mark_dir = Path(os.environ["RPP_TEST_MARK_DIR"])
    # User functions run in worker processes of the replica (isolation=process): its pid is
    # the worker's parent.
    (mark_dir / f"{os.getppid()}-{sample.id}").touch()
    await asyncio.sleep(0.3)
    return digit_share(sample)


def outcome_scorer(name: str = "digit_share", isolation: str = "process") -> UserFunctionScorer:
    # isolation="thread" for functions that record into this module's state (ARRIVALS).
    return UserFunctionScorer(f"tests.helpers.learner_rewards:{name}", "outcome", isolation=isolation)


def process_scorer() -> UserFunctionScorer:
    return UserFunctionScorer(
        "tests.helpers.learner_rewards:step_length_score", "process", step_separator=STEP_SEPARATOR
    )


@contextlib.contextmanager
def reward_services(
    outcome: str = "digit_share", process: bool = True, outcome_replicas: int = 1, isolation: str = "process"
) -> Iterator[dict[str, ServerHandle]]:
    """An outcome service (and a process service) on loopback ports, stopped afterwards."""
    handles = {"outcome": start_in_thread(outcome_scorer(outcome, isolation), ServerConfig(metrics_port=None))}
    for k in range(1, outcome_replicas):
        handles[f"outcome{k}"] = start_in_thread(outcome_scorer(outcome, isolation), ServerConfig(metrics_port=None))
    if process:
        handles["process"] = start_in_thread(process_scorer(), ServerConfig(metrics_port=None))
    try:
        yield handles
    finally:
        for h in handles.values():
            h.stop(grace_s=0.5)  # a no-op for a handle a test stopped already


def write_prompts(path: Path, prompts: list[str] = PROMPTS) -> Path:
    path.write_text("".join(json.dumps({"prompt": p, "reference": str(i)}) + "\n" for i, p in enumerate(prompts)))
    return path


def run_config(tmp_path: Path, policy_dir: Path, handles: dict[str, ServerHandle], **sections) -> dict:
    """A small, fast run as a plain dict; ``sections`` update the named sections."""
    outcome_targets = [h.address for name, h in handles.items() if name.startswith("outcome")]
    services = [{"name": "outcome", "kind": "outcome", "targets": outcome_targets, "timeout_s": 10.0}]
    if "process" in handles:
        services.append(
            {
                "name": "prm",
                "kind": "process",
                "targets": [handles["process"].address],
                "weight": 0.5,
                "timeout_s": 10.0,
            }
        )
    cfg = {
        "model": {"path": str(policy_dir)},
        "data": {"train_path": str(write_prompts(tmp_path / "prompts.jsonl")), "eval_size": 4},
        "rollout": {"prompts_per_step": 4, "samples_per_prompt": 2, "max_new_tokens": 8, "generation_batch_prompts": 2},
        "rewards": {"services": services, "connect_timeout_s": 5.0},
        "algo": {"kl_coef": 0.01},
        "optim": {"lr": 1e-3, "mini_batch_size": 4, "micro_batch_size": 2},
        "logging": {"progress_bar": False, "tensorboard": True, "plot": True},
        "output_dir": str(tmp_path / "run"),
        "total_steps": 1,
    }
    for section, values in sections.items():
        if isinstance(values, dict):
            cfg.setdefault(section, {}).update(values)
        else:
            cfg[section] = values
    return cfg


def build(cfg: dict) -> Config:
    return config_from_dict(cfg)

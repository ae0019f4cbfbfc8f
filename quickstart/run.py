"""The quickstart, top to bottom: SFT start -> two gRPC reward services -> REINFORCE++ -> table.

1. Supervised fine-tuning of a tiny Qwen2 on a sloppy teacher's worked additions (cached).
2. Two ``rpp-reward-server`` processes on free loopback ports: the outcome service checks
   the final answer with math-verify, the process service checks every step exactly.
3. REINFORCE++ with dense PRM credit (each step's score at the token where the step ends),
   evaluated greedily on held-out problems before training and every ``eval_every`` steps.
4. A table (accuracy, mean reward, KL, time) and ``curves.png``; the services are stopped
   on the way out, Ctrl-C included.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from quickstart.services import RewardServices
from quickstart.sft import DEFAULT_CACHE_ROOT, SFTConfig, sft_checkpoint
from quickstart.task import STEP_SEPARATOR, TaskConfig, sample_problems

# How the process reward reaches the policy:
#   sum, min, outcome_centered, first_error
#              dense: each step's score at the token where the step ends, credited by that
#              mode (rpp_learner.algorithms.returns)
#   none       not at all: outcome reward only
#   collapsed  folded into the outcome as the mean step score, one number per response
#              (what group estimators such as GRPO need; rewards.services[].reduce: mean)
Credit = str
# Which process reward model: the exact step checker (a user function, the ceiling) or a
# learned PRM in the Qwen2.5-Math-PRM layout (quickstart.learned_prm), served by --scorer prm.
PRM = Literal["rule", "learned"]
HELDOUT_SEED = 0  # every run, whatever its seed, is judged on the same held-out problems


@dataclass
class QuickstartConfig:
    seed: int = 0
    steps: int = 30  # held-out accuracy is flat after ~10-20 steps (bench/bench_learning.py)
    credit: Credit = "sum"  # how step scores reach tokens; "none" = outcome reward only
    prm: PRM = "rule"
    prm_dir: Path | None = None  # the learned PRM's checkpoint (prm="learned")
    estimator: str = "reinforce_pp"
    process_weight: float = 1.0  # alpha: step score s adds alpha * (s - 0.5) at its last token
    prompts_per_step: int = 32
    samples_per_prompt: int = 4
    pipeline_depth: int = 0  # 1: rpp's pipelined mode (one step off-policy; README, "Pipelined mode")
    lr: float = 1e-4  # 2e-4 drifts further from the SFT start (higher KL) and ends lower
    kl_coef: float = 0.001  # the report's value for math
    max_new_tokens: int = 48
    eval_prompts: int = 200
    eval_every: int = 5
    output_dir: Path = Path("runs/quickstart")
    cache_dir: Path = DEFAULT_CACHE_ROOT
    task: TaskConfig = field(default_factory=TaskConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)

    def __post_init__(self) -> None:
        from rpp_learner.algorithms import CREDIT_MODES

        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        choices = [*CREDIT_MODES, "none", "collapsed"]
        if self.credit not in choices:
            raise ValueError(f"credit must be one of {', '.join(map(repr, choices))}, got {self.credit!r}")
        if self.prm not in ("rule", "learned"):
            raise ValueError(f"prm must be 'rule' or 'learned', got {self.prm!r}")
        if self.prm == "learned" and self.credit != "none" and self.prm_dir is None:
            raise ValueError("prm='learned' needs prm_dir, the learned PRM's checkpoint (quickstart.learned_prm)")
        if self.eval_every < 1 or self.steps % self.eval_every:
            raise ValueError(
                f"eval_every ({self.eval_every}) must divide steps ({self.steps}) so the last "
                "step is evaluated"
            )


def write_prompts(path: Path, problems) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for problem in problems:
            f.write(json.dumps({"prompt": problem.prompt, "reference": str(problem.answer)}) + "\n")
    return path


SERVICE_COMMANDS = {  # name -> ``rpp-reward-server`` arguments
    "answer": ["--scorer", "math-answer"],
    "steps": [
        "--scorer", "user", "--kind", "process", "--step-separator", STEP_SEPARATOR,
        "--function", "quickstart.rewards:step_scores",
    ],
}


def learned_prm_command(prm_dir: Path) -> list[str]:
    """A learned PRM is served as any released one: ``--scorer prm`` reads its layout."""
    return ["--scorer", "prm", "--model", str(prm_dir), "--step-separator", STEP_SEPARATOR]


def services_needed(cfg: QuickstartConfig) -> dict[str, list[str]]:
    """The reward services a run needs, name -> ``rpp-reward-server`` arguments."""
    needed = {"answer": SERVICE_COMMANDS["answer"]}
    if cfg.credit != "none":
        needed[process_service_name(cfg)] = (
            SERVICE_COMMANDS["steps"] if cfg.prm == "rule" else learned_prm_command(cfg.prm_dir)
        )
    return needed


def process_service_name(cfg: QuickstartConfig) -> str:
    return "steps" if cfg.prm == "rule" else "prm"


def learner_config(
    cfg: QuickstartConfig, model_dir: Path, data: dict[str, Path], addresses: dict[str, str]
) -> dict[str, Any]:
    from rpp_learner.algorithms import ESTIMATORS

    services = [{"name": "answer", "kind": "outcome", "targets": [addresses["answer"]]}]
    if cfg.credit != "none":
        name = process_service_name(cfg)
        services.append({
            "name": name, "kind": "process", "targets": [addresses[name]], "weight": cfg.process_weight,
            "reduce": "mean" if cfg.credit == "collapsed" else "none",
        })
    group_estimator = not ESTIMATORS[cfg.estimator].dense
    rollout_batch = cfg.prompts_per_step * cfg.samples_per_prompt
    return {
        "model": {"path": str(model_dir)},
        "data": {"train_path": str(data["train"]), "eval_path": str(data["heldout"])},
        "rollout": {
            "prompts_per_step": cfg.prompts_per_step,
            "samples_per_prompt": cfg.samples_per_prompt,
            "max_new_tokens": cfg.max_new_tokens,
            "generation_batch_prompts": cfg.prompts_per_step,
            "pipeline_depth": cfg.pipeline_depth,
        },
        "rewards": {"services": services},
        "algo": {
            "estimator": cfg.estimator,
            # Group estimators take KL as a k3 loss term (GRPO), not in the reward.
            "kl_coef": 0.0 if group_estimator else cfg.kl_coef,
            "kl_loss_coef": cfg.kl_coef if group_estimator else 0.0,
            "kl_loss_estimator": "k3",
            "process_credit": cfg.credit if cfg.credit not in ("none", "collapsed") else "sum",
            # Step scores in [0, 1] become s - 0.5: a wrong step pushes down, a right one up.
            # (first_error reads the raw score itself.)
            "step_score_transform": "centered",
        },
        "optim": {
            "lr": cfg.lr,
            "mini_batch_size": rollout_batch // 2,
            "micro_batch_size": rollout_batch // 2,
        },
        "logging": {"tensorboard": False},
        "eval": {"every_steps": cfg.eval_every, "max_prompts": cfg.eval_prompts},
        "output_dir": str(cfg.output_dir),
        "total_steps": cfg.steps,
        "seed": cfg.seed,
    }


def run(cfg: QuickstartConfig, log=print) -> dict[str, Any]:
    """Run the whole quickstart; returns the figures the table shows (also saved as JSON)."""
    started = time.perf_counter()
    model_dir = sft_checkpoint(cfg.task, cfg.sft, cfg.cache_dir, log=log)
    t_sft = time.perf_counter() - started
    with RewardServices() as services:
        running = services.start_all(services_needed(cfg), cfg.output_dir / "logs")
        log("[services] " + ", ".join(f"{n} at {s.address} (metrics :{s.metrics_port})" for n, s in running.items()))
        figures = train_and_evaluate(cfg, model_dir, {n: s.address for n, s in running.items()}, log)
        figures["score_requests"] = {name: s.score_requests() for name, s in running.items()}
        figures["service_pids"] = {name: s.process.pid for name, s in running.items()}
    figures["time_sft_s"] = t_sft
    figures["time_total_s"] = time.perf_counter() - started
    (cfg.output_dir / "quickstart.json").write_text(json.dumps(figures, indent=2))
    return figures


def train_and_evaluate(
    cfg: QuickstartConfig, model_dir: Path, addresses: dict[str, str], log=print
) -> dict[str, Any]:
    """REINFORCE++ from ``model_dir`` against running services; held-out accuracy before/after."""
    from rpp_learner.config import config_from_dict
    from rpp_learner.trainer import Trainer

    train = sample_problems(cfg.steps * cfg.prompts_per_step, "train", cfg.seed + 1, cfg.task)
    heldout = sample_problems(cfg.eval_prompts, "heldout", HELDOUT_SEED, cfg.task)
    data = {
        "train": write_prompts(cfg.output_dir / "data" / "train.jsonl", train),
        "heldout": write_prompts(cfg.output_dir / "data" / "heldout.jsonl", heldout),
    }
    started = time.perf_counter()
    with Trainer(config_from_dict(learner_config(cfg, model_dir, data, addresses))) as trainer:
        summary = trainer.train()  # evaluates the SFT start first (step 0 of the curves)
    before = summary["start"]["eval/accuracy"]
    history = summary["history"]
    return {
        "seed": cfg.seed,
        "steps": cfg.steps,
        "credit": cfg.credit,
        "accuracy_before": before,
        "accuracy_after": history[-1]["eval/accuracy"],
        "accuracy_curve": [(i + 1, h["eval/accuracy"]) for i, h in enumerate(history) if "eval/accuracy" in h],
        "outcome_weighted_first": _head_mean(history, "reward/outcome_weighted"),
        "outcome_weighted_last": _tail_mean(history, "reward/outcome_weighted"),
        "process_sum_first": _head_mean(history, "reward/process_sum"),
        "process_sum_last": _tail_mean(history, "reward/process_sum"),
        "kl_last": history[-1]["kl"],
        # The step-farming signature: a policy that pleases a PRM by writing more steps.
        "response_length_first": _head_mean(history, "response_length"),
        "response_length_last": _tail_mean(history, "response_length"),
        "steps_per_response_first": _head_mean(history, "reward/steps_per_response"),
        "steps_per_response_last": _tail_mean(history, "reward/steps_per_response"),
        "prm": cfg.prm if cfg.credit != "none" else None,
        "time_rl_s": time.perf_counter() - started,
        "plot": summary["plot"],
        "config": json.loads(json.dumps(asdict(cfg), default=str)),
    }


def _head_mean(history: list[dict[str, float]], key: str, window: int = 3) -> float:
    """Mean over the first steps: one rollout batch is a noisy estimate."""
    head = [h[key] for h in history[:window]]
    return sum(head) / len(head)


def _tail_mean(history: list[dict[str, float]], key: str, window: int = 5) -> float:
    """Mean over the last steps: one rollout batch is a noisy estimate."""
    tail = [h[key] for h in history[-window:]]
    return sum(tail) / len(tail)


def format_table(f: dict[str, Any]) -> str:
    rows = [
        ("", "SFT start", f"after {f['steps']} RL steps"),
        ("held-out accuracy (greedy)", f"{f['accuracy_before']:.1%}", f"{f['accuracy_after']:.1%}"),
        (
            "mean outcome reward (train, first/last steps)",
            f"{f['outcome_weighted_first']:.3f}",
            f"{f['outcome_weighted_last']:.3f}",
        ),
        (
            "sum of step scores per response (train, first/last)",
            f"{f['process_sum_first']:.3f}",
            f"{f['process_sum_last']:.3f}",
        ),
        ("KL to the SFT policy (per token)", "0", f"{f['kl_last']:.4f}"),
    ]
    width = max(len(r[0]) for r in rows)
    lines = [f"{a:<{width}}  {b:>10}  {c:>18}" for a, b, c in rows]
    calls = ", ".join(f"{n}: {c} Score calls" for n, c in f["score_requests"].items())
    lines += [
        f"gain: {100 * (f['accuracy_after'] - f['accuracy_before']):+.1f} points  "
        f"(credit: {f['credit']}, seed {f['seed']})",
        f"time: SFT {f['time_sft_s']:.0f} s, RL + evals {f['time_rl_s']:.0f} s, total {f['time_total_s']:.0f} s",
        f"reward services over gRPC: {calls}",
        f"plot: {f['plot']}",
    ]
    return "\n".join(lines)

"""Learning benchmark: does dense PRM credit pay, with a learned PRM, and which kind?

    rpp-bench learning --setting hard --jobs 2    # 7 variants x 3 seeds, two runs at a time
    rpp-bench learning --setting easy --jobs 2    # the quickstart task
    rpp-bench learning --seeds 0 --steps 10       # a quick look
    rpp-bench learning --setting easy --variants "ORM only" --pipeline-depth 1   # the pipelined mode
    rpp-bench learning --setting sparse --process-weight 2   # the PRM's weight alpha, 1 by default

Two settings of the column-addition task (``quickstart.settings``): ``easy``
(the quickstart's: the SFT start is right about a third of the time) and ``hard`` (three
operands: the SFT start is rarely right, so outcome reward is sparse). For each, one cached
SFT start and one cached learned PRM (``quickstart.learned_prm``: a tiny Qwen2.5-Math-PRM-
layout model trained on step-labelled teacher solutions and policy samples, served by
``rpp-reward-server --scorer prm`` as a released PRM would be). Variants, all from the same
SFT start, with the same steps, batch and learning rate:

- ORM only: REINFORCE++, the math-verify answer check as the only reward;
- ORM + learned PRM, with each credit mode (rpp_learner.algorithms.returns): sum (the
  REINFORCE++ report), min (PURE), outcome-centred (PROGRS), first-error (VPPO);
- ORM + the exact rule PRM, sum credit: the ceiling a perfect PRM gives;
- GRPO, ORM + the learned PRM's mean step score as one number (what OpenRLHF, verl and TRL
  do with a PRM); KL as a k3 loss term.

Prints, per variant, held-out greedy accuracy after the last step (mean, sd and per
seed), the first evaluated step reaching ``--target``, the final per-token KL, and the
step-farming signature (mean response length and steps per response, first and last
steps), the PRM's score per training response (rising while held-out accuracy falls means
the policy pleases the PRM instead of adding right); then the goal check: does the best
learned-PRM mode reach each seed's ORM-only final accuracy in at most half the steps, and
does every dense mode end at or above ORM-only. Writes a PNG of the accuracy curves and a
JSON of every figure. Whatever the numbers say, they are what ran.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from quickstart.learned_prm import PRMConfig, format_quality, prm_checkpoint, prm_quality
from quickstart.run import (
    SERVICE_COMMANDS,
    QuickstartConfig,
    learned_prm_command,
    train_and_evaluate,
)
from quickstart.services import RewardServices
from quickstart.settings import SETTINGS
from quickstart.sft import sft_checkpoint
from quickstart.task import parse_column

ORM_ONLY = "ORM only"
VARIANTS: dict[str, dict[str, Any]] = {
    ORM_ONLY: {"credit": "none"},
    "learned PRM, sum": {"credit": "sum", "prm": "learned"},
    "learned PRM, min": {"credit": "min", "prm": "learned"},
    "learned PRM, outcome-centred": {"credit": "outcome_centered", "prm": "learned"},
    "learned PRM, first-error": {"credit": "first_error", "prm": "learned"},
    "rule PRM, sum (ceiling)": {"credit": "sum", "prm": "rule"},
    "GRPO, ORM + learned PRM mean": {"credit": "collapsed", "prm": "learned", "estimator": "grpo"},
}


def steps_to_target(curve: list[tuple[int, float]], target: float) -> int | None:
    """The first evaluated step whose held-out accuracy is at least ``target``."""
    return next((step for step, accuracy in curve if accuracy >= target), None)


def summarize(runs: dict[str, list[dict[str, Any]]], target: float) -> list[dict[str, Any]]:
    rows = []
    for name, figures in runs.items():
        after = [f["accuracy_after"] for f in figures]
        reached = [steps_to_target(f["accuracy_curve"], target) for f in figures]


        # Placed steps and a dense PRM score exist only where the PRM is a process service
        # (ORM-only has none; GRPO's PRM is folded into its outcome).
        dense = figures[0].get("prm") is not None and figures[0].get("credit") != "collapsed"
        rows.append({
            "variant": name,
            "before": statistics.mean(f["accuracy_before"] for f in figures),
            "after_mean": statistics.mean(after),
            "after_std": statistics.stdev(after) if len(after) > 1 else 0.0,
            "after_per_seed": after,
            "steps_to_target": reached,
            "kl_last": statistics.mean(f["kl_last"] for f in figures),
            "length_first": _mean_of(figures, "response_length_first"),
            "length_last": _mean_of(figures, "response_length_last"),
                "steps_first": _mean_of(figures, "steps_per_response_first") if dense else None,
            "steps_last": _mean_of(figures, "steps_per_response_last") if dense else None,
            # The PRM's step scores per training response, summed (each times the service's
            # weight): rising while held-out accuracy falls is a policy pleasing the PRM
            # rather than getting sums right.
            "prm_first": _mean_of(figures, "process_sum_first") if dense else None,
            "prm_last": _mean_of(figures, "process_sum_last") if dense else None,
            "time_s": statistics.mean(f["time_rl_s"] for f in figures),
        })
    return rows


def _mean_of(figures: list[dict[str, Any]], key: str) -> float | None:
    values = [f[key] for f in figures if f.get(key) is not None]
    return statistics.mean(values) if values else None


def _arrow(first: float | None, last: float | None, digits: int = 1) -> str:
    return "-" if first is None or last is None else f"{first:.{digits}f} -> {last:.{digits}f}"


def format_table(rows: list[dict[str, Any]], seeds: list[int], steps: int, target: float) -> str:
    head = (
        f"{'variant':<30} {'SFT':>6} {f'acc @ {steps} (mean ± sd)':>22} {'per seed ' + str(seeds):>24} "
        f"{f'steps to {target:.0%}':>14} {'KL':>7} {'length':>13} {'steps/resp':>11} {'PRM/resp':>12} {'RL time':>8}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        per_seed = " ".join(f"{a:.1%}" for a in r["after_per_seed"])
        reached = " ".join("-" if s is None else str(s) for s in r["steps_to_target"])
        lines.append(
            f"{r['variant']:<30} {r['before']:>6.1%} {r['after_mean']:>13.1%} ± {r['after_std']:>5.1%} "
            f"{per_seed:>24} {reached:>14} {r['kl_last']:>7.4f} {_arrow(r['length_first'], r['length_last']):>13} "
            f"{_arrow(r['steps_first'], r['steps_last']):>11} {_arrow(r['prm_first'], r['prm_last'], 2):>12} "
            f"{r['time_s']:>7.0f}s"
        )
    return "\n".join(lines)


def audit_policies(
    args: argparse.Namespace, jobs: list[tuple[str, int]], samples: int = 256
) -> dict[str, dict[str, float]]:
    """Each variant's final policies, sampled at temperature 1 on held-out problems: the
    share of steps that are exactly right (the task's checker) next to the learned PRM's
    mean step score for the same steps. A PRM score above the true share is what a policy
    that learned to please the PRM looks like."""
    import torch
    from transformers import AutoTokenizer, Qwen2ForCausalLM

    from quickstart.learned_prm import (
        Solution,
        after_due_carry,
        sample_responses,
        split_response,
        step_probabilities,
    )
    from quickstart.run import HELDOUT_SEED
    from quickstart.task import check_steps, final_answer, sample_problems
    from reward_server.scorers.prm_models import Qwen2ForProcessRewardModel
    from rpp_learner.checkpoint import find_checkpoint

    setting = SETTINGS[args.setting]
    problems = sample_problems(samples, "heldout", HELDOUT_SEED, setting.task)
    prm = Qwen2ForProcessRewardModel.from_pretrained(args.prm_dir).eval()
    prm_tokenizer = AutoTokenizer.from_pretrained(args.prm_dir)
    out: dict[str, list[tuple[float, float, float]]] = {}
    for name, seed in jobs:
        policy_dir = find_checkpoint("latest", run_config(args, name, seed).output_dir) / "policy"
        policy = Qwen2ForCausalLM.from_pretrained(policy_dir).eval()
        tokenizer = AutoTokenizer.from_pretrained(policy_dir)
        texts = sample_responses(policy, tokenizer, [(p.prompt, "") for p in problems], setting.max_new_tokens,
                                 seed=1000 + seed, desc=f"audit {name} seed {seed}")
        solutions = [Solution(p, split_response(t), []) for p, t in zip(problems, texts, strict=True)]
        solutions = [s for s in solutions if s.steps]
        with torch.no_grad():
            scores = step_probabilities(prm, prm_tokenizer, solutions)
        exact = [v for s in solutions for v in check_steps(s.problem, s.steps)]
        learned = [v for row in scores for v in row]
        right = sum(final_answer("\n".join(s.steps)) == s.problem.answer for s in solutions) / len(problems)
        # The PRM's own errors on this policy's steps (its held-out quality is measured on
        # the SFT policy's): right steps it rejects (< 0.5) and wrong steps it passes.
        rejected = [p < 0.5 for p, ok in zip(learned, exact, strict=True) if ok]
        passed = [p >= 0.5 for p, ok in zip(learned, exact, strict=True) if not ok]
        # Right steps where a carry is due, apart: the steps RL teaches a sloppy start.
        due = [d for s in solutions for d in after_due_carry(s.steps)]
        rejected_due = [p < 0.5 for p, ok, d in zip(learned, exact, due, strict=True) if ok and d]
        rejected_other = [p < 0.5 for p, ok, d in zip(learned, exact, due, strict=True) if ok and not d]
        # Wrong steps whose own terms do not add up to the written sum, apart: the errors
        # left once a policy carries, which a PRM must check the arithmetic to see.
        off = [_sum_is_off(step) for s in solutions for step in s.steps]
        passed_off = [p >= 0.5 for p, ok, o in zip(learned, exact, off, strict=True) if not ok and o]
        passed_other = [p >= 0.5 for p, ok, o in zip(learned, exact, off, strict=True) if not ok and not o]
        out.setdefault(name, []).append((sum(exact) / len(exact), sum(learned) / len(learned), right,
                                         _share(rejected), _share(passed), _share(rejected_due),
                                         _share(rejected_other), _share(passed_off), _share(passed_other)))
    keys = ("exact_step_share", "prm_step_score", "sampled_accuracy", "prm_rejects_right", "prm_passes_wrong",
            "prm_rejects_right_due_carry", "prm_rejects_right_other", "prm_passes_wrong_sum_off",
            "prm_passes_wrong_other")
    return {name: {key: _mean_known(r[i] for r in rows) for i, key in enumerate(keys)} for name, rows in out.items()}


def _sum_is_off(step: str) -> bool:
    """A column line (``d1+d2+...+carry=sum``) whose terms do not add up to its sum."""
    column = parse_column(step)
    return column is not None and sum(column[0]) != column[1]


def _share(flags: list[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None


def _mean_known(values) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.mean(known) if known else None


def format_audit(audit: dict[str, dict[str, float]]) -> str:
    lines = [f"{'final policies, held-out samples':<32} {'steps exactly right':>20} "
             f"{'learned PRM step score':>23} {'answers right':>14} {'PRM rejects right steps':>24} "
             f"{'PRM passes wrong steps':>23} {'rejects right: carry due / other':>33} "
             f"{'passes wrong: sum off / other':>30}"]
    for name, a in audit.items():
        rejects = f"{_percent(a.get('prm_rejects_right_due_carry'))} / {_percent(a.get('prm_rejects_right_other'))}"
        passes = f"{_percent(a.get('prm_passes_wrong_sum_off'))} / {_percent(a.get('prm_passes_wrong_other'))}"
        lines.append(f"{name:<32} {a['exact_step_share']:>20.1%} {a['prm_step_score']:>23.3f} "
                     f"{a['sampled_accuracy']:>14.1%} {_percent(a.get('prm_rejects_right')):>24} "
                     f"{_percent(a.get('prm_passes_wrong')):>23} {rejects:>33} {passes:>30}")
    return "\n".join(lines)


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def goal_check(runs: dict[str, list[dict[str, Any]]], steps: int) -> list[str]:
    """The benchmark's goal, per seed: the best learned-PRM dense mode reaches ORM-only's
    final accuracy in at most half the steps, and no dense mode ends below ORM-only."""
    if ORM_ONLY not in runs:
        return ["goal check: needs the ORM-only variant"]
    base = {f["seed"]: f["accuracy_after"] for f in runs[ORM_ONLY]}
    dense = {n: f for n, f in runs.items() if n.startswith("learned PRM")}
    lines = []
    reach: dict[str, list[int | None]] = {}
    for name, figures in dense.items():
        reach[name] = [steps_to_target(f["accuracy_curve"], base[f["seed"]]) for f in figures]
    if dense:
        def worst(name: str) -> float:  # the slowest seed decides; never reaching is worst
            return max(steps * 10 if r is None else r for r in reach[name])

        def final(name: str) -> float:
            return statistics.mean(f["accuracy_after"] for f in dense[name])

        best = min(dense, key=lambda name: (worst(name), -final(name)))  # ties: the highest final accuracy
        per_seed = ", ".join(f"seed {f['seed']}: {'never' if r is None else f'step {r}'} (ORM-only ends at "
                             f"{base[f['seed']]:.1%})" for f, r in zip(dense[best], reach[best], strict=True))
        met = all(r is not None and r <= steps / 2 for r in reach[best])
        lines.append(f"goal 1, best dense mode reaches ORM-only's final accuracy within {steps // 2} steps on every "
                     f"seed: {'MET' if met else 'NOT MET'} ({best}: {per_seed})")
        orm_mean = statistics.mean(base.values())
        below = [n for n, f in dense.items() if statistics.mean(x["accuracy_after"] for x in f) < orm_mean]
        lines.append(f"goal 2, no dense mode ends below ORM-only ({orm_mean:.1%}): "
                     + ("MET" if not below else "NOT MET (" + ", ".join(below) + ")"))
    return lines


def plot(runs: dict[str, list[dict[str, Any]]], path: Path, target: float, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for (name, figures), color in zip(runs.items(), colors, strict=False):
        curves = [[(0, f["accuracy_before"]), *f["accuracy_curve"]] for f in figures]
        for curve in curves:
            ax.plot(*zip(*curve, strict=True), color=color, alpha=0.2, linewidth=1)
        mean = [(step, statistics.mean(c[i][1] for c in curves)) for i, (step, _) in enumerate(curves[0])]
        ax.plot(*zip(*mean, strict=True), color=color, linewidth=2, marker=".", label=name)
    ax.axhline(target, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("RL step")
    ax.set_ylabel("held-out accuracy (greedy)")
    ax.set_title(f"{title}, {len(next(iter(runs.values())))} seeds (thin: each seed)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="rpp-bench learning", description=__doc__.split("\n\n")[0])
    p.add_argument("--setting", choices=list(SETTINGS), default="hard")
    p.add_argument("--labels", choices=["exact", "monte_carlo"], default="exact",
                   help="how the learned PRM's training steps are labelled (quickstart.learned_prm)")
    p.add_argument("--prm-seed", type=int, default=0,
                   help="the learned PRM's seed (its training problems, policy samples, initial weights, held-out "
                        "set): another seed is another PRM of the same recipe, built and cached once")
    p.add_argument("--prm-carry-slip", type=float, default=None,
                   help="the carry slip of the teacher that writes the learned PRM's worked solutions "
                        "(default per setting: sparse 0.3, else the task's own)")
    p.add_argument("--prm-sum-slip", type=float, default=None,
                   help="likewise its rate of off-by-one column sums (default per setting: the task's own)")
    p.add_argument("--prm-epochs", type=int, default=PRMConfig.epochs,
                   help="epochs of the learned PRM's training (another value is another PRM, built and cached once)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=None, help="RL steps (default per setting: easy 30, hard 40)")
    # Every 2 steps (not the quickstart's 5): the variants differ in how fast they climb.
    p.add_argument("--eval-every", type=int, default=2)
    p.add_argument("--target", type=float, default=None,
                   help="accuracy for the steps-to-target column (default: easy 0.9, hard 0.5)")
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    p.add_argument("--output-dir", type=Path, default=None, help="default runs/bench_learning_SETTING")
    p.add_argument("--resume", action="store_true",
                   help="reuse the figures of runs an interrupted benchmark already finished in --output-dir")
    p.add_argument("--jobs", type=int, default=1,
                   help="runs at a time, each in its own process with (cores / jobs) torch threads: the tiny "
                        "model gains little from a second thread, so 2 jobs on 2 cores take about half the time")
    p.add_argument("--pipeline-depth", type=int, choices=[0, 1], default=0,
                   help="rollout.pipeline_depth of every run: 1 = the pipelined mode (one step off-policy)")
    p.add_argument("--process-weight", type=float, default=1.0,
                   help="the PRM service's weight (alpha: a step score s adds alpha * (s - 0.5) at its last token) "
                        "in every dense variant")
    p.add_argument("--worker", nargs=3, metavar=("VARIANT", "SEED", "ADDRESSES"), help=argparse.SUPPRESS)
    p.add_argument("--prm-dir", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    setting = SETTINGS[args.setting]
    args.steps = args.steps or setting.rl_steps
    args.target = args.target if args.target is not None else setting.target
    default_slip = args.prm_carry_slip is None and args.prm_sum_slip is None
    if args.prm_carry_slip is None:
        args.prm_carry_slip = setting.prm_teacher_carry_slip
    if args.prm_sum_slip is None:
        args.prm_sum_slip = setting.prm_teacher_sum_slip
    pipelined = "_pipelined" if args.pipeline_depth else ""
    weight = f"_weight{args.process_weight:g}" if args.process_weight != 1.0 else ""
    prm_seed = f"_prm{args.prm_seed}" if args.prm_seed else ""
    slip = "" if default_slip else f"_prmslip{args.prm_carry_slip}_{args.prm_sum_slip}"
    slip += f"_prmepochs{args.prm_epochs}" if args.prm_epochs != PRMConfig.epochs else ""
    args.output_dir = args.output_dir or Path(
        f"runs/bench_learning_{args.setting}{pipelined}{weight}{prm_seed}{slip}")
    return args


def run_config(args: argparse.Namespace, name: str, seed: int) -> QuickstartConfig:
    setting = SETTINGS[args.setting]
    base = QuickstartConfig(
        steps=args.steps, eval_every=args.eval_every, task=setting.task, sft=setting.sft,
        max_new_tokens=setting.max_new_tokens, prm_dir=args.prm_dir, pipeline_depth=args.pipeline_depth,
        process_weight=args.process_weight,
    )
    return replace(base, seed=seed, output_dir=args.output_dir / _slug(name) / f"seed{seed}", **VARIANTS[name])


def run_one(cfg: QuickstartConfig, model_dir: Path, addresses: dict[str, str]) -> dict[str, Any]:
    """Train and evaluate one (variant, seed); its figures are kept on disk, so an
    interrupted benchmark loses only the runs in flight (--resume)."""
    figures = train_and_evaluate(cfg, model_dir, addresses)
    (cfg.output_dir / "figures.json").write_text(json.dumps(figures, indent=2, default=str))
    return figures


def run_in_workers(args: argparse.Namespace, todo: list[tuple[str, int]], addresses: dict[str, str]) -> None:
    """``todo`` in up to ``args.jobs`` worker processes at a time, all on the same services."""
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    common = ["--setting", args.setting, "--steps", str(args.steps), "--eval-every", str(args.eval_every),
              "--pipeline-depth", str(args.pipeline_depth), "--process-weight", str(args.process_weight),
              "--output-dir", str(args.output_dir), "--prm-dir", str(args.prm_dir)]
    running: list[tuple[subprocess.Popen, Path, str]] = []
    queue = list(todo)
    while queue or running:
        while queue and len(running) < args.jobs:
            name, seed = queue.pop(0)
            log_path = run_config(args, name, seed).output_dir / "worker.log"
            log_path.parent.mkdir(parents=True, exist_ok=True)
            with log_path.open("w") as log:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "bench.bench_learning", *common,
                     "--worker", name, str(seed), json.dumps(addresses)],
                    stdout=log, stderr=subprocess.STDOUT, env=env,
                )
            print(f"=== {name}, seed {seed}: started (pid {proc.pid}, log {log_path}) ===", flush=True)
            running.append((proc, log_path, f"{name}, seed {seed}"))
        time.sleep(1)
        for item in [r for r in running if r[0].poll() is not None]:
            running.remove(item)
            proc, log_path, label = item
            if proc.returncode != 0:
                for other, _, _ in running:
                    other.terminate()
                raise RuntimeError(f"the run {label} failed (exit {proc.returncode}); see {log_path}")
            print(f"=== {label}: done ===", flush=True)


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = parse_args(argv)
    task, sft = SETTINGS[args.setting].task, SETTINGS[args.setting].sft
    model_dir = sft_checkpoint(task, sft, QuickstartConfig().cache_dir)
    if args.worker:
        name, seed, addresses = args.worker
        run_one(run_config(args, name, int(seed)), model_dir, json.loads(addresses))
        return

    needs_prm = any(VARIANTS[n].get("prm") == "learned" for n in args.variants)
    quality = None
    if needs_prm:
        prm = PRMConfig(labels=args.labels, seed=args.prm_seed, teacher_carry_slip=args.prm_carry_slip,
                        teacher_sum_slip=args.prm_sum_slip, epochs=args.prm_epochs)
        args.prm_dir = prm_checkpoint(task, sft, prm, QuickstartConfig().cache_dir)
        quality = prm_quality(args.prm_dir)
    jobs = [(name, seed) for name in args.variants for seed in args.seeds]
    saved = {job: run_config(args, *job).output_dir / "figures.json" for job in jobs}
    todo = [job for job in jobs if not (args.resume and saved[job].exists())]
    started = time.perf_counter()
    commands = {"answer": SERVICE_COMMANDS["answer"], "steps": SERVICE_COMMANDS["steps"]}
    if needs_prm:
        commands["prm"] = learned_prm_command(args.prm_dir)
    with RewardServices() as services:
        running = services.start_all(commands, args.output_dir / "logs")
        addresses = {name: s.address for name, s in running.items()}
        if args.jobs > 1:
            run_in_workers(args, todo, addresses)
        else:
            for name, seed in todo:
                print(f"\n=== {name}, seed {seed} ===", flush=True)
                run_one(run_config(args, name, seed), model_dir, addresses)
    runs: dict[str, list[dict[str, Any]]] = {}
    for name, seed in jobs:
        figures = json.loads(saved[(name, seed)].read_text())
        runs.setdefault(name, []).append(figures)
        print(f"{name}, seed {seed}: held-out accuracy {figures['accuracy_before']:.1%} -> "
              f"{figures['accuracy_after']:.1%}", flush=True)
    rows = summarize(runs, args.target)
    checks = goal_check(runs, args.steps)
    audit = audit_policies(args, jobs) if args.prm_dir else {}
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "results.json").write_text(json.dumps(
        {"setting": args.setting, "labels": args.labels, "prm_quality": quality, "rows": rows,
         "goal": checks, "audit": audit, "runs": runs}, indent=2, default=str))
    mode = ", pipelined (one step off-policy)" if args.pipeline_depth else ""
    mode += f", PRM weight {args.process_weight:g}" if args.process_weight != 1.0 else ""
    mode += f", PRM seed {args.prm_seed}" if args.prm_seed else ""
    mode += f", PRM trained {args.prm_epochs} epochs" if args.prm_epochs != PRMConfig.epochs and needs_prm else ""
    if args.prm_carry_slip is not None and needs_prm:
        mode += f", PRM data teacher drops {args.prm_carry_slip:.0%} of carries"
    if args.prm_sum_slip is not None and needs_prm:
        mode += f", PRM data teacher's sums off by one {args.prm_sum_slip:.0%}"
    png = plot(runs, args.output_dir / "learning.png", args.target, f"{args.setting} setting{mode}")
    print(f"\n{args.setting} setting{mode}: held-out greedy accuracy, {args.steps} RL steps, {len(args.seeds)} seeds, "
          f"{args.jobs} job(s) at a time (total {time.perf_counter() - started:.0f} s):")
    if quality:
        print(f"learned PRM ({args.labels} labels), held-out: {format_quality(quality)}")
    print(format_table(rows, args.seeds, args.steps, args.target))
    if audit:
        print(format_audit(audit))
    for line in checks:
        print(line)
    print(f"plot: {png}\nfigures: {args.output_dir / 'results.json'}")


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name.lower()).strip("_")


if __name__ == "__main__":
    main()

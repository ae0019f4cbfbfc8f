"""Learning benchmark on the quickstart task: does dense PRM credit help, and which kind?

    rpp-bench learning --jobs 2                  # 4 variants x 3 seeds, two runs at a time
    rpp-bench learning --seeds 0 --steps 10      # a quick look

Variants, all from the same cached SFT start, same steps, batch and learning rate:

- ORM only: REINFORCE++, the math-verify answer check as the only reward;
- ORM + PRM, sum credit: each step's score at the token where the step ends, returns sum
  the later step rewards (the REINFORCE++ report);
- ORM + PRM, min credit: the return is the minimum of the later step rewards (PURE);
- GRPO, ORM + PRM as one score: answer + share of correct steps, one number per response,
  group-normalised (KL as a k3 loss term).

Prints, per variant, held-out greedy accuracy after the last step (mean and per seed), the
first evaluated step reaching ``--target``, and the final per-token KL; writes a PNG of the
accuracy curves and a JSON of every figure. Whatever the numbers say, they are what ran.
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

from quickstart.run import SERVICE_COMMANDS, QuickstartConfig, train_and_evaluate
from quickstart.services import RewardServices
from quickstart.sft import sft_checkpoint

VARIANTS: dict[str, dict[str, Any]] = {
    "ORM only": {"credit": "none"},
    "ORM + PRM (sum)": {"credit": "sum"},
    "ORM + PRM (min)": {"credit": "min"},
    "GRPO, ORM + PRM as one score": {"credit": "collapsed", "estimator": "grpo"},
}


def steps_to_target(curve: list[tuple[int, float]], target: float) -> int | None:
    """The first evaluated step whose held-out accuracy is at least ``target``."""
    return next((step for step, accuracy in curve if accuracy >= target), None)


def summarize(runs: dict[str, list[dict[str, Any]]], target: float) -> list[dict[str, Any]]:
    rows = []
    for name, figures in runs.items():
        after = [f["accuracy_after"] for f in figures]
        reached = [steps_to_target(f["accuracy_curve"], target) for f in figures]
        hit = [r for r in reached if r is not None]
        rows.append({
            "variant": name,
            "before": statistics.mean(f["accuracy_before"] for f in figures),
            "after_mean": statistics.mean(after),
            "after_std": statistics.stdev(after) if len(after) > 1 else 0.0,
            "after_per_seed": after,
            "steps_to_target": reached,
            "steps_to_target_mean": statistics.mean(hit) if hit else None,
            "kl_last": statistics.mean(f["kl_last"] for f in figures),
            "time_s": statistics.mean(f["time_rl_s"] for f in figures),
        })
    return rows


def format_table(rows: list[dict[str, Any]], seeds: list[int], steps: int, target: float) -> str:
    base = next((r for r in rows if r["variant"] == "ORM only"), None)
    head = (
        f"{'variant':<30} {'SFT acc':>8} {f'acc @ {steps} steps':>18} {'per seed ' + str(seeds):>22} "
        f"{'gain / ORM gain':>15} {f'steps to {target:.0%}':>14} {'final KL':>9} {'RL time':>8}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        per_seed = " ".join(f"{a:.1%}" for a in r["after_per_seed"])
        reached = " ".join("-" if s is None else str(s) for s in r["steps_to_target"])
        ratio = "n/a"
        if base is not None and base["after_mean"] - base["before"] > 0:
            ratio = f"{(r['after_mean'] - r['before']) / (base['after_mean'] - base['before']):.2f}x"
        lines.append(
            f"{r['variant']:<30} {r['before']:>8.1%} {r['after_mean']:>11.1%} ± {r['after_std']:>4.1%} "
            f"{per_seed:>22} {ratio:>15} {reached:>14} {r['kl_last']:>9.4f} {r['time_s']:>7.0f}s"
        )
    return "\n".join(lines)


def plot(runs: dict[str, list[dict[str, Any]]], path: Path, target: float) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for (name, figures), color in zip(runs.items(), plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False):
        curves = [[(0, f["accuracy_before"]), *f["accuracy_curve"]] for f in figures]
        for curve in curves:
            ax.plot(*zip(*curve, strict=True), color=color, alpha=0.25, linewidth=1)
        mean = [(step, statistics.mean(c[i][1] for c in curves)) for i, (step, _) in enumerate(curves[0])]
        ax.plot(*zip(*mean, strict=True), color=color, linewidth=2, marker=".", label=name)
    ax.axhline(target, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("RL step")
    ax.set_ylabel("held-out accuracy (greedy)")
    ax.set_title(f"quickstart task, {len(next(iter(runs.values())))} seeds (thin: each seed)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    d = QuickstartConfig()
    p = argparse.ArgumentParser(prog="python -m bench.bench_learning", description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=d.steps)
    # Every 2 steps (not the quickstart's 5): the variants differ in how fast they climb.
    p.add_argument("--eval-every", type=int, default=2)
    p.add_argument("--target", type=float, default=0.9, help="accuracy for the steps-to-target column")
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    p.add_argument("--output-dir", type=Path, default=Path("runs/bench_learning"))
    p.add_argument("--resume", action="store_true",
                   help="reuse the figures of runs an interrupted benchmark already finished in --output-dir")
    p.add_argument("--jobs", type=int, default=1,
                   help="runs at a time, each in its own process with (cores / jobs) torch threads: the tiny "
                        "model gains little from a second thread, so 2 jobs on 2 cores take about half the time")
    p.add_argument("--worker", nargs=3, metavar=("VARIANT", "SEED", "ADDRESSES"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def run_config(args: argparse.Namespace, name: str, seed: int) -> QuickstartConfig:
    base = QuickstartConfig(steps=args.steps, eval_every=args.eval_every)
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
    common = ["--steps", str(args.steps), "--eval-every", str(args.eval_every), "--output-dir", str(args.output_dir)]
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
    defaults = QuickstartConfig()
    model_dir = sft_checkpoint(defaults.task, defaults.sft, defaults.cache_dir)
    if args.worker:
        name, seed, addresses = args.worker
        run_one(run_config(args, name, int(seed)), model_dir, json.loads(addresses))
        return

    jobs = [(name, seed) for name in args.variants for seed in args.seeds]
    saved = {job: run_config(args, *job).output_dir / "figures.json" for job in jobs}
    todo = [job for job in jobs if not (args.resume and saved[job].exists())]
    started = time.perf_counter()
    with RewardServices() as services:
        running = services.start_all(SERVICE_COMMANDS, args.output_dir / "logs")
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
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "results.json").write_text(json.dumps({"rows": rows, "runs": runs}, indent=2, default=str))
    png = plot(runs, args.output_dir / "learning.png", args.target)
    print(f"\nheld-out greedy accuracy, {args.steps} RL steps, {len(args.seeds)} seeds, {args.jobs} job(s) "
          f"at a time (total {time.perf_counter() - started:.0f} s):")
    print(format_table(rows, args.seeds, args.steps, args.target))
    print(f"plot: {png}\nfigures: {args.output_dir / 'results.json'}")


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name.lower()).strip("_")


if __name__ == "__main__":
    main()

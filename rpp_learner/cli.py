"""``rpp-train --config run.yaml --algo.kl_coef 0.001`` (also ``python -m rpp_learner``).

Exit codes: 0 done; 2 configuration or setup error (nothing trained); 3 stopped early
because rewards failed or became unreachable (a checkpoint was saved; resume with
``--checkpoint.resume latest``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

from rpp_learner.config import Config, ConfigError, load_config
from rpp_learner.launch import relaunch_cpu_workers

EXIT_CONFIG = 2


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog="rpp-train",
        description="REINFORCE++ training against gRPC outcome and process reward services.",
        epilog="Any config field can be overridden: --algo.kl_coef 0.001 --rollout.max_new_tokens 512 "
        "--rewards.services.0.targets '[host1:50051, host2:50051]'",
    )
    parser.add_argument("--config", help="YAML config file (see examples/configs/)")
    parser.add_argument("--resume", nargs="?", const="latest", help="resume from a checkpoint dir (default: latest)")
    parser.add_argument("--eval-only", action="store_true", help="evaluate the policy on the held-out set and exit")
    return parser.parse_known_args(argv)


def check_output_dir(cfg: Config) -> None:
    """That ``output_dir`` is, or can be made, a writable directory (``~`` expanded); creates nothing."""
    out = Path(cfg.output_dir).expanduser()
    cfg.output_dir = str(out)
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(
            f"output_dir {str(out)!r}: {str(existing)!r} is a file, not a directory; choose another output_dir"
        )
    try:
        tempfile.TemporaryDirectory(dir=existing, prefix=".rpp-write-check-").cleanup()
    except OSError as exc:
        raise ConfigError(
            f"output_dir {str(out)!r} cannot be written: creating a directory in {str(existing)!r} fails "
            f"({exc.strerror}); choose another output_dir"
        ) from None


def check_resume(cfg: Config) -> None:
    """That ``checkpoint.resume`` names a complete checkpoint."""
    from rpp_learner.checkpoint import STATE_FILE, find_checkpoint

    try:
        found = find_checkpoint(cfg.checkpoint.resume, cfg.output_dir)
    except FileNotFoundError as exc:
        raise ConfigError(f"{exc}; give --resume a checkpoint directory (output_dir/checkpoints/step_N), "
                          "or leave it out to start afresh") from None
    missing = [name for name in (STATE_FILE, "policy/config.json", "optimizer.pt", "scheduler.pt")
               if not (found / name).is_file()]
    if missing:
        raise ConfigError(f"checkpoint {str(found)!r} is incomplete (no {', '.join(missing)}); "
                          "resume from another one with --resume DIR")


def check_before_loading(cfg: Config, eval_only: bool = False) -> None:
    """The run's own paths, checked before anything is loaded or any service is called."""
    if eval_only and not (cfg.data.eval_path or cfg.data.eval_size > 0):
        raise ConfigError("--eval-only needs held-out prompts: set data.eval_path, or data.eval_size > 0")
    if cfg.model.tokenizer_path:
        from rpp_learner.models import check_tokenizer_path

        cfg.model.tokenizer_path = check_tokenizer_path(cfg.model.tokenizer_path)
    check_output_dir(cfg)
    if cfg.checkpoint.resume:
        check_resume(cfg)


def _setup_error(exc: Exception) -> int:
    print(f"rpp-train: setup error: {exc}", file=sys.stderr)
    return EXIT_CONFIG


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args, overrides = parse_args(argv)
    workers_exit = relaunch_cpu_workers(argv)  # accelerate launch --cpu --num_processes N
    if workers_exit is not None:
        return workers_exit
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(args.config, overrides)
        if args.resume:
            cfg.checkpoint.resume = args.resume
        try:
            check_before_loading(cfg, eval_only=args.eval_only)
        except ConfigError as exc:
            return _setup_error(exc)
        # Imported here so config errors show before torch/transformers load.
        from rpp_learner.scoring import RewardSetupError, describe_service
        from rpp_learner.sharding import describe_parallelism
        from rpp_learner.trainer import Trainer, TrainingStopped

        try:
            trainer = Trainer(cfg)
        except (RewardSetupError, FileNotFoundError, ValueError) as exc:
            return _setup_error(exc)
        with trainer:
            if trainer.acc.is_main_process:
                print(f"rpp-train: {describe_parallelism(trainer.acc)}", flush=True)
                for name, info in trainer.service_infos.items():
                    print(f"rpp-train: {describe_service(name, info)}", flush=True)
            if args.eval_only:
                print(json.dumps(trainer.evaluate()))
                return 0
            try:
                summary = trainer.train()
            except TrainingStopped as exc:
                print(f"rpp-train: stopped: {exc}", file=sys.stderr)
                return TrainingStopped.exit_code
    except ConfigError as exc:
        print(f"rpp-train: config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if trainer.acc.is_main_process:
        # 4 significant digits, not 4 decimals: lr 1e-5 stays 1e-05
        last = {k: float(f"{v:.4g}") for k, v in summary["last"].items() if not k.startswith("time/")}
        print(f"rpp-train: done, {summary['steps']} steps; checkpoint {summary['checkpoint']}; last {json.dumps(last)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

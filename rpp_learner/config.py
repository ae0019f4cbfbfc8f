"""Typed run configuration: dataclasses, loaded from YAML, overridable on the command line.

    cfg = load_config("run.yaml", overrides=["--algo.kl_coef", "0.001"])

Every field has a type and a default (defaults follow the REINFORCE++ report: k1 KL in
the reward, kl_coef 0.01, gamma 1, clip 0.2, global whitening, lr 5e-7, 4 samples per
prompt). An estimator registered with KL defaults of its own (REINFORCE++-baseline and
GRPO take KL as a loss term) has them applied to the ``algo`` fields a run leaves unset,
with a line saying so. Unknown keys and values of the wrong type raise ``ConfigError``
naming the full key (``algo.kl_coef``), before any model is loaded.

``algo.estimator``, ``algo.process_credit`` and ``algo.step_score_transform`` are checked
against the registries of ``rpp_learner.algorithms``; ``algo.plugins`` names modules to
import first, so a user's own registered estimator or credit mode can be selected.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import os
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A configuration problem; the message names the key and what to do."""


@dataclass
class ModelConfig:
    path: str = ""  # local Hugging Face model directory (or hub id)
    tokenizer_path: str | None = None  # defaults to ``path``
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    trust_remote_code: bool = False
    gradient_checkpointing: bool = False


@dataclass
class DataConfig:
    train_path: str = ""  # .jsonl or .parquet
    eval_path: str | None = None  # held-out set; when absent, eval_size rows of train are held out
    eval_size: int = 0
    prompt_field: str = "prompt"
    reference_field: str = "reference"  # optional per row; sent to reward services
    apply_chat_template: bool = False  # only takes effect when the tokenizer has one
    system_prompt: str | None = None
    max_prompt_tokens: int = 512  # longer prompts are cut from the left
    shuffle: bool = True


@dataclass
class RolloutConfig:
    engine: Literal["hf", "vllm"] = "hf"
    prompts_per_step: int = 64  # global, across all processes
    samples_per_prompt: int = 4
    max_new_tokens: int = 256
    # No EOS before this many tokens (HF min_new_tokens, vLLM min_tokens); 0 = off. For
    # benchmarks that need equal lengths on both sides, and formats with a fixed length.
    min_new_tokens: int = 0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    generation_batch_prompts: int = 16  # prompts per generate call (per process)
    # 0: synchronous (each step samples with the weights it updates). 1: pipelined, one step
    # off-policy: step t+1's rollout is generated while step t waits for its rewards, so a
    # reward farm up to one step slow costs no time; its samples come from the weights before
    # update t and the clipped ratio uses their log-probs (README, "Pipelined mode").
    pipeline_depth: int = 0
    vllm_gpu_memory_utilization: float = 0.4  # GPU: the share of its memory vLLM may take
    # KV-cache size in GiB, on GPU or CPU; 0 = automatic: on GPU the share above, on CPU a
    # cache that holds one step's rollouts (vLLM's CPU default takes a fraction of all RAM).
    vllm_kv_cache_gib: float = 0.0
    vllm_enforce_eager: bool = False  # True: no CUDA graphs / torch.compile (faster start)


@dataclass
class RewardServiceConfig:
    name: str = ""
    kind: Literal["outcome", "process"] = "outcome"
    targets: list[str] = field(default_factory=list)  # host:port list, or one dns:/// name
    weight: float = 1.0  # outcome: multiplies the score; process: alpha on each step score
    # process only: "mean" or "min" folds the step scores into the outcome, one number per
    # response (as OpenRLHF/verl/TRL do; what group estimators need); "none" keeps them dense.
    reduce: Literal["none", "mean", "min"] = "none"
    timeout_s: float = 30.0
    max_in_flight: int = 4
    token: str | None = None  # bearer token
    tls_ca: str | None = None
    tls_cert: str | None = None  # client certificate, for mTLS
    tls_key: str | None = None
    tls_server_name: str | None = None  # name to check in the server certificate


@dataclass
class RewardsConfig:
    services: list[RewardServiceConfig] = field(default_factory=list)
    max_failure_fraction: float = 0.1  # stop the run when more samples than this fail in a step
    check_at_start: bool = True  # call GetInfo on every service before loading models
    connect_timeout_s: float = 10.0


@dataclass
class AlgoConfig:
    # Modules imported before the names below are checked: they may register estimators,
    # credit modes and step-score transforms of their own (rpp_learner.algorithms).
    plugins: list[str] = field(default_factory=list)
    estimator: str = "reinforce_pp"  # a name in rpp_learner.algorithms.ESTIMATORS
    kl_coef: float = 0.01  # beta of the per-token KL in the reward
    kl_estimator: Literal["k1", "k2", "k3"] = "k1"
    kl_loss_coef: float = 0.0  # KL as a loss term instead (REINFORCE++-baseline: k2, 1e-4..1e-3)
    kl_loss_estimator: Literal["k1", "k2", "k3"] = "k2"
    gamma: float = 1.0
    clip_low: float = 0.2
    clip_high: float = 0.2
    dual_clip: float | None = None
    reward_clip: float = 10.0
    process_credit: str = "sum"  # sum | min | outcome_centered | first_error (CREDIT_MODES)
    step_score_transform: str = "identity"  # identity | centered | log (STEP_SCORE_TRANSFORMS)
    # first_error credit reads the raw PRM score: a step scored below this is rejected,
    # and only responses whose outcome is below correct_outcome_threshold are touched.
    first_error_reject_below: float = 0.5
    correct_outcome_threshold: float = 0.5
    ppo_epochs: int = 1
    loss_aggregation: Literal["token_mean", "seq_mean_token_mean"] = "token_mean"
    normalize_reward: bool = False  # outcome -> (R - running mean) / running std
    # Responses cut at rollout.max_new_tokens (no EOS): replace their outcome by this
    # score (e.g. -1 or 0; None keeps the service's score), and/or drop them from the update.
    truncated_outcome: float | None = None
    drop_truncated: bool = False


@dataclass
class OptimConfig:
    lr: float = 5e-7
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1e-8
    lr_scheduler: Literal["constant", "linear", "cosine"] = "constant"
    warmup_steps: int = 0  # optimiser steps
    max_grad_norm: float = 1.0
    mini_batch_size: int = 128  # samples per optimiser step, global
    micro_batch_size: int = 4  # samples per forward/backward, per process
    # AdamW's implementation: "auto" = torch's fused kernel where it has one (CPU and CUDA
    # parameters, not FSDP-sharded; 8x faster than the per-tensor loop torch picks on CPU),
    # torch's own choice elsewhere. The fused result differs from the loop by float rounding.
    adamw_impl: Literal["auto", "fused", "foreach", "loop"] = "auto"
    # accelerate's mixed precision: autocast forwards over fp32 master weights. "auto" = what
    # `accelerate launch` or its config file says ("no" for a plain rpp-train). bf16 pays on
    # models of about 10M parameters and up on CPUs with AMX and on GPUs, and costs on tiny
    # ones (README, "Mixed precision"): measured, so the default stays fp32.
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    # Rows of one prompt in a forward (its n samples) run the prompt once and share its KV
    # cache: the same log-probs to float rounding, (n - 1) / n less prompt compute. Off under
    # gradient checkpointing (in the update) and for models whose forward takes no cache.
    shared_prompt_forward: bool = True


@dataclass
class LoggingConfig:
    jsonl: bool = True
    tensorboard: bool = True
    progress_bar: bool = True
    plot: bool = True
    save_rollouts: bool = False  # per step and process: ids, rewards, advantages (.pt)


@dataclass
class CheckpointConfig:
    every_steps: int = 0  # 0 = only at the end
    keep_last: int = 2
    resume: str | None = None  # a checkpoint directory, or "latest" in output_dir


@dataclass
class EvalConfig:
    every_steps: int = 0  # 0 = never during training
    max_prompts: int = 256
    max_new_tokens: int | None = None  # defaults to rollout.max_new_tokens
    accuracy_threshold: float = 0.5  # correct when the outcome score >= this
    service: str | None = None  # outcome service used for accuracy; default: the first one


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    rewards: RewardsConfig = field(default_factory=RewardsConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    output_dir: str = "runs/rpp"
    total_steps: int = 100  # rollout + update iterations
    seed: int = 0


# ---------------------------------------------------------------------------------------
# dict <-> dataclass with type checks


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it converted (dicts -> dataclasses)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in (o for o in options if o is not type(None)):
            try:
                return _convert(value, option, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise errors[0] if len(errors) == 1 else ConfigError(f"{key}: {value!r} matches none of {tp}")
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(repr, allowed))}")
        return value
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if isinstance(value, str) and item_tp is str:
            return [value]  # one address is a one-element list
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        return [_convert(v, item_tp, f"{key}.{i}") for i, v in enumerate(value)]
    if _is_dataclass_type(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key or 'config'}: expected a mapping, got {type(value).__name__}")
        return _build(tp, value, key)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        # YAML 1.1 reads "1e-3" as a string; accept anything float() reads exactly.
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {type(value).__name__} {value!r}")
        return value
    raise TypeError(f"unsupported config annotation {tp} at {key}")


def _build(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for k, v in data.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if k not in names:
            raise ConfigError(
                f"unknown config key '{key}'; valid keys here: {', '.join(sorted(names))}"
            )
        kwargs[k] = _convert(v, hints[k], key)
    return cls(**kwargs)


def _field_type(path: list[str]) -> Any:
    """The annotation at a dotted path (list items by index), or raise naming the key."""
    tp: Any = Config
    for depth, part in enumerate(path):
        key = ".".join(path[: depth + 1])
        while typing.get_origin(tp) in (typing.Union, types.UnionType):
            tp = next(a for a in typing.get_args(tp) if a is not type(None))
        if typing.get_origin(tp) is list:
            if not part.isdigit():
                raise ConfigError(f"unknown config key '{key}': expected a list index")
            tp = typing.get_args(tp)[0]
        elif _is_dataclass_type(tp):
            hints = typing.get_type_hints(tp)
            if part not in hints:
                raise ConfigError(
                    f"unknown config key '{key}'; valid keys here: {', '.join(sorted(hints))}"
                )
            tp = hints[part]
        else:
            raise ConfigError(f"unknown config key '{key}': '{'.'.join(path[:depth])}' has no fields")
    return tp


def _parse_cli_value(raw: str, tp: Any, key: str) -> Any:
    """Command-line text -> value: strings stay text, everything else is read as YAML."""
    options = typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else (tp,)
    if type(None) in options and raw.lower() in ("null", "none", "~"):
        return None
    if str in options or (typing.get_origin(tp) is Literal and all(isinstance(a, str) for a in typing.get_args(tp))):
        return raw
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{key}: {raw!r} is not a valid YAML value ({_yaml_problem(exc)})") from None


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """What PyYAML found wrong, and where: "mapping values are not allowed here, line 2, column 7"."""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    mark = getattr(exc, "problem_mark", None)
    return f"{problem}, line {mark.line + 1}, column {mark.column + 1}" if mark is not None else problem


def _set_path(raw: dict[str, Any], path: list[str], value: Any) -> None:
    """Set ``value`` at ``path`` in the raw config, making the mappings and list entries on the
    way; a list index may add one entry at the end, not leave a gap."""

    def refuse(depth: int, why: str) -> ConfigError:
        return ConfigError(f"override --{'.'.join(path)}: {'.'.join(path[:depth])} {why}")

    node: Any = raw
    for depth, part in enumerate(path):
        key: int | str = part
        if isinstance(node, list):
            if not part.isdigit():
                raise refuse(depth, "is a list in the config, not a mapping")
            key = int(part)
            if key > len(node):
                raise refuse(depth, f"is a list of {len(node)}, so index {key} would leave a gap; use an index "
                                    f"below {len(node)} to change an entry, or {len(node)} to add one")
            if key == len(node):
                node.append({})
        elif not isinstance(node, dict):
            raise refuse(depth, "is not a mapping in the config")
        if depth == len(path) - 1:
            node[key] = value
        elif isinstance(node, dict) and node.get(key) is None:
            node[key] = [] if path[depth + 1].isdigit() else {}
        node = node[key]


def parse_overrides(args: list[str]) -> list[tuple[list[str], Any]]:
    """``["--algo.kl_coef", "0.001", "--seed=3"]`` -> ``[(["algo", "kl_coef"], 0.001), ...]``."""
    pairs: list[tuple[list[str], Any]] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or len(arg) == 2:
            raise ConfigError(f"expected an override like --algo.kl_coef 0.001, got {arg!r}")
        if "=" in arg:
            dotted, raw = arg[2:].split("=", 1)
            i += 1
        else:
            if i + 1 >= len(args):
                raise ConfigError(f"override {arg} has no value; write {arg} VALUE")
            dotted, raw = arg[2:], args[i + 1]
            i += 2
        path = dotted.split(".")
        pairs.append((path, _parse_cli_value(raw, _field_type(path), f"override --{dotted}")))
    return pairs


def import_plugins(modules: list[str]) -> None:
    """Import each ``algo.plugins`` module (the working directory is searched too)."""
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    for i, name in enumerate(modules):
        if not isinstance(name, str):
            raise ConfigError(f"algo.plugins.{i}: expected a module name, got {name!r}")
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001  (any failure is the plugin's; name it)
            raise ConfigError(f"algo.plugins.{i}: cannot import {name!r}: {type(exc).__name__}: {exc}") from exc


def apply_estimator_defaults(raw: dict[str, Any]) -> list[str]:
    """Fill the ``algo`` fields a run leaves unset with its estimator's registered defaults
    (in place); returns the ``key=value`` pairs applied."""
    from rpp_learner.algorithms import ESTIMATORS

    algo = raw.get("algo")
    if algo is None:
        algo = raw["algo"] = {}
    if not isinstance(algo, dict):
        return []  # _build reports it
    plugins = algo.get("plugins") or []
    import_plugins([plugins] if isinstance(plugins, str) else list(plugins))  # one name is a list of one
    spec = ESTIMATORS.get(algo.get("estimator", AlgoConfig.estimator))
    if spec is None:
        return []  # validate() names the unknown estimator
    applied = []
    for key, value in spec.defaults.items():
        if key not in algo:
            algo[key] = value
            applied.append(f"{key}={value}")
    return applied


def _announce_defaults(estimator: str, applied: list[str]) -> None:
    if applied and os.environ.get("RANK", "0") == "0":
        print(
            f"rpp: algo.estimator {estimator}: using its defaults {', '.join(applied)} "
            "(set them in the config to override)",
            file=sys.stderr,
            flush=True,
        )


def _build_config(raw: dict[str, Any]) -> Config:
    applied = apply_estimator_defaults(raw)
    cfg = validate(_build(Config, raw))
    _announce_defaults(cfg.algo.estimator, applied)
    return cfg


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read YAML (if given), apply ``--dotted.key value`` overrides, type-check everything."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if path.is_dir():
            raise ConfigError(f"config file {str(path)!r} is a directory; give --config a YAML file")
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError:
            raise ConfigError(f"config file {str(path)!r} is not UTF-8 text; is it a YAML file?") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {str(path)!r} is not valid YAML: {_yaml_problem(exc)}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {str(path)!r} must hold a mapping at the top level")
        raw = loaded
    for key_path, value in parse_overrides(overrides or []):
        _set_path(raw, key_path, value)
    return _build_config(raw)


def config_from_dict(data: dict[str, Any]) -> Config:
    """Build and validate a Config from a plain dict (the programmatic API)."""
    return _build_config(copy.deepcopy(data))


def to_dict(config: Config) -> dict[str, Any]:
    return dataclasses.asdict(config)


def save_config(config: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False))


def validate(cfg: Config) -> Config:
    """Cross-field checks that need no model or network."""
    if not cfg.model.path:
        raise ConfigError("model.path is required: a local Hugging Face model directory")
    if not cfg.data.train_path:
        raise ConfigError("data.train_path is required: a .jsonl or .parquet file of prompts")
    positive = {
        "rollout.prompts_per_step": cfg.rollout.prompts_per_step,
        "rollout.samples_per_prompt": cfg.rollout.samples_per_prompt,
        "rollout.max_new_tokens": cfg.rollout.max_new_tokens,
        "rollout.generation_batch_prompts": cfg.rollout.generation_batch_prompts,
        "data.max_prompt_tokens": cfg.data.max_prompt_tokens,
        "optim.mini_batch_size": cfg.optim.mini_batch_size,
        "optim.micro_batch_size": cfg.optim.micro_batch_size,
        "algo.ppo_epochs": cfg.algo.ppo_epochs,
        "total_steps": cfg.total_steps,
    }
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{key} must be positive, got {value}")
    rollout_samples = cfg.rollout.prompts_per_step * cfg.rollout.samples_per_prompt
    if rollout_samples % cfg.optim.mini_batch_size:
        raise ConfigError(
            f"optim.mini_batch_size ({cfg.optim.mini_batch_size}) must divide the rollout batch "
            f"(rollout.prompts_per_step * rollout.samples_per_prompt = {rollout_samples})"
        )
    if not 0 <= cfg.rollout.min_new_tokens <= cfg.rollout.max_new_tokens:
        raise ConfigError(
            f"rollout.min_new_tokens must be between 0 and rollout.max_new_tokens ({cfg.rollout.max_new_tokens}), "
            f"got {cfg.rollout.min_new_tokens}"
        )
    if cfg.rollout.temperature <= 0:
        raise ConfigError("rollout.temperature must be > 0 (evaluation is always greedy)")
    if cfg.rollout.pipeline_depth not in (0, 1):
        raise ConfigError(
            "rollout.pipeline_depth must be 0 (synchronous) or 1 (one step off-policy), "
            f"got {cfg.rollout.pipeline_depth}"
        )
    _validate_algo(cfg)
    if not 0.0 <= cfg.rewards.max_failure_fraction <= 1.0:
        raise ConfigError("rewards.max_failure_fraction must be in [0, 1]")
    if not cfg.rewards.services:
        raise ConfigError("rewards.services is empty: configure at least one reward service")
    names = set()
    for i, svc in enumerate(cfg.rewards.services):
        key = f"rewards.services.{i}"
        if not svc.name:
            raise ConfigError(f"{key}.name is required (used in metrics and error messages)")
        if svc.name in names:
            raise ConfigError(f"{key}.name {svc.name!r} is used twice; names must be unique")
        names.add(svc.name)
        if not svc.targets:
            raise ConfigError(f"{key}.targets is empty: give host:port addresses or a dns:/// name")
        if svc.timeout_s <= 0:
            raise ConfigError(f"{key}.timeout_s must be positive")
        if svc.reduce != "none" and svc.kind != "process":
            raise ConfigError(f"{key}.reduce folds step scores into the outcome: it applies to process services only")
        if (svc.tls_cert is None) != (svc.tls_key is None):
            raise ConfigError(f"{key}: tls_cert and tls_key go together (mTLS)")
    if cfg.eval.service is not None:
        outcome = [s.name for s in cfg.rewards.services if s.kind == "outcome"]
        if cfg.eval.service not in names:
            raise ConfigError(f"eval.service {cfg.eval.service!r} is not a configured reward service")
        if cfg.eval.service not in outcome:
            raise ConfigError(
                f"eval.service {cfg.eval.service!r} is a process service; accuracy is read from an outcome "
                f"score: name an outcome service ({', '.join(map(repr, outcome)) or 'none is configured'})"
            )
    return cfg


def _one_of(key: str, value: str, registry: dict[str, Any]) -> Any:
    if value not in registry:
        raise ConfigError(
            f"{key}: {value!r} is not registered; choose one of {', '.join(map(repr, registry))} "
            "(or register your own in a module named in algo.plugins)"
        )
    return registry[value]


def _validate_algo(cfg: Config) -> None:
    """The algorithm's names against the registries, and what the chosen ones need."""
    from rpp_learner.algorithms import CREDIT_MODES, ESTIMATORS, STEP_SCORE_TRANSFORMS

    algo = cfg.algo
    import_plugins(algo.plugins)
    estimator = _one_of("algo.estimator", algo.estimator, ESTIMATORS)
    credit = _one_of("algo.process_credit", algo.process_credit, CREDIT_MODES)
    _one_of("algo.step_score_transform", algo.step_score_transform, STEP_SCORE_TRANSFORMS)
    groups = cfg.rollout.samples_per_prompt >= 2
    if estimator.needs_groups and not groups:
        raise ConfigError(f"algo.estimator {algo.estimator} needs a group: set rollout.samples_per_prompt >= 2")
    has_process = any(s.kind == "process" and s.reduce == "none" for s in cfg.rewards.services)
    if not estimator.dense:
        if algo.kl_coef != 0.0:
            raise ConfigError(
                f"algo.estimator {algo.estimator} gives one advantage per response and cannot take KL in "
                "the reward: set algo.kl_coef 0 and use algo.kl_loss_coef for a KL loss term"
            )
        if has_process:
            raise ConfigError(
                f"algo.estimator {algo.estimator} reduces each response to one number and cannot credit "
                "a process service: use reinforce_pp (or reinforce_pp_baseline), or fold the step scores "
                "into the outcome with rewards.services[].reduce: mean"
            )
    if has_process and credit.needs_groups and not groups:
        raise ConfigError(
            f"algo.process_credit {algo.process_credit} compares the responses to one prompt: set "
            "rollout.samples_per_prompt >= 2"
        )
    if has_process and credit.needs_outcome:
        if not any(s.kind == "outcome" or s.reduce != "none" for s in cfg.rewards.services):
            raise ConfigError(f"algo.process_credit {algo.process_credit} needs an outcome service")
        if algo.normalize_reward:
            raise ConfigError(
                f"algo.process_credit {algo.process_credit} reads the outcome as scored; "
                "algo.normalize_reward shifts it: turn one of them off"
            )

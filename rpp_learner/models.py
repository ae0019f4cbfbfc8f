"""Loading the policy and reference models (quietly), and checking the model path early."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING
from transformers.utils import logging as hf_logging

from reward_server.scorers.hf_common import check_loading_info
from rpp_learner.config import ConfigError, ModelConfig

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@contextlib.contextmanager
def quiet_progress_bars() -> Iterator[None]:
    """Turn off transformers' (and huggingface_hub's) progress bars, e.g. "Loading weights",
    for the duration; restore the previous setting afterwards."""
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


# What from_pretrained reads weights from; a directory with none of these holds no model.
_WEIGHT_FILES = ("*.safetensors", "*.safetensors.index.json", "*.bin", "*.bin.index.json")


def _looks_local(path: str) -> bool:
    """A path, not a hub id: hub ids are ``org/name``."""
    return path.startswith((".", "/", "~")) or path.count("/") != 1


def _check_hub_id(key: str, repo: str, filename: str, required: bool = True) -> None:
    """That the Hugging Face hub (or, offline, its local cache) has ``repo``; fetches ``filename`` only.
    ``required=False``: a repo without that file passes (unless offline, where that means not cached)."""
    from huggingface_hub import constants
    from transformers.utils.hub import cached_file

    try:
        found = cached_file(repo, filename, _raise_exceptions_for_missing_entries=required)
        problem = "" if found or not constants.HF_HUB_OFFLINE else f"the Hugging Face cache has no {filename} of it."
    except OSError as exc:
        problem = str(exc).splitlines()[0]
    if problem:
        offline = ""
        if constants.HF_HUB_OFFLINE:
            offline = " HF_HUB_OFFLINE is set: only models already in the cache can be used."
        raise ConfigError(
            f"{key} {repo!r} is not a local directory, and as a Hugging Face hub id it cannot be fetched: "
            f"{problem}{offline} Download it first, or point {key} at a local directory."
        )


def check_model_path(path: str) -> str:
    """The model directory ``path`` names: itself, or the ``policy/`` inside an rpp
    checkpoint directory (``output_dir/checkpoints/step_N``); a clear error otherwise."""
    p = Path(path).expanduser()
    for directory in (p, p / "policy"):  # policy/: an rpp checkpoint, whose Hugging Face model is there
        config = directory / "config.json"
        if config.is_file():
            try:
                json.loads(config.read_text(encoding="utf-8"))
            except ValueError as exc:  # UnicodeDecodeError too
                raise ConfigError(f"model.path {path!r}: {config} is not valid JSON ({exc})") from None
            return str(directory)
    if not _looks_local(path):
        _check_hub_id("model.path", path, "config.json")
        return path
    hint = ""
    if (p / "checkpoints").is_dir():
        hint = f" It looks like an rpp run directory: its models are in {p / 'checkpoints'}/step_N/policy."
    raise ConfigError(
        f"model.path {path!r} is not a Hugging Face model directory (no config.json there); "
        f"point it at a directory saved with save_pretrained, or a hub id like org/name.{hint}"
    )


def check_tokenizer_path(path: str) -> str:
    """``model.tokenizer_path``: an existing directory (returned with ``~`` expanded) or a hub id."""
    p = Path(path).expanduser()
    if p.is_dir():
        return str(p)
    if _looks_local(path):
        raise ConfigError(
            f"model.tokenizer_path {path!r} is not a directory; point it at one saved with save_pretrained "
            "(tokenizer.json, tokenizer_config.json), a hub id like org/name, or leave it unset to use model.path"
        )
    _check_hub_id("model.tokenizer_path", path, "tokenizer_config.json", required=False)
    return path


def _check_causal_lm(path: str, cfg: ModelConfig, key: str) -> None:
    """What from_pretrained would fail on, or load wrongly, checked from config.json and file names."""
    directory = Path(path)
    if directory.is_dir() and not any(any(directory.glob(pattern)) for pattern in _WEIGHT_FILES):
        raise ConfigError(
            f"{key} {path!r} has a config.json but no weights (model.safetensors or pytorch_model.bin): "
            "save the model there with save_pretrained, or finish copying it"
        )
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{key} {path!r}: its config.json cannot be read: {exc}") from None
    remote_classes = getattr(config, "auto_map", None) or {}  # trust_remote_code models name their own
    if type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING and "AutoModelForCausalLM" not in remote_classes:
        raise ConfigError(
            f"{key} {path!r} holds a {config.model_type!r} model ({', '.join(config.architectures or [])}), which "
            "has no causal-LM class: point it at a causal language model (a ...ForCausalLM checkpoint)"
        )


def load_causal_lm(path: str, cfg: ModelConfig, dtype: torch.dtype | None = None) -> torch.nn.Module:
    """``dtype`` overrides ``cfg.dtype`` (e.g. fp32 master weights under FSDP2 mixed precision).
    A checkpoint that cannot be loaded, or only with weights missing or of the wrong shape
    (transformers would fill them with random values), raises ``ConfigError``."""
    key = "model.path" if path == cfg.path else "the checkpoint's policy"
    _check_causal_lm(path, cfg, key)
    try:
        with quiet_progress_bars():
            model, info = AutoModelForCausalLM.from_pretrained(
                path, dtype=dtype or DTYPES[cfg.dtype], trust_remote_code=cfg.trust_remote_code,
                output_loading_info=True, ignore_mismatched_sizes=True,
            )
    except (OSError, SafetensorError) as exc:
        raise ConfigError(f"{key} {path!r}: its weights cannot be loaded: {exc}") from None
    try:
        check_loading_info(info, path, type(model).__name__, hint=f"Point {key} at a causal language model "
                           "saved with save_pretrained, with the config.json it was saved with.")
    except ValueError as exc:
        raise ConfigError(f"{key}: {exc}") from None
    return model

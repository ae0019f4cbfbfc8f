"""Loading the policy and reference models (quietly), and checking the model path early."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM
from transformers.utils import logging as hf_logging

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


def check_model_path(path: str) -> str:
    """The model directory ``path`` names: itself, or the ``policy/`` inside an rpp
    checkpoint directory (``output_dir/checkpoints/step_N``); a clear error otherwise."""
    p = Path(path).expanduser()
    looks_local = path.startswith((".", "/", "~")) or path.count("/") != 1
    if not looks_local or (p / "config.json").is_file():
        return path
    if (p / "policy" / "config.json").is_file():
        return str(p / "policy")  # an rpp checkpoint: its Hugging Face model is policy/
    hint = ""
    if (p / "checkpoints").is_dir():
        hint = f" It looks like an rpp run directory: its models are in {p / 'checkpoints'}/step_N/policy."
    raise ConfigError(
        f"model.path {path!r} is not a Hugging Face model directory (no config.json there); "
        f"point it at a directory saved with save_pretrained, or a hub id like org/name.{hint}"
    )


def load_causal_lm(path: str, cfg: ModelConfig, dtype: torch.dtype | None = None) -> torch.nn.Module:
    """``dtype`` overrides ``cfg.dtype`` (e.g. fp32 master weights under FSDP2 mixed precision)."""
    with quiet_progress_bars():
        return AutoModelForCausalLM.from_pretrained(
            path, dtype=dtype or DTYPES[cfg.dtype], trust_remote_code=cfg.trust_remote_code
        )

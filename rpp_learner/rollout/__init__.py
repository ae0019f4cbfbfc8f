"""Rollout engines behind one interface (see base.py); ``make_engine`` picks one from the config."""

from __future__ import annotations

import torch

from rpp_learner.config import Config
from rpp_learner.rollout.base import RolloutBatch, RolloutEngine, SamplingParams

__all__ = ["RolloutBatch", "RolloutEngine", "SamplingParams", "check_engine", "eos_token_ids", "make_engine"]


def eos_token_ids(tokenizer, model: torch.nn.Module) -> list[int]:
    """Every id that ends a response: the tokenizer's EOS and the model's generation EOS(s)."""
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(gen_eos, int):
        ids.add(gen_eos)
    elif gen_eos:
        ids.update(gen_eos)
    return sorted(ids)



def check_engine(cfg: Config) -> None:
    """Refuse an engine that cannot run here before any model loads (rpp-train exits 2)."""
    if cfg.rollout.engine == "vllm":
        from rpp_learner.rollout.vllm_engine import check_vllm_sampling, check_vllm_usable

        check_vllm_usable()
        check_vllm_sampling(cfg)


def make_engine(
    cfg: Config, model: torch.nn.Module, eos_ids: list[int], pad_id: int, owns_weights: bool = False
) -> RolloutEngine:
    """``owns_weights``: ``model`` is the HF engine's own copy of the policy (not the policy
    module itself), so the trainer pushes each update into it."""
    if cfg.rollout.engine == "hf":
        from rpp_learner.rollout.hf import HFRolloutEngine

        return HFRolloutEngine(model, eos_ids, pad_id, cfg.rollout.generation_batch_prompts, owns_weights=owns_weights)
    from rpp_learner.rollout.vllm_engine import VLLMRolloutEngine  # imports vLLM only when used

    return VLLMRolloutEngine(cfg, model, eos_ids, pad_id)

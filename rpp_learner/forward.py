"""Log-probabilities of sampled response tokens under a causal LM.

Rows are ``[prompt (left-padded) | response (right-padded)]``. Position ids come from the
attention mask, exactly as ``generate`` computes them, so the log-probs of the sampling
policy match what it sampled with (ratio = 1 before the first update).

Rows that share a prompt (the n samples of one prompt, side by side in a micro-batch) run
that prompt once (``shared_prompt_logits``). Only what the loss needs is computed: the LM
head runs on the response positions only (``logits_to_keep``, when the model's forward
takes it), and the log-prob of the chosen token is ``logit[y] - logsumexp(logits)``
rather than a full-vocabulary ``log_softmax`` followed by a gather (same value, no
[B, T, V] log-prob tensor).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Iterator

import torch


@functools.lru_cache(maxsize=32)
def _forward_parameters(forward_type: type) -> frozenset[str]:
    try:
        return frozenset(inspect.signature(forward_type.forward).parameters)
    except (TypeError, ValueError):
        return frozenset()


def takes_logits_to_keep(forward_type: type) -> bool:
    return "logits_to_keep" in _forward_parameters(forward_type)


def cache_argument_name(forward_type: type) -> str | None:
    """What the model's forward calls its KV cache: ``cache`` from transformers 5.24 on,
    ``past_key_values`` before; None if it takes neither."""
    parameters = _forward_parameters(forward_type)
    return next((name for name in ("cache", "past_key_values") if name in parameters), None)


def _base_model(model: torch.nn.Module) -> torch.nn.Module:
    """The module under a DDP (``.module``) wrapper, whose forward signature is the model's."""
    return getattr(model, "module", model)


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log softmax(logits / temperature)[tokens], in fp32, without a [.., V] log-prob tensor."""
    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    chosen = logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    return chosen - torch.logsumexp(logits, dim=-1)


def response_logprobs(
    model: torch.nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    temperature: float = 1.0,
    share_prompts: bool = True,
) -> torch.Tensor:
    """log pi(y_t | x, y_<t) for every response token, [B, T] fp32 (0 at padding).

    Logits are divided by the sampling temperature: the policy that sampled is
    softmax(logits / temperature), and the ratio must be taken against that policy.
    ``share_prompts``: rows with the same prompt (a prompt's n samples) run the prompt once
    and read its KV cache (``shared_prompt_logits``); the same values, less compute.
    """
    width = int(response_mask.sum(dim=1).max().item()) or 1  # drop all-padding columns
    resp = response_ids[:, :width]
    attention = torch.cat([prompt_mask, response_mask[:, :width]], dim=1)
    positions = (attention.cumsum(dim=1) - 1).clamp(min=0)
    unique, inverse = _unique_prompts(prompt_ids, prompt_mask) if share_prompts else (None, None)
    if unique is not None and len(unique) < len(resp) and _can_share_prompts(model):
        logits = shared_prompt_logits(model, prompt_ids, resp, attention, positions, unique, inverse)
    else:
        kwargs = {}
        if takes_logits_to_keep(type(_base_model(model))):
            # The logits at the last prompt token and the response tokens but the last one
            # predict the response; width + 1 positions from the end, the last one unused.
            kwargs["logits_to_keep"] = width + 1
        input_ids = torch.cat([prompt_ids, resp], dim=1)
        logits = model(input_ids=input_ids, attention_mask=attention, position_ids=positions, **kwargs).logits
        logits = logits[:, -(width + 1) : -1]
    logp = token_logprobs(logits, resp, temperature)
    out = torch.zeros(response_ids.shape, dtype=torch.float32, device=logp.device)
    out[:, :width] = logp * response_mask[:, :width]
    return out


@contextlib.contextmanager
def checkpointing_active(model: torch.nn.Module) -> Iterator[None]:
    """Gradient checkpointing on, in a model kept in eval mode.

    transformers recomputes a checkpointed layer only when that layer is in training mode,
    and rpp keeps the policy in eval mode (no dropout: the ratio and the sampler's log-probs
    need the deterministic forward), so ``gradient_checkpointing_enable()`` alone does
    nothing. This marks the checkpointed layers themselves as training, not their
    submodules: dropout and attention dropout stay off.
    """
    layers = [m for m in _base_model(model).modules() if getattr(m, "gradient_checkpointing", False)]
    for layer in layers:
        layer.training = True
    try:
        yield
    finally:
        for layer in layers:
            layer.training = False


def _unique_prompts(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One row index per distinct (prompt, mask), and each row's distinct prompt."""
    rows = torch.cat([prompt_ids, prompt_mask.to(prompt_ids.dtype)], dim=1)
    _, inverse = torch.unique(rows, dim=0, return_inverse=True)
    first = torch.full((int(inverse.max()) + 1,), len(rows), dtype=torch.long, device=rows.device)
    first.scatter_reduce_(0, inverse, torch.arange(len(rows), device=rows.device), reduce="amin")
    return first, inverse


def _can_share_prompts(model: torch.nn.Module) -> bool:
    """A KV cache can carry the prompt into the response pass: not under gradient
    checkpointing, which turns the cache off while it records the graph."""
    base = _base_model(model)
    checkpointing = any(getattr(m, "gradient_checkpointing", False) for m in base.modules())
    return (takes_logits_to_keep(type(base)) and cache_argument_name(type(base)) is not None
            and not (checkpointing and torch.is_grad_enabled()))


def shared_prompt_logits(
    model: torch.nn.Module,
    prompt_ids: torch.Tensor,
    resp: torch.Tensor,
    attention: torch.Tensor,
    positions: torch.Tensor,
    unique: torch.Tensor,
    inverse: torch.Tensor,
) -> torch.Tensor:
    """The logits that predict each response token, [B, W, V], with each distinct prompt run once.

    Pass 1 runs the U distinct prompts and keeps their KV cache; the cache is then indexed out
    to the B rows (in the update, its backward sums the rows' gradients into the prompt's),
    and pass 2 runs only the response tokens on top of it. The prompt's last logits predict
    the first response token. With n samples per prompt this saves (n - 1) / n of the prompt
    tokens' compute, in every forward and backward.
    """
    p = prompt_ids.shape[1]
    cache_argument = cache_argument_name(type(_base_model(model)))
    first = model(
        input_ids=prompt_ids[unique], attention_mask=attention[unique, :p], position_ids=positions[unique, :p],
        use_cache=True, logits_to_keep=1,
    )
    cache = getattr(first, cache_argument)
    cache.batch_select_indices(inverse)
    second = model(
        input_ids=resp, attention_mask=attention, position_ids=positions[:, p:], use_cache=True,
        logits_to_keep=resp.shape[1], **{cache_argument: cache},
    )
    return torch.cat([first.logits[inverse, -1:], second.logits[:, :-1]], dim=1)


@torch.no_grad()
def batched_logprobs(
    model: torch.nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    micro_batch_size: int,
    temperature: float,
    device: torch.device,
    share_prompts: bool = True,
) -> torch.Tensor:
    """``response_logprobs`` over the whole batch in micro-batches, without gradients."""
    parts = []
    for s in range(0, len(response_ids), micro_batch_size):
        rows = slice(s, s + micro_batch_size)
        parts.append(
            response_logprobs(
                model,
                prompt_ids[rows].to(device),
                prompt_mask[rows].to(device),
                response_ids[rows].to(device),
                response_mask[rows].to(device),
                temperature,
                share_prompts,
            ).cpu()
        )
    return torch.cat(parts)

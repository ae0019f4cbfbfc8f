"""Log-probabilities of sampled response tokens under a causal LM.

Rows are ``[prompt (left-padded) | response (right-padded)]``. Position ids come from the
attention mask, exactly as ``generate`` computes them, so the log-probs of the sampling
policy match what it sampled with (ratio = 1 before the first update).

Only what the loss needs is computed: the LM head runs on the response positions only
(``logits_to_keep``, when the model's forward takes it), and the log-prob of the chosen
token is ``logit[y] - logsumexp(logits)`` rather than a full-vocabulary ``log_softmax``
followed by a gather (same value, no [B, T, V] log-prob tensor).
"""

from __future__ import annotations

import functools
import inspect

import torch


@functools.lru_cache(maxsize=32)
def _takes_logits_to_keep(forward_type: type) -> bool:
    try:
        return "logits_to_keep" in inspect.signature(forward_type.forward).parameters
    except (TypeError, ValueError):
        return False


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
) -> torch.Tensor:
    """log pi(y_t | x, y_<t) for every response token, [B, T] fp32 (0 at padding).

    Logits are divided by the sampling temperature: the policy that sampled is
    softmax(logits / temperature), and the ratio must be taken against that policy.
    """
    width = int(response_mask.sum(dim=1).max().item()) or 1  # drop all-padding columns
    resp = response_ids[:, :width]
    input_ids = torch.cat([prompt_ids, resp], dim=1)
    attention = torch.cat([prompt_mask, response_mask[:, :width]], dim=1)
    positions = (attention.cumsum(dim=1) - 1).clamp(min=0)
    kwargs = {}
    if _takes_logits_to_keep(type(_base_model(model))):
        # The logits at the last prompt token and the response tokens but the last one
        # predict the response; width + 1 positions from the end, the last one unused.
        kwargs["logits_to_keep"] = width + 1
    logits = model(input_ids=input_ids, attention_mask=attention, position_ids=positions, **kwargs).logits
    logits = logits[:, -(width + 1) : -1]
    logp = token_logprobs(logits, resp, temperature)
    out = torch.zeros(response_ids.shape, dtype=torch.float32, device=logp.device)
    out[:, :width] = logp * response_mask[:, :width]
    return out


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
            ).cpu()
        )
    return torch.cat(parts)

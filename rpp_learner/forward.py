"""Log-probabilities of sampled response tokens under a causal LM.

Rows are ``[prompt (left-padded) | response (right-padded)]``. Position ids come from the
attention mask, exactly as ``generate`` computes them, so the log-probs of the sampling
policy match what it sampled with (ratio = 1 before the first update).
"""

from __future__ import annotations

import torch


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
    logits = model(input_ids=input_ids, attention_mask=attention, position_ids=positions).logits
    logits = logits[:, prompt_ids.shape[1] - 1 : -1].float() / temperature
    logp = torch.log_softmax(logits, dim=-1).gather(-1, resp.unsqueeze(-1)).squeeze(-1)
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

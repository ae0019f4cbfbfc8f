"""The shared-prompt forward: a prompt's n samples run the prompt once and share its KV cache.

It must give the log-probs and the gradients of the plain forward (to float rounding), for
left-padded prompts of different lengths, ragged responses and rows in any order, and
step aside where a cache cannot carry the prompt (gradient checkpointing).
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from rpp_learner.forward import batched_logprobs, checkpointing_active, response_logprobs
from tests.helpers.tiny_models import build_tiny_policy


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return AutoModelForCausalLM.from_pretrained(build_tiny_policy(tmp_path_factory.mktemp("policy"))).eval()


def rows(n: int = 3, shuffle: bool = False):
    """Two prompts (the second left-padded by 2) x n samples, ragged responses."""
    g = torch.Generator().manual_seed(0)
    prompts = torch.randint(3, 300, (2, 7), generator=g)
    prompt_mask = torch.ones(2, 7, dtype=torch.long)
    prompts[1, :2], prompt_mask[1, :2] = 0, 0
    prompt_ids, prompt_mask = prompts.repeat_interleave(n, 0), prompt_mask.repeat_interleave(n, 0)
    response_ids = torch.randint(3, 300, (2 * n, 6), generator=g)
    response_mask = torch.ones(2 * n, 6, dtype=torch.long)
    response_mask[0, 4:], response_mask[-1, 1:] = 0, 0
    response_ids = response_ids * response_mask
    order = torch.randperm(2 * n, generator=g) if shuffle else torch.arange(2 * n)
    return prompt_ids[order], prompt_mask[order], response_ids[order], response_mask[order]


def count_forwards(model, monkeypatch) -> list[int]:
    """The batch size of every forward the model runs."""
    sizes: list[int] = []
    original = type(model).forward

    def counting(self, *args, **kwargs):
        sizes.append(kwargs["input_ids"].shape[0])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(model), "forward", counting)
    return sizes


@pytest.mark.parametrize("shuffle", [False, True])
def test_shared_prompt_logprobs_and_gradients_equal_the_plain_forward(model, monkeypatch, shuffle):
    batch = rows(shuffle=shuffle)
    model.zero_grad()
    plain = response_logprobs(model, *batch, temperature=0.7, share_prompts=False)
    plain.sum().backward()
    plain_grads = [p.grad.clone() for p in model.parameters()]

    model.zero_grad()
    sizes = count_forwards(model, monkeypatch)
    shared = response_logprobs(model, *batch, temperature=0.7, share_prompts=True)
    shared.sum().backward()
    assert sizes == [2, 6]  # the 2 distinct prompts once, then the 6 responses on their cache

    assert torch.allclose(shared, plain, atol=1e-5)
    assert (shared[batch[3] == 0] == 0).all()  # padding stays 0
    for p, g in zip(model.parameters(), plain_grads, strict=True):
        assert torch.allclose(p.grad, g, atol=1e-4, rtol=1e-4)
    assert any(g.abs().max() > 1e-3 for g in plain_grads)  # the gradients compared are not all ~0


def test_distinct_prompts_take_the_plain_forward(model, monkeypatch):
    batch = rows(n=1)
    sizes = count_forwards(model, monkeypatch)
    response_logprobs(model, *batch, temperature=1.0, share_prompts=True)
    assert sizes == [2]


def test_batched_logprobs_shares_within_each_micro_batch(model, monkeypatch):
    batch = rows(n=4)  # rows 0-3 prompt A, 4-7 prompt B
    plain = batched_logprobs(model, *batch, micro_batch_size=4, temperature=1.0, device=torch.device("cpu"),
                             share_prompts=False)
    sizes = count_forwards(model, monkeypatch)
    shared = batched_logprobs(model, *batch, micro_batch_size=4, temperature=1.0, device=torch.device("cpu"))
    assert sizes == [1, 4, 1, 4]
    assert torch.allclose(shared, plain, atol=1e-5)


def test_gradient_checkpointing_takes_the_plain_forward_in_the_update(model, monkeypatch):
    batch = rows()
    model.gradient_checkpointing_enable()
    try:
        sizes = count_forwards(model, monkeypatch)
        response_logprobs(model, *batch, temperature=1.0, share_prompts=True).sum().backward()
        assert sizes == [6]  # with gradients: no cache, so no sharing
        with torch.no_grad():
            response_logprobs(model, *batch, temperature=1.0, share_prompts=True)
        assert sizes == [6, 2, 6]  # without gradients the cache is fine
    finally:
        model.gradient_checkpointing_disable()


def test_gradient_checkpointing_recomputes_in_eval_mode_with_the_same_gradients(model, monkeypatch):
    """transformers checkpoints a layer only in training mode; rpp's policy stays in eval
    mode, so the update turns it on layer by layer (checkpointing_active)."""
    batch = rows()
    calls: list[int] = []
    mlp_type = type(model.model.layers[0].mlp)  # inside each layer: the checkpoint wraps the layer's forward
    mlp_forward = mlp_type.forward
    monkeypatch.setattr(mlp_type, "forward", lambda self, x: (calls.append(1), mlp_forward(self, x))[1])
    model.zero_grad()
    response_logprobs(model, *batch, share_prompts=False).sum().backward()
    plain_grads, plain_calls = [p.grad.clone() for p in model.parameters()], len(calls)
    assert plain_calls == len(model.model.layers)

    model.gradient_checkpointing_enable()
    try:
        calls.clear()
        model.zero_grad()
        with checkpointing_active(model):
            response_logprobs(model, *batch, share_prompts=False).sum().backward()
        assert len(calls) == 2 * plain_calls  # each layer ran again in the backward
        assert not any(m.training for m in model.modules())  # eval mode again afterwards
    finally:
        model.gradient_checkpointing_disable()
    for p, g in zip(model.parameters(), plain_grads, strict=True):
        assert torch.allclose(p.grad, g, atol=1e-6)

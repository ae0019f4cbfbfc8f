"""Rollout engines: masks, EOS, truncation, n samples, and draws fixed by the seed."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rpp_learner.data import PromptOrder, encode_prompt
from rpp_learner.rollout import SamplingParams, eos_token_ids
from rpp_learner.rollout.hf import HFRolloutEngine, response_mask_until_eos
from tests.helpers.tiny_models import build_tiny_policy


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    path = build_tiny_policy(tmp_path_factory.mktemp("policy"), chat_template=True)
    return AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)


def test_mask_runs_up_to_and_including_the_first_eos():
    ids = torch.tensor([[5, 0, 7, 0], [5, 6, 7, 8]])
    mask, truncated = response_mask_until_eos(ids, eos_ids=[0])
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]
    assert truncated.tolist() == [False, True]


def test_hf_engine_shapes_masks_and_seeded_draws(policy):
    model, tok = policy
    engine = HFRolloutEngine(model, eos_token_ids(tok, model), tok.pad_token_id, batch_prompts=2)
    prompts = [tok(t)["input_ids"] for t in ["hi", "what is 12 + 7?", "the cat", "2x = 6"]]
    params = SamplingParams(n=3, max_new_tokens=6)
    batch = engine.generate(prompts, params, seed=11)
    assert batch.response_ids.shape[0] == 12 and batch.response_ids.shape[1] <= 6
    for row in range(12):  # prompts are left-padded and repeated n times, in order
        p = prompts[row // 3]
        assert batch.prompt_ids[row, batch.prompt_mask[row].bool()].tolist() == p
        assert batch.prompt_mask[row, -len(p):].all() and not batch.prompt_mask[row, : -len(p)].any()
    lengths = batch.response_mask.sum(1)
    assert (lengths >= 1).all()
    assert torch.equal(batch.truncated, lengths.eq(6) & ~torch.isin(
        batch.response_ids.gather(1, (lengths - 1).unsqueeze(1)).squeeze(1), torch.tensor(engine.eos_ids)))
    # Same seed, same draws; prompts 2..3 alone draw what they drew as the second chunk.
    again = engine.generate(prompts, params, seed=11)
    assert torch.equal(batch.response_ids, again.response_ids)
    tail = engine.generate(prompts[2:], params, seed=11 + 2)
    torch.testing.assert_close(tail.response_ids, batch.response_ids[6:, : tail.response_ids.shape[1]])
    greedy = engine.generate(prompts[:1], SamplingParams(n=2, max_new_tokens=6, greedy=True), seed=0)
    assert torch.equal(greedy.response_ids[0], greedy.response_ids[1])


def test_chat_template_and_prompt_order(policy):
    _, tok = policy
    ids = encode_prompt(tok, "hi", apply_chat_template=True, system_prompt="be brief", max_tokens=512)
    assert tok.decode(ids) == "<|system|>be brief\n<|user|>hi\n<|assistant|>"
    assert encode_prompt(tok, "hi", apply_chat_template=False, system_prompt=None, max_tokens=512) == tok("hi")["input_ids"]
    assert len(encode_prompt(tok, "what is 12 + 7?", apply_chat_template=False, system_prompt=None, max_tokens=3)) == 3
    order = PromptOrder(5, seed=1)
    first_epoch = order.indices(0, 5)
    assert sorted(first_epoch) == list(range(5))
    assert order.indices(3, 4)[:2] == first_epoch[3:] and sorted(order.indices(5, 5)) == list(range(5))

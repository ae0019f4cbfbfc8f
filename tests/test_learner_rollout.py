"""Rollout engines: masks, EOS, truncation, n samples, and draws fixed by the seed."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LogitsProcessorList

from rpp_learner.data import PromptOrder, encode_prompt
from rpp_learner.rollout import SamplingParams, eos_token_ids
from rpp_learner.rollout.base import RolloutBatch, concat_batches, pad_left, pad_right
from rpp_learner.rollout.hf import HFRolloutEngine, response_mask_until_eos, shared_prefix_cache
from rpp_learner.rollout.sampling import sample_inverse_cdf, sampling_processors
from rpp_learner.step_stats import sampler_mismatch_metrics
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
    greedy = engine.generate(prompts[:1], SamplingParams(n=2, max_new_tokens=6, greedy=True), seed=5)
    assert torch.equal(greedy.response_ids[0], greedy.response_ids[1])


def test_a_shared_prompt_prefill_draws_what_a_prefill_per_sample_draws(policy):
    """Each prompt's prefill runs once and its cache is repeated for the n samples: the same
    logits up to float rounding, so the same seeded draws as n copies of the prompt each."""
    model, tok = policy
    prompts = [tok(t)["input_ids"] for t in ["hi", "what is 12 + 7?", "the cat sat", "2x = 6"]]  # padded
    params = SamplingParams(n=4, max_new_tokens=8, temperature=1.3, top_p=0.95)
    batches = {share: HFRolloutEngine(model, eos_token_ids(tok, model), tok.pad_token_id, batch_prompts=4,
                                      share_prompt_prefill=share).generate(prompts, params, seed=3)
               for share in (True, False)}
    assert torch.equal(batches[True].response_ids, batches[False].response_ids)
    assert torch.equal(batches[True].response_mask, batches[False].response_mask)
    assert len(set(map(tuple, batches[True].response_ids[:4].tolist()))) > 1  # n different samples
    ids, mask = pad_left(prompts, tok.pad_token_id)
    [cache] = shared_prefix_cache(model, ids, mask, copies=4).values()  # the shared path did run
    assert cache.get_seq_length() == ids.shape[1] - 1


def test_min_new_tokens_holds_eos_back(policy):
    model, tok = policy
    engine = HFRolloutEngine(model, eos_token_ids(tok, model), tok.pad_token_id, batch_prompts=4)
    prompts = [tok(t)["input_ids"] for t in ["hi", "what is 12 + 7?", "the cat sat", "2x = 6"]]
    free = engine.generate(prompts, SamplingParams(n=64, max_new_tokens=12, temperature=3.0), seed=0)
    held = engine.generate(prompts, SamplingParams(n=64, max_new_tokens=12, min_new_tokens=8, temperature=3.0),
                           seed=0)
    assert (free.response_mask.sum(1) < 8).any(), "no early EOS drawn: the test would show nothing"
    assert (held.response_mask.sum(1) >= 8).all()


def test_chat_template_and_prompt_order(policy):
    _, tok = policy
    ids = encode_prompt(tok, "hi", apply_chat_template=True, system_prompt="be brief", max_tokens=512)
    assert tok.decode(ids) == "<|system|>be brief\n<|user|>hi\n<|assistant|>"
    assert encode_prompt(
        tok, "hi", apply_chat_template=False, system_prompt=None, max_tokens=512
    ) == tok("hi")["input_ids"]
    assert len(encode_prompt(tok, "what is 12 + 7?", apply_chat_template=False, system_prompt=None, max_tokens=3)) == 3
    order = PromptOrder(5, seed=5)
    first_epoch = order.indices(0, 5)
    assert sorted(first_epoch) == list(range(5))
    assert order.indices(3, 4)[:2] == first_epoch[3:] and sorted(order.indices(5, 5)) == list(range(5))


def test_sampler_logprobs_survive_the_chunk_join_and_measure_the_gap():
    """An engine's own log-probs (vLLM's) are re-padded with the responses when chunks are
    joined, and the gap metric compares them with the learner's over response tokens only."""
    a = RolloutBatch(*pad_left([[1, 2]], 0), *pad_right([[5, 6, 7]], 0), torch.tensor([True]),
                     sampler_logprobs=torch.tensor([[-0.5, -1.0, -2.0]]))
    b = RolloutBatch(*pad_left([[3]], 0), *pad_right([[8]], 0), torch.tensor([False]),
                     sampler_logprobs=torch.tensor([[-0.25]]))
    joined = concat_batches([a, b], pad_id=0)
    assert joined.sampler_logprobs.tolist() == [[-0.5, -1.0, -2.0], [-0.25, 0.0, 0.0]]
    policy = torch.tensor([[-0.5, -1.5, -2.0], [-0.75, 9.0, 9.0]])  # 9.0: padding, ignored
    metrics = sampler_mismatch_metrics(joined, policy)
    assert metrics["rollout/sampler_logprob_gap"] == pytest.approx((0.5 + 0.5) / 4)
    assert metrics["rollout/sampler_logprob_gap_max"] == pytest.approx(0.5)
    hf_like = concat_batches(
        [a, RolloutBatch(b.prompt_ids, b.prompt_mask, b.response_ids, b.response_mask, b.truncated)], 0
    )
    assert hf_like.sampler_logprobs is None and sampler_mismatch_metrics(hf_like, policy) == {}


def test_inverse_cdf_draws_follow_the_probabilities_and_never_a_zero():
    torch.manual_seed(0)
    p = torch.tensor([0.0, 0.1, 0.0, 0.6, 0.3, 0.0, 0.0])  # zeros inside and at the end
    draws = sample_inverse_cdf(p.repeat(200_000, 1))
    freq = torch.bincount(draws, minlength=len(p)).double() / len(draws)
    assert freq[p == 0].sum() == 0
    torch.testing.assert_close(freq, p.double(), atol=4e-3, rtol=0)
    # A row whose float32 sum is not exactly 1 is drawn in proportion, never past its end.
    q = torch.tensor([[0.25, 0.25, 0.0]]) * 1.0000001
    assert sample_inverse_cdf(q.repeat(10_000, 1)).max() <= 1


@pytest.mark.parametrize(("temperature", "top_k", "top_p"), [(1.0, 0, 1.0), (1.5, 5, 1.0), (1.3, 0, 0.9)])
def test_hf_engine_samples_the_policy_distribution(policy, temperature, top_k, top_p):
    """The engine's first tokens, over many draws, against the distribution HF's own warpers
    define from the policy's logits (temperature, then top-k, then top-p)."""
    model, tok = policy
    model = copy.deepcopy(model)
    with torch.no_grad():  # a random model's next token is nearly uniform: sharpen it, so
        model.model.norm.weight.mul_(4.0)  # a few thousand draws can tell distributions apart
    engine = HFRolloutEngine(model, eos_token_ids(tok, model), tok.pad_token_id)
    prompt = tok("what is 12 + 7?")["input_ids"]
    n = 4000
    batch = engine.generate([prompt], SamplingParams(n=n, max_new_tokens=1, temperature=temperature, top_k=top_k,
                                                     top_p=top_p), seed=4)
    with torch.no_grad():
        logits = model(torch.tensor([prompt])).logits[:, -1].float()
    warped = LogitsProcessorList(sampling_processors(temperature, top_k, top_p)[:-1])(None, logits)
    expected = warped.softmax(-1)[0].double()
    freq = torch.bincount(batch.response_ids[:, 0], minlength=len(expected)).double()[: len(expected)] / n
    assert freq[expected == 0].sum() == 0, "drew a token the warpers removed"
    # Total variation over the 8 likeliest tokens and the rest together (a flat tail of
    # hundreds of rare tokens would make any full-vocabulary distance chance-dominated).
    top = expected.topk(8).indices
    def buckets(q):
        return torch.cat([q[top], (q.sum() - q[top].sum()).unsqueeze(0)])
    tv = 0.5 * (buckets(freq) - buckets(expected)).abs().sum()
    assert tv < 0.03, f"total variation {tv:.4f} (about 0.01 by chance)"
    assert expected.max() < 0.8, "one token takes it all: the test would not tell a sampler from argmax"

"""HF scorers against direct, unpadded, one-sample-at-a-time forwards of the same model."""

from __future__ import annotations

import asyncio

import pytest
import torch
import transformers
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
    LlamaForTokenClassification,
)

from reward_server.scorers.hf_common import plan_micro_batches
from reward_server.scorers.hf_outcome import HFOutcomeConfig, HFOutcomeScorer
from reward_server.scorers.hf_process import (
    StepTagCausalLMConfig,
    StepTagCausalLMPRM,
    StepTagClassifierConfig,
    StepTagClassifierPRM,
)
from reward_server.steps import span_text, split_steps
from reward_server.types import Sample, Span
from tests.scorer_models import (
    MIXED_SAMPLES,
    PRM_SEPARATOR,
    STEP_TAG,
    save_tiny_model,
    train_tokenizer,
)

TOL = 1e-5


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer()


@pytest.fixture(scope="module")
def outcome_path(tmp_path_factory, tokenizer):
    return save_tiny_model(LlamaForSequenceClassification, tmp_path_factory.mktemp("orm"), tokenizer, num_labels=1)


@pytest.fixture(scope="module")
def classifier_path(tmp_path_factory, tokenizer):
    return save_tiny_model(LlamaForTokenClassification, tmp_path_factory.mktemp("prm_cls"), tokenizer, num_labels=2)


@pytest.fixture(scope="module")
def causal_path(tmp_path_factory, tokenizer):
    return save_tiny_model(LlamaForCausalLM, tmp_path_factory.mktemp("prm_lm"), tokenizer)


def mixed_samples() -> list[Sample]:
    return [Sample(id=f"s{i}", prompt=p, response=r) for i, (p, r) in enumerate(MIXED_SAMPLES)]


def run(scorer, samples):
    return asyncio.run(scorer.score(samples))


def steps_of(sample: Sample) -> list[str]:
    return [span_text(sample.response, s) for s in (sample.steps or split_steps(sample.response))]


# Direct references: the text built by hand, one sample, no padding, no scorer code.

def direct_outcome(model, tokenizer, sample: Sample) -> float:
    ids = torch.tensor([tokenizer.encode(sample.prompt + sample.response)])
    return model(input_ids=ids).logits[0, 0].item()


def direct_classifier(model, tokenizer, sample: Sample) -> list[float]:
    text = sample.prompt + "\n" + "".join(s + PRM_SEPARATOR for s in steps_of(sample))
    ids = torch.tensor([tokenizer.encode(text)])
    probs = model(input_ids=ids).logits[0].softmax(-1)[:, 1]
    return probs[ids[0] == tokenizer.convert_tokens_to_ids(PRM_SEPARATOR)].tolist()


def direct_causal(model, tokenizer, sample: Sample) -> list[float]:
    text = sample.prompt + " " + "\n".join(s + STEP_TAG for s in steps_of(sample))
    ids = torch.tensor([tokenizer.encode(text)])
    good, bad = tokenizer.convert_tokens_to_ids(["+", "-"])
    pair = model(input_ids=ids).logits[0][:, [good, bad]].softmax(-1)[:, 0]
    return pair[ids[0] == tokenizer.convert_tokens_to_ids(STEP_TAG)].tolist()


def test_micro_batches_respect_token_and_sample_budgets():
    lengths = [5, 50, 7, 30, 30, 2, 100]
    batches = plan_micro_batches(lengths, max_tokens=64, max_samples=2)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert batches[0] == [6]  # too long for any budget: alone
    for batch in batches[1:]:
        assert len(batch) <= 2 and len(batch) * max(lengths[i] for i in batch) <= 64


@torch.inference_mode()
def test_outcome_scores_equal_direct_forward(outcome_path, tokenizer):
    # A small token budget forces several micro-batches of mixed lengths with padding.
    scorer = HFOutcomeScorer(HFOutcomeConfig(model=str(outcome_path), max_batch_tokens=64, dtype="float32"))
    samples = mixed_samples()
    results = run(scorer, samples)
    model = AutoModelForSequenceClassification.from_pretrained(outcome_path).eval()
    expected = [direct_outcome(model, tokenizer, s) for s in samples]
    assert [r.id for r in results] == [s.id for s in samples]
    assert all(r.ok for r in results)
    assert [r.outcome for r in results] == pytest.approx(expected, abs=TOL)
    assert max(expected) - min(expected) > 1e-2  # the model tells inputs apart
    # The server's batch budget counts UTF-8 bytes, which bound the tokens from above.
    for sample in samples:
        assert scorer.cost(sample) == len((sample.prompt + sample.response).encode("utf-8"))
        assert scorer.cost(sample) >= len(tokenizer.encode(sample.prompt + sample.response))


@torch.inference_mode()
def test_classifier_prm_equals_direct_forward_and_returns_split_spans(classifier_path, tokenizer):
    scorer = StepTagClassifierPRM(StepTagClassifierConfig(model=str(classifier_path), max_batch_tokens=80))
    samples = mixed_samples()
    results = run(scorer, samples)
    model = AutoModelForTokenClassification.from_pretrained(classifier_path).eval()
    for sample, result in zip(samples, results, strict=True):
        assert result.ok, result.error
        assert [s.span for s in result.steps] == split_steps(sample.response)
        expected = direct_classifier(model, tokenizer, sample)
        assert len(expected) == len(result.steps)
        assert [s.score for s in result.steps] == pytest.approx(expected, abs=TOL)
    assert len(results[3].steps) == 4


@pytest.mark.parametrize("project_tags_only", [True, False])
@torch.inference_mode()
def test_causal_prm_equals_direct_forward_with_given_steps(causal_path, tokenizer, project_tags_only):
    scorer = StepTagCausalLMPRM(StepTagCausalLMConfig(model=str(causal_path), max_batch_tokens=80))
    # True: logits only at the tags (a boolean logits_to_keep, transformers 5.22 on); False:
    # the full-vocab path, the only one older transformers have.
    if project_tags_only and not scorer._next_token_logits.keep_mask:
        assert not hasattr(transformers.modeling_utils, "slice_logits_to_keep")
        pytest.skip(f"transformers {transformers.__version__} has no boolean logits_to_keep (5.22 on)")
    scorer._next_token_logits.keep_mask = project_tags_only
    samples = mixed_samples()
    # Give sample 2 its own steps (one span, not the "\n\n" split): exactly those are scored.
    data = samples[2].response.encode()
    samples[2].steps = [Span(0, 11), Span(13, len(data))]
    results = run(scorer, samples)
    model = AutoModelForCausalLM.from_pretrained(causal_path).eval()
    for sample, result in zip(samples, results, strict=True):
        assert result.ok, result.error
        expected = direct_causal(model, tokenizer, sample)
        assert [s.score for s in result.steps] == pytest.approx(expected, abs=TOL)
    assert [s.span for s in results[2].steps] == samples[2].steps
    assert span_text(samples[2].response, results[2].steps[1].span).startswith("x = 5")


CHAT_TEMPLATE = (
    "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
)


@torch.inference_mode()
def test_chat_template_formatting_equals_direct_forward(tmp_path, tokenizer):
    path = save_tiny_model(LlamaForSequenceClassification, tmp_path, tokenizer, num_labels=1)
    tokenizer_with_template = AutoTokenizer.from_pretrained(path)
    tokenizer_with_template.chat_template = CHAT_TEMPLATE
    tokenizer_with_template.save_pretrained(path)
    scorer = HFOutcomeScorer(HFOutcomeConfig(model=str(path), chat_template=True, system_prompt="Be exact."))
    samples = mixed_samples()
    results = run(scorer, samples)
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    for sample, result in zip(samples, results, strict=True):
        text = f"<s>system: Be exact.\n<s>user: {sample.prompt}\n<s>assistant: {sample.response}\n"
        ids = torch.tensor([tokenizer.encode(text, add_special_tokens=False)])
        assert result.outcome == pytest.approx(model(input_ids=ids).logits[0, 0].item(), abs=TOL)


def test_prm_refuses_span_inside_multibyte_character_and_keeps_the_batch(classifier_path):
    scorer = StepTagClassifierPRM(StepTagClassifierConfig(model=str(classifier_path)))
    response = "计算 12 + 30 = 42"  # "计" is 3 bytes
    bad = Sample(id="cut", prompt="p", response=response, steps=[Span(0, 2)])
    out_of_range = Sample(id="far", prompt="p", response=response, steps=[Span(0, 999)])
    good = Sample(id="good", prompt="p", response=response, steps=[Span(0, 6), Span(7, len(response.encode()))])
    results = run(scorer, [bad, out_of_range, good])
    assert results[0].error.code == "INVALID_SAMPLE"
    assert "'cut'" in results[0].error.message and "UTF-8" in results[0].error.message
    assert results[1].error.code == "INVALID_SAMPLE" and "outside" in results[1].error.message
    assert results[2].ok and len(results[2].steps) == 2


def test_prm_refuses_marker_count_mismatch(causal_path):
    scorer = StepTagCausalLMPRM(StepTagCausalLMConfig(model=str(causal_path)))
    sneaky = Sample(id="tag-in-step", prompt="q", response=f"one{STEP_TAG} more\n\ntwo")
    results = run(scorer, [sneaky, Sample(id="empty", prompt="q", response="  \n\n ")])
    assert results[0].error.code == "INVALID_SAMPLE"
    assert "2 steps" in results[0].error.message and "3 marker tokens" in results[0].error.message
    assert results[1].ok and results[1].steps == []  # nothing to score is not an error


def test_too_long_sample_is_a_per_sample_error(outcome_path):
    scorer = HFOutcomeScorer(HFOutcomeConfig(model=str(outcome_path), max_length=16))
    results = run(
        scorer, [Sample(id="long", prompt="p", response="x " * 40), Sample(id="ok", prompt="p", response="4")]
    )
    assert results[0].error.code == "INVALID_SAMPLE" and "max_length 16" in results[0].error.message
    assert results[1].ok and results[1].outcome is not None


def test_bad_configuration_is_refused_at_construction(outcome_path, classifier_path, tmp_path):
    with pytest.raises(ValueError, match="one label"):
        HFOutcomeScorer(HFOutcomeConfig(model=str(classifier_path)))
    with pytest.raises(ValueError, match="not one"):
        StepTagClassifierPRM(StepTagClassifierConfig(model=str(classifier_path), separator_token="no such"))
    with pytest.raises(ValueError, match="could not load"):
        HFOutcomeScorer(HFOutcomeConfig(model=str(tmp_path / "missing")))

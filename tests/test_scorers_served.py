"""Tiny HF scorers served through a real gRPC server give the in-process results."""

from __future__ import annotations

import asyncio

import pytest
from transformers import LlamaForSequenceClassification, LlamaForTokenClassification

from reward_server.client import BlockingRewardClient
from reward_server.scorers import build_scorer
from reward_server.server import ServerConfig, start_in_thread
from reward_server.types import Sample
from tests.scorer_models import MIXED_SAMPLES, save_tiny_model, train_tokenizer


@pytest.mark.parametrize(
    ("name", "model_class", "labels"),
    [("hf-outcome", LlamaForSequenceClassification, 1), ("prm-classifier", LlamaForTokenClassification, 2)],
)
def test_served_scores_equal_in_process_scores(tmp_path, name, model_class, labels):
    path = save_tiny_model(model_class, tmp_path, train_tokenizer(), num_labels=labels)
    scorer = build_scorer(name, model=str(path), max_batch_tokens=96)
    samples = [Sample(id=f"s{i}", prompt=p, response=r) for i, (p, r) in enumerate(MIXED_SAMPLES * 3)]
    expected = asyncio.run(scorer.score(samples))
    with start_in_thread(scorer, ServerConfig(metrics_port=None, max_batch_samples=4)) as server:
        client = BlockingRewardClient(server.address, timeout_s=60)
        try:
            served = client.score(samples)
        finally:
            client.close()
    assert [r.id for r in served] == [s.id for s in samples]
    for got, want in zip(served, expected, strict=True):
        assert got.ok and want.ok
        if name == "hf-outcome":
            assert got.outcome == pytest.approx(want.outcome, abs=1e-5)
        else:
            assert got.steps and [s.span for s in got.steps] == [s.span for s in want.steps]
            assert [s.score for s in got.steps] == pytest.approx([s.score for s in want.steps], abs=1e-5)

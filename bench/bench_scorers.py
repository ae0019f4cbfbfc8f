"""Scorer-side throughput, measured side by side in one run (ratios hold on a noisy machine).

    .venv/bin/python -m bench.bench_scorers [--samples 64] [--repeats 3]

1. HF outcome scorer: length-sorted, right-padded micro-batches vs one forward per
   sample, same model, same 64 mixed-length samples.
2. Math-Shepherd-style PRM with a 32k vocabulary: logits projected only at the step tags
   (transformers 5 ``logits_to_keep`` mask) vs the full ``[B, T, vocab]`` logits.

Models are small Llama configs with random weights and a tokenizer trained on the spot
(no downloads); absolute figures depend on the machine, the ratios are the result.
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import LlamaForCausalLM, LlamaForSequenceClassification  # noqa: E402

from reward_server.scorers.hf_outcome import HFOutcomeConfig, HFOutcomeScorer  # noqa: E402
from reward_server.scorers.hf_process import StepTagCausalLMConfig, StepTagCausalLMPRM  # noqa: E402
from reward_server.types import Sample  # noqa: E402
from tests.scorer_models import save_tiny_model, train_tokenizer  # noqa: E402

MODEL = dict(hidden_size=128, intermediate_size=344, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=4, max_position_embeddings=2048, initializer_range=0.02)
WORDS = "the answer is 42 so 计算 x = 5 then café 🙂 step add carry ten".split()


def make_samples(n: int, seed: int = 0) -> list[Sample]:
    rng = random.Random(seed)
    samples = []
    for i in range(n):
        steps = ["Step: " + " ".join(rng.choices(WORDS, k=rng.randint(3, 20))) for _ in range(rng.randint(1, 4))]
        samples.append(
            Sample(id=str(i), prompt="Solve " + " ".join(rng.choices(WORDS, k=10)), response="\n\n".join(steps))
        )
    return samples


def best_of(repeats: int, fn) -> float:
    """Fastest of ``repeats`` runs, in seconds (the least disturbed by other load)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def bench_outcome(root: Path, samples: list[Sample], repeats: int) -> None:
    path = save_tiny_model(LlamaForSequenceClassification, root / "orm", train_tokenizer(), num_labels=1, **MODEL)
    scorer = HFOutcomeScorer(HFOutcomeConfig(model=str(path), dtype="float32", max_batch_tokens=8192))
    batched = best_of(repeats, lambda: scorer.score_sync(samples))
    single = best_of(repeats, lambda: [scorer.score_sync([s]) for s in samples])
    n = len(samples)
    print(f"hf-outcome, {n} samples: micro-batched {n / batched:8.1f} samples/s | "
          f"one forward per sample {n / single:8.1f} samples/s | ratio {single / batched:.2f}x")


def bench_causal_prm(root: Path, samples: list[Sample], repeats: int) -> None:
    path = save_tiny_model(LlamaForCausalLM, root / "prm", train_tokenizer(), vocab_size=32000, **MODEL)
    scorer = StepTagCausalLMPRM(StepTagCausalLMConfig(model=str(path), dtype="float32", max_batch_tokens=8192))
    assert scorer._keep_mask, "needs transformers >= 5 for tag-only logits"
    tags_only = best_of(repeats, lambda: scorer.score_sync(samples))
    scorer._keep_mask = False
    full = best_of(repeats, lambda: scorer.score_sync(samples))
    n = len(samples)
    print(f"prm-causal (vocab 32k), {n} samples: tag-only logits {n / tags_only:8.1f} samples/s | "
          f"full logits {n / full:8.1f} samples/s | ratio {full / tags_only:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    samples = make_samples(args.samples)
    with tempfile.TemporaryDirectory() as root:
        bench_outcome(Path(root), samples, args.repeats)
        bench_causal_prm(Path(root), samples, args.repeats)


if __name__ == "__main__":
    main()

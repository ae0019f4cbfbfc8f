"""REINFORCE++ math and step alignment vs the model work they sit beside; measured side by
side in one run, printed with their ratio.

    .venv/bin/python -m bench.bench_algorithms            # 512 x 1024, 8 steps each
    .venv/bin/python -m bench.bench_algorithms --quick    # 64 x 1024 (a smoke run)

1. Reward assembly (padding the step lists, dense rewards with KL, outcome and 8 PRM steps
   per sequence) + credit (sum and min) + returns + whitening, vs one forward+backward of
   the quickstart's tiny model on the same batch (target: < 2%). The forward+backward
   runs as gradient-accumulated micro-batches over the whole batch, as the trainer does.
2. decode_with_offsets (text + per-token byte ends) + reward_token_indices for every
   sequence, vs the tokenizer's plain batch_decode of the same tokens.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformers import Qwen2ForCausalLM  # noqa: E402

from quickstart.tiny_model import tiny_model_config, train_tokenizer  # noqa: E402
from reward_server.steps import split_steps  # noqa: E402
from rpp_learner.algorithms import AdvantageInputs, compute_advantages, kl_penalty, pad_steps  # noqa: E402
from rpp_learner.alignment import decode_with_offsets, reward_token_indices  # noqa: E402

STEPS = 8


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def make_batch(batch: int, length: int, vocab: int, gen: torch.Generator):
    lengths = torch.randint(length // 2, length + 1, (batch,), generator=gen)
    mask = (torch.arange(length) < lengths.unsqueeze(-1)).long()
    ids = torch.randint(0, vocab, (batch, length), generator=gen)
    # Step ends: 8 distinct sorted positions inside each response, the last on its last token.
    step_lists = []
    for n in lengths.tolist():
        ends = sorted(torch.randperm(n - 1, generator=gen)[: STEPS - 1].tolist()) + [n - 1]
        step_lists.append(ends)
    step_scores = torch.rand(batch, STEPS, generator=gen).tolist()
    return ids, mask, step_lists, step_scores


def bench_math(ids, mask, step_lists, step_scores, repeats: int) -> dict[str, float]:
    logp, ref = -torch.rand(mask.shape), -torch.rand(mask.shape)
    outcome = torch.randn(mask.shape[0])

    def run(credit: str) -> Callable[[], object]:
        def once():
            index, scores = pad_steps(step_lists, step_scores)
            inputs = AdvantageInputs(
                mask=mask,
                kl=kl_penalty(logp, ref, "k1"),
                outcome=outcome,
                step_token_index=index,
                step_scores=scores,
                group_index=torch.arange(mask.shape[0]),
                truncated=torch.zeros(mask.shape[0], dtype=torch.bool),
            )
            return compute_advantages("reinforce_pp", inputs, kl_coef=0.001, credit=credit)

        return once

    return {credit: median_seconds(run(credit), repeats) for credit in ("sum", "min")}


def bench_forward_backward(ids, mask, vocab: int, micro_batch: int) -> float:
    config = tiny_model_config(vocab)
    config.max_position_embeddings = max(config.max_position_embeddings, ids.shape[1])
    model = Qwen2ForCausalLM(config)
    model.train()

    def once():
        model.zero_grad(set_to_none=True)
        for start in range(0, ids.shape[0], micro_batch):
            mb_ids, mb_mask = ids[start : start + micro_batch], mask[start : start + micro_batch]
            logits = model(input_ids=mb_ids, attention_mask=mb_mask).logits
            logp = torch.log_softmax(logits.float(), -1).gather(-1, mb_ids.unsqueeze(-1)).squeeze(-1)
            (-(logp * mb_mask).sum() / mask.sum()).backward()

    # One warm-up micro-batch, then the whole batch once: it is the slow side by far.
    with torch.no_grad():
        model(input_ids=ids[:1], attention_mask=mask[:1])
    start = time.perf_counter()
    once()
    return time.perf_counter() - start


def bench_alignment(tokenizer, ids, mask, repeats: int) -> tuple[float, float]:
    rows = [row[: int(m.sum())].tolist() for row, m in zip(ids, mask, strict=True)]

    def ours():
        for row in rows:
            text, ends = decode_with_offsets(tokenizer, row)
            reward_token_indices(ends, split_steps(text, " "))

    def plain():
        tokenizer.batch_decode(rows, skip_special_tokens=True)

    return median_seconds(plain, repeats), median_seconds(ours, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--length", type=int, default=1024)
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="64 sequences instead of 512")
    args = parser.parse_args()
    batch = 64 if args.quick else args.batch
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    tokenizer = train_tokenizer(["Step one: 12 + 30 = 42. café 你好 😀 so the answer is 42.\n\n"] * 20)
    vocab = len(tokenizer)
    ids, mask, step_lists, step_scores = make_batch(batch, args.length, vocab, gen)
    print(f"batch {batch} x {args.length} tokens ({int(mask.sum())} valid), {STEPS} steps each, "
          f"torch threads {torch.get_num_threads()}", flush=True)

    math_s = bench_math(ids, mask, step_lists, step_scores, args.repeats)
    fb_s = bench_forward_backward(ids, mask, vocab, args.micro_batch)
    print("1. advantages (assembly + credit + returns + whitening) vs tiny-model forward+backward")
    print(f"    forward+backward, micro-batches of {args.micro_batch:<4}  {fb_s * 1e3:>10.1f} ms")
    for credit, seconds in math_s.items():
        print(f"    reinforce_pp, credit={credit:<3}               {seconds * 1e3:>10.1f} ms"
              f"   ratio {seconds / fb_s:.4%}   (target < 2%)")

    plain_s, ours_s = bench_alignment(tokenizer, ids, mask, args.repeats)
    print("2. response text + per-token byte ends + step reward tokens vs plain batch_decode")
    print(f"    tokenizer.batch_decode                  {plain_s * 1e3:>10.1f} ms")
    print(f"    decode_with_offsets + reward tokens     {ours_s * 1e3:>10.1f} ms   ratio {ours_s / plain_s:.2f}x")


if __name__ == "__main__":
    main()

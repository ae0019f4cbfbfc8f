"""A learned process reward model for the quickstart task, built and served as users do it.

    python -m quickstart.learned_prm --setting hard              # build (or reuse) and report quality
    python -m quickstart.learned_prm --setting hard --labels monte_carlo

1. **Step-labelled data** from train-split problems: a sloppy teacher's worked solutions
   (by default the SFT teacher; ``teacher_carry_slip`` and ``teacher_sum_slip`` give it
   other slip rates) and the SFT policy's own samples (temperature 1), split into steps
   (one line each).
   Labels, one flag to choose:
   - ``exact``: PRM800K-style, 1 if the step is a correct move given the problem and the
     steps before it (``task.check_steps``);
   - ``monte_carlo``: Math-Shepherd-style hard estimates, 1 if any of ``mc_rollouts``
     completions by the SFT policy from the prefix ending with this step reaches the right
     answer (the answer step: 1 if it is right). Noisy where the policy rarely succeeds.
2. **A tiny PRM in the Qwen2.5-Math-PRM layout**: ``Qwen2ForProcessRewardModel`` (a Qwen2
   backbone, ``score = Linear, ReLU, Linear(h, 2)``), started from the SFT policy's weights,
   with the SFT tokenizer plus ``<extra_0>``, ``<|im_start|>``, ``<|im_end|>`` and a ChatML
   chat template. Its inputs are built by the very function the reward server uses
   (``prm_inputs.qwen_math_prm_input``: system prompt, problem, steps joined and ended by
   ``<extra_0>``); cross-entropy of label 1 vs 0 at every ``<extra_0>``.
3. **Saved as a Hugging Face checkpoint** (``config.json`` with ``architectures:
   [Qwen2ForProcessRewardModel]``, safetensors, tokenizer) and served like a released PRM::

       rpp-reward-server --scorer prm --model DIR --step-separator '\\n'

4. **Step-level quality on held-out problems** (teacher solutions and policy samples of
   problems the PRM never saw), against exact labels: F1 of "this step is wrong", and the
   first-error accuracy as ProcessBench measures it (the first step scored < 0.5 must be
   the first wrong step; -1 when none is), on erroneous and on correct solutions, and
   their harmonic mean. Written to ``rpp_prm.json`` in the checkpoint.

Cached under the cache root by a hash of every setting (task, SFT start, this recipe),
like the SFT start.
"""

from __future__ import annotations

import argparse
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
from typing import Literal

import torch
import transformers
from tqdm.auto import tqdm
from transformers import AutoTokenizer, PreTrainedTokenizerBase, Qwen2Config, Qwen2ForCausalLM

from quickstart.settings import SETTINGS
from quickstart.sft import DEFAULT_CACHE_ROOT, SFTConfig, optimizer_step, sft_checkpoint
from quickstart.task import (
    STEP_SEPARATOR,
    Problem,
    TaskConfig,
    check_steps,
    demonstration,
    final_answer,
    parse_column,
    sample_problems,
)
from reward_server.scorers.prm_inputs import QWEN_PRM_SYSTEM_PROMPT, qwen_math_prm_input
from reward_server.scorers.prm_models import Qwen2ForProcessRewardModel
from rpp_learner.rollout.sampling import sampling_processors

RECIPE_VERSION = 2
SEPARATOR_TOKEN = "<extra_0>"
CHAT_TOKENS = ["<|im_start|>", "<|im_end|>"]
# ChatML, as Qwen2.5 renders it (no default system turn: the PRM input brings its own).
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
Labels = Literal["exact", "monte_carlo"]


@dataclass(frozen=True)
class PRMConfig:
    labels: Labels = "exact"
    teacher_solutions: int = 6000  # the sloppy teacher's worked solutions
    # The carry slip rate of the teacher that writes the PRM's worked solutions; None: the
    # task's own (the SFT teacher's). A PRM labels what it sees: where nearly every due
    # carry in its data is dropped, "a carry was due, so the step is wrong" is right 90%
    # of the time, and the PRM learns that base rate instead of reading the carry. Then it
    # rejects exactly the steps RL teaches (measured in the sparse setting: 35-39% of a
    # trained policy's right steps). A PRM's data generator need not be the policy's teacher.
    teacher_carry_slip: float | None = None
    # Likewise its off-by-one column sums (None: the task's sum_slip): the errors a policy
    # that has learned to carry still makes, so the ones a PRM must see enough of.
    teacher_sum_slip: float | None = None
    policy_samples: int = 6000  # the SFT policy's own samples, temperature 1
    mc_rollouts: int = 8  # completions per step prefix (labels=monte_carlo)
    heldout_solutions: int = 400  # of each kind, on held-out problems, for the quality report
    epochs: int = 3
    batch_size: int = 64
    lr: float = 2e-3  # 5e-4 for 2 epochs stalls at a loss of 0.38 (wrong-step F1 0.77 on hard)
    max_new_tokens: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("teacher_carry_slip", "teacher_sum_slip"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"PRMConfig.{name} is a probability (or None: the task's), got {value}")


@dataclass
class Solution:
    problem: Problem
    steps: list[str]
    labels: list[float]  # one per step


# ---------------------------------------------------------------------------------------
# data


def split_response(response: str) -> list[str]:
    """Steps as the process service sends them: lines, trimmed, blank ones dropped."""
    return [line.strip() for line in response.split(STEP_SEPARATOR) if line.strip()]


@torch.no_grad()
def sample_responses(
    model: Qwen2ForCausalLM, tokenizer: PreTrainedTokenizerBase, prefixes: list[tuple[str, str]],
    max_new_tokens: int, seed: int, batch_size: int = 256, desc: str = "sampling",
) -> list[str]:
    """A temperature-1 continuation of each (prompt, response prefix), encoded as the
    learner does (prompt and response apart); returns prefix + continuation."""
    if not prefixes:
        return []
    torch.manual_seed(seed)
    out: list[str] = []
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    for start in tqdm(range(0, len(prefixes), batch_size), desc=f"[prm] {desc}", unit="batch",
                      mininterval=0.5 if sys.stderr.isatty() else 30.0):
        chunk = prefixes[start : start + batch_size]
        rows = [tokenizer.encode(p, add_special_tokens=False) + tokenizer.encode(r, add_special_tokens=False)
                for p, r in chunk]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), pad)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):  # left padding for generation
            ids[i, width - len(r):] = torch.tensor(r)
            mask[i, width - len(r):] = 1
        gen = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                             logits_processor=sampling_processors(), pad_token_id=pad, eos_token_id=eos)
        for (_, response), row in zip(chunk, gen[:, width:], strict=True):
            out.append(response + tokenizer.decode(row, skip_special_tokens=True))
    return out


def monte_carlo_labels(
    model, tokenizer, solutions: list[tuple[Problem, list[str]]], rollouts: int, max_new_tokens: int, seed: int
) -> list[list[float]]:
    """Math-Shepherd hard estimates: 1 if any of ``rollouts`` completions from the prefix
    ending with the step reaches the right answer; an answer step is 1 if it is right."""
    jobs: list[tuple[int, int]] = []  # (solution, step) needing rollouts
    prefixes: list[tuple[str, str]] = []
    labels: list[list[float]] = []
    for s, (problem, steps) in enumerate(solutions):
        row = []
        for k, step in enumerate(steps):
            answer = final_answer(step)
            if answer is not None:
                row.append(float(answer == problem.answer))
                continue
            row.append(0.0)
            prefix = STEP_SEPARATOR.join(steps[: k + 1]) + STEP_SEPARATOR
            jobs.append((s, k))
            prefixes += [(problem.prompt, prefix)] * rollouts
        labels.append(row)
    completions = sample_responses(model, tokenizer, prefixes, max_new_tokens, seed, desc="Monte-Carlo rollouts")
    for j, (s, k) in enumerate(jobs):
        problem = solutions[s][0]
        reached = any(final_answer(c) == problem.answer for c in completions[j * rollouts : (j + 1) * rollouts])
        labels[s][k] = float(reached)
    return labels


def labelled_solutions(
    task: TaskConfig, cfg: PRMConfig, policy, tokenizer, split: Literal["train", "heldout"],
    n_teacher: int, n_policy: int, labels: Labels, seed: int,
) -> list[Solution]:
    """Teacher solutions and policy samples of ``split`` problems, with per-step labels."""
    rng = random.Random(f"prm:{split}:{seed}")
    problems = sample_problems(n_teacher + n_policy, split, seed + 101, task)
    carry_slip = task.carry_slip if cfg.teacher_carry_slip is None else cfg.teacher_carry_slip
    sum_slip = task.sum_slip if cfg.teacher_sum_slip is None else cfg.teacher_sum_slip
    teacher = [(p, split_response(demonstration(p, rng, carry_slip, sum_slip))) for p in problems[:n_teacher]]
    sampled = sample_responses(policy, tokenizer, [(p.prompt, "") for p in problems[n_teacher:]],
                               cfg.max_new_tokens, seed, desc=f"{split} policy samples")
    pairs = teacher + [(p, split_response(r)) for p, r in zip(problems[n_teacher:], sampled, strict=True)]
    pairs = [(p, steps) for p, steps in pairs if steps]
    if labels == "exact":
        step_labels = [check_steps(p, steps) for p, steps in pairs]
    else:
        step_labels = monte_carlo_labels(policy, tokenizer, pairs, cfg.mc_rollouts, cfg.max_new_tokens, seed)
    return [Solution(p, steps, lab) for (p, steps), lab in zip(pairs, step_labels, strict=True)]


def after_due_carry(steps: list[str]) -> list[bool]:
    """For each step: is it a column line right after a written sum of 10 or more (a line
    where a carry is due)?"""
    columns = [parse_column(step) for step in steps]
    return [k > 0 and columns[k] is not None and columns[k - 1] is not None and columns[k - 1][1] >= 10
            for k in range(len(steps))]


def due_carry_right_share(solutions: list[Solution]) -> float | None:
    """Of the lines where a carry is due, the share labelled right: near 0 or 1, a PRM can
    score those lines by the base rate instead of reading the carry."""
    flags = [label >= 0.5 for s in solutions
             for label, due in zip(s.labels, after_due_carry(s.steps), strict=True) if due]
    return sum(flags) / len(flags) if flags else None


# ---------------------------------------------------------------------------------------
# model


def prm_tokenizer(sft_dir: Path) -> PreTrainedTokenizerBase:
    """The SFT tokenizer plus the Qwen2.5-Math-PRM special tokens and a chat template."""
    tokenizer = AutoTokenizer.from_pretrained(sft_dir)
    tokenizer.add_special_tokens({"additional_special_tokens": [SEPARATOR_TOKEN, *CHAT_TOKENS]})
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def prm_from_policy(sft_dir: Path, tokenizer: PreTrainedTokenizerBase) -> Qwen2ForProcessRewardModel:
    """A Qwen2ForProcessRewardModel whose backbone starts as the SFT policy's (as Qwen2.5-Math-PRM
    starts from Qwen2.5-Math-Instruct); the head is new.

    ``<extra_0>`` takes the place of the newline that ends each line in the policy's own
    text, so it starts as the newline's embedding: the backbone then reads the joined steps
    as the lines it learned to write, column by column. (From a mean embedding, the line
    structure is lost and training often stalls at per-position priors.)"""
    vocab_size = len(tokenizer)
    policy = Qwen2ForCausalLM.from_pretrained(sft_dir)
    policy.resize_token_embeddings(vocab_size, mean_resizing=False)
    embeddings = policy.get_input_embeddings().weight
    newline = tokenizer.encode(STEP_SEPARATOR, add_special_tokens=False)
    with torch.no_grad():
        for token in (SEPARATOR_TOKEN, *CHAT_TOKENS):  # the chat markers, which sit between lines, too
            embeddings[tokenizer.convert_tokens_to_ids(token)] = embeddings[newline].mean(0)
    config = Qwen2Config.from_pretrained(sft_dir)
    config.vocab_size = vocab_size
    config.num_labels = 2
    config.architectures = ["Qwen2ForProcessRewardModel"]
    config.tie_word_embeddings = False
    model = Qwen2ForProcessRewardModel(config)
    model.model.load_state_dict(policy.model.state_dict())  # strict: every backbone weight
    return model


def encode(tokenizer, solution: Solution, separator_id: int) -> tuple[list[int], list[int]]:
    built = qwen_math_prm_input(tokenizer, solution.problem.prompt, solution.steps, QWEN_PRM_SYSTEM_PROMPT,
                                SEPARATOR_TOKEN, separator_id)
    return built.input_ids, built.read_positions


def collate(encoded: list[tuple[list[int], list[int]]], labels: list[list[float]] | None, pad_id: int):
    width = max(len(ids) for ids, _ in encoded)
    input_ids = torch.full((len(encoded), width), pad_id)
    attention = torch.zeros((len(encoded), width), dtype=torch.long)
    targets = torch.full((len(encoded), width), -100)
    for i, (ids, positions) in enumerate(encoded):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        attention[i, : len(ids)] = 1
        if labels is not None:
            targets[i, positions] = torch.tensor(labels[i]).long()
    return input_ids, attention, targets


def train_prm(model, tokenizer, solutions: list[Solution], cfg: PRMConfig, log=print) -> None:
    separator_id = tokenizer.convert_tokens_to_ids(SEPARATOR_TOKEN)
    encoded = [encode(tokenizer, s, separator_id) for s in solutions]
    order = list(range(len(solutions)))
    rng = random.Random(cfg.seed)
    steps = cfg.epochs * (len(order) // cfg.batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
    schedule = transformers.get_cosine_schedule_with_warmup(optimizer, min(20, steps // 10), steps)
    model.train()
    bar = tqdm(total=steps, desc="[prm] train", unit="step", mininterval=0.5 if sys.stderr.isatty() else 30.0)
    for _ in range(cfg.epochs):
        rng.shuffle(order)
        for start in range(0, len(order) - cfg.batch_size + 1, cfg.batch_size):
            batch = order[start : start + cfg.batch_size]
            ids, attention, targets = collate([encoded[i] for i in batch], [solutions[i].labels for i in batch],
                                              tokenizer.pad_token_id)
            logits = model(input_ids=ids, attention_mask=attention)
            loss = torch.nn.functional.cross_entropy(logits.view(-1, 2), targets.view(-1), ignore_index=-100)
            optimizer_step(model, loss, optimizer, schedule)
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    bar.close()
    model.eval()
    log(f"[prm] {steps} steps on {len(solutions)} solutions, last loss {loss.item():.3f}")


@torch.no_grad()
def step_probabilities(model, tokenizer, solutions: list[Solution], batch_size: int = 128) -> list[list[float]]:
    """P(label 1) at every ``<extra_0>``: what the reward server will send for each step."""
    separator_id = tokenizer.convert_tokens_to_ids(SEPARATOR_TOKEN)
    out: list[list[float]] = []
    for start in range(0, len(solutions), batch_size):
        chunk = [encode(tokenizer, s, separator_id) for s in solutions[start : start + batch_size]]
        ids, attention, _ = collate(chunk, None, tokenizer.pad_token_id)
        probs = model(input_ids=ids, attention_mask=attention).float().softmax(-1)[..., 1]
        out += [probs[i, positions].tolist() for i, (_, positions) in enumerate(chunk)]
    return out


# ---------------------------------------------------------------------------------------
# quality


def first_error(labels: list[float], threshold: float = 0.5) -> int:
    """Index of the first step labelled (or scored) below ``threshold``; -1 if none is."""
    return next((k for k, v in enumerate(labels) if v < threshold), -1)


def step_quality(truth: list[list[float]], scores: list[list[float]]) -> dict[str, float]:
    """F1 of "this step is wrong" and ProcessBench's first-error accuracy (on erroneous and
    on correct solutions, and their harmonic mean)."""
    tp = fp = fn = 0
    for labels, probs in zip(truth, scores, strict=True):
        for label, p in zip(labels, probs, strict=True):
            wrong, flagged = label < 0.5, p < 0.5
            tp += wrong and flagged
            fp += flagged and not wrong
            fn += wrong and not flagged
    precision = tp / max(tp + fp, 1)
    recall = tp / max(tp + fn, 1)
    hits = {True: [], False: []}
    for labels, probs in zip(truth, scores, strict=True):
        want = first_error(labels)
        hits[want >= 0].append(first_error(probs) == want)
    acc_err = sum(hits[True]) / max(len(hits[True]), 1)
    acc_ok = sum(hits[False]) / max(len(hits[False]), 1)
    return {
        "wrong_step_precision": precision,
        "wrong_step_recall": recall,
        "wrong_step_f1": 2 * precision * recall / max(precision + recall, 1e-12),
        "first_error_acc_erroneous": acc_err,
        "first_error_acc_correct": acc_ok,
        "processbench_f1": 2 * acc_err * acc_ok / max(acc_err + acc_ok, 1e-12),
        "solutions_erroneous": len(hits[True]),
        "solutions_correct": len(hits[False]),
    }


# ---------------------------------------------------------------------------------------
# build and cache


def cache_key(task: TaskConfig, sft: SFTConfig, cfg: PRMConfig) -> str:
    # An override left unset (None) is left out, so adding one keeps every cached PRM's name.
    prm = {name: value for name, value in asdict(cfg).items() if value is not None}
    settings = {"task": asdict(task), "sft": asdict(sft), "prm": prm, "recipe": RECIPE_VERSION,
                "transformers": transformers.__version__.split(".")[0]}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def prm_checkpoint(
    task: TaskConfig, sft: SFTConfig, cfg: PRMConfig, cache_root: Path = DEFAULT_CACHE_ROOT, log=print
) -> Path:
    """The directory of the learned PRM for these settings, building it (and the SFT start)
    if not cached. Its quality report is ``DIR/rpp_prm.json``."""
    target = Path(cache_root) / f"prm-{cache_key(task, sft, cfg)}"
    if (target / "config.json").is_file():
        log(f"[prm] cached checkpoint: {target}")
        return target
    sft_dir = sft_checkpoint(task, sft, cache_root, log=log)
    started = time.perf_counter()
    torch.manual_seed(cfg.seed)
    policy = Qwen2ForCausalLM.from_pretrained(sft_dir).eval()
    policy_tokenizer = AutoTokenizer.from_pretrained(sft_dir)
    train = labelled_solutions(task, cfg, policy, policy_tokenizer, "train", cfg.teacher_solutions,
                               cfg.policy_samples, cfg.labels, cfg.seed)
    # Quality is measured against exact labels, whatever the PRM was trained on.
    heldout = labelled_solutions(task, cfg, policy, policy_tokenizer, "heldout", cfg.heldout_solutions,
                                 cfg.heldout_solutions,
                                 "exact", cfg.seed + 1)
    steps = [lab for s in train for lab in s.labels]
    due_carry = due_carry_right_share(train)
    log(f"[prm] {len(train)} training solutions ({cfg.labels} labels), {len(steps)} steps, "
        f"{1 - sum(steps) / len(steps):.1%} labelled wrong; lines after a carry is due: "
        f"{'-' if due_carry is None else f'{due_carry:.1%}'} labelled right")
    tokenizer = prm_tokenizer(sft_dir)
    model = prm_from_policy(sft_dir, tokenizer)
    train_prm(model, tokenizer, train, cfg, log)
    quality = step_quality([s.labels for s in heldout], step_probabilities(model, tokenizer, heldout))
    quality["train_due_carry_right"] = due_carry
    if cfg.labels != "exact":  # how far the Monte-Carlo labels are from the truth, on train
        quality["train_label_agreement"] = sum(
            (a >= 0.5) == (b >= 0.5)
            for s in train
            for a, b in zip(s.labels, check_steps(s.problem, s.steps), strict=True)
        ) / len(steps)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".prm-", dir=target.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / "rpp_prm.json").write_text(json.dumps(
            {"task": asdict(task), "sft": asdict(sft), "prm": asdict(cfg), "quality": quality,
             "sft_checkpoint": str(sft_dir), "time_s": time.perf_counter() - started}, indent=2))
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log(f"[prm] built in {time.perf_counter() - started:.0f}s, saved to {target}")
    log("[prm] held-out quality: " + format_quality(quality))
    return target


def prm_quality(checkpoint: Path) -> dict[str, float]:
    return json.loads((Path(checkpoint) / "rpp_prm.json").read_text())["quality"]


def format_quality(q: dict[str, float]) -> str:
    return (f"wrong-step F1 {q['wrong_step_f1']:.3f} (precision {q['wrong_step_precision']:.3f}, recall "
            f"{q['wrong_step_recall']:.3f}); first-error accuracy {q['first_error_acc_erroneous']:.1%} on "
            f"{q['solutions_erroneous']} erroneous, {q['first_error_acc_correct']:.1%} on "
            f"{q['solutions_correct']} correct solutions (ProcessBench F1 {q['processbench_f1']:.3f})"
            + (f"; trained on due carries {q['train_due_carry_right']:.0%} right"
               if q.get("train_due_carry_right") is not None else ""))


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    transformers.logging.disable_progress_bar()
    d = PRMConfig()
    p = argparse.ArgumentParser(prog="python -m quickstart.learned_prm", description=__doc__.split("\n\n")[0])
    p.add_argument("--setting", choices=list(SETTINGS), default="easy")
    p.add_argument("--labels", choices=["exact", "monte_carlo"], default=d.labels)
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_ROOT)
    args = p.parse_args(argv)
    setting = SETTINGS[args.setting]
    prm = PRMConfig(labels=args.labels, teacher_carry_slip=setting.prm_teacher_carry_slip,
                    teacher_sum_slip=setting.prm_teacher_sum_slip)
    path = prm_checkpoint(setting.task, setting.sft, prm, args.cache_dir)
    print(f"learned PRM ({args.setting}, {args.labels} labels): {path}")
    print("held-out quality: " + format_quality(prm_quality(path)))
    print(f"serve it: rpp-reward-server --scorer prm --model {path} --step-separator '\\n'")
    return 0


if __name__ == "__main__":
    sys.exit(main())

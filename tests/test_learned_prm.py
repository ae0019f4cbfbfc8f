"""The learned PRM path: step-labelled data from the task, a tiny PRM trained in the
Qwen2.5-Math-PRM layout, saved as a Hugging Face checkpoint, served over gRPC by
``--scorer prm`` (the public-PRM loader), and its scores used by REINFORCE++ at the tokens
where the steps end."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

from quickstart.learned_prm import (
    PRMConfig,
    Solution,
    due_carry_right_share,
    first_error,
    labelled_solutions,
    prm_checkpoint,
    prm_quality,
    step_probabilities,
    step_quality,
)
from quickstart.run import QuickstartConfig, learned_prm_command, learner_config, write_prompts
from quickstart.services import RewardServices
from quickstart.sft import SFTConfig
from quickstart.task import STEP_SEPARATOR, TaskConfig, check_steps, final_answer, sample_problems
from reward_server.scorers.prm_models import Qwen2ForProcessRewardModel

# A start that trains in seconds: it writes the task's line format, badly.
TINY_SFT = SFTConfig(examples=1024, batch_size=64, hidden_size=32, num_hidden_layers=1, lr=5e-3)
TINY_PRM = PRMConfig(teacher_solutions=96, policy_samples=32, heldout_solutions=24, epochs=1, batch_size=32,
                     mc_rollouts=2, max_new_tokens=40)


def test_step_quality_by_hand():
    truth = [[1, 0, 0], [1, 1, 1], [0, 1], [1, 1]]
    probs = [[0.9, 0.2, 0.6], [0.8, 0.3, 0.9], [0.7, 0.9], [0.9, 0.9]]
    q = step_quality(truth, probs)
    # wrong steps: (0,1) flagged, (0,2) missed, (2,0) missed; flagged but right: (1,1).
    assert (q["wrong_step_precision"], q["wrong_step_recall"]) == (0.5, pytest.approx(1 / 3))
    assert q["wrong_step_f1"] == pytest.approx(0.4)
    # First errors: truth 1, -1, 0, -1; predicted 1, 1, -1, -1 -> erroneous 1/2, correct 1/2.
    assert (q["first_error_acc_erroneous"], q["first_error_acc_correct"]) == (0.5, 0.5)
    assert q["processbench_f1"] == pytest.approx(0.5)
    assert first_error([1, 1, 0.2, 0]) == 2 and first_error([0.9]) == -1


def test_due_carry_share_by_hand():
    problem = sample_problems(1, "train", 0, TaskConfig())[0]
    solutions = [
        # After "...=12" a carry is due: one right and one wrong line follow such a sum.
        Solution(problem, ["3+9+0=12", "5+6+1=12", "7+8+0=15", "Answer: 5522"], [1, 1, 0, 0]),
        Solution(problem, ["1+2+0=3", "4+4+0=8"], [1, 1]),  # no carry is ever due
    ]
    assert due_carry_right_share(solutions) == 0.5
    assert due_carry_right_share(solutions[1:]) is None


def test_prm_data_teacher_has_its_own_carry_slip():
    """The PRM's worked solutions may come from a teacher other than the SFT start's: with
    the task's 90% slip nearly every due carry in them is wrong, with 0% none is (only
    the off-by-one sum slips remain)."""
    task = TaskConfig(carry_slip=0.9, sum_slip=0.0)

    def share(slip):
        cfg = PRMConfig(teacher_carry_slip=slip)
        return due_carry_right_share(labelled_solutions(task, cfg, None, None, "train", 300, 0, "exact", seed=0))

    assert share(None) < 0.2 and share(0.0) == 1.0 and 0.35 < share(0.5) < 0.65
    with pytest.raises(ValueError, match="teacher_carry_slip is a probability"):
        PRMConfig(teacher_carry_slip=1.5)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_learned_prm_is_built_served_and_trains_the_policy(tmp_path):
    task = TaskConfig()
    cache = tmp_path / "cache"
    prm_dir = prm_checkpoint(task, TINY_SFT, TINY_PRM, cache)
    sft_dir = next(cache.glob("sft-*"))

    # The released Qwen2.5-Math-PRM layout: its architecture, 2 labels, model.* + score.{0,2}.*
    config = json.loads((prm_dir / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForProcessRewardModel"] and config["model_type"] == "qwen2"
    assert Qwen2Config.from_pretrained(prm_dir).num_labels == 2
    model = Qwen2ForProcessRewardModel.from_pretrained(prm_dir).eval()
    assert {"score.0.weight", "score.2.weight"} <= set(model.state_dict())
    quality = prm_quality(prm_dir)
    assert 0.0 <= quality["wrong_step_f1"] <= 1.0 and quality["solutions_erroneous"] > 0
    assert prm_checkpoint(task, TINY_SFT, TINY_PRM, cache) == prm_dir  # cached: not rebuilt

    # Monte-Carlo labels: an answer step is labelled by its correctness, and a step after a
    # wrong column can never be rescued (the teacher's answer follows its own lines).
    policy = Qwen2ForCausalLM.from_pretrained(sft_dir).eval()
    policy_tokenizer = AutoTokenizer.from_pretrained(sft_dir)
    mc = labelled_solutions(task, TINY_PRM, policy, policy_tokenizer, "train", 8, 0, "monte_carlo", seed=3)
    for s in mc:
        exact = check_steps(s.problem, s.steps)
        for k, label in enumerate(s.labels):
            if not all(exact[: k + 1]):
                assert label == 0.0, (s.steps, s.labels)
            if final_answer(s.steps[k]) is not None:  # the answer step: is it the true sum?
                assert label == float(final_answer(s.steps[k]) == s.problem.answer)

    tokenizer = AutoTokenizer.from_pretrained(prm_dir)
    problems = sample_problems(6, "heldout", 0, task)
    data = {"train": write_prompts(tmp_path / "train.jsonl", sample_problems(16, "train", 1, task)),
            "heldout": write_prompts(tmp_path / "heldout.jsonl", problems)}
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with RewardServices() as services:
        running = services.start_all(
            {"answer": ["--scorer", "math-answer"], "prm": learned_prm_command(prm_dir)}, tmp_path / "logs"
        )
        cfg = replace(QuickstartConfig(), credit="first_error", prm="learned", prm_dir=prm_dir, steps=2,
                      eval_every=1, prompts_per_step=4, samples_per_prompt=2, eval_prompts=6,
                      output_dir=tmp_path / "run", max_new_tokens=40)
        learner = learner_config(cfg, sft_dir, data, {n: s.address for n, s in running.items()})
        learner["logging"].update(save_rollouts=True, plot=False, progress_bar=False)
        from rpp_learner.config import config_from_dict
        from rpp_learner.trainer import Trainer

        with Trainer(config_from_dict(learner)) as trainer:
            assert trainer.service_infos["prm"].input_format == "qwen2.5-math-prm"
            summary = trainer.train()
        assert len(summary["history"]) == 2

    # The scores the learner placed are the learned PRM's own P(label 1) for those steps.
    saved = torch.load(tmp_path / "run" / "rollouts" / "step_000002_rank0.pt", weights_only=False)
    checked = 0
    for i, text in enumerate(saved["texts"]):
        placed = saved["step_token_index"][i] >= 0
        if not saved["valid"][i] or not placed.any():
            continue
        steps = [line.strip() for line in text.split(STEP_SEPARATOR) if line.strip()]
        truncated = saved["response_ids"][i][int(saved["mask"][i].sum()) - 1].item() != tokenizer.eos_token_id
        problem = next(p for p in sample_problems(16, "train", 1, task) if p.prompt == saved["prompts"][i])
        want = step_probabilities(model, tokenizer, [Solution(problem, steps, [1.0] * len(steps))])[0]
        got = saved["step_scores"][i][placed].tolist()
        # A truncated response's unfinished last step gets no reward token.
        assert len(got) == len(want) - (1 if truncated and not text.endswith(STEP_SEPARATOR) else 0)
        torch.testing.assert_close(torch.tensor(got), torch.tensor(want[: len(got)]), atol=2e-4, rtol=0)
        # Each score sits on a distinct token, in step order, inside the response.
        index = saved["step_token_index"][i][placed]
        assert (index[1:] > index[:-1]).all() and index.max() < saved["mask"][i].sum()
        checked += 1
    assert checked > 0
    assert Path(summary["checkpoint"]).exists()

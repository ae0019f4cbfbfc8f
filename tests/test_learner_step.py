"""One full training step end to end: generate with a tiny Qwen2, score through two real
gRPC services (outcome + process, user-function scorers), assemble, update."""

from __future__ import annotations

import json
import math
import time

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from reward_server.steps import split_steps
from reward_server.types import Sample
from rpp_learner.algorithms.advantages import AdvantageInputs, compute_advantages
from rpp_learner.config import RewardServiceConfig
from rpp_learner.scoring import RewardClients, assemble_scores
from rpp_learner.trainer import Trainer
from tests.helpers.learner_rewards import (
    ARRIVALS,
    STEP_SEPARATOR,
    build,
    digit_share,
    reward_services,
    run_config,
)
from tests.helpers.tiny_models import build_tiny_policy

STEP_METRICS = [
    "reward/total", "reward/outcome_weighted", "reward/process_sum", "reward/process_step_mean",
    "reward/steps_per_response", "reward/failed", "reward/failed_frac",
    "response_length", "truncated_frac", "kl", "loss", "clip_frac", "grad_norm", "lr",
    "time/step_s", "time/rollout_s", "time/logprob_s", "time/reward_wait_s", "time/update_s",
    "eval/accuracy",
]


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory):
    return build_tiny_policy(tmp_path_factory.mktemp("policy"))


@pytest.fixture(scope="module")
def services():
    with reward_services() as handles:
        yield handles


def reward_token_by_prefix_decode(tokenizer, tokens: list[int], text: str, end_byte: int) -> int:
    """Independent of rpp_learner.alignment: the first token whose decoded prefix holds the
    text's first ``end_byte`` bytes (a token carrying half a character does not)."""
    want = text.encode("utf-8")[:end_byte]
    for i in range(len(tokens)):
        if tokenizer.decode(tokens[: i + 1]).encode("utf-8")[:end_byte] == want:
            return i
    raise AssertionError(f"no token covers byte {end_byte}")


def expected_dense_reward(tokenizer, response_ids, mask, truncated, text, prm_weight) -> torch.Tensor:
    """r_t with KL = 0 (first step: policy == reference): step scores at step ends, the
    outcome at the last token."""
    n = int(mask.sum())
    tokens = response_ids[:n].tolist()
    text_tokens = tokens if truncated else tokens[:-1]  # the EOS is not part of the text
    dense = torch.zeros(len(mask))
    spans = split_steps(text, STEP_SEPARATOR)
    data = text.encode("utf-8")
    if truncated and spans and STEP_SEPARATOR.encode() not in data[spans[-1].end :]:
        spans = spans[:-1]  # an unfinished last step gets no reward
    for span in spans:
        idx = reward_token_by_prefix_decode(tokenizer, text_tokens, text, span.end)
        dense[idx] += prm_weight * (span.end - span.start) / 10.0
    dense[n - 1] += digit_share(Sample(id="x", prompt="", response=text))
    return dense


def test_one_step_updates_weights_logs_metrics_and_places_prm_scores(tmp_path, policy_dir, services):
    cfg = build(run_config(tmp_path, policy_dir, services, logging={"save_rollouts": True}, eval={"every_steps": 1}))
    with Trainer(cfg) as trainer:
        summary = trainer.train()
        # The reward channels outlive train(): evaluating the trained policy still works.
        assert trainer.evaluate()["eval/scored"] == 4
    trainer.close()  # closing twice is harmless

    # The weights moved.
    before = AutoModelForCausalLM.from_pretrained(policy_dir).state_dict()
    after = AutoModelForCausalLM.from_pretrained(f"{summary['checkpoint']}/policy").state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(changed) > len(before) // 2, f"only {changed} changed"

    # Every metric is logged, finite, to JSONL and TensorBoard; the plot exists.
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    # Step 0 is the evaluation of the starting policy, the first point of the curves.
    assert [r["step"] for r in rows] == [0, 1]
    assert set(rows[0]) == {"step", "eval/accuracy", "eval/scored"} and rows[0] == {"step": 0, **summary["start"]}
    missing = [k for k in STEP_METRICS if k not in rows[1]]
    assert not missing, f"metrics not logged: {missing}"
    assert all(math.isfinite(rows[1][k]) for k in STEP_METRICS)
    assert rows[1]["reward/failed"] == 0 and rows[1]["eval/scored"] == 4
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    assert (tmp_path / "run" / "curves.png").stat().st_size > 1000

    # The PRM scores sit at the reward tokens; the outcome at the last token. Random tiny
    # models emit stray UTF-8 pieces (decoded as U+FFFD); prefix decoding cannot locate
    # step ends in such text, so those samples are checked on totals and positions only.
    saved = torch.load(tmp_path / "run" / "rollouts" / "step_000001_rank0.pt", weights_only=False)
    tokenizer = AutoTokenizer.from_pretrained(policy_dir)
    assert saved["valid"].all()
    assert (saved["step_token_index"] >= 0).sum() > 0, "no step got a reward token"
    for i, text in enumerate(saved["texts"]):
        mask = saved["mask"][i]
        n = int(mask.sum())
        dense = saved["dense_rewards"][i]
        has_step = saved["step_token_index"][i] >= 0
        # Raw scores and weights are kept apart; p_j = weight * s_j (identity transform).
        torch.testing.assert_close(
            saved["step_rewards"][i][has_step], 0.5 * saved["step_scores"][i][has_step], atol=1e-6, rtol=0
        )
        assert (saved["step_weights"][i][has_step] == 0.5).all()
        steps_total = saved["step_rewards"][i][has_step].sum()
        torch.testing.assert_close(dense.sum(), saved["outcome"][i] + steps_total, atol=1e-5, rtol=0)
        allowed = set(saved["step_token_index"][i][has_step].tolist()) | {n - 1}
        assert set(dense.nonzero().flatten().tolist()) <= allowed
        if "\ufffd" not in text:
            truncated = saved["response_ids"][i][n - 1].item() != tokenizer.eos_token_id
            want = expected_dense_reward(tokenizer, saved["response_ids"][i], mask, truncated, text, prm_weight=0.5)
            torch.testing.assert_close(dense, want, atol=1e-5, rtol=0)


def test_known_sample_prm_scores_land_at_step_end_tokens(policy_dir, services):
    """A fixed response through the real process service: each step's score (0.5 * bytes / 10)
    is added at the token that completes the step, and nowhere else."""
    tokenizer = AutoTokenizer.from_pretrained(policy_dir)
    text = "Let x = 3. Then 2x = 6 ✓"
    tokens = tokenizer(text)["input_ids"] + [tokenizer.eos_token_id]
    from rpp_learner.alignment import decode_with_offsets

    decoded, ends = decode_with_offsets(tokenizer, tokens[:-1])
    assert decoded == text
    svc = RewardServiceConfig(name="prm", kind="process", targets=[services["process"].address], weight=0.5)
    scorer = RewardClients([svc])
    try:
        infos = scorer.check(5.0)
        results = scorer.submit([Sample(id="k", prompt="p", response=text)]).result()
    finally:
        scorer.close()
    scored = assemble_scores(
        results, [svc], [text], [ends], [False], separators={"prm": infos["prm"].step_separator}
    )
    mask = torch.ones(1, len(tokens), dtype=torch.long)
    out = compute_advantages(
        "reinforce_pp",
        AdvantageInputs(
            mask=mask, kl=torch.zeros(1, len(tokens)), outcome=torch.zeros(1),
            step_token_index=scored.step_token_index, step_scores=scored.step_scores,
            step_weights=scored.step_weights, group_index=torch.zeros(1, dtype=torch.long),
            truncated=torch.zeros(1, dtype=torch.bool),
        ),
        kl_coef=0.0,
        process_coef=1.0,
    )
    steps = ["Let", "x", "=", "3.", "Then", "2x", "=", "6", "✓"]
    want = torch.zeros(len(tokens))
    offset = 0
    for step in steps:
        start = text.encode().index(step.encode(), offset)
        offset = start + len(step.encode())
        want[reward_token_by_prefix_decode(tokenizer, tokens, text, offset)] += 0.5 * len(step.encode()) / 10
    torch.testing.assert_close(out.dense_rewards[0], want, atol=1e-6, rtol=0)
    # The last step "✓" (3 bytes) ends at the last text token, not at the EOS.
    assert out.dense_rewards[0, -2] == pytest.approx(0.15) and out.dense_rewards[0, -1] == 0


def test_each_generated_chunk_is_scored_while_the_next_ones_generate(tmp_path, policy_dir):
    """Rewards for chunk 0 are requested as soon as it is decoded: the service has them
    before the last chunk has finished generating. Nothing is timed, only ordered."""
    ARRIVALS.clear()
    with reward_services(outcome="digit_share_recording_arrival", process=False, isolation="thread") as handles:
        cfg = build(run_config(
            tmp_path, policy_dir, handles, logging={"progress_bar": False, "tensorboard": False, "plot": False},
            rollout={
                "prompts_per_step": 4, "samples_per_prompt": 2, "max_new_tokens": 8, "generation_batch_prompts": 1,
            },
        ))
        with Trainer(cfg) as trainer:
            generated_at: list[float] = []
            chunks = trainer.engine.generate_chunks

            def timed_chunks(*args, **kwargs):
                for item in chunks(*args, **kwargs):
                    generated_at.append(time.monotonic())
                    yield item

            trainer.engine.generate_chunks = timed_chunks
            metrics = trainer.train()["last"]
    assert len(generated_at) == 4 and metrics["reward/failed"] == 0.0
    assert sorted(ARRIVALS) == sorted(f"s1-r0-{i}" for i in range(8))  # global ids across chunks
    assert max(ARRIVALS["s1-r0-0"], ARRIVALS["s1-r0-1"]) < generated_at[-1]



def test_a_separator_the_policy_never_writes_is_reported_loudly_once(tmp_path, policy_dir, capsys):
    """Every response comes back as one step: the run says so, once, with the numbers."""
    from reward_server.scorers.user_function import UserFunctionScorer
    from reward_server.server import ServerConfig, start_in_thread

    one_step = UserFunctionScorer("tests.helpers.learner_rewards:step_length_score", "process", step_separator="@@@")
    with reward_services(process=False) as handles, start_in_thread(one_step, ServerConfig(metrics_port=None)) as prm:
        handles["process"] = prm
        cfg = build(run_config(tmp_path, policy_dir, handles, total_steps=2,
                               logging={"progress_bar": False, "tensorboard": False, "plot": False}))
        with Trainer(cfg) as trainer:
            trainer.train()
    err = capsys.readouterr().err
    assert err.count("WARNING: process service 'prm'") == 1
    assert "8 of 8 responses came back as a single step" in err and "splits responses on '@@@'" in err

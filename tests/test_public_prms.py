"""The public PRM families, served from checkpoints in their released layout.

Each family's tiny checkpoint is written by ``tests/helpers/released_prms`` as the release
is on disk (config.json keys, sharded bfloat16 safetensors with the released weight names,
released special tokens and chat template), loaded by ``rpp-reward-server --scorer prm``
without ``trust_remote_code`` and scored over gRPC. The step scores must equal a reference
computed here the way each family's own inference code does it (model card, Skywork's
``prepare_input``, RLHFlow's ``prm_evaluate.py``), with the tokenizer loaded from the
checkpoint as that code loads it, over a plain-torch forward of the same weights.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys

import pytest
import torch
from transformers import AutoTokenizer

from reward_server.client import BlockingRewardClient
from reward_server.scorers import build_scorer
from reward_server.scorers.prm_auto import detect_prm_format
from reward_server.server import ServerConfig, start_in_thread
from reward_server.types import RewardKind, Sample
from rpp_learner.scoring import describe_service
from tests.helpers.released_prms import (
    QWEN_PRM_AUTO_MAP,
    SAMPLES,
    decoder_weights,
    head_weights,
    llama31_config_json,
    llama31_tokenizer,
    mistral_config_json,
    qwen2_config_json,
    qwen_tokenizer,
    reference_hidden,
    sentencepiece_style_tokenizer,
    write_checkpoint,
)
from tests.serving_helpers import ROOT, start_server_processes, stop_server_processes

TOL = 1e-5
QWEN_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."


def steps_of(response: str, separator: str) -> list[str]:
    return [s.strip() for s in response.split(separator) if s.strip()]


def skywork_samples() -> list[tuple[str, str]]:  # Skywork's steps are lines
    return [(p, r.replace("\n\n", "\n")) for p, r in SAMPLES]


# ------------------------------------------------------------------ checkpoints and references


def released_checkpoint(tmp_path_factory, name, tok, config, *, qkv_bias, heads, seed):
    """A family's tiny checkpoint: decoder + its heads written in the released layout.
    Returns (path, config, stored weights in float32, the tokenizer as loaded from path)."""
    h, vocab = config["hidden_size"], config["vocab_size"]
    shapes = {key: tuple({"h": h, "vocab": vocab}.get(d, d) for d in dims) for key, dims in heads.items()}
    weights = decoder_weights(config, qkv_bias=qkv_bias, seed=seed) | head_weights(shapes, seed=seed + 1)
    path = tmp_path_factory.mktemp(name)
    return path, config, write_checkpoint(path, config, weights, tok), AutoTokenizer.from_pretrained(path)


LM_HEAD = {"lm_head.weight": ("vocab", "h")}


@pytest.fixture(scope="module")
def qwen_prm(tmp_path_factory):
    tok = qwen_tokenizer()
    config = qwen2_config_json(tok, "Qwen2ForProcessRewardModel", auto_map=QWEN_PRM_AUTO_MAP)
    heads = {"score.0.weight": ("h", "h"), "score.0.bias": ("h",), "score.2.weight": (2, "h"), "score.2.bias": (2,)}
    return released_checkpoint(tmp_path_factory, "qwen_prm", tok, config, qkv_bias=True, heads=heads, seed=1)


@pytest.fixture(scope="module")
def skywork_prm(tmp_path_factory):
    tok = qwen_tokenizer()
    config = qwen2_config_json(tok, "Qwen2ForPrmModel")
    heads = {"v_head.summary.weight": (1, "h"), "v_head.summary.bias": (1,), **LM_HEAD}
    return released_checkpoint(tmp_path_factory, "skywork_prm", tok, config, qkv_bias=True, heads=heads, seed=3)


@pytest.fixture(scope="module")
def rlhflow_prm(tmp_path_factory):
    tok = llama31_tokenizer()
    return released_checkpoint(tmp_path_factory, "rlhflow_prm", tok, llama31_config_json(tok),
                               qkv_bias=False, heads=LM_HEAD, seed=5)


@pytest.fixture(scope="module")
def shepherd_prm(tmp_path_factory):
    tok = sentencepiece_style_tokenizer()
    return released_checkpoint(tmp_path_factory, "shepherd_prm", tok, mistral_config_json(tok),
                               qkv_bias=False, heads=LM_HEAD, seed=7)


def qwen_reference(weights, config, tok, prompt: str, steps: list[str]) -> tuple[str, list[float]]:
    """The model card: chat with its system prompt, steps joined by <extra_0>, P(label 1)."""
    messages = [{"role": "system", "content": QWEN_SYSTEM}, {"role": "user", "content": prompt},
                {"role": "assistant", "content": "<extra_0>".join(steps) + "<extra_0>"}]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    ids = tok.encode(text)
    hidden = reference_hidden(weights, config, ids)
    mid = torch.relu(hidden @ weights["score.0.weight"].T + weights["score.0.bias"])
    probs = (mid @ weights["score.2.weight"].T + weights["score.2.bias"]).softmax(-1)
    mask = torch.tensor(ids) == tok.encode("<extra_0>")[0]
    return text, probs[mask][:, 1].tolist()


def skywork_reference(weights, config, tok, prompt: str, response: str) -> tuple[list[int], list[float]]:
    """Skywork's prepare_input (steps split on the step token) and sigmoid of the value head."""
    ids = tok.encode(tok.bos_token + prompt + "\n")
    flags = [0] * len(ids)
    step_token_id = tok.encode("\n")[-1]
    for step in response.split("\n"):
        step_ids = (tok.encode(step) if step != "" else []) + [step_token_id]
        ids += step_ids
        flags += [0] * (len(step_ids) - 1) + [1]
    hidden = reference_hidden(weights, config, ids)
    values = (hidden @ weights["v_head.summary.weight"].T + weights["v_head.summary.bias"])[:, 0]
    return ids, torch.sigmoid(values[torch.tensor(flags) == 1]).tolist()


def rlhflow_reference(weights, config, tok, prompt: str, steps: list[str]) -> tuple[str, list[float]]:
    """prm_evaluate.py: one forward per step over the chat so far, P('+') at position -3."""
    plus, minus = tok.encode("+")[-1], tok.encode("-")[-1]
    conversation, scores = [], []
    for k, step in enumerate(steps):
        conversation.append({"content": prompt + " " + step if k == 0 else step, "role": "user"})
        conversation.append({"content": "+", "role": "assistant"})
        ids = tok.apply_chat_template(conversation)["input_ids"]
        logits = reference_hidden(weights, config, ids)[-3] @ weights["lm_head.weight"].T
        scores.append(logits[[plus, minus]].softmax(-1)[0].item())
    return tok.apply_chat_template(conversation, tokenize=False), scores


def shepherd_reference(weights, config, tok, prompt: str, steps: list[str]) -> list[float]:
    """Math-Shepherd's README: f"{question} {output}", steps ending in " ки", P('+') at each tag."""
    candidate_tokens = tok.encode("+ -")[1:]
    step_tag_id = tok.encode("ки")[-1]
    output = "\n".join(step + " ки" for step in steps)
    ids = tok.encode(f"{prompt} {output}")
    logits = reference_hidden(weights, config, ids) @ weights["lm_head.weight"].T
    scores = logits[:, candidate_tokens].softmax(-1)[:, 0]
    return scores[torch.tensor(ids) == step_tag_id].tolist()


# ------------------------------------------------------------------ served over gRPC


def serve_and_score(tmp_path, model_dir, samples: list[Sample], *extra: str):
    procs, ready = start_server_processes(
        tmp_path, 1, ["--scorer", "prm", "--model", str(model_dir), "--option", "dtype=float32",
                      "--option", "max_batch_tokens=200", *extra])
    try:
        client = BlockingRewardClient(ready[0]["address"], timeout_s=60)
        try:
            return client.get_info(), client.score(samples)
        finally:
            client.close()
    finally:
        stop_server_processes(procs)


def assert_steps(result, response: str, want_texts: list[str], want_scores: list[float]) -> None:
    assert result.ok, result.error
    data = response.encode("utf-8")
    assert [data[s.span.start : s.span.end].decode("utf-8") for s in result.steps] == want_texts
    assert [s.score for s in result.steps] == pytest.approx(want_scores, abs=TOL)


@pytest.mark.slow
def test_qwen_math_prm_served_equals_the_model_card(tmp_path, qwen_prm):
    path, config, weights, tok = qwen_prm
    samples = [Sample(id=f"q{i}", prompt=p, response=r) for i, (p, r) in enumerate(SAMPLES)]
    info, results = serve_and_score(tmp_path, path, samples)
    assert info.kind is RewardKind.PROCESS and info.input_format == "qwen2.5-math-prm"
    assert info.step_separator == "\n\n"
    assert describe_service("prm", info).endswith("input format qwen2.5-math-prm, splits steps on '\\n\\n'")
    for sample, result in zip(samples, results, strict=True):
        steps = steps_of(sample.response, "\n\n")
        _, want = qwen_reference(weights, config, tok, sample.prompt, steps)
        assert_steps(result, sample.response, steps, want)


@pytest.mark.slow
def test_skywork_prm_served_equals_prepare_input(tmp_path, skywork_prm):
    path, config, weights, tok = skywork_prm
    samples = [Sample(id=f"k{i}", prompt=p, response=r) for i, (p, r) in enumerate(skywork_samples())]
    info, results = serve_and_score(tmp_path, path, samples)
    assert info.input_format == "skywork-o1-prm" and info.step_separator == "\n"
    for sample, result in zip(samples, results, strict=True):
        _, want = skywork_reference(weights, config, tok, sample.prompt, sample.response)
        assert_steps(result, sample.response, steps_of(sample.response, "\n"), want)


@pytest.mark.slow
def test_rlhflow_prm_served_equals_prm_evaluate(tmp_path, rlhflow_prm):
    path, config, weights, tok = rlhflow_prm
    samples = [Sample(id=f"r{i}", prompt=p, response=r) for i, (p, r) in enumerate(SAMPLES)]
    info, results = serve_and_score(tmp_path, path, samples)
    assert info.input_format == "rlhflow-prm" and info.step_separator == "\n\n"
    for sample, result in zip(samples, results, strict=True):
        steps = steps_of(sample.response, "\n\n")
        _, want = rlhflow_reference(weights, config, tok, sample.prompt, steps)
        assert_steps(result, sample.response, steps, want)


@pytest.mark.slow
def test_math_shepherd_served_equals_its_readme(tmp_path, shepherd_prm):
    path, config, weights, tok = shepherd_prm
    samples = [Sample(id="m0", prompt="Janet's ducks lay 16 eggs.", response="16 - 3 = 13 eggs.\n\n13 * 2 = 26"),
               Sample(id="m1", prompt="Q", response="Step 1: 2 + 2 = 4.")]
    info, results = serve_and_score(tmp_path, path, samples)
    assert info.input_format == "math-shepherd"
    for sample, result in zip(samples, results, strict=True):
        steps = steps_of(sample.response, "\n\n")
        assert_steps(result, sample.response, steps, shepherd_reference(weights, config, tok, sample.prompt, steps))


# ------------------------------------------------------------------ the exact input text


def test_each_family_sees_its_released_input_text(qwen_prm, skywork_prm, rlhflow_prm):
    prompt, steps = "计算 3 × 7。", ["3 × 7 = 21", "所以答案是 21。 🙂"]

    qwen = build_scorer("prm", model=str(qwen_prm[0]))
    built = qwen.build_input(prompt, steps)
    assert qwen_prm[3].decode(built.input_ids) == (
        "<|im_start|>system\nPlease reason step by step, and put your final answer within \\boxed{}.<|im_end|>\n"
        "<|im_start|>user\n计算 3 × 7。<|im_end|>\n"
        "<|im_start|>assistant\n3 × 7 = 21<extra_0>所以答案是 21。 🙂<extra_0><|im_end|>\n"
    )
    assert [built.input_ids[i] for i in built.read_positions] == [qwen.separator_id] * 2

    skywork = build_scorer("prm", model=str(skywork_prm[0]))
    built = skywork.build_input(prompt, steps)
    assert skywork_prm[3].decode(built.input_ids) == "<|endoftext|>计算 3 × 7。\n3 × 7 = 21\n所以答案是 21。 🙂\n"
    ids, _ = skywork_reference(skywork_prm[2], skywork_prm[1], skywork_prm[3], prompt, "\n".join(steps))
    assert built.input_ids == ids

    rlhflow = build_scorer("prm", model=str(rlhflow_prm[0]))
    built = rlhflow.build_input(prompt, steps)
    header = "<|start_header_id|>{}<|end_header_id|>\n\n"
    want = ("<|begin_of_text|>" + header.format("system")
            + "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n<|eot_id|>"
            + header.format("user") + "计算 3 × 7。 3 × 7 = 21<|eot_id|>" + header.format("assistant") + "+<|eot_id|>"
            + header.format("user") + "所以答案是 21。 🙂<|eot_id|>" + header.format("assistant") + "+<|eot_id|>")
    assert rlhflow_prm[3].decode(built.input_ids) == want
    assert rlhflow_reference(rlhflow_prm[2], rlhflow_prm[1], rlhflow_prm[3], prompt, steps)[0] == want
    # Each read position is the token just before an assistant "+".
    plus = rlhflow_prm[3].encode("+", add_special_tokens=False)[0]
    assert [built.input_ids[i + 1] for i in built.read_positions] == [plus, plus]


def test_math_shepherd_sees_its_readme_input(shepherd_prm):
    path, _, _, tok = shepherd_prm
    scorer = build_scorer("prm", model=str(path))
    prompt, steps = "Janet's ducks lay 16 eggs.", ["16 - 3 = 13 eggs.", "13 * 2 = 26"]
    built = scorer.build_input(prompt, steps)
    assert built.input_ids == tok.encode(f"{prompt} 16 - 3 = 13 eggs. ки\n13 * 2 = 26 ки")
    assert [built.input_ids[i] for i in built.read_positions] == [tok.encode("ки")[-1]] * 2


def test_prm_detects_each_family_and_says_so(qwen_prm, skywork_prm, rlhflow_prm, shepherd_prm, caplog):
    assert detect_prm_format(str(shepherd_prm[0]))[0] == "math-shepherd"
    assert detect_prm_format(str(qwen_prm[0]))[0] == "qwen2.5-math-prm"
    assert detect_prm_format(str(skywork_prm[0]))[0] == "skywork-o1-prm"
    assert detect_prm_format(str(rlhflow_prm[0]))[0] == "rlhflow-prm"
    with caplog.at_level(logging.INFO, logger="reward_server.scorers.prm_auto"):
        build_scorer("prm", model=str(qwen_prm[0]))
    assert "qwen2.5-math-prm" in caplog.text and "Qwen2ForProcessRewardModel" in caplog.text


def test_checkpoint_dtype_is_kept_and_skywork_head_stays_float32(skywork_prm):
    path, config, weights, tok = skywork_prm
    scorer = build_scorer("prm", model=str(path))  # dtype auto: the checkpoint's bfloat16
    assert scorer.model.model.embed_tokens.weight.dtype == torch.bfloat16
    assert scorer.model.v_head.summary.weight.dtype == torch.float32
    prompt, response = skywork_samples()[3]
    [result] = asyncio.run(scorer.score([Sample(id="a", prompt=prompt, response=response)]))
    _, want = skywork_reference(weights, config, tok, prompt, response)
    assert [s.score for s in result.steps] == pytest.approx(want, abs=0.05)  # bfloat16 compute
    # A device_map (accelerate's placement, for models bigger than one GPU) scores the same.
    placed = build_scorer("prm", model=str(path), device_map="auto", dtype="float32")
    [again] = asyncio.run(placed.score([Sample(id="a", prompt=prompt, response=response)]))
    assert [s.score for s in again.steps] == pytest.approx(want, abs=TOL)


def test_explicit_steps_and_a_separator_in_the_text(qwen_prm):
    path, config, weights, tok = qwen_prm
    scorer = build_scorer("prm-qwen", model=str(path), dtype="float32")
    prompt, response = SAMPLES[2]
    spans = scorer.encode(Sample(id="x", prompt=prompt, response=response)).spans[:2]  # score two steps only
    bad = Sample(id="bad", prompt="a <extra_0> in the prompt", response="one\n\ntwo")
    good, wrong = asyncio.run(scorer.score([Sample(id="s", prompt=prompt, response=response, steps=spans), bad]))
    _, want = qwen_reference(weights, config, tok, prompt, steps_of(response, "\n\n")[:2])
    assert [s.score for s in good.steps] == pytest.approx(want, abs=TOL)
    assert wrong.error.code == "INVALID_SAMPLE" and "'<extra_0>'" in wrong.error.message


# ------------------------------------------------------------------ refused at start-up


def _broken(tmp_path, qwen_prm, *, drop=(), config_extra=None, architecture="Qwen2ForProcessRewardModel"):
    path, config, weights, tok = qwen_prm
    config = {**config, **(config_extra or {}), "architectures": [architecture]}
    if architecture != "Qwen2ForProcessRewardModel":
        del config["auto_map"]
    write_checkpoint(tmp_path, config, {k: v for k, v in weights.items() if k not in drop}, tok)
    return str(tmp_path)


def test_a_missing_head_weight_is_named(tmp_path, qwen_prm):
    with pytest.raises(ValueError, match=r"missing 1 weight\(s\): score\.2\.bias"):
        build_scorer("prm", model=_broken(tmp_path, qwen_prm, drop=["score.2.bias"]))


def test_a_wrong_num_labels_is_refused(tmp_path, qwen_prm):
    labels = {"id2label": {"0": "a", "1": "b", "2": "c"}, "label2id": {"a": 0, "b": 1, "c": 2}}
    with pytest.raises(ValueError, match="num_labels=3.*2 labels"):
        build_scorer("prm", model=_broken(tmp_path, qwen_prm, config_extra=labels))


def test_a_head_of_the_wrong_shape_is_named(tmp_path, qwen_prm):
    path, config, weights, tok = qwen_prm
    h = config["hidden_size"]
    write_checkpoint(
        tmp_path, config, weights | {"score.2.weight": torch.zeros(3, h), "score.2.bias": torch.zeros(3)}, tok
    )
    with pytest.raises(ValueError, match=r"mis-shaped .*score\.2\.bias"):
        build_scorer("prm", model=str(tmp_path))


def test_prm_options_go_to_the_chosen_family(qwen_prm):
    with pytest.raises(ValueError, match="unknown option\\(s\\) 'temprature' for scorer 'prm-qwen'"):
        build_scorer("prm", model=str(qwen_prm[0]), temprature=1.0)
    with pytest.raises(ValueError, match="format 'qwen' is not 'auto' or one of qwen2.5-math-prm, skywork-o1-prm"):
        build_scorer("prm", model=str(qwen_prm[0]), format="qwen")
    assert build_scorer("prm", model=str(qwen_prm[0]), format="prm-qwen").input_format == "qwen2.5-math-prm"


def test_weights_decide_when_the_config_names_a_plain_lm(tmp_path, skywork_prm, rlhflow_prm):
    path, config, weights, tok = skywork_prm
    write_checkpoint(tmp_path / "sky", {**config, "architectures": ["Qwen2ForCausalLM"]}, weights, tok)
    fmt, why = detect_prm_format(str(tmp_path / "sky"))
    assert fmt == "skywork-o1-prm" and "v_head" in why
    # A Skywork checkpoint served as a chat LM would drop its value head: refused.
    with pytest.raises(ValueError, match=r"unexpected 2 weight\(s\): v_head\.summary\.bias"):
        build_scorer("prm", model=str(tmp_path / "sky"), format="rlhflow-prm")
    # A chat LM of another family (a policy passed by mistake?) is not guessed at.
    path, config, weights, _ = rlhflow_prm
    write_checkpoint(tmp_path / "chat", config, weights, qwen_tokenizer())
    with pytest.raises(ValueError, match="Is it a policy rather than a PRM"):
        detect_prm_format(str(tmp_path / "chat"))


def test_a_missing_lm_weight_is_refused(tmp_path, rlhflow_prm):
    path, config, weights, tok = rlhflow_prm
    write_checkpoint(tmp_path, config, {k: v for k, v in weights.items() if k != "lm_head.weight"}, tok)
    with pytest.raises(ValueError, match=r"missing 1 weight\(s\): lm_head\.weight"):
        build_scorer("prm", model=str(tmp_path))


def test_a_skywork_checkpoint_is_not_taken_for_qwen(skywork_prm):
    with pytest.raises(ValueError, match=r"unexpected 2 weight\(s\): v_head\.summary\.bias"):
        build_scorer("prm", model=str(skywork_prm[0]), format="qwen2.5-math-prm")


def test_an_unknown_architecture_fails_the_server_before_it_serves(tmp_path, qwen_prm):
    head = ["score.0.weight", "score.0.bias", "score.2.weight", "score.2.bias"]
    model = _broken(tmp_path / "ckpt", qwen_prm, architecture="BertForMaskedLM", drop=head)
    proc = subprocess.run(
        [sys.executable, "-m", "reward_server.cli", "--scorer", "prm", "--model", model, "--port", "0",
         "--metrics-port", "-1", "--ready-file", str(tmp_path / "ready.json")],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode != 0 and not (tmp_path / "ready.json").exists()
    assert "BertForMaskedLM" in proc.stderr and "matches no PRM format rpp knows" in proc.stderr


@pytest.mark.slow
def test_rpp_train_takes_dense_credit_from_a_served_public_prm(tmp_path, qwen_prm):
    """The learner's path with a released PRM format: one REINFORCE++ step whose process
    service is the Qwen2.5-Math-PRM checkpoint, its step scores placed at reward tokens."""
    from rpp_learner.trainer import Trainer
    from tests.helpers.learner_rewards import build, reward_services, run_config
    from tests.helpers.tiny_models import build_tiny_policy

    policy = build_tiny_policy(tmp_path / "policy")
    prm = build_scorer("prm", model=str(qwen_prm[0]), dtype="float32")
    with reward_services(process=False) as handles, start_in_thread(prm, ServerConfig(metrics_port=None)) as served:
        handles["process"] = served
        cfg = build(run_config(
            tmp_path, policy, handles, logging={"progress_bar": False, "tensorboard": False, "plot": False}
        ))
        with Trainer(cfg) as trainer:
            assert trainer.service_infos["prm"].input_format == "qwen2.5-math-prm"
            metrics = trainer.train()["last"]
    assert metrics["reward/failed"] == 0.0
    # Step scores in [0, 1] from the PRM, centred or not, summed over the placed reward tokens.
    assert metrics["reward/process_sum"] != 0.0

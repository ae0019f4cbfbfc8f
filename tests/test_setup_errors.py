"""Wrong set-ups, as a new user makes them, through the real command lines.

Every case must end with exit code 2, no traceback, and a last line naming what is wrong.
Where the check can come before any model loads it must: those runs point at a trap
model (a valid config.json and tokenizer, weights that are not safetensors), so a run that
got as far as loading a model would fail on its weights instead, and they write no output.
The cases run as concurrent subprocesses started by a module fixture (each process spends
its seconds importing torch), so the file stays fast; each test reads its own result.

Covered elsewhere, and not repeated here: an unknown key or wrong type, a missing
model.path, an unreachable service and vLLM missing (test_config.py); accelerate's
gradient accumulation (test_algorithms_credit.py); a busy --port (test_server_cli.py);
a PRM of no known format (test_public_prms.py).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from reward_server.scorers.registry import build_scorer
from reward_server.server import ServerConfig, start_in_thread
from rpp_learner.config import ConfigError, ModelConfig
from rpp_learner.data import load_records
from rpp_learner.models import load_causal_lm
from tests.helpers.tiny_models import build_tiny_policy
from tests.serving_helpers import ROOT, LengthScorer, write_test_pki

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
# What a run says when it reached the trap model's weights: the check came too late.
MODEL_LOADED = "its weights cannot be loaded"


class Setup:
    """What one case runs in: its folder, the tiny models, a live process service, a busy port."""

    def __init__(self, folder: Path, models: dict[str, Path], process_service: str, busy_port: int):
        self.d, self.models, self.process_service, self.busy_port = folder, models, process_service, busy_port
        self.env: dict[str, str] = {}

    def model_copy(self, name: str, source: str = "trap", drop: tuple[str, ...] = ()) -> Path:
        target = shutil.copytree(self.models[source], self.d / name)
        for file in drop:
            (target / file).unlink()
        return target

    def config(self, path: Path | str | None = None, **sections) -> dict:
        """A small run on the trap model; reward services are not called at start unless a case says so."""
        prompts = self.d / "prompts.jsonl"
        prompts.write_text("".join(json.dumps({"prompt": f"q{i}", "reference": str(i)}) + "\n" for i in range(8)))
        cfg = {
            "model": {"path": str(path or self.models["trap"])},
            "data": {"train_path": str(prompts), "eval_size": 2},
            "rollout": {"prompts_per_step": 2, "samples_per_prompt": 2, "max_new_tokens": 4},
            "rewards": {"services": [{"name": "judge", "kind": "outcome", "targets": ["127.0.0.1:1"]}],
                        "check_at_start": False},
            "optim": {"mini_batch_size": 4, "micro_batch_size": 2},
            "logging": {"progress_bar": False, "tensorboard": False, "plot": False},
            "output_dir": str(self.d / "run"),
            "total_steps": 1,
        }
        for section, values in sections.items():
            cfg[section] = {**cfg.get(section, {}), **values} if isinstance(values, dict) else values
        return cfg

    def run_yaml(self, cfg: dict | bytes, *args: str) -> list[str]:
        path = self.d / "run.yaml"
        path.write_bytes(cfg) if isinstance(cfg, bytes) else path.write_text(yaml.safe_dump(cfg))
        return ["--config", str(path), *args]


# ---------------------------------------------------------------------------------------
# rpp-train: name -> (arguments for the case, text its last line names, checked before loading)


def _no_weights(s: Setup) -> list[str]:
    return s.run_yaml(s.config(s.model_copy("model", drop=("model.safetensors",))))


def _plugin_raises(s: Setup) -> list[str]:
    (s.d / "broken_plugin.py").write_text("raise RuntimeError('the plugin is broken')\n")  # the cwd is searched
    return s.run_yaml(s.config(algo={"plugins": ["broken_plugin"]}))


def _incomplete_checkpoint(s: Setup) -> list[str]:
    step = s.d / "run" / "checkpoints" / "step_000001"
    step.mkdir(parents=True)
    (step / "trainer_state.json").write_text("{}")
    return s.run_yaml(s.config(), "--resume")


def _output_under_a_file(s: Setup) -> list[str]:
    (s.d / "a_file").write_text("")
    return s.run_yaml(s.config(output_dir=str(s.d / "a_file" / "run")))


def _wrong_kind(s: Setup) -> list[str]:
    services = [{"name": "judge", "kind": "outcome", "targets": [s.process_service]}]
    return s.run_yaml(s.config(rewards={"services": services, "check_at_start": True}))


def _eval_on_a_process_service(s: Setup) -> list[str]:
    services = [{"name": "judge", "kind": "outcome", "targets": ["127.0.0.1:1"]},
                {"name": "prm", "kind": "process", "targets": ["127.0.0.1:2"]}]
    return s.run_yaml(s.config(rewards={"services": services}, eval={"service": "prm"}))


TRAIN_CASES: dict[str, tuple[Callable[[Setup], list[str]], str, bool]] = {
    "yaml_syntax_error": (lambda s: s.run_yaml(b"model:\n\tpath: x\n"),
                          "not valid YAML: found character '\\t' that cannot start any token, line 2, column 1", True),
    "config_not_text": (lambda s: s.run_yaml(b"\xff\xfe\x00\x01"), "is not UTF-8 text", True),
    "override_not_yaml": (lambda s: s.run_yaml(s.config(), "--rewards.services.0.targets", "[a,"),
                          "override --rewards.services.0.targets: '[a,' is not a valid YAML value", True),
    "override_index_gap": (lambda s: s.run_yaml(s.config(), "--rewards.services.3.name", "x"),
                           "rewards.services is a list of 1, so index 3 would leave a gap", True),
    "eval_service_is_process": (_eval_on_a_process_service, "eval.service 'prm' is a process service", True),
    "plugin_raises_on_import": (_plugin_raises, "algo.plugins.0: cannot import 'broken_plugin': RuntimeError", True),
    "hub_id_not_cached_offline": (lambda s: s.run_yaml(s.config("no-such-org/no-such-model")),
                                  "as a Hugging Face hub id it cannot be fetched", True),
    "model_without_weights": (_no_weights, "has a config.json but no weights", True),
    "model_without_tokenizer": (
        lambda s: s.run_yaml(s.config(s.model_copy("model", drop=("tokenizer.json", "tokenizer_config.json")))),
        "encodes to no tokens", True),
    "tokenizer_path_missing": (lambda s: s.run_yaml(s.config(model={"path": str(s.models["trap"]),
                                                                    "tokenizer_path": str(s.d / "no-tokenizer")})),
                               "model.tokenizer_path", True),
    "output_dir_under_a_file": (_output_under_a_file, "is a file, not a directory; choose another output_dir", True),
    "resume_incomplete_checkpoint": (_incomplete_checkpoint,
                                     "is incomplete (no policy/config.json, optimizer.pt, scheduler.pt)", True),
    "eval_only_without_held_out": (lambda s: s.run_yaml(s.config(data={"eval_size": 0}), "--eval-only"),
                                   "--eval-only needs held-out prompts", True),
    "service_of_the_wrong_kind": (_wrong_kind, "is a process service but the config says kind: outcome", True),
    # About the weights themselves, read while loading (and what the trap model says).
    "corrupt_weights": (lambda s: s.run_yaml(s.config()), f"{MODEL_LOADED}: Error while deserializing header", False),
}


# ---------------------------------------------------------------------------------------
# rpp-reward-server: name -> (arguments, text its last line names). The TLS, port and
# ready-file cases serve the trap model, so they too show the check comes before loading
# (the trap's own refusal is tested in process below).


def _user(spec: str) -> list[str]:
    return ["--scorer", "user", "--function", spec]


def _trap_server(s: Setup, *args: str) -> list[str]:
    return ["--scorer", "hf-outcome", "--model", str(s.models["trap"]), *args]


def _pki(s: Setup) -> dict[str, str]:
    for name in ("pki", "pki2"):
        (s.d / name).mkdir()
    return {**write_test_pki(s.d / "pki"), "other_key": write_test_pki(s.d / "pki2")["server_key"]}


def _user_file(s: Setup, text: str) -> str:
    (s.d / "rewards.py").write_text(text)
    return str(s.d / "rewards.py")


SERVER_CASES: dict[str, tuple[Callable[[Setup], list[str]], str]] = {
    "unknown_scorer": (lambda s: ["--scorer", "nosuch"], "unknown scorer 'nosuch'; valid scorers: hf-outcome"),
    "function_file_syntax_error": (lambda s: _user(_user_file(s, "def f(sample:\n") + ":f"), "SyntaxError"),
    "function_not_callable": (lambda s: _user(_user_file(s, "f = 3\n") + ":f"), "'f' is not callable"),
    "scorer_module_missing": (lambda s: ["--scorer", "no_such_module_rpp:Scorer"],
                              "--scorer 'no_such_module_rpp:Scorer': cannot import module 'no_such_module_rpp'"),
    "option_without_value": (lambda s: ["--scorer", "math-answer", "--option", "workers"],
                             "--option 'workers': expected KEY=VALUE"),
    "option_of_the_wrong_type": (lambda s: ["--scorer", "math-answer", "--option", "workers=[2]"],
                                 "option 'workers' of scorer 'math-answer' must be int, got [2]"),
    "model_path_missing": (lambda s: ["--scorer", "prm", "--model", str(s.d / "no-such-prm")],
                           "does not exist; give a directory saved with save_pretrained"),
    "tls_cert_missing": (lambda s: _trap_server(s, "--tls-cert", str(s.d / "cert.pem"), "--tls-key", str(s.d / "k")),
                         "cert.pem': no such file"),
    "tls_key_of_another_cert": (
        lambda s: _trap_server(s, "--tls-cert", (pki := _pki(s))["server_cert"], "--tls-key", pki["other_key"]),
        "is not the private key of --tls-cert"),
    "port_busy_before_loading": (lambda s: _trap_server(s, "--port", str(s.busy_port)), "the address is in use"),
    "metrics_port_busy": (lambda s: _trap_server(s, "--metrics-port", str(s.busy_port)),
                          "pick another --metrics-port, or --metrics-port 0 for any free one, or -1 for no metrics"),
    "ready_file_folder_missing": (lambda s: _trap_server(s, "--ready-file", str(s.d / "no" / "ready.json")),
                                  "no/ready.json': cannot write in"),
    "batch_limit_zero": (lambda s: _trap_server(s, "--max-batch-samples", "0"), "max_batch_samples must be >= 1"),
    # A hung sample's worker would be killed only at the function's 30 s: meanwhile its
    # whole batch gets TIMEOUT and health says NOT_SERVING.
    "scorer_timeout_before_the_function_timeout": (
        lambda s: ["--scorer", "user", "--function", "examples/custom_reward_service.py:brevity_reward",
                   "--scorer-timeout-s", "10"],
        "ends a stuck sample itself after timeout_s=30 s, but scorer_timeout_s=10 s"),
    "port_out_of_range": (lambda s: ["--scorer", "math-answer", "--port", "70000"], "is not a port number"),
    "unknown_log_level": (lambda s: ["--scorer", "math-answer", "--log-level", "LOUD"], "is not a log level"),
}


def _run(argv: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, cwd=cwd, env={**ENV, **env}, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired as exc:  # a server that started serving instead of refusing
        return subprocess.CompletedProcess(argv, -1, "", f"timed out: {exc.stderr}")


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """The tiny policy, and the trap: its copy with weights that are not safetensors."""
    root = tmp_path_factory.mktemp("models")
    good = build_tiny_policy(root / "good")
    trap = shutil.copytree(good, root / "trap")
    (trap / "model.safetensors").write_bytes(b"not safetensors")
    return {"good": good, "trap": trap}


@pytest.fixture(scope="module")
def results(tmp_path_factory, models) -> Iterator[dict[str, tuple[Future, Path]]]:
    root = tmp_path_factory.mktemp("setup_errors")
    process_service = start_in_thread(LengthScorer("process"), ServerConfig(metrics_port=None))
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    train = [sys.executable, "-m", "rpp_learner"]
    server = [sys.executable, "-m", "reward_server.cli", "--port", "0", "--metrics-port", "-1"]
    commands = {f"train/{n}": (train, case) for n, (case, _, _) in TRAIN_CASES.items()}
    commands |= {f"server/{n}": (server, case) for n, (case, _) in SERVER_CASES.items()}
    futures = {}
    with ThreadPoolExecutor(max_workers=min(4, (os.cpu_count() or 1) + 1)) as pool:
        for name, (command, case) in commands.items():
            folder = root / name
            folder.mkdir(parents=True)
            setup = Setup(folder, models, process_service.address, busy.getsockname()[1])
            argv = command + case(setup)  # later flags win: a case's --port replaces the default
            cwd = ROOT if name.startswith("server/") else folder  # plugins are found from the cwd
            futures[name] = pool.submit(_run, argv, cwd, setup.env), folder
        yield futures
    busy.close()
    process_service.stop(grace_s=0.5)


def _one_clear_line(proc: subprocess.CompletedProcess, prog: str, expected: str) -> None:
    assert proc.returncode == 2, f"exit {proc.returncode}:\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"{prog}: ") and expected in last, last


@pytest.mark.parametrize("name", list(TRAIN_CASES))
def test_rpp_train_setup_error(results, name):
    _, expected, before_loading = TRAIN_CASES[name]
    future, folder = results[f"train/{name}"]
    _one_clear_line(future.result(), "rpp-train", expected)
    if before_loading:
        assert MODEL_LOADED not in future.result().stderr
        assert not (folder / "run" / "config.yaml").exists()


@pytest.mark.parametrize("name", list(SERVER_CASES))
def test_reward_server_setup_error(results, name):
    _, expected = SERVER_CASES[name]
    _one_clear_line(results[f"server/{name}"][0].result(), "rpp-reward-server", expected)


# In process, for speed: what rpp-train prints for these is the ConfigError's message, as above.


def test_a_train_file_that_is_not_utf8_is_named_with_its_line(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"prompt": "a leading BOM is fine"}\n{"prompt": "caf\xe9"}\n')
    with pytest.raises(ConfigError, match=r"prompts.jsonl:2: not UTF-8 text \(invalid continuation byte\)"):
        load_records(path)


def test_parquet_without_the_datasets_package_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # `import datasets` raises ImportError
    (tmp_path / "prompts.parquet").write_bytes(b"PAR1")
    with pytest.raises(ConfigError, match=r"needs the datasets package: pip install 'rpp\[data\]'"):
        load_records(tmp_path / "prompts.parquet")


def test_weights_that_do_not_fit_the_config_are_refused_not_randomly_filled(tmp_path, models):
    """A Qwen2 checkpoint whose config.json says BERT: transformers would train a BERT with
    random weights (exit 0); and a config whose vocabulary disagrees with the weights."""
    for name, change, message in [
        ("bert", {"model_type": "bert", "architectures": ["BertForMaskedLM"]}, "BertLMHeadModel weights: missing"),
        ("vocab", {"vocab_size": 999}, "mis-shaped model.embed_tokens.weight (checkpoint (400, 64), expected"),
    ]:
        model = shutil.copytree(models["good"], tmp_path / name)
        config = json.loads((model / "config.json").read_text())
        (model / "config.json").write_text(json.dumps({**config, **change}))
        with pytest.raises(ConfigError, match=re.escape(message)):
            load_causal_lm(str(model), ModelConfig(path=str(model)))


def test_a_scorer_checkpoint_with_corrupt_weights_is_a_value_error_naming_it(models):
    """rpp-reward-server turns this ValueError into its one line and exit 2, as above."""
    with pytest.raises(ValueError, match=r"could not load AutoModelForSequenceClassification from .*trap'.*"
                                         r"Error while deserializing header"):
        build_scorer("hf-outcome", model=str(models["trap"]))

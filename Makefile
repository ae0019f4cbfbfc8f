# The two commands a new user runs (see README.md). Both create .venv if needed.
.PHONY: quickstart test setup lint bench

setup:
	scripts/setup_env.sh dev

quickstart: setup
	.venv/bin/rpp-quickstart

test: setup
	.venv/bin/python -m pytest -q tests

lint: setup
	.venv/bin/ruff check .

"""rpp-reward-server as a new user meets it: escapes, sibling imports, a busy port."""

from __future__ import annotations

import subprocess
import sys

import pytest

from reward_server.cli import unescape
from reward_server.client import BlockingRewardClient
from reward_server.types import Sample
from tests.serving_helpers import ROOT, start_server_processes, stop_server_processes


def test_the_usual_escapes_are_read_and_other_backslashes_kept():
    assert unescape(r"\n") == "\n" and unescape(r"\n\n") == "\n\n" and unescape("ки\\n") == "ки\n"
    assert unescape(r"\t|\r") == "\t|\r" and unescape(r"a\\b") == "a\\b" and unescape(r"\d+") == r"\d+"


@pytest.mark.slow
def test_a_reward_file_imports_its_neighbours_and_splits_on_an_escaped_newline(tmp_path):
    (tmp_path / "helper_scores.py").write_text("def score_of(step):\n    return float(len(step))\n")
    (tmp_path / "my_rewards.py").write_text(
        "from helper_scores import score_of\n\ndef per_line(sample, steps):\n    return [score_of(s) for s in steps]\n"
    )
    procs, ready = start_server_processes(tmp_path, 1, [
        "--scorer", "user", "--kind", "process", "--function", f"{tmp_path / 'my_rewards.py'}:per_line",
        "--step-separator", "\\n"])  # what a shell passes for '\n'
    client = BlockingRewardClient(ready[0]["address"], timeout_s=30)
    try:
        assert client.get_info().step_separator == "\n"
        [result] = client.score([Sample(id="a", prompt="q", response="one\ntwo two\nthree")])
        assert [s.score for s in result.steps] == [3.0, 7.0, 5.0]
    finally:
        client.close()
        stop_server_processes(procs)


@pytest.mark.slow
def test_a_busy_port_is_one_clear_line(tmp_path):
    procs, ready = start_server_processes(tmp_path, 1, ["--scorer", "math-answer"])
    try:
        port = ready[0]["address"].rsplit(":", 1)[1]
        second = subprocess.run(
            [
                sys.executable, "-m", "reward_server.cli", "--scorer", "math-answer",
                "--port", port, "--metrics-port", "-1",
            ],
            cwd=ROOT, capture_output=True, text=True, timeout=60,
        )
    finally:
        stop_server_processes(procs)
    assert second.returncode != 0
    ours = [line for line in second.stderr.splitlines() if line.startswith("rpp-reward-server:")]
    assert ours == [f"rpp-reward-server: cannot listen on 127.0.0.1:{port}: the address is in use (another server "
                    "on that port?) or not this machine's; pick another --port, or --port 0 for any free one"]
    assert "Traceback" not in second.stderr


def test_the_old_max_batch_tokens_flag_still_works_and_says_what_replaced_it(capsys):
    from reward_server.cli import _max_batch_bytes, build_parser

    args = build_parser().parse_args(["--scorer", "math-answer", "--max-batch-tokens", "1000"])
    assert _max_batch_bytes(args) == 1000
    assert "--max-batch-tokens is deprecated and counts UTF-8 bytes: use --max-batch-bytes" in capsys.readouterr().err
    args = build_parser().parse_args(["--scorer", "math-answer", "--max-batch-bytes", "2000"])
    assert _max_batch_bytes(args) == 2000 and capsys.readouterr().err == ""

"""The wire contract as an implementer meets it: `rpp-reward-conformance` passes rpp's own
servers and a server written from reward.proto alone, and catches each broken behaviour
of a deliberately flawed one, naming the rule; rpp's client copes with the reasonable
choices the contract allows (health only for "", limits left at 0, busy with pushback)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from reward_server.client import BlockingRewardClient, RewardServiceError
from reward_server.conformance import MUST, Context, format_table, main, run_checks
from reward_server.server import ServerConfig, start_in_thread
from reward_server.types import Sample
from tests.helpers.contract_servers import FLAWS, contract_server
from tests.helpers.learner_rewards import outcome_scorer, process_scorer


def check(address: str, token: str | None = None, kind: str | None = None):
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    with grpc.insecure_channel(address, options=[("grpc.max_send_message_length", 64 << 20)]) as channel:
        outcomes = run_checks(Context(channel, metadata, 60.0, token), kind)
    return {o.rule: o for o in outcomes}, format_table(outcomes)


@pytest.mark.parametrize("scorer_name", ["user-outcome", "user-process", "math-answer"])
def test_rpp_reward_server_passes_every_rule(scorer_name, capsys, monkeypatch):
    """A user function of each kind, and the answer checker (which needs a reference)."""
    from reward_server.scorers.math_answer import MathAnswerConfig, MathAnswerScorer

    scorer = {
        "user-outcome": lambda: outcome_scorer(isolation="thread"),
        "user-process": process_scorer,
        "math-answer": lambda: MathAnswerScorer(MathAnswerConfig(workers=1)),
    }[scorer_name]()
    kind = "process" if scorer_name == "user-process" else "outcome"
    handle = start_in_thread(scorer, ServerConfig(metrics_port=None, token="s3cret"))
    try:
        outcomes, table = check(handle.address, token="s3cret", kind=kind)
        failed = [rule for rule, o in outcomes.items() if o.passed is False]
        assert not failed, table
        assert outcomes["auth.token_required"].passed and outcomes["reflection.v1"].passed, table
        # The command itself, as an implementer runs it: exit 0 and the table.
        monkeypatch.setenv("RPP_CONFORMANCE_TOKEN", "s3cret")
        assert main([handle.address, "--kind", kind, "--token-env", "RPP_CONFORMANCE_TOKEN"]) == 0
        out = capsys.readouterr().out
        assert (
            "0 MUST rule(s) failed, 0 SHOULD rule(s) failed" in out
            and "PASS  MUST    score.one_result_per_sample" in out
        )
    finally:
        handle.stop()


@pytest.mark.parametrize("kind", ["outcome", "process"])
def test_a_server_written_from_the_proto_alone_passes(kind):
    with contract_server(kind, token="t") as (address, _):
        outcomes, table = check(address, token="t")
    assert not [rule for rule, o in outcomes.items() if o.passed is False], table


# Each flaw, the kind of server it is tried on, and the rule that must catch it.
CAUGHT_BY = {
    "health_empty_name_only": ("outcome", "health.service_name"),
    "zero_limits": ("outcome", "info.limits_stated"),
    "overstated_request_bytes": ("outcome", "size.max_request_bytes"),
    "reversed_results": ("outcome", "score.one_result_per_sample"),
    "utf16_spans": ("process", "process.split_without_steps"),
    "js_whitespace": ("process", "process.split_without_steps"),
    "whole_call_fails_on_big_sample": ("outcome", "score.per_sample_error"),
    "accepts_empty_batch": ("process", "invalid.empty_batch"),
    "accepts_duplicate_ids": ("outcome", "invalid.duplicate_ids"),
    "nan_score": ("process", "score.scores_finite"),
    "outcome_validates_steps": ("outcome", "outcome.ignores_steps"),
    "ignores_given_steps": ("process", "process.given_steps"),
    "error_with_score": ("outcome", "score.error_excludes_scores"),
    "no_auth": ("outcome", "auth.token_required"),
    "no_reflection": ("process", "reflection.v1"),
}


@pytest.mark.parametrize("flaw", sorted(CAUGHT_BY))
def test_each_broken_behaviour_is_caught_by_its_rule(flaw):
    kind, rule = CAUGHT_BY[flaw]
    with contract_server(kind, flaw=flaw, token="t") as (address, _):
        outcomes, table = check(address, token="t")
    assert outcomes[rule].passed is False, f"{flaw} ({FLAWS[flaw]}) not caught by {rule}:\n{table}"
    if outcomes[rule].level == MUST:
        assert f"FAIL  MUST    {rule}" in table
    if flaw == "utf16_spans":
        assert "UTF-16 offsets: count UTF-8 bytes" in outcomes[rule].detail


def test_the_command_exits_1_on_a_must_failure(capsys):
    with contract_server("outcome", flaw="reversed_results") as (address, _):
        assert main([address]) == 1
    out = capsys.readouterr().out
    assert "FAIL  MUST    score.one_result_per_sample" in out and "1 MUST rule(s) failed" in out


# ----------------------------------------------------------------------- rpp's client


def samples(n: int, size: int = 20) -> list[Sample]:
    return [Sample(f"s{i}", "p", ("7" * size)[:size]) for i in range(n)]


def test_client_works_with_health_registered_only_for_the_empty_name():
    with contract_server("outcome", flaw="health_empty_name_only") as (address, _):
        with BlockingRewardClient(address, timeout_s=10) as client:
            assert [r.outcome for r in client.score(samples(3))] == [1.0, 1.0, 1.0]


def test_client_says_what_the_health_service_reported():
    """A replica whose scorer is stuck reports NOT_SERVING: the client's error says so."""
    handle = start_in_thread(outcome_scorer(isolation="thread"), ServerConfig(metrics_port=None))

    async def stuck() -> None:
        handle.server._scorer_stuck(True)  # what a scorer call past its timeout triggers
        await asyncio.sleep(0.05)  # the health updates it schedules

    try:
        asyncio.run_coroutine_threadsafe(stuck(), handle._loop).result()
        with BlockingRewardClient(handle.address, timeout_s=5, retry_attempts=1) as client:
            with pytest.raises(RewardServiceError, match="reports NOT_SERVING for rpp.reward.v1.RewardService"):
                client.get_info()
    finally:
        handle.stop()


def test_client_with_zero_limits_splits_to_grpcs_default_4_mib():
    """max_samples_per_request = max_request_bytes = 0 (proto3 defaults) on a server with
    gRPC's default 4 MiB receive limit: 9 MB of samples arrive, in requests under 4 MiB."""
    with contract_server("outcome", flaw="zero_limits") as (address, servicer):
        with BlockingRewardClient(address, timeout_s=30) as client:
            info = client.get_info()
            assert info.max_request_bytes == 4 << 20
            results = client.score(samples(300, size=30_000))
        assert len(results) == 300 and all(r.ok for r in results)
        assert servicer.score_calls >= 3  # 9 MB went as several requests


def test_client_retries_busy_after_pushback_but_not_too_big():
    with contract_server("outcome") as (address, servicer):
        servicer.busy_calls = 2  # busy twice (RESOURCE_EXHAUSTED + pushback), then served
        with BlockingRewardClient(address, timeout_s=10, retry_attempts=5) as client:
            assert len(client.score(samples(2))) == 2
        assert servicer.score_calls == 3
    with contract_server("outcome", flaw="overstated_request_bytes") as (address, servicer):
        with BlockingRewardClient(address, timeout_s=10, retry_attempts=5) as client:
            with pytest.raises(RewardServiceError, match="REQUEST_TOO_LARGE.*not retried") as info:
                client.score(samples(150, size=40_000))  # 6 MB in one request: over 4 MiB
        assert info.value.code == "REQUEST_TOO_LARGE"


def test_the_command_checks_a_server_over_mtls_with_a_token(tmp_path, monkeypatch, capsys):
    from tests.serving_helpers import LengthScorer, write_test_pki

    pki = write_test_pki(Path(tmp_path))
    config = ServerConfig(tls_cert_file=pki["server_cert"], tls_key_file=pki["server_key"],
                          tls_client_ca_file=pki["ca"], token="tls-token", metrics_port=None)
    monkeypatch.setenv("RPP_CONFORMANCE_TOKEN", "tls-token")
    with start_in_thread(LengthScorer(), config) as server:
        code = main([server.address, "--tls-ca", pki["ca"], "--tls-cert", pki["client_cert"],
                     "--tls-key", pki["client_key"], "--tls-server-name", "localhost",
                     "--token-env", "RPP_CONFORMANCE_TOKEN"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "PASS  MUST    auth.token_required" in out and "0 MUST rule(s) failed" in out

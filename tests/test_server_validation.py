"""Bad input gets INVALID_ARGUMENT (or a per-sample error) naming the field and the sample,
and the server keeps answering good requests."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from reward_server import convert
from reward_server.client import RewardClient, RewardServiceError
from reward_server.proto import reward_pb2 as pb
from reward_server.proto import reward_pb2_grpc
from reward_server.server import ServerConfig, start_in_thread
from reward_server.types import RewardKind, Sample, Span
from tests.serving_helpers import LengthScorer, expected_outcome, make_samples

MAX_SAMPLES = 8


def request(*samples: pb.Sample) -> pb.ScoreRequest:
    return pb.ScoreRequest(samples=list(samples))


def spans(*pairs: tuple[int, int]) -> list[pb.Span]:
    return [pb.Span(start=a, end=b) for a, b in pairs]


# "héllo wörld": é and ö are two bytes each, so the response is 13 bytes long.
TEXT = "héllo wörld"

BAD_REQUESTS = [
    (request(), "samples: the request has no samples"),
    (request(*[pb.Sample(id=str(i)) for i in range(9)]), "9 samples exceed this server's limit of 8"),
    (request(pb.Sample(id="a"), pb.Sample(response="x")), "samples[1].id: missing"),
    (request(pb.Sample(id="a"), pb.Sample(id="b"), pb.Sample(id="a")), "samples[2].id: 'a' duplicates samples[0].id"),
    (
        request(pb.Sample(id="a", response=TEXT, steps=spans((0, 14)))),
        "samples[0] (id='a').steps[0]: span [0, 14) is out of range; the response has 13 UTF-8 bytes",
    ),
    (
        request(pb.Sample(id="a", response=TEXT, steps=spans((0, 6), (5, 9)))),
        "samples[0] (id='a').steps[1]: span [5, 9) overlaps",
    ),
    (request(pb.Sample(id="a", response=TEXT, steps=spans((3, 3)))), "steps[0]: span [3, 3) is empty"),
    (request(pb.Sample(id="ok", response="x"), pb.Sample(id="z", response=TEXT, steps=spans((0, 2)))),
     "samples[1] (id='z').steps[0]: span end 2 falls inside a multi-byte UTF-8 character"),
    (request(pb.Sample(id="a", response=TEXT, steps=spans((9, 13)))), "span start 9 falls inside a multi-byte"),
]


@pytest.mark.parametrize(("req", "message"), BAD_REQUESTS)
def test_parse_refuses_malformed_requests_naming_field_and_sample(req: pb.ScoreRequest, message: str) -> None:
    with pytest.raises(convert.InvalidRequest, match=None) as info:
        convert.parse_score_request(req, MAX_SAMPLES)
    assert message in str(info.value)


def test_parse_keeps_valid_spans_reference_and_metadata() -> None:
    msg = pb.Sample(id="a", prompt="p", response=TEXT, steps=spans((0, 6), (7, 13)), metadata={"k": "v"})
    msg.reference = ""
    (sample,) = convert.parse_score_request(request(msg), MAX_SAMPLES)
    assert sample == Sample("a", "p", TEXT, reference="", steps=[Span(0, 6), Span(7, 13)], metadata={"k": "v"})
    (no_reference,) = convert.parse_score_request(request(pb.Sample(id="b")), MAX_SAMPLES)
    assert no_reference.reference is None


def test_oversized_samples_get_per_sample_errors_naming_them() -> None:
    req = request(pb.Sample(id="small", response="x"), pb.Sample(id="big", response="y" * 65))
    errors = convert.oversized_samples(req, max_sample_bytes=64)
    assert list(errors) == [1]
    assert errors[1].code == "INVALID_SAMPLE" and "samples[1] (id='big')" in errors[1].message


def test_info_with_unknown_kind_is_refused_by_the_client_side_conversion() -> None:
    with pytest.raises(ValueError, match="GetInfo.kind"):
        convert.info_from_proto(pb.GetInfoResponse(kind=pb.REWARD_KIND_UNSPECIFIED, max_samples_per_request=4))
    with pytest.raises(ValueError, match="GetInfo.kind"):
        convert.info_from_proto(pb.GetInfoResponse(kind=7, max_samples_per_request=4))


def test_server_answers_bad_requests_with_invalid_argument_then_serves_good_ones() -> None:
    config = ServerConfig(max_samples_per_request=8, max_queue=64, max_sample_bytes=64, metrics_port=None)
    with start_in_thread(LengthScorer(RewardKind.PROCESS), config) as server:

        async def run() -> None:
            async with grpc.aio.insecure_channel(server.address) as channel:
                stub = reward_pb2_grpc.RewardServiceStub(channel)
                for req, message in BAD_REQUESTS:
                    with pytest.raises(grpc.aio.AioRpcError) as info:
                        await stub.Score(req, timeout=10)
                    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
                    assert message in info.value.details()
                    good = await stub.Score(request(pb.Sample(id="g", response="one\n\ntwo")), timeout=10)
                    assert [s.score for s in good.results[0].steps] == [3.0, 3.0]
                # One oversized sample fails alone; its neighbour is scored.
                mixed = await stub.Score(
                    request(pb.Sample(id="big", response="y" * 65), pb.Sample(id="ok", response="a\n\nbb")), timeout=10
                )
                big, ok = mixed.results
                assert big.error.code == "INVALID_SAMPLE" and "id='big'" in big.error.message
                assert not big.HasField("outcome") and not big.steps
                assert [(s.span.start, s.span.end, s.score) for s in ok.steps] == [(0, 1, 1.0), (3, 5, 2.0)]

        asyncio.run(run())


def test_client_error_names_service_address_and_field() -> None:
    config = ServerConfig(metrics_port=None)
    with start_in_thread(LengthScorer(), config) as server:

        async def run() -> None:
            async with RewardClient(server.address, name="orm") as client:
                with pytest.raises(RewardServiceError) as info:
                    await client.score([Sample("dup", "", "a"), Sample("dup", "", "b")])
                text = str(info.value)
                assert info.value.code == "INVALID_ARGUMENT"
                assert "'orm'" in text and server.address in text and "samples[1].id" in text
                good = await client.score(make_samples(3))
                assert [r.outcome for r in good] == [expected_outcome(s) for s in make_samples(3)]

        asyncio.run(run())

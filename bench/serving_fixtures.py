"""What bench_serving runs in its server processes.

- ``TrivialScorer``: outcome = response length in bytes. Costs nothing, so a benchmark
  with it measures the serving path alone.
- ``http_app``: the HTTP/JSON baseline, built the way OpenRLHF's reward server is (FastAPI,
  one POST that takes a JSON list and returns a JSON list, served by uvicorn), calling the
  same scorer on the same samples. Run: ``python -m uvicorn bench.serving_fixtures:http_app``.
- ``serve_bare_grpc``: the floor of gRPC in Python. A bare grpc.aio server that answers
  rpp.reward.v1 Score with the same scores, straight from the protobuf messages: none of
  rpp's server (no validation, batching, metrics; the stock health service only, which the
  client's health-checked balancing asks for once). Run:
  ``python -m bench.serving_fixtures READY_FILE``; it writes its address there.
"""

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from reward_server.contract import SERVICE_NAME
from reward_server.scorers.base import Scorer
from reward_server.types import Result, RewardKind, Sample


class TrivialScorer(Scorer):
    kind = RewardKind.OUTCOME
    model_name = "trivial-length"
    blocking = False  # never blocks: the server runs it on its event loop, as the HTTP baseline does

    def __init__(self, **_options: Any) -> None:
        pass

    async def score(self, samples: list[Sample]) -> list[Result]:
        return [Result(id=s.id, outcome=float(len(s.response.encode()))) for s in samples]


def _build_http_app():
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    app = FastAPI()
    scorer = TrivialScorer()

    @app.post("/score")
    async def score(request: Request) -> JSONResponse:
        body = await request.json()
        samples = [Sample(id=s["id"], prompt=s["prompt"], response=s["response"]) for s in body["samples"]]
        results = await scorer.score(samples)
        return JSONResponse({"results": [{"id": r.id, "outcome": r.outcome} for r in results]})

    return app


async def serve_bare_grpc(ready_file: Path) -> None:
    import grpc
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    from reward_server.proto import reward_pb2 as pb

    async def score(request: pb.ScoreRequest, context) -> pb.ScoreResponse:
        response = pb.ScoreResponse()
        add = response.results.add
        for sample in request.samples:
            add(id=sample.id, outcome=float(len(sample.response.encode())))
        return response

    async def get_info(request: pb.GetInfoRequest, context) -> pb.GetInfoResponse:
        return pb.GetInfoResponse(kind=pb.REWARD_KIND_OUTCOME, model_name="bare", max_samples_per_request=1024,
                                  max_request_bytes=64 << 20, version="bare")

    def handler(fn, request_type):
        return grpc.unary_unary_rpc_method_handler(
            fn, request_deserializer=request_type.FromString, response_serializer=lambda m: m.SerializeToString()
        )

    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 << 20)])
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, {
        "Score": handler(score, pb.ScoreRequest), "GetInfo": handler(get_info, pb.GetInfoRequest),
    }),))
    health_service = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await health_service.set("rpp.reward.v1.RewardService", health_pb2.HealthCheckResponse.SERVING)
    partial = ready_file.with_suffix(".tmp")
    partial.write_text(json.dumps({"address": f"127.0.0.1:{port}"}))
    partial.rename(ready_file)  # whoever waits for the file never reads half of it
    await server.wait_for_termination()


def __getattr__(name: str):  # build the FastAPI app only when uvicorn asks for it
    if name == "http_app":
        return _build_http_app()
    raise AttributeError(name)


if __name__ == "__main__":
    asyncio.run(serve_bare_grpc(Path(sys.argv[1])))

"""What bench_serving runs in its server processes.

- ``TrivialScorer``: outcome = response length in bytes. Costs nothing, so a benchmark
  with it measures the serving path alone.
- ``http_app``: the HTTP/JSON baseline, built the way OpenRLHF's reward server is (FastAPI,
  one POST that takes a JSON list and returns a JSON list, served by uvicorn), calling the
  same scorer on the same samples. Run: ``python -m uvicorn bench.serving_fixtures:http_app``.
"""


from typing import Any

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


def __getattr__(name: str):  # build the FastAPI app only when uvicorn asks for it
    if name == "http_app":
        return _build_http_app()
    raise AttributeError(name)

"""Reward serving benchmarks; every figure is measured side by side in one run.

    .venv/bin/python -m bench.bench_serving            # all three
    .venv/bin/python -m bench.bench_serving --quick    # fewer rounds

1. A tiny HF reward model (Llama, built here from a config) served over gRPC by its own
   ``rpp-reward-server`` process vs the same scorer called in-process, on the same batches
   of 64: throughput ratio (target >= 0.95).
2. 64 concurrent single-sample callers vs one 64-sample call to the same server: dynamic
   batching should keep >= 0.8 of the batched throughput.
3. A trivial scorer through gRPC vs an HTTP/JSON server (FastAPI + uvicorn, OpenRLHF's
   design) doing the same, each in its own process (target >= 2x):
   a. batches of 64 samples with ~1 KB responses, 4 callers;
   b. single samples from 64 callers, one RPC per call (64 in-flight slots);
   c. the same single samples through the default RewardClient (4 slots: calls that find
      them busy are merged into one request);
   d. batches of 64 with ~8 KB responses (long reasoning traces).
   The HTTP side is called two ways: aiohttp (the fastest async client we have, pooled
   keep-alive connections) and OpenRLHF's own client (``requests.post`` per call from
   worker threads, a new connection each time, as its ``request_api_wrapper`` does). The
   "floor" lines replace rpp's server with a bare grpc.aio server answering the same
   scores (serving_fixtures.serve_bare_grpc): what gRPC itself costs in Python.

The two sides of each line run interleaved (A B, B A, A B, ...) after one warm-up each, and
each figure is the median over the repeats; the ratio is the median of the per-repeat
ratios. The machine is shared and noisy: the ratios are what to compare.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from reward_server.client import RewardClient  # noqa: E402
from reward_server.types import Sample  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def make_samples(n: int, response_bytes: int, tag: str = "") -> list[Sample]:
    words = "step one then two so the answer is forty two "
    body = (words * (response_bytes // len(words) + 1))[:response_bytes]
    return [Sample(id=f"{tag}{i}", prompt=f"question {i}?", response=f"{i} {body}") for i in range(n)]


async def compare(
    samples_per_run: int, run_a: Callable[[], Awaitable[object]], run_b: Callable[[], Awaitable[object]], repeats: int
) -> tuple[float, float, float]:
    """Median samples/s of A and of B, and the median of the per-repeat ratios B/A.

    One warm-up run each, then ``repeats`` rounds of both, in alternating order, so that
    a burst of load from elsewhere on the machine hits both sides alike.
    """
    await run_a()
    await run_b()
    rates_a: list[float] = []
    rates_b: list[float] = []
    for r in range(repeats):
        order = ((run_a, rates_a), (run_b, rates_b))
        for run, rates in order if r % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            await run()
            rates.append(samples_per_run / (time.perf_counter() - start))
    ratio = statistics.median(b / a for a, b in zip(rates_a, rates_b, strict=True))
    return statistics.median(rates_a), statistics.median(rates_b), ratio


def print_row(label: str, a_name: str, a: float, b_name: str, b: float, ratio: float, target: str) -> None:
    print(f"{label}\n    {a_name:<38} {a:>10.1f} samples/s\n    {b_name:<38} {b:>10.1f} samples/s"
          f"\n    ratio {ratio:.3f}   (target {target})", flush=True)


# ------------------------------------------------------------------ 1 and 2: HF model


def build_tiny_reward_model(directory: Path) -> str:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForSequenceClassification, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=["[PAD]", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([s.prompt + s.response for s in make_samples(50, 400)], trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", bos_token="<s>", eos_token="</s>")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=1024, num_labels=1,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=1, eos_token_id=2)
    LlamaForSequenceClassification(config).eval().save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)


async def bench_hf_model(repeats: int, rounds: int) -> None:
    from reward_server.scorers.hf_outcome import HFOutcomeConfig, HFOutcomeScorer

    with tempfile.TemporaryDirectory() as tmp:
        model = build_tiny_reward_model(Path(tmp) / "model")
        scorer = HFOutcomeScorer(HFOutcomeConfig(model=model, device="cpu"))
        # The server runs as users run it: its own process (its own interpreter lock), the
        # same scorer and model, started by the CLI.
        proc, address = start_grpc_server(Path(tmp), [
            "--scorer", "hf-outcome", "--model", model, "--max-batch-samples", "64", "--max-samples-per-request", "64",
        ])
        batches = [make_samples(64, 300, tag=f"b{r}-") for r in range(rounds)]
        try:
            async with RewardClient(address, max_in_flight=2) as client:

                async def in_process() -> None:
                    for batch in batches:
                        await scorer.score(batch)

                async def served() -> None:
                    await client.score([s for batch in batches for s in batch])  # split to 64 by GetInfo

                n = 64 * rounds
                local, remote, ratio = await compare(n, in_process, served, repeats)
                print_row("1. tiny HF reward model, batches of 64", "in-process scorer", local,
                          "served over gRPC (loopback, own process)", remote, ratio, ">= 0.95")

                single = batches[0]

                async def one_call() -> None:
                    await client.score(single)

                async with RewardClient(address, max_in_flight=64) as client_many:

                    async def singles_many() -> None:
                        await asyncio.gather(*(client_many.score([s]) for s in single))

                    batched, merged, ratio = await compare(64, one_call, singles_many, repeats * 2)
                print_row("2. dynamic batching, same server", "one 64-sample call", batched,
                          "64 concurrent single-sample callers", merged, ratio, ">= 0.8")
        finally:
            proc.terminate()
            proc.wait(timeout=30)


# ------------------------------------------------------------------ 3: gRPC vs HTTP/JSON


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_grpc_server(
    tmp: Path, scorer_args: list[str] | None = None, *, bare: bool = False
) -> tuple[subprocess.Popen, str]:
    """``rpp-reward-server`` in its own process (default: the trivial scorer), or with
    ``bare`` the bare grpc.aio server of serving_fixtures; (process, address)."""
    ready = tmp / ("bare.json" if bare else "grpc.json")
    command = [sys.executable, "-m", "bench.serving_fixtures", str(ready)] if bare else [
        sys.executable, "-m", "reward_server.cli",
        *(scorer_args or ["--scorer", "bench.serving_fixtures:TrivialScorer"]),
        "--port", "0", "--metrics-port", "-1", "--ready-file", str(ready), "--log-level", "WARNING",
    ]
    proc = subprocess.Popen(command, cwd=ROOT)
    while not ready.exists():
        if proc.poll() is not None:
            raise RuntimeError("the gRPC reward server exited at start-up")
        time.sleep(0.05)
    return proc, json.loads(ready.read_text())["address"]


def start_http_server() -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "bench.serving_fixtures:http_app", "--host", "127.0.0.1",
         "--port", str(port), "--log-level", "warning", "--no-access-log"],
        cwd=ROOT,
    )
    url = f"http://127.0.0.1:{port}/score"
    while True:
        if proc.poll() is not None:
            raise RuntimeError("the HTTP baseline server exited at start-up")
        try:
            body = json.dumps({"samples": []}).encode()
            urllib.request.urlopen(urllib.request.Request(url, body, {"Content-Type": "application/json"}), timeout=1)
            return proc, url
        except OSError:
            time.sleep(0.1)


def openrlhf_post(url: str, samples: list[Sample]) -> list[float]:
    """OpenRLHF's client: one blocking ``requests.post`` per call, no session (so a new
    connection each time), as in its ``remote_rm_fn``'s ``request_api_wrapper``."""
    import requests

    payload = {"samples": [{"id": s.id, "prompt": s.prompt, "response": s.response} for s in samples]}
    reply = requests.post(url, json=payload, headers={"Content-Type": "application/json"}, timeout=180)
    reply.raise_for_status()
    return [r["outcome"] for r in reply.json()["results"]]


async def bench_grpc_vs_http(repeats: int, rounds: int) -> None:
    # aiohttp, not httpx, on the HTTP side: httpx's AsyncClient measured ~10x slower per
    # request here, which would flatter gRPC. The baseline gets the fastest client we have.
    import aiohttp

    with tempfile.TemporaryDirectory() as tmp:
        grpc_proc, address = start_grpc_server(Path(tmp))
        bare_proc, bare_address = start_grpc_server(Path(tmp), bare=True)
        http_proc, url = start_http_server()
        pool = ThreadPoolExecutor(64)  # OpenRLHF's client blocks: one thread per caller
        try:
            connector = aiohttp.TCPConnector(limit=64)
            async with (
                RewardClient(address, max_in_flight=64) as per_call,  # 64 slots for 64 callers: never merges
                RewardClient(address) as default,  # 4 slots: calls that find them busy are merged
                RewardClient(bare_address, max_in_flight=64) as bare,
                aiohttp.ClientSession(connector=connector) as http,
            ):

                async def aiohttp_score(samples: list[Sample]) -> list[float]:
                    payload = {"samples": [{"id": s.id, "prompt": s.prompt, "response": s.response} for s in samples]}
                    async with http.post(url, json=payload) as reply:
                        reply.raise_for_status()
                        return [r["outcome"] for r in (await reply.json())["results"]]

                async def openrlhf_score(samples: list[Sample]) -> list[float]:
                    return await asyncio.get_running_loop().run_in_executor(pool, openrlhf_post, url, samples)

                def grpc(client: RewardClient):
                    async def score(samples: list[Sample]) -> list[float]:
                        return [r.outcome for r in await client.score(samples)]
                    return score

                batches = [make_samples(64, 1000, tag=f"b{r}-") for r in range(rounds)]
                big = [make_samples(64, 8000, tag=f"B{r}-") for r in range(max(1, rounds // 4))]
                singles = make_samples(64 * max(1, rounds // 4), 1000, tag="s")
                expected = await grpc(per_call)(batches[0])  # same work on every side
                assert expected == await grpc(bare)(batches[0]) == await aiohttp_score(batches[0])
                assert expected == openrlhf_post(url, batches[0])

                aio, orl = "HTTP/JSON (FastAPI + uvicorn, aiohttp)", "HTTP/JSON (same server, requests.post)"
                rpp, floor = "gRPC (rpp server + RewardClient)", "gRPC (bare grpc.aio server + RewardClient)"
                rows = [
                    ("3a. batches of 64 x ~1 KB, 4 callers", batches, 4, aio, aiohttp_score, rpp, grpc(per_call)),
                    ("3a'. the same, OpenRLHF's client", batches, 4, orl, openrlhf_score, rpp, grpc(per_call)),
                    ("3a''. the same, floor: no rpp server code", batches, 4, aio, aiohttp_score, floor, grpc(bare)),
                    ("3b. single samples, 64 callers, one RPC per call", singles, 64, aio, aiohttp_score, rpp,
                     grpc(per_call)),
                    ("3b'. the same, OpenRLHF's client", singles, 64, orl, openrlhf_score, rpp, grpc(per_call)),
                    ("3b''. the same, floor: no rpp server code", singles, 64, aio, aiohttp_score, floor, grpc(bare)),
                    ("3c. single samples, 64 callers, default RewardClient (4 slots, busy -> merged)", singles, 64,
                     aio, aiohttp_score, rpp, grpc(default)),
                    ("3d. batches of 64 x ~8 KB (long reasoning traces), 4 callers", big, 4, aio, aiohttp_score, rpp,
                     grpc(per_call)),
                ]
                for label, work, callers, http_name, http_score, grpc_name, grpc_score in rows:

                    def runner(score_fn, work=work, callers=callers):
                        async def run() -> None:
                            async def caller(k: int) -> None:
                                for item in work[k::callers]:
                                    await score_fn(item if isinstance(item, list) else [item])
                            await asyncio.gather(*(caller(k) for k in range(callers)))
                        return run

                    n = sum(len(item) if isinstance(item, list) else 1 for item in work)
                    http_rate, grpc_rate, ratio = await compare(n, runner(http_score), runner(grpc_score), repeats)
                    print_row(label, http_name, http_rate, grpc_name, grpc_rate, ratio, ">= 2")
        finally:
            pool.shutdown()
            for proc in (grpc_proc, bare_proc, http_proc):
                proc.terminate()
                proc.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (a smoke run)")
    parser.add_argument("--only", choices=["hf", "http"], help="run one part")
    args = parser.parse_args()
    repeats, rounds = (3, 4) if args.quick else (5, 16)
    print(f"bench_serving: {os.cpu_count()} CPUs, python {sys.version.split()[0]}", flush=True)
    if args.only in (None, "hf"):
        asyncio.run(bench_hf_model(repeats, rounds))
    if args.only in (None, "http"):
        asyncio.run(bench_grpc_vs_http(repeats, rounds * 4))


if __name__ == "__main__":
    main()

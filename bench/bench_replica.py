"""A replica under attack: memory under a flood of big requests, latency of good calls.

    rpp-bench replica            # both floods + math bomb, about a minute and a half
    rpp-bench replica --only flood|bomb

1. **Floods.** A replica serving a trivial scorer with ``--max-inflight-bytes`` BOUND and its
   default ``--max-message-bytes`` (4 MiB) gets 32 concurrent senders, each sending one
   request after another as fast as it is answered (refusals included) for ``--seconds``:
   - *oversized*: 8.4 MB requests, the issue's case, from senders that ignore GetInfo (the
     transport refuses each before Python sees it);
   - *at the limit*: requests just under max_request_bytes, what a client that splits to
     GetInfo sends (each is received, admitted or refused by bytes, and scored).
   The senders run in a process of their own at nice 19 (``--sender-nice``): on a farm they
   are other machines, and on a small shared machine at normal priority they would take the
   cores the replica needs, so the p99 would measure the load generator. Meanwhile a probe,
   in a process of its own at normal priority (another caller), sends one small request
   after another. Printed: the replica's peak RSS (sampled from /proc every
   20 ms) against BOUND + 300 MB, and the probe's p99 during the flood as a ratio to its
   p99 on the quiet replica.
2. **Math bomb.** A math-answer replica gets ``Answer: $9^{9^{9^{9}}}$`` (which keeps its
   math-verify worker busy until its deadline) every few seconds while a probe sends one
   good check after another. Printed: the probe's p99 during the bombs over its quiet p99.

Targets (issue "a reward server that no single request can freeze"): peak RSS <= bound +
300 MB; both p99 ratios <= 3. On a 2-core machine the senders, the probe and the replica
share the cores, so the p99 ratio also measures the probe's own wait for a core.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc

from reward_server.contract import REQUEST_BYTES_METADATA
from reward_server.proto import reward_pb2 as pb

ROOT = Path(__file__).resolve().parents[1]
SCORE = "/rpp.reward.v1.RewardService/Score"


def start_replica(args: list[str]) -> tuple[subprocess.Popen, str]:
    ready = Path(tempfile.mkdtemp()) / "ready.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "reward_server.cli", *args, "--port", "0", "--metrics-port", "-1",
         "--ready-file", str(ready), "--log-level", "ERROR"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the replica did not start: {args}")
        time.sleep(0.05)
    return proc, json.loads(ready.read_text())["address"]


def rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` and its children (the worker processes)."""
    total = 0
    for p in [pid, *_children(pid)]:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except FileNotFoundError:
            pass
    return total


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []


class PeakRSS:
    def __init__(self, pid: int):
        self.pid, self.peak, self._stop = pid, 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes(self.pid))
            time.sleep(0.02)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def p99(latencies: list[float]) -> float:
    ordered = sorted(latencies)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


async def probe(address: str, request: bytes, seconds: float, check) -> list[float]:
    """One small call after another for ``seconds``; latencies in seconds."""
    latencies: list[float] = []
    async with grpc.aio.insecure_channel(address) as channel:
        call = channel.unary_unary(SCORE, request_serializer=None, response_deserializer=pb.ScoreResponse.FromString)
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            started = time.perf_counter()
            for attempt in range(20):  # refused: back off and retry, as RewardClient does
                try:
                    check(await call(request, timeout=30, metadata=declared_size(request)))
                    break
                except grpc.aio.AioRpcError as exc:
                    if exc.code() is not grpc.StatusCode.RESOURCE_EXHAUSTED:
                        raise
                    await asyncio.sleep(0.005 * 2**min(attempt, 6))
            latencies.append(time.perf_counter() - started)
    return latencies


def declared_size(request: bytes) -> tuple:
    """The metadata RewardClient sends with each Score call: the request's size, by which the
    replica admits the call before reading it."""
    return ((REQUEST_BYTES_METADATA, str(len(request))),)


async def flood(address: str, payload: bytes, senders: int, seconds: float, declare: bool) -> dict[str, int]:
    """``senders`` callers, each sending ``payload`` again as soon as it is answered or refused;
    ``declare``: with its size in metadata, as RewardClient sends it."""
    metadata = declared_size(payload) if declare else None
    counts: dict[str, int] = {}
    options = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]

    async def sender() -> None:
        async with grpc.aio.insecure_channel(address, options=options) as channel:
            call = channel.unary_unary(SCORE, request_serializer=None, response_deserializer=None)
            end = time.perf_counter() + seconds
            while time.perf_counter() < end:
                try:
                    await call(payload, timeout=60, metadata=metadata)
                    counts["OK"] = counts.get("OK", 0) + 1
                except grpc.aio.AioRpcError as exc:
                    if exc.code() is not grpc.StatusCode.RESOURCE_EXHAUSTED:
                        raise
                    counts["RESOURCE_EXHAUSTED"] = counts.get("RESOURCE_EXHAUSTED", 0) + 1
                    await asyncio.sleep(0.01)

    await asyncio.gather(*(sender() for _ in range(senders)))
    return counts


def _probe_process(address: str, seconds: float, out: multiprocessing.Queue) -> None:
    out.put(asyncio.run(probe(address, small_request(), seconds, check_small)))


def _flood_process(address: str, payload: bytes, senders: int, seconds: float, nice: int, declare: bool,
                   out: multiprocessing.Queue) -> None:
    os.nice(nice)  # the senders stand for other machines: on shared cores they yield to the replica
    out.put(asyncio.run(flood(address, payload, senders, seconds, declare)))


def small_request(i: int = 0) -> bytes:
    return pb.ScoreRequest(samples=[pb.Sample(id=f"p{i}", prompt="q", response="four")]).SerializeToString()


def check_small(response: pb.ScoreResponse) -> None:
    assert response.results[0].outcome == 4.0, response


def flood_payload(target_bytes: int) -> bytes:
    """A ScoreRequest of 128 KiB samples, as close to ``target_bytes`` as fits under it."""
    sample = pb.Sample(id="s0", prompt="q", response="x" * (128 << 10))
    n = max(1, target_bytes // (sample.ByteSize() + 8))
    samples = [pb.Sample(id=f"s{i}", prompt="q", response="x" * (128 << 10)) for i in range(n)]
    return pb.ScoreRequest(samples=samples).SerializeToString()


def run_flood(bound: int, senders: int, seconds: float, sender_nice: int) -> None:
    proc, address = start_replica([
        "--scorer", "bench.serving_fixtures:TrivialScorer", "--max-inflight-bytes", str(bound),
    ])
    mb = 1 << 20
    spawn = multiprocessing.get_context("spawn")
    try:
        with grpc.insecure_channel(address) as channel:
            info = channel.unary_unary("/rpp.reward.v1.RewardService/GetInfo", request_serializer=None,
                                       response_deserializer=pb.GetInfoResponse.FromString)(b"", timeout=10)
        # Oversized: senders that ignore GetInfo (and declare nothing). At the limit: what
        # RewardClient sends, split to GetInfo and with its size declared; and the same from
        # a client that does not declare it (another language's, say).
        floods = [("oversized", flood_payload(8_400_000), False),
                  ("at the limit", flood_payload(info.max_request_bytes), True),
                  ("at the limit, undeclared", flood_payload(info.max_request_bytes), False)]
        print(f"replica: --max-inflight-bytes {bound / mb:.0f} MiB, max_request_bytes "
              f"{info.max_request_bytes / mb:.0f} MiB; {senders} senders for {seconds:g} s per flood, "
              f"in a process of their own at nice {sender_nice}")
        for name, payload, declare in floods:
            quiet_out = spawn.Queue()
            quiet_probe = spawn.Process(target=_probe_process, args=(address, seconds / 2, quiet_out))
            quiet_probe.start()
            quiet = quiet_out.get()
            quiet_probe.join()
            loud_out = spawn.Queue()
            loud_probe = spawn.Process(target=_probe_process, args=(address, seconds, loud_out))
            flood_out = spawn.Queue()
            flooder = spawn.Process(target=_flood_process,
                                    args=(address, payload, senders, seconds, sender_nice, declare, flood_out))
            with PeakRSS(proc.pid) as peak:
                loud_probe.start()
                flooder.start()
                counts = flood_out.get()
                loud = loud_out.get()
                loud_probe.join()
                flooder.join()
            within = peak.peak <= bound + 300 * mb
            ratio = p99(loud) / p99(quiet)
            print(f"flood {name}: {len(payload) / 1e6:.1f} MB requests; " + ", ".join(
                f"{code} {n}" for code, n in sorted(counts.items())))
            print(f"  peak RSS {peak.peak / mb:.0f} MiB vs bound + 300 MiB = {(bound + 300 * mb) / mb:.0f} MiB: "
                  f"{'met' if within else 'NOT met'}")
            print(f"  small-call p99: quiet {p99(quiet) * 1e3:.1f} ms ({len(quiet)} calls), during the flood "
                  f"{p99(loud) * 1e3:.1f} ms ({len(loud)} calls): ratio {ratio:.2f} "
                  f"(target <= 3: {'met' if ratio <= 3 else 'NOT met'})")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def run_bomb(seconds: float) -> None:
    proc, address = start_replica(["--scorer", "math-answer", "--option", "deadline_s=5"])
    good = pb.ScoreRequest(
        samples=[pb.Sample(id="g", prompt="q", response="Answer: 7", reference="7")]
    ).SerializeToString()
    bomb = pb.ScoreRequest(
        samples=[pb.Sample(id="b", prompt="q", response="Answer: $9^{9^{9^{9}}}$", reference="3")]
    ).SerializeToString()

    def check_good(response: pb.ScoreResponse) -> None:
        assert response.results[0].outcome == 1.0, response

    async def bombs(until: float) -> int:
        sent = 0
        async with grpc.aio.insecure_channel(address) as channel:
            call = channel.unary_unary(
                SCORE, request_serializer=None, response_deserializer=pb.ScoreResponse.FromString
            )
            while time.perf_counter() < until:
                sent += 1
                await call(bomb, timeout=60)  # answered with TIMEOUT after deadline_s
        return sent

    try:
        asyncio.run(probe(address, good, 2, check_good))  # workers warm
        quiet = asyncio.run(probe(address, good, seconds / 2, check_good))

        async def both():
            return await asyncio.gather(bombs(time.perf_counter() + seconds), probe(address, good, seconds, check_good))

        sent, loud = asyncio.run(both())
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    ratio = p99(loud) / p99(quiet)
    print(f"math bomb: {sent} bombs in {seconds:g} s, each holding a worker for its 5 s deadline")
    print(f"  good-check p99: quiet {p99(quiet) * 1e3:.1f} ms ({len(quiet)} calls), during the bombs "
          f"{p99(loud) * 1e3:.1f} ms ({len(loud)} calls): ratio {ratio:.2f} "
          f"(target <= 3: {'met' if ratio <= 3 else 'NOT met'})")


def main() -> None:
    parser = argparse.ArgumentParser(prog="rpp-bench replica", description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=["flood", "bomb"])
    parser.add_argument("--bound-mib", type=int, default=64, help="--max-inflight-bytes of the flooded replica")
    parser.add_argument("--senders", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--sender-nice", type=int, default=19, choices=range(20), metavar="0..19",
                        help="niceness of the flooding senders' process (default 19: on a farm the senders are "
                             "other machines; 0 lets them compete with the replica for these cores)")
    args = parser.parse_args()
    os.environ.setdefault("PYTHONPATH", str(ROOT))
    if args.only in (None, "flood"):
        run_flood(args.bound_mib << 20, args.senders, args.seconds, args.sender_nice)
    if args.only in (None, "bomb"):
        run_bomb(args.seconds)


if __name__ == "__main__":
    main()

"""Small real scorers and certificate helpers for the server and client tests.

The scorers compute something checkable from the sample itself (its length), so a test
can tell whether every caller got its own results back, and they record the size of
every batch the server gave them.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from reward_server.scorers.base import Scorer
from reward_server.steps import span_text, split_steps
from reward_server.types import Result, RewardKind, Sample, StepScore


def expected_outcome(sample: Sample) -> float:
    return float(len(sample.response.encode("utf-8")))


class LengthScorer(Scorer):
    """Outcome: the response length in bytes. Process: each step's length in bytes.

    ``delay_s`` simulates a model forward (blocking, like torch); ``fail_when`` makes the
    whole batch raise when any response contains that text; ``nan_when`` answers NaN.
    """

    def __init__(
        self,
        kind: RewardKind | str = RewardKind.OUTCOME,
        delay_s: float = 0.0,
        fail_when: str | None = None,
        nan_when: str | None = None,
        pid_metric: bool = False,
    ) -> None:
        self.kind = RewardKind(kind)
        self.model_name = f"length-{self.kind.value}"
        self.delay_s = float(delay_s)
        self.fail_when = fail_when
        self.nan_when = nan_when
        self.pid_metric = pid_metric
        self.batch_sizes: list[int] = []

    async def score(self, samples: list[Sample]) -> list[Result]:
        self.batch_sizes.append(len(samples))
        if self.delay_s:
            time.sleep(self.delay_s)  # blocking on purpose: the server must cope with it
        if self.fail_when and any(self.fail_when in s.response for s in samples):
            raise RuntimeError(f"backend crashed on {self.fail_when!r}")
        return [self._one(s) for s in samples]

    def _one(self, sample: Sample) -> Result:
        metrics = {"pid": float(os.getpid())} if self.pid_metric else {}
        if self.nan_when and self.nan_when in sample.response:
            return Result(id=sample.id, outcome=float("nan"))
        if self.kind is RewardKind.OUTCOME:
            return Result(id=sample.id, outcome=expected_outcome(sample), metrics=metrics)
        spans = sample.steps or split_steps(sample.response, self.step_separator)
        steps = [StepScore(s, float(len(span_text(sample.response, s).encode()))) for s in spans]
        return Result(id=sample.id, steps=steps, metrics=metrics)


class SlowAsyncScorer(LengthScorer):
    """Waits without blocking, so many batches could overlap if the server allowed it."""

    async def score(self, samples: list[Sample]) -> list[Result]:
        self.batch_sizes.append(len(samples))
        await asyncio.sleep(self.delay_s)
        return [self._one(s) for s in samples]


def make_samples(n: int, prefix: str = "s", text: str = "answer") -> list[Sample]:
    return [Sample(id=f"{prefix}{i}", prompt="q", response=f"{text} {'x' * (i % 17)} é{i}") for i in range(n)]


def write_test_pki(directory: Path) -> dict[str, str]:
    """A CA, a server certificate for localhost/127.0.0.1 and a client certificate, as PEM files."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)

    def key():
        return ec.generate_private_key(ec.SECP256R1())

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def build(subject, subject_key, issuer, issuer_key, *, ca=False, sans=None, usage=None):
        b = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(subject_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if sans:
            b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        if usage:
            b = b.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        return b.sign(issuer_key, hashes.SHA256())

    ca_key = key()
    ca_cert = build(name("rpp test CA"), ca_key, name("rpp test CA"), ca_key, ca=True)
    server_key, client_key = key(), key()
    sans = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    server_cert = build(name("localhost"), server_key, ca_cert.subject, ca_key, sans=sans,
                        usage=ExtendedKeyUsageOID.SERVER_AUTH)
    client_cert = build(name("rpp learner"), client_key, ca_cert.subject, ca_key,
                        usage=ExtendedKeyUsageOID.CLIENT_AUTH)

    files: dict[str, str] = {}

    def write(label: str, data: bytes) -> None:
        path = directory / f"{label}.pem"
        path.write_bytes(data)
        files[label] = str(path)

    def key_pem(k) -> bytes:
        return k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption())

    write("ca", ca_cert.public_bytes(serialization.Encoding.PEM))
    write("server_cert", server_cert.public_bytes(serialization.Encoding.PEM))
    write("server_key", key_pem(server_key))
    write("client_cert", client_cert.public_bytes(serialization.Encoding.PEM))
    write("client_key", key_pem(client_key))
    return files


ROOT = Path(__file__).resolve().parents[1]


def start_server_processes(
    tmp_path: Path, n: int, server_args: list[str], env: dict[str, str] | None = None
) -> tuple[list[subprocess.Popen], list[dict]]:
    """``n`` ``rpp-reward-server`` processes on free loopback ports, each started with
    ``server_args``; returns them and their ready files ({address, metrics_port, pid})
    once every one serves. The caller stops them."""
    procs, ready_files = [], []
    for i in range(n):
        ready = tmp_path / f"replica{i}.json"
        ready_files.append(ready)
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "reward_server.cli", *server_args, "--port", "0", "--metrics-port", "-1",
             "--ready-file", str(ready), "--log-level", "WARNING"],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            env={**os.environ, **(env or {})},
        ))
    deadline = time.monotonic() + 120
    while not all(f.exists() for f in ready_files):
        dead = [p for p in procs if p.poll() is not None]
        assert not dead, f"a replica exited at start-up: {dead[0].communicate()[1]}"
        assert time.monotonic() < deadline, "replicas did not become ready in 120 s"
        time.sleep(0.05)
    return procs, [json.loads(f.read_text()) for f in ready_files]


def stop_server_processes(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.communicate(timeout=30)

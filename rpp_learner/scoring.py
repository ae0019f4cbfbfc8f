"""Calling the reward services, and turning their answers into reward tensors.

The gRPC calls run on an asyncio loop in a background thread: ``submit`` returns at once
and the trainer computes the old-policy and reference log-probs while the services work,
so network time hides behind compute (torch releases the GIL in its kernels).

Failure policy:
- a per-sample error (or a missing score) masks that sample out of the update and is
  counted per service;
- a whole call that fails with anything but "unreachable" fails its samples the same way;
- every replica of a service unreachable raises ``RewardServiceUnavailable``, which the
  trainer turns into checkpoint + non-zero exit.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch

from reward_server.client import RewardClient, RewardServiceError, RewardServiceUnavailable
from reward_server.loop_thread import LoopThread
from reward_server.security import TLSConfig
from reward_server.types import Result, RewardKind, Sample, SampleError, ServiceInfo, Span
from rpp_learner.algorithms.rewards import pad_steps
from rpp_learner.alignment import step_reward_tokens
from rpp_learner.config import RewardServiceConfig

__all__ = [
    "RewardClients",
    "RewardSetupError",
    "RewardServiceUnavailable",
    "ScoredBatch",
    "assemble_scores",
]


class RewardSetupError(RuntimeError):
    """A reward service could not be used at start (unreachable, or the wrong kind)."""


@dataclass
class ScoredBatch:
    outcome: torch.Tensor  # [B] weighted sum of the outcome services (0 where invalid)
    step_token_index: torch.Tensor  # [B, S] reward token of each step, -1 = none
    step_scores: torch.Tensor  # [B, S] raw score of each step, as its service sent it
    valid: torch.Tensor  # [B] bool: every service scored this sample
    failures: dict[str, int] = field(default_factory=dict)  # per service
    first_errors: list[str] = field(default_factory=list)  # a few messages, for logs
    step_counts: dict[str, list[int]] = field(default_factory=dict)  # process service -> steps per scored sample
    # [B, S] weight of the service that scored each step; the step-score formula itself
    # (weight, transform, clip) is applied in one place, rpp_learner.algorithms.rewards.
    step_weights: torch.Tensor | None = None


def degenerate_steps(step_counts: list[int], min_samples: int = 8, share: float = 0.9) -> str | None:
    """Why the steps a process service returned look degenerate, or None: almost every
    response came back as one step (a wrong separator does this silently, and dense
    credit then collapses to one score per response)."""
    if len(step_counts) < min_samples:
        return None
    single = sum(1 for c in step_counts if c <= 1)
    if single < share * len(step_counts):
        return None
    return f"{single} of {len(step_counts)} responses came back as a single step (or none)"


def _tls(svc: RewardServiceConfig) -> TLSConfig | None:
    if not (svc.tls_ca or svc.tls_cert):
        return None
    return TLSConfig(
        cert_file=svc.tls_cert, key_file=svc.tls_key, ca_file=svc.tls_ca, server_name=svc.tls_server_name
    )


def _failed(samples: list[Sample], code: str, message: str) -> list[Result]:
    return [Result(id=s.id, error=SampleError(code, message)) for s in samples]


def describe_service(name: str, info: ServiceInfo) -> str:
    """One line on what a reward service is, for the start of a run."""
    parts = [f"reward service {name!r}: {info.kind.value}, model {info.model_name!r}"]
    if info.input_format:
        parts.append(f"input format {info.input_format}")
    if info.kind is RewardKind.PROCESS:
        parts.append(f"splits steps on {info.step_separator!r}")
    return ", ".join(parts)


class RewardClients:
    """One client per configured service, driven from a private event loop thread."""

    def __init__(self, services: list[RewardServiceConfig]):
        self.services = services
        self._io = LoopThread("rpp-reward-io")
        self._clients: dict[str, RewardClient] = self._run(self._open())

    def _run(self, coro):
        return self._io.run(coro)

    async def _open(self) -> dict[str, RewardClient]:
        # Channels must be created on the loop that uses them.
        return {
            s.name: RewardClient(
                s.targets,
                name=s.name,
                timeout_s=s.timeout_s,
                max_in_flight=s.max_in_flight,
                token=s.token,
                tls=_tls(s),
            )
            for s in self.services
        }

    def check(self, timeout_s: float) -> dict[str, ServiceInfo]:
        """GetInfo on every service; raise naming the service if it is down or the wrong kind."""

        async def one(svc: RewardServiceConfig) -> ServiceInfo:
            try:
                info = await asyncio.wait_for(self._clients[svc.name].get_info(), timeout_s)
            except RewardServiceError as exc:
                raise RewardSetupError(f"{exc}. Start the service or fix rewards.services targets") from None
            except TimeoutError:
                raise RewardSetupError(
                    f"reward service {svc.name!r} at {', '.join(svc.targets)} did not answer GetInfo "
                    f"within rewards.connect_timeout_s={timeout_s}; start it or fix its targets"
                ) from None
            if info.kind != RewardKind(svc.kind):
                raise RewardSetupError(
                    f"reward service {svc.name!r} at {', '.join(svc.targets)} is a {info.kind.value} "
                    f"service but the config says kind: {svc.kind}"
                )
            return info

        async def all_services() -> list[ServiceInfo]:
            return await asyncio.gather(*(one(s) for s in self.services))

        return dict(zip((s.name for s in self.services), self._run(all_services()), strict=True))

    def submit(self, samples: list[Sample], only: list[str] | None = None) -> Future[dict[str, list[Result]]]:
        """Start scoring ``samples`` with every service (or those named in ``only``);
        the future holds the results by service name."""
        services = [s for s in self.services if only is None or s.name in only]
        return self._io.submit(self._score_all(samples, services))

    async def _score_all(
        self, samples: list[Sample], services: list[RewardServiceConfig]
    ) -> dict[str, list[Result]]:
        async def one(svc: RewardServiceConfig) -> list[Result]:
            try:
                return await self._clients[svc.name].score(samples)
            except RewardServiceUnavailable:
                raise
            except RewardServiceError as exc:
                return _failed(samples, exc.code, f"{svc.name}: {exc.details}")

        results = await asyncio.gather(*(one(s) for s in services))
        return dict(zip((s.name for s in services), results, strict=True))

    def close(self) -> None:
        if self._io.loop.is_closed():
            return

        async def close_all() -> None:
            await asyncio.gather(*(c.close() for c in self._clients.values()), return_exceptions=True)

        self._run(close_all())
        self._io.stop(timeout_s=5)


def _steps_of(
    result: Result, text: str, token_end_bytes: list[int], truncated: bool, separator: str
) -> tuple[list[int], list[float]]:
    """(reward token, raw score) of each step of one result that has a reward token."""
    spans = [Span(s.span.start, s.span.end) for s in result.steps]
    return step_reward_tokens(
        text, token_end_bytes, spans, [s.score for s in result.steps], truncated=truncated, separator=separator
    )


def assemble_scores(
    results: dict[str, list[Result]],
    services: list[RewardServiceConfig],
    texts: list[str],
    token_end_bytes: list[list[int]],
    truncated: list[bool],
    *,
    separators: dict[str, str] | None = None,
    max_logged_errors: int = 5,
) -> ScoredBatch:
    """Results of every service -> outcome [B] and (step_token_index, step_scores,
    step_weights) [B, S].

    ``texts[i]`` and ``token_end_bytes[i]`` come from ``rpp_learner.alignment.decode_with_offsets``
    and map the returned byte spans to reward tokens; the unfinished last step of a
    truncated response gets no reward token (see ``alignment.step_reward_tokens``), so
    ``separators`` (service name -> its step separator, default "\n\n") are needed.
    Several process services add their steps, each step carrying its service's weight.
    """
    batch = len(texts)
    outcome = torch.zeros(batch)
    valid = torch.ones(batch, dtype=torch.bool)
    step_index: list[list[int]] = [[] for _ in range(batch)]
    step_value: list[list[float]] = [[] for _ in range(batch)]
    step_weight: list[list[float]] = [[] for _ in range(batch)]
    failures: dict[str, int] = {}
    errors: list[str] = []
    step_counts: dict[str, list[int]] = {}

    def fail(i: int, svc: RewardServiceConfig, message: str) -> None:
        valid[i] = False
        failures[svc.name] = failures.get(svc.name, 0) + 1
        if len(errors) < max_logged_errors:
            errors.append(f"{svc.name} sample {i}: {message}")

    for svc in services:
        per_sample = results[svc.name]
        if len(per_sample) != batch:
            raise ValueError(f"service {svc.name!r} returned {len(per_sample)} results for {batch} samples")
        for i, res in enumerate(per_sample):
            if res.error is not None:
                fail(i, svc, f"{res.error.code}: {res.error.message}")
            elif svc.kind == "outcome":
                if res.outcome is None:
                    fail(i, svc, "no outcome score in the result")
                    continue
                outcome[i] += svc.weight * res.outcome
            elif svc.reduce != "none":  # folded into the outcome: one number per response
                values = [s.score for s in res.steps]  # a response with no step counts 0
                if values:
                    outcome[i] += svc.weight * (sum(values) / len(values) if svc.reduce == "mean" else min(values))
                step_counts.setdefault(svc.name, []).append(len(res.steps))
            else:
                try:
                    idx, val = _steps_of(
                        res, texts[i], token_end_bytes[i], truncated[i], (separators or {}).get(svc.name, "\n\n")
                    )
                except ValueError as exc:  # a span outside the response, for example
                    fail(i, svc, f"bad step spans: {exc}")
                    continue
                step_index[i] += idx
                step_value[i] += val
                step_weight[i] += [svc.weight] * len(val)
                step_counts.setdefault(svc.name, []).append(len(res.steps))

    for i in range(batch):  # an invalid sample contributes nothing anywhere
        if not valid[i]:
            outcome[i] = 0.0
            step_index[i], step_value[i], step_weight[i] = [], [], []
    index, value = pad_steps(step_index, step_value)
    _, weight = pad_steps(step_index, step_weight)
    return ScoredBatch(
        outcome, index, value, valid,
        failures=failures, first_errors=errors, step_counts=step_counts, step_weights=weight,
    )

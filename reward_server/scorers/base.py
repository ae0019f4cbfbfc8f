"""The Scorer interface every reward backend implements.

A scorer turns a batch of samples into one result per sample, in the same order.
It never raises for a bad sample: it returns a Result with ``error`` set so one bad
sample cannot fail a batch. It may raise for a broken backend (the server turns that
into a per-sample SCORER_FAILED error for the whole batch and keeps serving).
"""

from __future__ import annotations

import abc

from reward_server.types import Result, RewardKind, Sample


class Scorer(abc.ABC):
    kind: RewardKind
    model_name: str = "unnamed"
    step_separator: str = "\n\n"
    # The released input format the model is fed (GetInfo.input_format), "" if none.
    input_format: str = ""
    # Whether ``score`` may block the event loop it is awaited on (a torch forward run
    # inline, a slow synchronous call). Blocking scorers get a thread of their own in the
    # server's batcher (one hand-off per batch); scorers that only await (they offload
    # heavy work to a thread or process pool themselves) run on the server's loop and
    # skip that hand-off.
    blocking: bool = True
    # How many batches the server may have in this scorer at once. 1 for a model (one
    # forward at a time); a scorer backed by a pool of workers sets its pool size, so a
    # slow sample in one batch does not hold up the batches behind it.
    max_concurrent_batches: int = 1
    # Seconds after which the scorer itself ends a stuck sample (a user function's worker
    # process is killed and that sample gets TIMEOUT); None if it never does. The server
    # refuses a scorer_timeout_s at or below it (see batching.check_stuck_sample_timeout).
    ends_stuck_sample_after_s: float | None = None

    @abc.abstractmethod
    async def score(self, samples: list[Sample]) -> list[Result]:
        """Score ``samples``; returns exactly one Result per sample, same order, same ids."""

    def cost(self, sample: Sample) -> int:
        """The size of ``sample`` for the batcher's token budget (UTF-8 bytes by default)."""
        # isascii() reads a flag CPython keeps on every str: only non-ASCII text is encoded.
        # (Inlined: the batcher calls this for every sample of every request.)
        prompt, response = sample.prompt, sample.response
        return (len(prompt) if prompt.isascii() else len(prompt.encode("utf-8"))) + (
            len(response) if response.isascii() else len(response.encode("utf-8"))
        )

"""When ``RewardClient`` retries a refused Score itself: a busy server, after its pushback.

gRPC's own retry policy (``reward_server.channel``) covers UNAVAILABLE. RESOURCE_EXHAUSTED
means one of two things that must be told apart: a busy server (retry later) or a request
over a receive limit (never retry: it would be refused again). The contract tells them
apart by gRPC's ``grpc-retry-pushback-ms`` trailer, which only a busy refusal carries.
"""

from __future__ import annotations

import random

import grpc

from reward_server.contract import PUSHBACK_TRAILER


def busy_retry_delay(exc: grpc.aio.AioRpcError, attempt: int) -> float | None:
    """Seconds to wait before retrying a failed Score, or None: do not retry.

    Only RESOURCE_EXHAUSTED is decided here (gRPC's policy retries UNAVAILABLE). With a
    ``grpc-retry-pushback-ms`` trailer it is a busy server (contract 1.1): retry after the
    pushback, a negative one meaning never. Without it, it is the transport refusing a
    message over its receive limit, unless a contract 1.0 server said it was busy without
    the trailer: those are told apart by the transport's words, and retried with backoff."""
    if exc.code() is not grpc.StatusCode.RESOURCE_EXHAUSTED:
        return None
    pushback = dict(exc.trailing_metadata() or ()).get(PUSHBACK_TRAILER)
    if pushback is not None:
        try:
            ms = int(pushback)
        except ValueError:
            return None  # malformed: gRPC's own rule is not to retry
        return None if ms < 0 else min(ms, 5000) / 1000 * (1 + random.random() * 0.2)
    if is_size_refusal(exc.details() or ""):
        return None
    return min(0.05 * 2**attempt, 2.0) * random.uniform(0.5, 1.0)


def is_size_refusal(details: str) -> bool:
    """What grpc C-core, Java, Go and Node say when a message exceeds their receive limit."""
    text = details.lower()
    return "larger than max" in text or "message too large" in text or "exceeds maximum" in text

"""Splitting a batch of samples into Score requests within the server's limits.

The server advertises (GetInfo) how many samples and how many bytes one request may hold;
``RewardClient`` sends a bigger batch as consecutive requests, several in flight.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from reward_server.proto import reward_pb2 as pb
from reward_server.quoting import short_repr

_FRAMING_BYTES = 16  # per repeated-field element: tag + length varint, with room to spare


def split_requests(samples: Sequence[pb.Sample], max_samples: int, max_bytes: int) -> Iterator[list[pb.Sample]]:
    """Consecutive chunks of at most ``max_samples`` samples and about ``max_bytes`` serialized."""
    budget = int(max_bytes * 0.95)  # headroom for the envelope
    chunk: list[pb.Sample] = []
    size = 0
    for msg in samples:
        n = msg.ByteSize() + _FRAMING_BYTES
        if n > budget:
            raise ValueError(
                f"sample {short_repr(msg.id)} is {n} bytes serialized, over the server's advertised "
                f"max_request_bytes ({max_bytes}); shorten it or raise the server's --max-message-bytes"
            )
        if chunk and (len(chunk) == max_samples or size + n > budget):
            yield chunk
            chunk, size = [], 0
        chunk.append(msg)
        size += n
    if chunk:
        yield chunk

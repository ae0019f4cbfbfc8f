"""The wire contract's names, numbers and codes, defined once
(``proto/rpp/reward/v1/reward.proto`` is the contract; this is what the code reads of it).

Every code a caller can see is listed here:

- ``SampleResult.error.code``, per sample, sent by rpp's servers (``SAMPLE_ERROR_CODES``);
- ``RewardServiceError.code``, raised by rpp's client: the gRPC status name of a failed
  call (``INVALID_ARGUMENT``, ``UNAVAILABLE``, ``DEADLINE_EXCEEDED``, ``UNAUTHENTICATED``,
  ``RESOURCE_EXHAUSTED``, ...) or one of ``CLIENT_ERROR_CODES``.
"""

from __future__ import annotations

from reward_server.proto import reward_pb2 as pb

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["RewardService"].full_name  # "rpp.reward.v1.RewardService"
CONTRACT_PATH = pb.DESCRIPTOR.name  # "rpp/reward/v1/reward.proto", what reflection serves
CONTRACT_VERSION = "1.1"  # GetInfoResponse.contract_version

GRPC_DEFAULT_RECEIVE_BYTES = 4 << 20  # what GetInfo.max_request_bytes = 0 means
NO_SAMPLE_LIMIT = 2**32 - 1  # what GetInfo.max_samples_per_request = 0 means (uint32 max)
# A busy server's RESOURCE_EXHAUSTED carries gRPC's server-pushback trailer; a "too big"
# one does not. The value is a delay in milliseconds.
PUSHBACK_TRAILER = "grpc-retry-pushback-ms"
# Score metadata a client may send: the serialized ScoreRequest's size in bytes. A server
# then admits the call by that size before it reads the message; without it the server
# must assume the largest message it accepts (reward.proto, "Admission").
REQUEST_BYTES_METADATA = "rpp-request-bytes"

# Per-sample errors (SampleResult.error.code). Clients treat unknown codes as errors too.
INVALID_SAMPLE = "INVALID_SAMPLE"  # the sample is unusable: bad spans, too long, no reference
SCORER_FAILED = "SCORER_FAILED"  # the scorer could not score it: an exception, a dead worker
BAD_SCORE = "BAD_SCORE"  # the scorer produced no usable score (NaN, wrong type or count)
TIMEOUT = "TIMEOUT"  # scoring took longer than the scorer's time limit
SAMPLE_ERROR_CODES = (INVALID_SAMPLE, SCORER_FAILED, BAD_SCORE, TIMEOUT)

# RewardServiceError codes that are not gRPC status names.
UNHEALTHY = "UNHEALTHY"  # no replica's health service reports SERVING
BAD_INFO = "BAD_INFO"  # GetInfo broke the contract (no kind, no separator for PROCESS)
PROTOCOL_ERROR = "PROTOCOL_ERROR"  # Score broke it (results not one per sample, in order)
REQUEST_TOO_LARGE = "REQUEST_TOO_LARGE"  # refused for size: not retried
CLIENT_CLOSED = "CLIENT_CLOSED"  # the RewardClient was closed before the call was answered
CLIENT_ERROR_CODES = (UNHEALTHY, BAD_INFO, PROTOCOL_ERROR, REQUEST_TOO_LARGE, CLIENT_CLOSED)

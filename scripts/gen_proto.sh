#!/usr/bin/env bash
# Regenerates the committed Python stubs from proto/rpp/reward/v1/reward.proto.
#
# The -I alias maps the .proto onto the package path reward_server/proto, so the
# generated code imports as `reward_server.proto.reward_pb2` without any sed fix-ups.
#
# Usage: scripts/gen_proto.sh [OUT_ROOT]   (default: the repository root)
# tests/test_proto_stubs.py runs it into a temporary OUT_ROOT and diffs the result.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_ROOT="${1:-.}"
PYTHON="${PYTHON:-.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON=python3
mkdir -p "$OUT_ROOT/reward_server/proto"
"$PYTHON" -m grpc_tools.protoc \
    -Ireward_server/proto/reward.proto=proto/rpp/reward/v1/reward.proto \
    --python_out="$OUT_ROOT" \
    --grpc_python_out="$OUT_ROOT" \
    reward_server/proto/reward.proto

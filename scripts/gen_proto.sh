#!/usr/bin/env bash
# Regenerates the committed Python stubs from proto/rpp/reward/v1/reward.proto.
#
# The .proto is compiled from proto/ so that its descriptor carries the contract's own
# path, "rpp/reward/v1/reward.proto" (what reflection clients such as grpcurl ask for);
# the stubs are then placed at reward_server/proto/, and the one import line protoc writes
# for that path is pointed at the package.
#
# Usage: scripts/gen_proto.sh [OUT_ROOT]   (default: the repository root)
# tests/test_proto_stubs.py runs it into a temporary OUT_ROOT and diffs the result.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_ROOT="${1:-.}"
PYTHON="${PYTHON:-.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON=python3
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
"$PYTHON" -m grpc_tools.protoc -Iproto --python_out="$TMP" --grpc_python_out="$TMP" rpp/reward/v1/reward.proto
mkdir -p "$OUT_ROOT/reward_server/proto"
mv "$TMP/rpp/reward/v1/reward_pb2.py" "$OUT_ROOT/reward_server/proto/reward_pb2.py"
sed 's/^from rpp\.reward\.v1 import reward_pb2 as/from reward_server.proto import reward_pb2 as/' \
    "$TMP/rpp/reward/v1/reward_pb2_grpc.py" > "$OUT_ROOT/reward_server/proto/reward_pb2_grpc.py"

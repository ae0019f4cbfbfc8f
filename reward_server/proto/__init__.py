"""Generated protobuf/gRPC stubs for proto/rpp/reward/v1/reward.proto.

Do not edit: regenerate with scripts/gen_proto.sh (tests/test_proto_stubs.py checks
that the committed files match the .proto).
"""

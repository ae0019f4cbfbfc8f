"""The committed stubs match the .proto, and the .proto documents every field."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTO = ROOT / "proto/rpp/reward/v1/reward.proto"
STUBS = ("reward_pb2.py", "reward_pb2_grpc.py")


def test_committed_stubs_match_a_fresh_generation(tmp_path: Path) -> None:
    subprocess.run(
        ["bash", str(ROOT / "scripts/gen_proto.sh"), str(tmp_path)],
        check=True, env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"},
    )
    for name in STUBS:
        fresh = (tmp_path / "reward_server/proto" / name).read_text()
        committed = (ROOT / "reward_server/proto" / name).read_text()
        assert fresh == committed, f"reward_server/proto/{name} is stale: run scripts/gen_proto.sh and commit"


def test_every_field_enum_value_and_rpc_is_commented() -> None:
    lines = PROTO.read_text().splitlines()
    declaration = re.compile(
        r"^\s*(?:optional |repeated )?(?:map<[^>]+>|[\w.]+) \w+ = \d+;|^\s*[A-Z_]+ = \d+;|^\s*rpc "
    )
    undocumented = [
        line.strip() for i, line in enumerate(lines)
        if declaration.match(line) and not lines[i - 1].strip().startswith("//")
    ]
    # GetInfoRequest is empty, so nothing to document there; everything else carries a comment.
    assert undocumented == [], f"reward.proto declarations without a comment: {undocumented}"


def test_stubs_import_under_the_package_path_and_name_the_service() -> None:
    from reward_server.proto import reward_pb2, reward_pb2_grpc

    assert reward_pb2.DESCRIPTOR.package == "rpp.reward.v1"
    assert reward_pb2.DESCRIPTOR.services_by_name["RewardService"].full_name == "rpp.reward.v1.RewardService"
    assert hasattr(reward_pb2_grpc, "RewardServiceStub")

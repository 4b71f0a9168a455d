"""The committed gRPC modules are what app/protocol/proto/generate.py writes from the .proto
files (regenerate with `make proto` after changing them)."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.protocol.proto.generate import PROTOS, ROOT, generate

PROTO_DIR = ROOT / "app" / "protocol" / "proto"


def test_the_committed_stubs_are_the_generated_ones(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools")
    generate(tmp_path)
    written = sorted(p.relative_to(tmp_path) for p in (tmp_path / "app").rglob("*_pb2*"))
    assert {p.name for p in written} == {
        f"{Path(proto).stem}_pb2{suffix}" for proto in PROTOS for suffix in (".py", ".pyi")
    } | {"grpc_service_pb2_grpc.py"}
    for path in written:
        assert (ROOT / path).read_text() == (tmp_path / path).read_text(), (
            f"{path} is stale: run `make proto`"
        )

"""Write the Python modules of this folder's .proto files (protoc, from grpcio-tools):

    python -m app.protocol.proto.generate      # make proto

The generated modules are committed, so serving needs no protoc; a test checks that they
are what this writes.
"""

from __future__ import annotations

import sys
from pathlib import Path

PROTOS = ("model_config.proto", "grpc_service.proto")
ROOT = Path(__file__).resolve().parents[3]  # imports read `app/protocol/proto/...`


def generate(out: Path = ROOT) -> None:
    """Write the modules under `out` (the repository root, or a copy of it to compare)."""
    from grpc_tools import protoc  # only where the stubs are (re)generated

    here = Path(__file__).resolve().parent.relative_to(ROOT)
    for proto in PROTOS:
        arguments = ["protoc", f"-I{ROOT}", f"-I{protoc_include()}", f"--python_out={out}",
                     f"--pyi_out={out}", str(here / proto)]  # fmt: skip
        if proto == "grpc_service.proto":
            arguments.insert(-1, f"--grpc_python_out={out}")
        if protoc.main(arguments) != 0:
            raise SystemExit(f"protoc failed on {proto}")


def protoc_include() -> str:
    import grpc_tools

    return str(Path(grpc_tools.__file__).parent / "_proto")


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT)

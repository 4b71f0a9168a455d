"""load_tests/gpu/transfer.py: the offline bundle for a GPU host comes back whole.

A payload of stand-in wheels and a stand-in text model is packed into small parts, copied
one at a time into a checkout, kept out of it, joined and unpacked byte for byte; a part
that is owed or damaged is named.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from load_tests.gpu import transfer as gpu_transfer
from load_tests.gpu.transfer import MANIFEST, join, pack, plan, receive


@pytest.fixture
def payload(tmp_path: Path) -> tuple[list[Path], Path]:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for i, name in enumerate(["onnxruntime_gpu-1.0-cp312-x.whl", "fastapi-1.0-py3-none-any.whl"]):
        (wheels / name).write_bytes(bytes(range(256)) * (40 + i * 13))
    minilm = tmp_path / "minilm"
    (minilm / "1").mkdir(parents=True)
    for name in gpu_transfer.MINILM_FILES:
        (minilm / name).write_bytes(name.encode() * 500)
    return sorted(wheels.glob("*.whl")), minilm


def test_parts_carried_call_by_call_join_into_the_same_files(
    tmp_path: Path, payload: tuple[list[Path], Path]
) -> None:
    wheels, minilm = payload
    out = tmp_path / "out"
    manifest = pack(out, wheels, minilm, part_bytes=4096)
    parts = [entry["name"] for entry in manifest["parts"]]
    assert len(parts) >= 5 and all((out / p).stat().st_size <= 4096 for p in parts)
    assert not (out / "payload.tar").exists()

    state, tree = tmp_path / "state", tmp_path / "tree"
    for i, part in enumerate(parts):
        # Each call's tree holds the manifest and the one part carried with it.
        shutil.rmtree(tree, ignore_errors=True)
        tree.mkdir()
        shutil.copy(out / MANIFEST, tree / MANIFEST)
        shutil.copy(out / part, tree / part)
        have, owed = receive(tree, state)
        assert have == parts[: i + 1] and owed == parts[i + 1 :]
        assert not (tree / part).exists()  # moved out of the tree

    unpacked = join(state)

    for wheel in wheels:
        assert (unpacked / "wheels" / wheel.name).read_bytes() == wheel.read_bytes()
    for name in gpu_transfer.MINILM_FILES:
        assert (unpacked / "minilm" / name).read_bytes() == (minilm / name).read_bytes()
    # A rerun on the same machine carries nothing: the kept manifest and parts suffice.
    shutil.rmtree(tree)
    tree.mkdir()
    assert receive(tree, state) == (parts, [])
    assert (join(state) / "wheels" / wheels[0].name).exists()


def test_owed_and_damaged_parts_are_named(tmp_path: Path, payload: tuple[list[Path], Path]) -> None:
    wheels, minilm = payload
    out = tmp_path / "out"
    manifest = pack(out, wheels, minilm, part_bytes=8192)
    state = tmp_path / "state"
    (out / "part-01").unlink()  # carried later, say

    have, owed = receive(out, state)

    assert "part-01" in owed and "part-00" in have
    with pytest.raises(SystemExit, match="parts still owed: part-01"):
        join(state)
    damaged = tmp_path / "tree"
    damaged.mkdir()
    shutil.copy(out / MANIFEST, damaged / MANIFEST)
    (damaged / "part-01").write_bytes(b"x" * manifest["parts"][1]["bytes"])
    with pytest.raises(SystemExit, match="sha256 differs"):
        receive(damaged, state)


def test_the_plan_copies_every_part_and_runs_the_check_after_the_last(
    tmp_path: Path, payload: tuple[list[Path], Path]
) -> None:
    wheels, _ = payload
    out = tmp_path / ".gpu-transfer"
    manifest = pack(out, wheels, None, part_bytes=10_000)

    text = plan(manifest, out, root=tmp_path)

    assert "copy .gpu-transfer/ there whole, then run: bash load_tests/gpu/check.sh" in text
    steps = [line for line in text.splitlines() if line.startswith("  copy .gpu-transfer/part-")]
    assert len(steps) == len(manifest["parts"])
    assert all(s.endswith("gpu/check.sh --receive") for s in steps[:-1])
    assert steps[-1].endswith("run: bash load_tests/gpu/check.sh")
    assert steps[0].startswith(f"  copy .gpu-transfer/part-00 .gpu-transfer/{MANIFEST},")


def test_the_wheels_are_pinned_as_the_gpu_image_locks_them() -> None:
    versions = gpu_transfer.locked_versions()

    assert all(name in versions for name in gpu_transfer.WHEELS), versions.keys()
    assert versions["onnxruntime-gpu"].count(".") == 2

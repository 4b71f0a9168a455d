"""An offline bundle for load_tests/gpu/check.sh, for a GPU host that cannot download.

The check needs what a host without network may lack: the onnxruntime-gpu wheel (~244 MiB),
the few small wheels batchserve needs beyond what such an image often has (torch's CUDA
libraries as pip packages, numpy, onnx), and the text model (models/minilm, ~87 MiB of fp32
ONNX, built by `make text-model`). The bundle is split into parts under 60 MiB, for links
and media that limit the size of a file:

    here:   python3 load_tests/gpu/transfer.py pack
            -> .gpu-transfer/part-00 .. part-NN and MANIFEST.json, and what to run there
    there:  copy .gpu-transfer/ into the host's checkout of the project, then
            bash load_tests/gpu/check.sh          (join, install, check)
            or, one part at a time, `bash load_tests/gpu/check.sh --receive` after each
            part arrives (it keeps the part outside the checkout), the last without it

`receive` moves the parts found in .gpu-transfer/ into the state folder (outside the
repository) and checks each sha256; `join` checks that every part is there, joins them,
checks the whole and unpacks it. Both say which parts are still owed. Standard library
only: it runs on the host's python3.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / ".gpu-transfer"
STATE = Path(tempfile.gettempdir()) / "batchserve-gpu"
MANIFEST = "MANIFEST.json"
MIB = 1024 * 1024
#: The host's python3 the wheels are downloaded for (x86-64 Linux).
PYTHON_VERSION = "3.12"
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64")  # fmt: skip
#: What batchserve imports beyond what a CUDA host's ML image commonly has (numpy, onnx,
#: tokenizers, prometheus-client, nvidia-ml-py, uvloop, anyio, h11, click, aiohttp, httpx,
#: annotated-doc ...), at the versions of the lock. fastapi imports
#: opentelemetry-api; pydantic needs a typing-extensions newer than an image may have.
WHEELS = ("onnxruntime-gpu", "fastapi", "starlette", "pydantic", "pydantic-core",
          "pydantic-settings", "python-dotenv", "uvicorn", "httptools", "orjson",
          "annotated-types", "typing-inspection", "typing-extensions",
          "opentelemetry-api")  # fmt: skip
#: The text model's files the check serves (version 1, fp32; the int8 v2 stays here).
MINILM_FILES = ("config.toml", "tokenizer.json", "reference.npz", "1/model.onnx")


def locked_versions(lock: Path = ROOT / "requirements" / "gpu.txt") -> dict[str, str]:
    """name -> version pinned in the GPU image's lock."""
    pins = re.findall(r"^([A-Za-z0-9._-]+)==([^\s;\\]+)", lock.read_text(), re.MULTILINE)
    return {name.lower(): version for name, version in pins}


def download_wheels(into: Path) -> list[Path]:
    """The WHEELS for the device's Python, from the package index, pinned as locked."""
    into.mkdir(parents=True, exist_ok=True)
    versions = locked_versions()
    specs = [f"{name}=={versions[name]}" for name in WHEELS]
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
         "--python-version", PYTHON_VERSION, "--implementation", "cp", *platforms,
         "-d", str(into), *specs],
        check=True,
    )  # fmt: skip
    return sorted(into.glob("*.whl"))


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(8 * MIB):
            digest.update(chunk)
    return digest.hexdigest()


def pack(out: Path, wheels: list[Path], minilm: Path | None, part_bytes: int) -> dict[str, object]:
    """Tar the wheels and the text model, split the tar into parts, write the manifest."""
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("part-*"):
        old.unlink()
    payload = out / "payload.tar"
    with tarfile.open(payload, "w") as tar:
        for wheel in wheels:
            tar.add(wheel, arcname=f"wheels/{wheel.name}")
        if minilm is not None:
            for name in MINILM_FILES:
                tar.add(minilm / name, arcname=f"minilm/{name}")
    parts = []
    with payload.open("rb") as source:
        while chunk := source.read(part_bytes):
            part = out / f"part-{len(parts):02d}"
            part.write_bytes(chunk)
            parts.append({"name": part.name, "bytes": len(chunk),
                          "sha256": hashlib.sha256(chunk).hexdigest()})  # fmt: skip
    manifest = {"bytes": payload.stat().st_size, "sha256": sha256(payload), "parts": parts,
                "wheels": [w.name for w in wheels], "minilm": minilm is not None}  # fmt: skip
    payload.unlink()
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return manifest


def receive(tree: Path, state: Path) -> tuple[list[str], list[str]]:
    """Move the parts carried into `tree` to `state`, checking each; (have, owed). A call
    that carries nothing (a rerun) goes by the manifest kept from earlier calls."""
    if (tree / MANIFEST).exists():
        state.mkdir(parents=True, exist_ok=True)
        shutil.copy(tree / MANIFEST, state / MANIFEST)
    elif not (state / MANIFEST).exists():
        raise SystemExit(f"no {MANIFEST} carried in {tree} nor kept in {state}: carry it")
    manifest = json.loads((state / MANIFEST).read_text())
    parts_dir = state / "parts"
    parts_dir.mkdir(parents=True, exist_ok=True)
    for entry in manifest["parts"]:
        carried = tree / entry["name"]
        if carried.exists():
            if sha256(carried) != entry["sha256"]:
                raise SystemExit(f"{carried}: sha256 differs from the manifest; pack again")
            shutil.move(str(carried), parts_dir / entry["name"])
    have = [e["name"] for e in manifest["parts"] if (parts_dir / e["name"]).exists()]
    owed = [e["name"] for e in manifest["parts"] if e["name"] not in have]
    return have, owed


def join(state: Path) -> Path:
    """Join the parts kept in `state`, check the whole, unpack it to state/payload."""
    manifest = json.loads((state / MANIFEST).read_text())
    parts_dir = state / "parts"
    owed = [e["name"] for e in manifest["parts"] if not (parts_dir / e["name"]).exists()]
    if owed:
        raise SystemExit(f"parts still owed: {', '.join(owed)} (carry them with --receive)")
    joined = state / "payload.tar"
    with joined.open("wb") as out:
        for entry in manifest["parts"]:
            with (parts_dir / entry["name"]).open("rb") as part:
                shutil.copyfileobj(part, out, 8 * MIB)
    if sha256(joined) != manifest["sha256"]:
        raise SystemExit("the joined parts' sha256 differs from the manifest; pack again")
    payload = state / "payload"
    shutil.rmtree(payload, ignore_errors=True)
    with tarfile.open(joined) as tar:
        tar.extractall(payload, filter="data")
    joined.unlink()  # the parts stay, so a rerun on the same machine joins again
    return payload


def plan(manifest: dict[str, object], out: Path, root: Path = ROOT) -> str:
    """What to copy to the GPU host and run there, in order (paths from `root`): all the
    parts at once, or one part at a time."""
    parts = manifest["parts"]
    assert isinstance(parts, list)
    rel = out.relative_to(root) if out.is_relative_to(root) else out
    lines = [
        f"{len(parts)} parts, {manifest['bytes'] / MIB:.1f} MiB. On the GPU host, in a "
        "checkout of this project:",
        f"  copy {rel}/ there whole, then run: bash load_tests/gpu/check.sh",
        "or, one part at a time:",
    ]
    for i, entry in enumerate(parts):
        last = i == len(parts) - 1
        command = "bash load_tests/gpu/check.sh" + ("" if last else " --receive")
        lines.append(f"  copy {rel}/{entry['name']} {rel}/{MANIFEST}, then run: {command}")
    lines.append("The table is at the end of the last command's output.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("pack", help="here: wheels + text model -> parts + manifest")
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--part-mib", type=float, default=59.0, help="size of each part (< 60)")
    p.add_argument("--wheels", type=Path, help="use the wheels in this folder (no download)")
    p.add_argument("--minilm", type=Path, default=ROOT / "models" / "minilm")
    p.add_argument("--no-minilm", action="store_true", help="digits only")
    r = commands.add_parser("receive", help="there: keep the carried parts")
    r.add_argument("--tree", type=Path, default=OUT)
    r.add_argument("--state", type=Path, default=STATE)
    j = commands.add_parser("join", help="there: join, check and unpack every part")
    j.add_argument("--state", type=Path, default=STATE)
    args = parser.parse_args(argv)

    if args.command == "pack":
        minilm = None if args.no_minilm else args.minilm
        if minilm is not None and not (minilm / "1" / "model.onnx").exists():
            raise SystemExit(f"{minilm}/1/model.onnx is missing: `make text-model` builds it")
        wheels = (
            sorted(args.wheels.glob("*.whl"))
            if args.wheels
            else download_wheels(args.out / "wheels")
        )
        manifest = pack(args.out, wheels, minilm, int(args.part_mib * MIB))
        print(plan(manifest, args.out.resolve()))
    elif args.command == "receive":
        have, owed = receive(args.tree, args.state)
        print(f"parts kept in {args.state}: {', '.join(have) or 'none'}; "
              f"still owed: {', '.join(owed) or 'none'}")  # fmt: skip
    else:
        print(join(args.state))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

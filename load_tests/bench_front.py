"""Which HTTP server should front batchserve: throughput and hostile clients, in one run.

    python -m load_tests.bench_front [--rounds 5 --duration 3]

Runs the same app (digits) behind: batchserve serve (uvicorn's httptools protocol with
batchserve's guard, app/api/protocol.py), uvicorn's httptools protocol alone, uvicorn's
h11 protocol, and granian (when installed). Throughput: closed loops of 1-row JSON
requests at C=64, the servers taking turns each round. Hostile clients, each alone, with
a liveness probe on another connection meanwhile: a connection that sends nothing, a 2 MB
and a 64 MB header, a body that stops after 40 of its declared 48 MiB. Writes a table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from load_tests.bench import free_port
from load_tests.bench_ab import closed_loop_at
from testing.server_process import ServerProcess

ROOT = Path(__file__).resolve().parents[1]
WAIT_S = 15.0  # how long a hostile connection is watched for the server to close it


@contextlib.contextmanager
def started(name: str, repository: Path) -> Iterator[tuple[str, int]]:
    """(url, pid) of one server of the comparison."""
    if name == "batchserve (httptools + guard)":
        server = ServerProcess(repository)
        try:
            yield server.url, server.pid
        finally:
            server.stop()
        return
    port = free_port()
    app = "load_tests.baselines.batchserve_app:app"
    python = [sys.executable, "-m"]
    commands = {
        "uvicorn httptools": [*python, "uvicorn", app, "--http", "httptools"],
        "uvicorn h11": [*python, "uvicorn", app, "--http", "h11"],
        "granian": [str(Path(sys.executable).with_name("granian")), "--interface", "asgi",
                    "--no-ws", app],
    }  # fmt: skip
    command = [*commands[name], "--host", "127.0.0.1", "--port", str(port), "--log-level",
               "warning"]  # fmt: skip
    env = {**os.environ, "BATCHSERVE_MODEL_REPOSITORY": str(repository)}
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(url + "/v2/health/ready", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"{name} did not start")
            time.sleep(0.2)
        yield url, process.pid
    finally:
        process.terminate()
        process.wait(timeout=30)


def attack(url: str, payload: bytes) -> tuple[str, float]:
    """Send `payload`, then wait up to WAIT_S for the server to answer or close; what it
    said (status line or "kept open") and the worst liveness latency meanwhile (ms)."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=WAIT_S)
    worst = 0.0
    stop = threading.Event()

    def probe() -> None:
        nonlocal worst
        with httpx.Client(base_url=url, timeout=10) as client:
            while not stop.is_set():
                begun = time.perf_counter()
                client.get("/v2/health/live")
                worst = max(worst, time.perf_counter() - begun)
                stop.wait(0.05)

    prober = threading.Thread(target=probe)
    prober.start()
    began = time.monotonic()
    try:
        with contextlib.suppress(OSError):
            sock.sendall(payload)
        try:
            answer = sock.recv(200)
            first = answer.split(b"\r\n", 1)[0].decode("latin-1") or "closed, no answer"
            verdict = f"{first} after {time.monotonic() - began:.1f} s"
        except TimeoutError:
            verdict = f"kept open past {WAIT_S:.0f} s"
        except OSError as exc:
            verdict = f"reset ({exc.__class__.__name__}) after {time.monotonic() - began:.1f} s"
    finally:
        stop.set()
        prober.join()
        sock.close()
    return verdict, worst * 1000


ATTACKS = {
    "sends nothing": b"",
    "2 MB header": b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 2_000_000
    + b"\r\n\r\n",
    "64 MB header": b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 64_000_000
    + b"\r\n\r\n",
    "stalled body (40 of 48 MiB)": b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: x\r\n"
    b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % (48 * 2**20)
    + b" " * (40 * 2**20),
}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=3.0)
    args = parser.parse_args()
    names = ["batchserve (httptools + guard)", "uvicorn httptools", "uvicorn h11"]
    if Path(sys.executable).with_name("granian").exists():
        names.append("granian")
    work = Path(tempfile.mkdtemp(prefix="batchserve-front-"))
    shutil.copytree(ROOT / "models" / "digits", work / "digits",
                    ignore=shutil.ignore_patterns("*.py"))  # fmt: skip
    throughput: dict[str, list[float]] = {name: [] for name in names}
    attacks: dict[str, dict[str, tuple[str, float]]] = {name: {} for name in names}
    try:
        with contextlib.ExitStack() as stack:
            servers = {name: stack.enter_context(started(name, work)) for name in names}
            for number in range(args.rounds):
                order = names if number % 2 == 0 else names[::-1]
                for name in order:
                    url, _ = servers[name]
                    rps = asyncio.run(
                        closed_loop_at(
                            url, "digits", binary=False, concurrency=64, seconds=args.duration
                        )
                    )
                    throughput[name].append(rps)  # fmt: skip
                    print(f"round {number + 1} {name}: {rps:.0f} req/s", flush=True)
            for name in names:
                for label, payload in ATTACKS.items():
                    attacks[name][label] = attack(servers[name][0], payload)
                    print(f"{name} / {label}: {attacks[name][label]}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base = statistics.median(throughput[names[0]])
    print(f"\ndigits, 1-row JSON requests, closed loop C=64, {args.rounds} rounds of "
          f"{args.duration:g} s (medians); hostile clients each alone, liveness probed "
          "every 50 ms meanwhile (worst latency)\n")  # fmt: skip
    print("| server | req/s | vs batchserve | " + " | ".join(ATTACKS) + " |")
    print("|---|---|---|" + "---|" * len(ATTACKS))
    for name in names:
        rps = statistics.median(throughput[name])
        cells = [f"{verdict}; liveness worst {worst:.0f} ms"
                 for verdict, worst in attacks[name].values()]  # fmt: skip
        print(f"| {name} | {rps:.0f} | {rps / base:.3f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()

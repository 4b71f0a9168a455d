"""Overload, this tree against an earlier one, in alternating rounds of one run: digits
offered five times what the servers serve in a closed loop, open loop, requests with 1 s
deadlines, for 15 s, while another process probes liveness on a fresh connection every
200 ms. Per server: the liveness latencies (p95, worst) and the answers (200, 429, 504)
(load_tests/report/OVERLOAD.md). This tree is probed on its --metrics-port too, whose
probes are answered from a thread of their own (app/api/side_listener.py).

    python -m load_tests.bench_overload --baseline de468f5 --out load_tests/report

The baseline runs from a git worktree with this interpreter (load_tests/bench_ab.py); both
serve the same digits-only repository, gRPC off (as the baseline had none) unless --grpc.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from load_tests.bench_ab import checkout
from load_tests.loadgen import LoadGenerator, PreparedRequest, Result, client_session
from testing.server_process import ServerProcess, free_port

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
DEADLINE_US = 1_000_000
#: Liveness as a kubelet probes it: a new connection each time, every 200 ms, from another
#: process; prints its latencies as JSON once its stdin closes.
PROBE = """
import json, socket, sys, threading, time
host, port = sys.argv[1], int(sys.argv[2])
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
request = b"GET /v2/health/live HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n"
latencies = []
while not stop.is_set():
    started = time.perf_counter()
    try:  # a probe unanswered in 10 s counts as 10 s, as a kubelet's timeout would
        with socket.create_connection((host, port), timeout=10) as sock:
            sock.sendall(request)
            answer = b""
            while chunk := sock.recv(4096):
                answer += chunk
        assert answer.split(b" ", 2)[1] == b"200", answer[:60]
    except TimeoutError:
        pass
    latencies.append(min(time.perf_counter() - started, 10.0))
    stop.wait(0.2)
print(json.dumps(latencies))
"""


def digits_request() -> PreparedRequest:
    sample = json.loads((MODELS / "digits" / "sample_request.json").read_text())
    first = sample["inputs"][0]
    row = {**first, "shape": [1, first["shape"][1]], "data": first["data"][: first["shape"][1]]}
    body = {"inputs": [row], "parameters": {"timeout": DEADLINE_US}}
    return PreparedRequest(
        json.dumps(body).encode(), {"Content-Type": "application/json"}, 1, False
    )


def repository(work: Path) -> Path:
    target = work / "models" / "digits"
    (target / "1").mkdir(parents=True)
    (target / "1" / "model.onnx").write_bytes((MODELS / "digits/1/model.onnx").read_bytes())
    (target / "config.toml").write_text((MODELS / "digits/config.toml").read_text())
    return work / "models"


async def capacity(server: ServerProcess, request: PreparedRequest, seconds: float) -> float:
    async with client_session(64) as http:
        generator = LoadGenerator(server.url, "digits", request)
        await generator.closed_loop(http, 64, 1.0)  # warm-up
        result = await generator.closed_loop(http, 64, seconds)
    return result.throughput


def overload(
    server: ServerProcess,
    request: PreparedRequest,
    *,
    rate: float,
    seconds: float,
    side_port: int | None,
) -> dict[str, Any]:
    host, port = server.url.removeprefix("http://").split(":")
    ports = {"main": port} if side_port is None else {"main": port, "side": str(side_port)}
    probes = {
        where: subprocess.Popen(
            [sys.executable, "-c", PROBE, host, p],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for where, p in ports.items()
    }

    async def offer() -> Result:
        async with client_session(1000) as http:
            generator = LoadGenerator(server.url, "digits", request)
            return await generator.open_loop(http, rate=rate, seconds=seconds)

    try:
        result = asyncio.run(offer())
        latencies = {w: json.loads(p.communicate(timeout=60)[0]) for w, p in probes.items()}
    finally:
        for probe in probes.values():
            probe.kill()
    run: dict[str, Any] = {"statuses": {str(k): v for k, v in result.statuses.items()}}
    run["ok"] = result.ok
    for where, seen in latencies.items():
        prefix = "liveness" if where == "main" else "side_liveness"
        run[f"{prefix}_p95_ms"] = 1000 * statistics.quantiles(seen, n=20)[18]
        run[f"{prefix}_max_ms"] = 1000 * max(seen)
        run[f"{prefix}_probes"] = len(seen)
    return run


def report(data: dict[str, Any]) -> str:
    lines = [
        "# Overload: digits at five times capacity (load_tests/bench_overload.py)",
        "",
        f"{data['rounds']} alternating rounds of {data['seconds']:g} s, open loop at "
        f"{data['rate']:.0f} requests/s (5x the mean closed-loop capacity, C=64, of the two "
        "servers in round 1), 1 s deadlines; liveness probed from another process on a fresh "
        f"connection every 200 ms. gRPC {'on' if data['grpc'] else 'off'}. Liveness on the "
        "API port, and on --metrics-port where the server answers probes there.",
        "",
        "| server | capacity (req/s) | liveness p95 (ms) | liveness worst (ms) | "
        "on --metrics-port: p95 (ms) | worst (ms) | answered 200 | 429 | 504 | other |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, runs in data["servers"].items():
        caps = ", ".join(f"{c:.0f}" for c in data["capacity"][name])
        p95 = ", ".join(f"{r['liveness_p95_ms']:.0f}" for r in runs)
        worst = ", ".join(f"{r['liveness_max_ms']:.0f}" for r in runs)
        side_p95 = (
            ", ".join(
                f"{r['side_liveness_p95_ms']:.0f}" for r in runs if "side_liveness_p95_ms" in r
            )
            or "-"
        )
        side_worst = (
            ", ".join(
                f"{r['side_liveness_max_ms']:.0f}" for r in runs if "side_liveness_max_ms" in r
            )
            or "-"
        )
        ok = ", ".join(str(r["ok"]) for r in runs)
        refused = ", ".join(str(r["statuses"].get("429", 0)) for r in runs)
        late = ", ".join(str(r["statuses"].get("504", 0)) for r in runs)
        other = sum(
            v for r in runs for k, v in r["statuses"].items() if k not in ("200", "429", "504")
        )
        lines.append(
            f"| {name} | {caps} | {p95} | {worst} | {side_p95} | {side_worst} | {ok} | "
            f"{refused} | {late} | {other} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", default="de468f5", metavar="REF")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--grpc", action="store_true", help="serve gRPC beside HTTP (B only)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    request = digits_request()
    names = (f"A ({args.baseline})", "B (working tree)")
    data: dict[str, Any] = {"rounds": args.rounds, "seconds": args.seconds, "grpc": args.grpc,
                            "servers": {n: [] for n in names},
                            "capacity": {n: [] for n in names}}  # fmt: skip
    with contextlib.ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-overload-")))
        models = repository(work)
        source = stack.enter_context(checkout(args.baseline))
        env = {"BATCHSERVE_AUTOTUNE": "off"}
        side_port = free_port()
        servers = {
            names[0]: ServerProcess(models, env=env, source=source),
            names[1]: ServerProcess(
                models, env={**env, "BATCHSERVE_METRICS_PORT": str(side_port)}, grpc=args.grpc
            ),
        }
        side_ports = {names[0]: None, names[1]: side_port}
        for server in servers.values():
            stack.callback(server.stop)
        rate = 0.0
        for number in range(args.rounds):
            order = list(names) if number % 2 == 0 else list(reversed(names))
            for name in order:
                data["capacity"][name].append(asyncio.run(capacity(servers[name], request, 3.0)))
            if number == 0:
                rate = data["rate"] = 5 * statistics.fmean(data["capacity"][n][0] for n in names)
            for name in order:
                run = overload(
                    servers[name],
                    request,
                    rate=rate,
                    seconds=args.seconds,
                    side_port=side_ports[name],
                )
                data["servers"][name].append(run)
                print(f"round {number + 1} {name}: {json.dumps(run)}", flush=True)
    text = report(data)
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "overload.json").write_text(json.dumps(data, indent=1))
        (args.out / "OVERLOAD.md").write_text(text)


if __name__ == "__main__":
    main()

"""The HTTP front under hostile clients, against a real server: connections that never finish
a request are answered 408 and closed within their timeouts, oversized headers and URLs are
refused at once, idle connections cannot lock out new clients or the probes, large bodies
do not stall the event loop, and a bad path is a short 4xx, never a traceback."""

from __future__ import annotations

import contextlib
import json
import resource
import socket
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.api.protocol import LINGER_MAX_BYTES
from testing.server_process import ServerProcess
from testing.synthetic_models import write_sum_model
from tests.conftest import MODELS
from tests.liveness import probing

pytestmark = pytest.mark.integration

TIMEOUT_S = 1.0  # the header and body timeouts of the server under test
#: How late the server may close past a timeout: its check runs every quarter timeout.
SLACK_S = 1.0
FRONT = {
    "BATCHSERVE_HEADER_TIMEOUT_S": str(TIMEOUT_S),
    "BATCHSERVE_BODY_TIMEOUT_S": str(TIMEOUT_S),
    "BATCHSERVE_MIN_BODY_BYTES_PER_S": str(10 * 1024 * 1024),
}


def digits_only(root: Path) -> Path:
    (root / "digits" / "1").mkdir(parents=True)
    (root / "digits" / "1" / "model.onnx").write_bytes(
        (MODELS / "digits" / "1" / "model.onnx").read_bytes()
    )
    (root / "digits" / "config.toml").write_text((MODELS / "digits" / "config.toml").read_text())
    return root


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(digits_only(tmp_path_factory.mktemp("front")), env=FRONT)
    yield process
    process.stop()


def connect(server: ServerProcess) -> socket.socket:
    host, port = server.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    return sock


def answer(sock: socket.socket) -> tuple[bytes, float]:
    """What the server sends until it closes, and when it closed (monotonic)."""
    received = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            received += chunk
    return received, time.monotonic()


def refusals(server: ServerProcess, reason: str) -> float:
    return server.metric("batchserve_http_refusals_total", reason=reason)


def test_a_silent_connection_gets_408_and_is_closed_in_time(server: ServerProcess) -> None:
    before = refusals(server, "header_timeout")
    sock = connect(server)
    opened = time.monotonic()
    received, closed = answer(sock)
    assert received.startswith(b"HTTP/1.1 408 "), received
    assert b"BATCHSERVE_HEADER_TIMEOUT_S" in received
    assert TIMEOUT_S <= closed - opened <= TIMEOUT_S + SLACK_S
    assert refusals(server, "header_timeout") == before + 1


def test_headers_trickled_a_byte_at_a_time_are_cut_off(server: ServerProcess) -> None:
    sock = connect(server)
    opened = time.monotonic()
    sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Slow: ")

    def trickle() -> None:
        with contextlib.suppress(OSError):
            for _ in range(int(4 * TIMEOUT_S / 0.1)):
                sock.sendall(b"a")
                time.sleep(0.1)  # the attacker's pace, not a synchronisation

    sender = threading.Thread(target=trickle)
    sender.start()
    received, closed = answer(sock)
    sender.join()
    assert received.startswith(b"HTTP/1.1 408 "), received
    assert closed - opened <= TIMEOUT_S + SLACK_S


def test_a_stalled_body_gets_408_and_is_released(server: ServerProcess) -> None:
    before = refusals(server, "body_timeout")
    sock = connect(server)
    sock.sendall(
        b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100000\r\n\r\n" + b'{"inputs": [' + b" " * 40000
    )
    started = time.monotonic()
    received, closed = answer(sock)
    assert received.startswith(b"HTTP/1.1 408 "), received
    assert closed - started <= TIMEOUT_S + SLACK_S
    assert refusals(server, "body_timeout") == before + 1
    assert httpx.get(f"{server.url}/metrics").status_code == 200


@pytest.mark.parametrize(
    ("request_head", "status", "reason"),
    [
        (b"GET /v2/health/live HTTP/1.1\r\nX-Big: " + b"a" * 2_000_000 + b"\r\n\r\n", 431,
         "header_too_large"),
        (b"GET /v2/health/live HTTP/1.1\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", 431,
         "header_too_large"),
        (b"GET /v2/health/live HTTP/1.1\r\n" + b"X-Many: 1\r\n" * 101 + b"\r\n", 431,
         "too_many_headers"),
        (b"GET /v2/health/live?" + b"q" * 9000 + b" HTTP/1.1\r\n\r\n", 414, "url_too_long"),
    ],
    ids=["2-MB-header", "9-kB-header", "101-headers", "9-kB-url"],
)  # fmt: skip
def test_oversized_headers_and_urls_are_refused_at_once(
    server: ServerProcess, request_head: bytes, status: int, reason: str
) -> None:
    before = refusals(server, reason)
    sock = connect(server)
    started = time.monotonic()
    with contextlib.suppress(OSError):  # the server may close before all of it is sent
        sock.sendall(request_head)
    received, closed = answer(sock)
    assert received.startswith(b"HTTP/1.1 %d " % status), received[:80]
    assert closed - started < 1.0
    assert refusals(server, reason) == before + 1


def test_a_body_larger_than_the_model_takes_is_413_before_it_is_read(
    server: ServerProcess,
) -> None:
    """digits takes at most 64 rows of 64 floats: a 63 MB body is refused on its headers,
    however the bytes would decode, and the server shuts its side at once (what the client
    still sends is dropped unread: test_early_refusals)."""
    sock = connect(server)
    sock.sendall(
        b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % (63 * 2**20)
    )
    started = time.monotonic()
    received, closed = answer(sock)
    assert received.startswith(b"HTTP/1.1 413 "), received[:80]
    assert b"larger than any request model 'digits' accepts" in received
    assert closed - started < 1.0


def test_a_client_sending_on_after_its_answer_is_cut_off(server: ServerProcess) -> None:
    """After an early answer the server reads and drops what the client still sends, but
    not without end: past LINGER_MAX_BYTES the connection is closed under the client."""
    sock = connect(server)
    sock.sendall(
        b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % (2 * LINGER_MAX_BYTES)
    )
    chunk = b" " * 2**20
    sent = 0
    with pytest.raises(OSError):  # reset or broken pipe, once the server has had enough
        while sent < 2 * LINGER_MAX_BYTES:
            sock.sendall(chunk)
            sent += len(chunk)
    assert LINGER_MAX_BYTES <= sent < 2 * LINGER_MAX_BYTES
    assert httpx.get(f"{server.url}/v2/health/live").status_code == 200


@pytest.mark.parametrize(
    "path",
    ["/v2/models/digits/versions/" + "9" * 5000 + suffix for suffix in ("", "/ready", "/stats",
                                                                        "/config", "/infer")]
    + ["/v2/models/" + "m" * 5000, "/v2/models/digits/versions/1e9/infer"],
)  # fmt: skip
def test_a_version_or_name_that_cannot_exist_is_a_short_404(
    server: ServerProcess, path: str
) -> None:
    method = "POST" if path.endswith("/infer") else "GET"
    response = httpx.request(method, server.url + path, json={"inputs": []})
    assert response.status_code == 404, response.text
    assert len(response.json()["error"]) < 300
    assert "Traceback" not in server.log and "Error" not in response.json()["error"]


def test_idle_connections_past_the_soft_open_files_limit_lock_out_nobody(
    tmp_path: Path,
) -> None:
    """1,100 connections that send nothing, with the common soft limit of 1,024 open files:
    the server raises its soft limit to the hard one, so a new client and the probes are
    still answered."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1400:
        pytest.skip(f"the hard open-files limit here is {hard}: too few for the scenario")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # this process's own sockets
    server = ServerProcess(digits_only(tmp_path), open_files=1024)
    idle: list[socket.socket] = []
    try:
        assert "open files limit raised from 1024" in server.log
        idle = [connect(server) for _ in range(1100)]
        assert httpx.get(f"{server.url}/v2/health/live", timeout=5).status_code == 200
        assert httpx.get(f"{server.url}/v2/health/ready", timeout=5).status_code == 200
        body = json.loads((MODELS / "digits" / "sample_request.json").read_text())
        response = httpx.post(f"{server.url}/v2/models/digits/infer", json=body, timeout=5)
        assert response.status_code == 200
    finally:
        for sock in idle:
            sock.close()
        server.stop()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_past_the_connection_limit_idle_ones_give_way(tmp_path: Path) -> None:
    """With room for 16 connections (+ the probes' reserve), 120 idle ones: the oldest idle
    connections are closed for new clients, whose requests are answered."""
    server = ServerProcess(digits_only(tmp_path), env={"BATCHSERVE_MAX_CONNECTIONS": "16"})
    idle: list[socket.socket] = []
    try:
        idle = [connect(server) for _ in range(120)]
        body = json.loads((MODELS / "digits" / "sample_request.json").read_text())
        for _ in range(3):
            response = httpx.post(f"{server.url}/v2/models/digits/infer", json=body, timeout=5)
            assert response.status_code == 200
        assert httpx.get(f"{server.url}/v2/health/live", timeout=5).status_code == 200
        assert server.metric("batchserve_http_refusals_total", reason="idle_evicted") > 0
    finally:
        for sock in idle:
            sock.close()
        server.stop()


@pytest.fixture(scope="module")
def big_json() -> bytes:
    values = 63 * 2**20 // 19  # "0.123456789012345, " is 19 bytes
    body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, values],
                                   "data": [0.123456789012345] * values}]}).encode()  # fmt: skip
    assert 60 * 2**20 < len(body) < 64 * 2**20
    return body


def liveness_while_uploading(
    server: ServerProcess, model: str, body: bytes, *, clients: int, for_s: float
) -> list[float]:
    """`clients` uploading `body` to `model` again and again for `for_s` (at least once
    each), liveness probed from another process every 20 ms meanwhile; the probes'
    latencies (and every upload answered 200 or 413)."""
    statuses: list[int] = []
    until = time.monotonic() + for_s

    def upload() -> None:
        with httpx.Client(base_url=server.url, timeout=120) as client:
            headers = {"content-type": "application/json"}
            while True:
                with contextlib.suppress(httpx.TransportError):  # refused before all was sent
                    response = client.post(f"/v2/models/{model}/infer", content=body,
                                           headers=headers)  # fmt: skip
                    statuses.append(response.status_code)
                if time.monotonic() > until:
                    return

    with probing(server.url) as latencies:
        uploads = [threading.Thread(target=upload) for _ in range(clients)]
        for thread in uploads:
            thread.start()
        for thread in uploads:
            thread.join()
    assert set(statuses) <= {200, 413}, statuses
    assert len(latencies) > 20
    return latencies


def p99_ms(latencies: list[float]) -> float:
    return statistics.quantiles(latencies, n=100)[98] * 1000


def test_liveness_stays_fast_while_four_63_mb_bodies_arrive(
    server: ServerProcess, big_json: bytes
) -> None:
    """digits takes at most 64 rows of 64 floats: four 63 MB bodies are refused on their
    headers, unread and unparsed, and liveness answers within 100 ms at p99 meanwhile."""
    latencies = liveness_while_uploading(server, "digits", big_json, clients=4, for_s=2.0)
    assert p99_ms(latencies) < 100, f"liveness p99 {p99_ms(latencies):.0f} ms"


def test_large_json_bodies_are_parsed_off_the_event_loop(tmp_path: Path, big_json: bytes) -> None:
    """For a model that takes any width, two 63 MB JSON bodies are parsed in another
    process: parsed on the event loop (or in a thread: the parser holds the GIL) each stalls
    liveness for the 0.2-0.3 s the parser takes, and so did zeroing a 63 MB receive buffer
    at once or pickling the body for the parsing process (30-80 ms each). What remains is
    receiving the bodies, unpickling the arrays, and the cores the uploads and parsing take."""
    write_sum_model(tmp_path / "sum" / "1" / "model.onnx")
    (tmp_path / "sum" / "config.toml").write_text("max_batch_size = 1\n")
    server = ServerProcess(tmp_path)
    try:
        latencies = liveness_while_uploading(server, "sum", big_json, clients=2, for_s=0.0)
        assert server.metric("batchserve_requests_total", model="sum", outcome="success") == 2
    finally:
        server.stop()
    assert p99_ms(latencies) < 100, f"liveness p99 {p99_ms(latencies):.0f} ms"


def test_bodies_past_the_budget_held_at_once_get_503_with_retry_after(tmp_path: Path) -> None:
    """With room for 1 MiB of bodies in flight, a second 800 kB body while the first is still
    arriving is refused at its headers; once the first is gone, bodies are taken again."""
    write_sum_model(tmp_path / "sum" / "1" / "model.onnx")
    (tmp_path / "sum" / "config.toml").write_text("max_batch_size = 1\n")
    server = ServerProcess(tmp_path, env={**FRONT, "BATCHSERVE_MAX_PENDING_BODY_BYTES": "1048576"})
    head = (b"POST /v2/models/sum/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 800000\r\n\r\n")  # fmt: skip
    try:
        first = connect(server)
        first.sendall(head + b'{"inputs": [')  # and then nothing: held until its timeout
        second = connect(server)
        for _ in range(100):  # until the first's headers have been read (bounded)
            second.sendall(head)
            received, _ = answer(second)
            if b"503" in received.split(b"\r\n", 1)[0]:
                break
            second = connect(server)
        assert received.startswith(b"HTTP/1.1 503 "), received[:80]
        assert b"retry-after: 1" in received.lower()
        assert b"BATCHSERVE_MAX_PENDING_BODY_BYTES" in received
        assert answer(first)[0].startswith(b"HTTP/1.1 408 ")  # its body never came
        body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3],
                                       "data": [1, 2, 3]}]})  # fmt: skip
        response = httpx.post(f"{server.url}/v2/models/sum/infer", content=body, timeout=5)
        assert response.status_code == 200 and response.json()["outputs"][0]["data"] == [6.0]
        assert server.metric("batchserve_http_refusals_total", reason="body_budget") >= 1
    finally:
        server.stop()

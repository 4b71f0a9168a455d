"""Refusals a client can read: a request answered before its body is read (413 over the
server's limit or over what the model takes, 429 queue full, 503 unloaded, 401 and 403) is
answered, then what the client still sends is read and dropped before the connection
closes, so Python's urllib, requests and aiohttp each read the status and the JSON message
while sending bodies of 1, 16 and 63 MB. Closed at once, the server's TCP stack reset the
connection under the client and its answer was lost (urllib: "connection reset by peer").
Meanwhile liveness, probed from another process, and the server's memory stay bounded."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import httpx
import pytest
import requests

from load_tests.studies.reload_cycles import resident
from testing.server_process import ServerProcess
from testing.synthetic_models import write_sum_model
from tests.conftest import MODELS
from tests.liveness import probing

pytestmark = pytest.mark.integration

TOKEN = "let-me-in"
SIZES_MB = (1, 16, 63)
#: A model whose queue holds one request, for a minute (waiting for a fuller batch): the
#: next one is refused 429 on its headers.
HELD = """
max_batch_size = 8
[batching]
max_queue_size = 1
max_queue_delay_ms = 60000
preferred_batch_sizes = [8]
"""
#: Growth of the server's resident set allowed while it refuses: far below one body.
MEMORY_SLACK_MIB = 32

Send = Callable[[str, bytes, dict[str, str]], tuple[int, bytes]]


def with_urllib(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as refused:
        return refused.code, refused.read()


def with_requests(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    response = requests.post(url, data=body, headers=headers, timeout=60)
    return response.status_code, response.content


def with_aiohttp(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    async def send() -> tuple[int, bytes]:
        async with (
            aiohttp.ClientSession() as session,
            session.post(url, data=body, headers=headers) as response,
        ):
            return response.status, await response.read()

    return asyncio.run(send())


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("refusals")
    for name in ("digits", "gone"):
        (root / name / "1").mkdir(parents=True)
        (root / name / "1" / "model.onnx").write_bytes(
            (MODELS / "digits/1/model.onnx").read_bytes()
        )
        (root / name / "config.toml").write_text((MODELS / "digits/config.toml").read_text())
    write_sum_model(root / "held" / "1" / "model.onnx")
    (root / "held" / "config.toml").write_text(HELD)
    return root


@pytest.fixture(scope="module")
def servers(repository: Path) -> Iterator[dict[str, ServerProcess]]:
    """ "main" with the API token and model control; "small" whose request limit is 512 KiB."""
    env = {"BATCHSERVE_API_TOKEN": TOKEN, "BATCHSERVE_MODEL_CONTROL": "true"}
    main = ServerProcess(repository, env=env)
    small = ServerProcess(repository, env={"BATCHSERVE_MAX_REQUEST_BYTES": str(512 * 1024)})
    try:
        unloaded = httpx.post(f"{main.url}/v2/repository/models/gone/unload", headers=auth())
        assert unloaded.status_code == 200, unloaded.text
        yield {"main": main, "small": small}
    finally:
        main.stop()
        small.stop()


@pytest.fixture(scope="module")
def body() -> bytes:
    """63 MB that is not what any model takes (its prefixes are the smaller bodies)."""
    return b'{"inputs": [' + b" " * (max(SIZES_MB) * 2**20)


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def hold_the_queue(server: ServerProcess) -> None:
    """One request waiting in "held"'s queue (sent unless one already waits)."""

    def depth() -> float:
        return server.metric("batchserve_queue_depth", model="held")

    if depth() == 0:
        small = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}]}
        threading.Thread(
            target=httpx.post, daemon=True,
            args=(f"{server.url}/v2/models/held/infer",),
            kwargs={"json": small, "headers": auth(), "timeout": 120},
        ).start()  # fmt: skip
    deadline = time.monotonic() + 30
    while depth() != 1:  # watch (bounded) for the server to queue it
        assert time.monotonic() < deadline, "the held request never queued"
        time.sleep(0.02)


#: (server, model, headers): the status and a part of the message each is refused with.
REFUSALS = [
    ("small", "digits", {}, 413, "BATCHSERVE_MAX_REQUEST_BYTES"),
    ("main", "digits", auth(), 413, "larger than any request model 'digits' accepts"),
    ("main", "held", auth(), 429, "Exceeds maximum queue size"),
    ("main", "gone", auth(), 503, "unloaded"),
    ("main", "digits", {}, 401, "Authorization: Bearer"),
    ("main", "digits", auth("wrong"), 403, "not valid"),
]


@contextlib.contextmanager
def watched(server: ServerProcess) -> Iterator[dict[str, object]]:
    """Liveness probed from another process and the resident set sampled while the block
    runs; afterwards the probes' latencies and the largest growth of the resident set."""
    seen: dict[str, object] = {}
    before = resident(server.pid)[0]
    peak = [before]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.01):
            peak[0] = max(peak[0], resident(server.pid)[0])

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        with probing(server.url) as latencies:
            yield seen
    finally:
        stop.set()
        sampler.join()
    seen["latencies"] = latencies
    seen["growth_mib"] = peak[0] - before


@pytest.mark.parametrize("send", [with_urllib, with_requests, with_aiohttp],
                         ids=["urllib", "requests", "aiohttp"])  # fmt: skip
def test_each_early_refusal_reaches_the_client_while_it_sends(
    servers: dict[str, ServerProcess], body: bytes, send: Send
) -> None:
    hold_the_queue(servers["main"])
    wrong = []
    with watched(servers["main"]) as seen:
        for name, model, headers, status, message in REFUSALS:
            url = f"{servers[name].url}/v2/models/{model}/infer"
            for size in SIZES_MB:
                sent = body[: size * 2**20]
                got, answer = send(url, sent, {"Content-Type": "application/json", **headers})
                if got != status or message not in json.loads(answer).get("error", ""):
                    wrong.append(f"{model} {size} MB: {got} {answer[:120]!r}")
    assert wrong == []
    latencies = seen["latencies"]
    assert isinstance(latencies, list) and latencies
    assert max(latencies) < 1.0, f"slowest liveness {max(latencies):.2f} s"
    growth = seen["growth_mib"]
    assert isinstance(growth, float) and growth < MEMORY_SLACK_MIB, f"grew {growth:.0f} MiB"

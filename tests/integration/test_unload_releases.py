"""An unloaded or replaced version gives back everything it held, in the server's own
process: its batchers, sessions and threads are freed by reference counting alone (the
cyclic collector is off throughout), as soon as the requests it held are answered, and its
metric series leave /metrics unless the version is served again.

The app runs in this process (create_app, its lifespan, httpx's ASGI transport), so the test
can hold weak references to the old version's parts; requests are in flight when it goes."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import os
import threading
import weakref
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.main import Application, create_app
from app.repository import LoadedVersion
from app.settings import Settings
from testing.synthetic_models import write_token_model, write_word_tokenizer
from tests.image_models import encoded, plain, write_colour_model

pytestmark = pytest.mark.integration

WORDS = [f"w{i}" for i in range(1, 50)]
TEXT_CONFIG = """
max_batch_size = 8
[padding]
inputs = { input_ids = 0, attention_mask = 0 }
[tokenizer]
input = "text"
max_length = 16
"""


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("release")
    write_token_model(root / "embed" / "1" / "model.onnx")
    (root / "embed" / "config.toml").write_text(TEXT_CONFIG)
    write_word_tokenizer(root / "embed" / "tokenizer.json", WORDS)
    write_colour_model(root)
    return root


@pytest.fixture
def no_cyclic_gc() -> Iterator[None]:
    """Only reference counting frees objects: a cycle would keep the version alive."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def text_request(words: int) -> dict[str, Any]:
    texts = [" ".join(WORDS[: 1 + (words + i) % 12]) for i in range(2)]
    return {"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": texts}]}


def image_request() -> dict[str, Any]:
    data = base64.b64encode(encoded(plain((200, 10, 10)))).decode()
    return {
        "inputs": [
            {"name": "image", "shape": [1], "datatype": "BYTES", "data": [data],
             "parameters": {"content_type": "base64"}},
        ]
    }  # fmt: skip


class Parts:
    """Weak references to what one loaded version holds, and its threads."""

    def __init__(self, loaded: LoadedVersion) -> None:
        self.refs: dict[str, weakref.ref[Any]] = {
            "batcher": weakref.ref(loaded.batcher),
            **{f"session {i.label}": weakref.ref(i._session) for i in loaded.instances},
            **{f"instance {i.label}": weakref.ref(i) for i in loaded.instances},
        }
        self.threads = [t for e in loaded.batcher._executors for t in e._threads]
        if loaded.text is not None:
            self.refs["tokenizer batcher"] = weakref.ref(loaded.text.batcher)
            self.threads += [t for e in loaded.text.batcher._executors for t in e._threads]
        if loaded.image is not None:
            self.refs["image stage"] = weakref.ref(loaded.image)
            self.threads += list(loaded.image._pool._threads)

    def alive(self) -> list[str]:
        alive = [name for name, ref in self.refs.items() if ref() is not None]
        return alive + [f"thread {t.name}" for t in self.threads if t.is_alive()]


@contextlib.asynccontextmanager
async def served(repository: Path) -> AsyncIterator[tuple[Application, httpx.AsyncClient]]:
    """The app started in this process (its lifespan: models loaded, drained at the end)."""
    # No gRPC: its protobuf package would clash with tritonclient's in this process.
    settings = Settings(model_repository=repository, model_control=True, grpc_port=0)
    application = create_app(settings)
    api = application.api
    async with api.router.lifespan_context(api):
        await application.service.loaded.wait()
        transport = httpx.ASGITransport(app=application.asgi)
        async with httpx.AsyncClient(transport=transport, base_url="http://batchserve") as http:
            yield application, http


async def in_flight_while(
    http: httpx.AsyncClient, model: str, body: dict[str, Any], action: str, count: int = 24
) -> list[int]:
    """`count` requests sent, then `action` (load or unload) while they are in flight;
    every request's status."""
    url = f"/v2/models/{model}/infer"
    requests = [asyncio.ensure_future(http.post(url, json=body)) for _ in range(count)]
    await asyncio.sleep(0)  # one turn of the loop: each request starts before the action
    control = await http.post(f"/v2/repository/models/{model}/{action}")
    assert control.status_code == 200, control.text
    return [r.status_code for r in await asyncio.gather(*requests)]


def threads_but_the_shared_pool() -> int:
    """The process's threads as the OS counts them (ONNX Runtime's too), less the event
    loop's default executor's."""
    shared = sum(1 for t in threading.enumerate() if t.name.startswith("asyncio_"))
    return len(os.listdir("/proc/self/task")) - shared


def series(text: str, model: str) -> list[str]:
    """/metrics lines of one model's versions (the model's own state row has version="",
    and its loads and evictions, counted per model, outlive its versions)."""
    return [
        line for line in text.splitlines()
        if f'model="{model}"' in line and 'version="' in line and 'version=""' not in line
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("model", "body"), [("embed", text_request(5)), ("colours", image_request())]
)
def test_an_unloaded_version_is_freed_with_its_threads_and_series(
    repository: Path, no_cyclic_gc: None, model: str, body: dict[str, Any]
) -> None:
    async def scenario() -> None:
        async with served(repository) as (application, http):
            models = application.service.repository
            parts = Parts(models.version(model))
            assert len(parts.alive()) == len(parts.refs) + len(parts.threads)
            warm = await http.post(f"/v2/models/{model}/infer", json=body)
            assert warm.status_code == 200, warm.text
            assert series((await http.get("/metrics")).text, model)

            statuses = await in_flight_while(http, model, body, "unload")
            assert set(statuses) <= {200, 503} and 200 in statuses, statuses
            await models.settled()

            assert parts.alive() == []
            metrics = (await http.get("/metrics")).text
            assert series(metrics, model) == []
            # The model's own row says it was unloaded on request: nothing to alert on.
            state = f'batchserve_model_state{{model="{model}",state="unloaded",version=""}} 1.0'
            assert state in metrics
            gone = await http.post(f"/v2/models/{model}/infer", json=body)
            assert gone.status_code == 503, gone.text

    asyncio.run(scenario())


def test_a_replaced_version_is_freed_and_its_successor_keeps_the_series(
    repository: Path, no_cyclic_gc: None
) -> None:
    body = text_request(9)

    async def scenario() -> None:
        async with served(repository) as (application, http):
            models = application.service.repository
            parts = Parts(models.version("embed"))

            statuses = await in_flight_while(http, "embed", body, "load")
            assert statuses == [200] * len(statuses)
            await models.settled()

            assert parts.alive() == []
            assert all(t.is_alive() for t in Parts(models.version("embed")).threads)
            served_by_both = (
                'batchserve_requests_total{model="embed",outcome="success",protocol="http",'
                'version="1"} 24.0'
            )  # the old version's answers, counted on under its successor
            assert served_by_both in (await http.get("/metrics")).text
            again = await http.post("/v2/models/embed/infer", json=body)
            assert again.status_code == 200, again.text

    asyncio.run(scenario())


def test_unload_and_load_cycles_leave_the_threads_the_first_left(
    repository: Path, no_cyclic_gc: None
) -> None:
    """Every thread a version starts (its workers', its tokenizer's or image decoders',
    ONNX Runtime's own) is gone after its unload: the process counts as many after the
    third cycle as after the first, leaving out the event loop's shared pool (to_thread),
    which keeps a thread it starts when two calls overlap."""

    async def cycles() -> list[int]:
        counts = []
        async with served(repository) as (application, http):
            for _ in range(3):
                for model, body in (("embed", text_request(3)), ("colours", image_request())):
                    await in_flight_while(http, model, body, "unload", count=8)
                    await application.service.repository.settled()
                    loaded = await http.post(f"/v2/repository/models/{model}/load")
                    assert loaded.status_code == 200, loaded.text
                counts.append(threads_but_the_shared_pool())
        return counts

    counts = asyncio.run(cycles())
    assert counts[-1] <= counts[0], counts

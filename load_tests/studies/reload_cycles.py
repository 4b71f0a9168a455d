"""Unload/load, reload and repository-poll cycles of one model against a real server, with
requests in flight each time the old versions go: what each cycle left resident, how many
threads the server has, and what every request was answered.

Shared by the test of reloads (tests/integration/test_reload_memory.py) and the bench that
runs a hundred cycles (load_tests/bench_reload.py). A cycle ends once the server logs that
the versions it replaced are released, so nothing is read while they still drain.
"""

from __future__ import annotations

import asyncio
import base64
import io
import os
import random
import shutil
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

from testing.server_process import ServerProcess

#: How a cycle replaces the model: unload then load it, load it while it is loaded (a
#: reload), or rewrite one of its version's files for the repository poll to pick up.
HOW = ("unload", "reload", "poll")
#: Clients sending requests in a closed loop while the old versions go.
CLIENTS = 8
#: Longest a cycle's load, drain and release may take (a text model loads in seconds).
CYCLE_TIMEOUT_S = 120.0
WORDS = (
    "the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "search",
    "engines", "rank", "pages", "by", "meaning", "and", "assistants", "answer", "questions",
    "about", "photos", "of", "cats", "coffee", "mountains",
)  # fmt: skip


def resident(pid: int) -> tuple[float, int]:
    """The process's resident set (MiB) and thread count, from /proc."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["Threads"])


def text_bodies(count: int, seed: int = 0) -> list[dict[str, Any]]:
    """Requests of one to four texts of 1 to 120 words: varied lengths, as users send."""
    rng = random.Random(seed)
    bodies = []
    for _ in range(count):
        texts = [
            " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 120)))
            for _ in range(rng.randint(1, 4))
        ]
        bodies.append(
            {"inputs": [{"name": "text", "shape": [len(texts)], "datatype": "BYTES",
                         "data": texts}]}
        )  # fmt: skip
    return bodies


def image_bodies(photo: Path, count: int, seed: int = 0) -> list[dict[str, Any]]:
    """Requests of one or two JPEGs (base64 in JSON): crops of `photo` at sizes from 80 to
    640 pixels a side, so that decoding and batches vary as users' photos do."""
    rng = random.Random(seed)
    with Image.open(photo) as opened:
        source = opened.convert("RGB")
    bodies = []
    for _ in range(count):
        files = []
        for _ in range(rng.randint(1, 2)):
            side = rng.randint(80, 640)
            left = rng.randint(0, source.width // 4)
            top = rng.randint(0, source.height // 4)
            crop = source.crop((left, top, source.width - left, source.height - top))
            buffer = io.BytesIO()
            crop.resize((side, side * crop.height // crop.width)).save(buffer, "JPEG")
            files.append(base64.b64encode(buffer.getvalue()).decode())
        bodies.append(
            {"inputs": [{"name": "image", "shape": [len(files)], "datatype": "BYTES",
                         "data": files, "parameters": {"content_type": "base64"}}]}
        )  # fmt: skip
    return bodies


@dataclass
class Cycle:
    """What one cycle measured, once the versions it replaced were released."""

    #: Resident MiB after the unload (unload cycles only), and after the cycle's load.
    unloaded_mib: float | None
    loaded_mib: float
    threads: int
    seconds: float
    statuses: Counter[int] = field(default_factory=Counter)
    #: Answers other than 200 and the documented 503 for a request after the unload.
    unexpected: list[str] = field(default_factory=list)


class ReloadCycles:
    """Cycles `how` on `model` of `server`; `repository` is the directory it serves (the
    poll cycles rewrite a version's file there)."""

    def __init__(
        self,
        server: ServerProcess,
        *,
        model: str,
        how: str,
        bodies: list[dict[str, Any]],
        repository: Path | None = None,
    ) -> None:
        if how not in HOW:
            raise ValueError(f"how must be one of {HOW}, not {how!r}")
        if how == "poll" and repository is None:
            raise ValueError("poll cycles rewrite a version's file: give the repository")
        self.server = server
        self.model = model
        self.how = how
        self.bodies = bodies
        self.repository = repository

    def released(self) -> int:
        """How many times the server has logged this model's old versions released."""
        return self.server.log.count(f"model {self.model}: released ")

    async def run(
        self, cycles: int, on_cycle: Callable[[int, Cycle], None] | None = None
    ) -> list[Cycle]:
        done = []
        async with httpx.AsyncClient(base_url=self.server.url, timeout=60) as http:
            for index in range(cycles):
                cycle = await self._cycle(http)
                done.append(cycle)
                if on_cycle is not None:
                    on_cycle(index, cycle)
        return done

    async def _cycle(self, http: httpx.AsyncClient) -> Cycle:
        began = time.monotonic()
        released = self.released()
        statuses: Counter[int] = Counter()
        unexpected: list[str] = []
        stop = asyncio.Event()
        answered = asyncio.Event()
        clients = [
            asyncio.ensure_future(self._client(http, i, stop, answered, statuses, unexpected))
            for i in range(CLIENTS)
        ]
        try:
            await asyncio.wait_for(answered.wait(), CYCLE_TIMEOUT_S)  # requests are flowing
            await self._replace(http)
            await self._until(lambda: self.released() > released, "old versions released")
        finally:
            stop.set()
            await asyncio.gather(*clients)
        unloaded = None
        if self.how == "unload":
            unloaded = resident(self.server.pid)[0]
            response = await http.post(f"/v2/repository/models/{self.model}/load")
            assert response.status_code == 200, response.text
        rss, threads = resident(self.server.pid)
        return Cycle(unloaded, rss, threads, time.monotonic() - began, statuses, unexpected)

    async def _client(
        self,
        http: httpx.AsyncClient,
        index: int,
        stop: asyncio.Event,
        answered: asyncio.Event,
        statuses: Counter[int],
        unexpected: list[str],
    ) -> None:
        sent = index
        while not stop.is_set():
            body = self.bodies[sent % len(self.bodies)]
            sent += CLIENTS
            response = await http.post(f"/v2/models/{self.model}/infer", json=body)
            statuses[response.status_code] += 1
            if response.status_code == 200:
                answered.set()
            elif self.how == "unload" and _unloaded_refusal(response):
                return  # the model is gone: this client has seen what it came to see
            else:
                unexpected.append(f"{response.status_code} {response.text[:200]}")

    async def _replace(self, http: httpx.AsyncClient) -> None:
        if self.how == "poll":
            assert self.repository is not None
            await asyncio.to_thread(rewrite_version, self.repository / self.model)
            return
        action = "unload" if self.how == "unload" else "load"
        response = await http.post(f"/v2/repository/models/{self.model}/{action}")
        assert response.status_code == 200, response.text

    async def _until(self, condition: Callable[[], bool], what: str) -> None:
        """Watch (bounded) for the server to reach a state it logs."""
        deadline = time.monotonic() + CYCLE_TIMEOUT_S
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not within {CYCLE_TIMEOUT_S} s\n{self.server.log}")
            await asyncio.sleep(0.02)


def _unloaded_refusal(response: httpx.Response) -> bool:
    """The documented answer to a request that arrived after its model was unloaded."""
    return response.status_code == 503 and "unloaded" in response.text


def rewrite_version(model_dir: Path) -> None:
    """A new copy of the model's lowest version's model.onnx, moved into place (as a user
    updates a version): new file, same bytes, so the repository poll reloads the model. It
    is copied beside the model's directory (a hidden name the poll skips), so the poll
    never sees half a file."""
    version = min((p for p in model_dir.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    target = version / "model.onnx"
    staging = model_dir.parent / f".{model_dir.name}.model.onnx.new"
    shutil.copyfile(target, staging)
    os.replace(staging, target)


def copy_model(source: Path, repository: Path) -> Path:
    """`source` copied into `repository` (hard links where the filesystem allows: the text
    model is ~100 MB), without its build scripts."""

    def link_or_copy(src: str, dst: str) -> object:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)
        return dst

    target = repository / source.name
    shutil.copytree(
        source, target, copy_function=link_or_copy, ignore=shutil.ignore_patterns("*.py")
    )
    return target

"""The least any Python server on this stack can add to one inference: read the request body,
run one fixed, prepared feed through the model in a worker thread (one hand-off there and one
back, as every server that keeps its event loop free must do), answer a constant.

    BASELINE_MODEL=models/minilm/1/model.onnx BASELINE_FEED=feed.npz \
        uvicorn --lifespan off load_tests.baselines.floor:app

With BASELINE_INLINE=1 the model runs on the event loop itself, no hand-off at all: what
HTTP alone adds around the same compute. No real server may do that (the loop would stall
every other request for a whole inference); it is the lower bound, not a design.

No decoding, validation, batching or encoding: the gap between this and raw session.run is
what HTTP and the thread hand-offs cost on the machine, a floor under every served p50
(load_tests/bench_text.py reports it beside batchserve's).
"""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import onnxruntime as ort

_options = ort.SessionOptions()
_options.intra_op_num_threads = int(os.environ.get("BASELINE_THREADS", str(os.cpu_count() or 1)))
_options.inter_op_num_threads = 1
# Spinning off unless BASELINE_SPINNING=1: with it, the floor runs the model exactly as raw
# ONNX Runtime's default options do, so floor - raw is HTTP and the hand-offs alone.
_spinning = os.environ.get("BASELINE_SPINNING", "0")
_options.add_session_config_entry("session.intra_op.allow_spinning", _spinning)
session = ort.InferenceSession(
    os.environ["BASELINE_MODEL"], _options, providers=["CPUExecutionProvider"]
)
with np.load(os.environ["BASELINE_FEED"], allow_pickle=False) as _feed:
    FEED = {name: _feed[name] for name in _feed.files}
OUTPUTS = [os.environ.get("BASELINE_OUTPUT", session.get_outputs()[0].name)]
BODY = b'{"ok":true}'
_worker = ThreadPoolExecutor(max_workers=1)
_inline = os.environ.get("BASELINE_INLINE", "0") == "1"


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":  # run with --lifespan off
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    if scope["method"] == "POST" and _inline:
        session.run(OUTPUTS, FEED)
    elif scope["method"] == "POST":
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(_worker, session.run, OUTPUTS, FEED)
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(BODY))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": BODY})

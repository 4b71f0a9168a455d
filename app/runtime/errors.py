"""ONNX Runtime's failures, with messages a client can be shown."""

from __future__ import annotations

import re

_ORT_NOISE = re.compile(r"\[ONNXRuntimeError\] : \d+ : \w+ : |/?\S*onnxruntime_src/\S+:\d+ ")


class RunFailedError(RuntimeError):
    """ONNX Runtime failed to run a batch; the message is the runtime's, cleaned."""


def clean_message(exc: BaseException) -> str:
    """The runtime's message without ONNX Runtime's source paths and status prefixes."""
    return _ORT_NOISE.sub("", str(exc)).strip() or type(exc).__name__

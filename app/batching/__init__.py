"""The dynamic batcher: one queue per model version, drained by that version's workers.

It knows nothing of HTTP or of ONNX: it takes numpy inputs, forms batches and hands each one
to a `BatchRunner` in that runner's own thread.
"""

from app.batching.batcher import Batcher
from app.batching.observer import BatchObserver, BatchReport
from app.batching.policy import BatchingPolicy
from app.batching.runner import BatchRunner

__all__ = ["BatchObserver", "BatchReport", "BatchRunner", "Batcher", "BatchingPolicy"]

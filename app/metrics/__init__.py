"""Prometheus metric families, Triton-style statistics, and the observer that feeds both."""

from app.metrics.collectors import TuningInfo, VersionGauges, WorkerInfo
from app.metrics.families import ModelMetrics, NoMetrics, ServerMetrics
from app.metrics.statistics import ModelStatistics

__all__ = [
    "ModelMetrics",
    "ModelStatistics",
    "NoMetrics",
    "ServerMetrics",
    "TuningInfo",
    "VersionGauges",
    "WorkerInfo",
]

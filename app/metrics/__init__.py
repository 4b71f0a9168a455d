"""Prometheus metric families and the batcher observer that feeds them."""

from app.metrics.families import ModelMetrics, ServerMetrics

__all__ = ["ModelMetrics", "ServerMetrics"]

"""What a profile measures: instance layouts, and one timed point per (layout, batch size)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class Layout:
    """`count` instances (sessions) of `threads` intra-op threads each on one device."""

    count: int
    threads: int

    @property
    def label(self) -> str:
        return f"{self.count}x{self.threads}"

    @staticmethod
    def parse(text: str) -> Layout:
        """ "2x1" -> Layout(count=2, threads=1)."""
        try:
            count, threads = (int(part) for part in text.lower().split("x"))
        except ValueError:
            raise ValueError(f"{text!r} is not COUNTxTHREADS, e.g. 2x1") from None
        if count < 1 or threads < 1:
            raise ValueError(f"{text!r}: count and threads must be at least 1")
        return Layout(count, threads)


@dataclass(frozen=True)
class Point:
    """One measured (layout, batch size): compute latency of a batch and the aggregate
    throughput of the layout's instances running at once."""

    layout: Layout
    batch_size: int
    latency_ms_p50: float
    latency_ms_p90: float
    throughput_sps: float
    #: Windows timed, and whether their last three throughputs agreed (app.tuning.timing).
    windows: int = 3
    stable: bool = True

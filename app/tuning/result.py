"""What tuning at load chose for one model version, and where that came from: applied to
its config (app.repository.autotune), told in the load log and the model metadata, and
stored in the tuning cache (app.tuning.at_load measures it)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from app.tuning.plan import Plan
from app.tuning.points import Layout

#: Where the serving layout came from: the config, tuning turned off, measured at this
#: load, read from the cache, or the defaults because profiling failed.
SOURCES = ("config", "off", "tuned", "cache", "failed")


@dataclass(frozen=True)
class Tuning:
    """What a version serves with where its config is silent, and where that came from."""

    source: str
    reason: str = ""
    count: int | None = None
    threads: int | None = None
    max_batch_size: int | None = None
    #: The batch the server forms when that many wait (its preferred batch size).
    batch_size: int | None = None
    #: Seconds the profile took (source "tuned"), or the one the cache entry holds.
    seconds: float = 0.0
    #: What it was measured on: the [warmup] sample, or synthetic inputs.
    inputs: str = ""
    #: Intra-op threads spin (measured faster for a lone request, no slower in batches).
    spinning: bool = False
    #: The low-load-only instance beside them (app.tuning.low_load): its threads, or
    #: None for none, and whether they spin.
    low_load_threads: int | None = None
    low_load_spinning: bool = False
    #: "cpu", or "cuda": `count` sessions on every visible GPU (measured on the first).
    device: str = "cpu"

    @property
    def chosen(self) -> bool:
        return self.source in ("tuned", "cache")

    @property
    def layout(self) -> str:
        """`2x1`, or `2x1 + low-load 1x2` with a low-load-only instance, as
        batchserve_tuning_info names it; empty where nothing was chosen."""
        return self._layout(spinning=False)

    def _layout(self, spinning: bool) -> str:
        if not self.chosen:
            return ""
        if self.device == "cuda":
            return f"{self.count}x{self.threads} per GPU"
        main = f"{self.count}x{self.threads}{' spinning' if spinning and self.spinning else ''}"
        if self.low_load_threads is None:
            return main
        spin = " spinning" if spinning and self.low_load_spinning else ""
        return f"{main} + low-load 1x{self.low_load_threads}{spin}"

    def describe(self) -> str:
        """One phrase for the load log: `tuned in 8.1 s: 2x1, max_batch_size 32, ...`."""
        if self.source == "config":
            return "layout from config.toml"
        if not self.chosen:
            return f"not tuned ({self.reason})"
        where = f"tuned in {self.seconds:.1f} s" if self.source == "tuned" else "tuned (cached)"
        return (
            f"{where} on {self.inputs}: {self._layout(spinning=True)}, "
            f"batches of {self.batch_size}, max_batch_size {self.max_batch_size}"
        )

    def metadata(self) -> dict[str, Any]:
        """The model metadata's `parameters.tuning`."""
        entry: dict[str, Any] = {"source": self.source}
        if self.reason:
            entry["reason"] = self.reason
        if self.chosen:
            entry.update(
                layout=self.layout,
                max_batch_size=self.max_batch_size,
                batch_size=self.batch_size,
                seconds=round(self.seconds, 2),
                inputs=self.inputs,
                spinning=self.spinning,
                low_load_threads=self.low_load_threads,
                low_load_spinning=self.low_load_spinning,
                device=self.device,
            )
        return entry


def from_plan(plan: Plan, *, inputs: str, device: str) -> Tuning:
    """A plan measured at this load, on `inputs`, for "cpu" or "cuda"."""
    return Tuning(
        source="tuned", count=plan.layout.count, threads=plan.layout.threads,
        max_batch_size=plan.max_batch_size, batch_size=plan.batch_size, inputs=inputs,
        spinning=plan.spinning, low_load_threads=plan.low_load_threads,
        low_load_spinning=plan.low_load_spinning, device=device,
    )  # fmt: skip


def to_dict(tuning: Tuning) -> dict[str, Any]:
    return asdict(tuning)


def from_dict(entry: dict[str, Any]) -> Tuning:
    """A cached result, checked as strictly as a config (a bad entry is measured again)."""
    layout = Layout.parse(f"{int(entry['count'])}x{int(entry['threads'])}")
    max_batch_size = entry["max_batch_size"]
    if max_batch_size is not None and int(max_batch_size) < 0:
        raise ValueError(f"cached tuning {entry} has an impossible max_batch_size")
    low_load_threads = entry["low_load_threads"]
    if low_load_threads is not None:
        low_load_threads = Layout.parse(f"1x{int(low_load_threads)}").threads
    return Tuning(
        source=str(entry["source"]),
        count=layout.count,
        threads=layout.threads,
        max_batch_size=None if max_batch_size is None else int(max_batch_size),
        batch_size=None if entry["batch_size"] is None else int(entry["batch_size"]),
        seconds=float(entry["seconds"]),
        inputs=str(entry["inputs"]),
        spinning=bool(entry["spinning"]),
        low_load_threads=low_load_threads,
        low_load_spinning=bool(entry["low_load_spinning"]),
        device=_device(entry["device"]),
    )


def _device(value: Any) -> str:
    if value not in ("cpu", "cuda"):
        raise ValueError(f"cached tuning device {value!r} is neither 'cpu' nor 'cuda'")
    return str(value)

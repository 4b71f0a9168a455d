"""The GPU check's results and report (load_tests/gpu/check.py): what it found per model,
the one table it prints, and its bars."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from load_tests.gpu.models import Settings


@dataclass
class ModelResult:
    model: str
    correctness: dict[str, Any] = field(default_factory=dict)
    raw: list[dict[str, Any]] = field(default_factory=list)
    served: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def best_raw(self, mode: str | None = None) -> dict[str, Any] | None:
        """The fastest raw row (of `mode`, or of both ways of running)."""
        rows = [r for r in self.raw if mode is None or r["mode"] == mode]
        return max(rows, key=lambda r: r["samples_per_s"]) if rows else None


def table(results: list[ModelResult], settings: Settings) -> str:
    lines = [
        f"device {settings.device}; served: one worker, binary tensors, 1 sample a request "
        f"(text: 128 tokens); raw: in-process, same device",
        "",
        "| model | correct | raw best (batch) samples/s | raw b=1 ms | on: sat req/s (C, batch) "
        "| on: p50 C=1 ms | off: sat req/s (C) | off: p50 C=1 ms | on/off | served/raw |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [table_row(r) for r in results]
    return "\n".join(lines)


def table_row(r: ModelResult) -> str:
    best = r.best_raw()
    one = next((x for x in r.raw if x["mode"] == "as served" and x["batch"] == 1), None)
    on, off = r.served.get("on", {}), r.served.get("off", {})
    on_best, off_best = on.get("best"), off.get("best")
    if not (best and one and on_best and off_best):
        return f"| {r.model} | incomplete: see the log above |"
    ratio = on_best["throughput_rps"] / off_best["throughput_rps"]
    share = on_best["throughput_rps"] / best["samples_per_s"]
    cells = [
        r.model,
        "yes" if r.correctness.get("pass") else "NO",
        f"{best['samples_per_s']:.0f} ({best['batch']})",
        f"{one['latency_ms']:.3f}",
        f"{on_best['throughput_rps']:.0f} ({on_best['concurrency']}, "
        f"{on_best['mean_batch'] or 0:.1f})",
        f"{on['c1']['p50_ms']:.2f}",
        f"{off_best['throughput_rps']:.0f} ({off_best['concurrency']})",
        f"{off['c1']['p50_ms']:.2f}",
        f"{ratio:.2f}x",
        f"{share:.0%}",
    ]
    return "| " + " | ".join(cells) + " |"


def criteria(results: list[ModelResult]) -> dict[str, Any]:
    """The check's bars: batching on >= 3x off on digits at saturation; served >= 80% of raw
    ONNX Runtime at its best batch (per model); outputs as the CPU's."""
    found: dict[str, Any] = {}
    for r in results:
        on, off = (r.served.get(m, {}).get("best") for m in ("on", "off"))
        best = r.best_raw()
        found[f"{r.model}: outputs match the CPU"] = bool(r.correctness.get("pass"))
        if on and best:
            found[f"{r.model}: served >= 80% of raw best"] = (
                on["throughput_rps"] >= 0.8 * best["samples_per_s"]
            )
        if r.model == "digits" and on and off:
            found["digits: batching on >= 3x off"] = (
                on["throughput_rps"] >= 3 * off["throughput_rps"]
            )
    return found

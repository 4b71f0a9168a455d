"""How far repeated tunings of one model land apart: the profile of tuning at load as one
pass of the whole budget against two passes of half of it each (each point keeping its
faster pass, what a CPU tuning does), in alternating runs of one process. Per (layout,
batch), the coefficient of variation across runs of its served throughput (batch / (p50 +
the server's cost per batch)); and what each run would serve with.

    python -m load_tests.bench_tuning_noise [--models medium,small-cnn] [--runs 5] [--out DIR]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from app.runtime import OnnxInstance
from app.tuning import measure
from app.tuning.at_load import CPU_PASSES, TuneSettings, one_pass_settings, split_passes
from app.tuning.plan import DEFAULT_MAX_BATCH_SIZE, SERVING_COST_PER_BATCH_MS, plan
from app.tuning.timing import Feeds
from load_tests.bench_zero_config import CASES

ROOT = Path(__file__).resolve().parents[1]
HEADER = """# Repeated tunings: one pass against two (load_tests/bench_tuning_noise.py)

The profile of tuning at load on synthetic inputs, {runs} runs of each variant alternating in one
process, the default budget. CV: a point's standard deviation across runs over its mean,
averaged over the points; picks: the layout and batch each run would serve with.

"""


@dataclass
class Runs:
    """One variant's repeated tunings: each point's served throughput, run by run, and what
    each run would serve with (layout/batch)."""

    served: dict[tuple[str, int], list[float]] = field(default_factory=lambda: defaultdict(list))
    picks: list[str] = field(default_factory=list)

    def mean_cv(self) -> float:
        return statistics.fmean(
            statistics.stdev(v) / statistics.fmean(v) for v in self.served.values() if len(v) > 1
        )


def tunings(path: Path, runs: int) -> dict[str, Runs]:
    probe = OnnxInstance(path, "cpu", threads=1, index=0)
    specs = probe.inputs
    del probe
    sizes = measure.batch_sizes(DEFAULT_MAX_BATCH_SIZE)
    base = one_pass_settings(TuneSettings(), device="cpu", batch_sizes=sizes)
    variants = {"one pass": base, f"{CPU_PASSES} passes": split_passes(base, CPU_PASSES)}
    found = {name: Runs() for name in variants}

    def feeds(size: int) -> Feeds:
        return measure.synthetic_feeds(specs, size, 128)

    for run in range(runs):
        for name, settings in variants.items():
            points = measure.profile(path, settings, feeds).points
            chosen = plan(points)
            found[name].picks.append(f"{chosen.layout.label}/{chosen.batch_size}")
            for p in points:
                served = p.batch_size / (p.latency_ms_p50 + SERVING_COST_PER_BATCH_MS)
                found[name].served[(p.layout.label, p.batch_size)].append(served)
            print(f"  run {run + 1} {name}: {found[name].picks[-1]}", flush=True)
    return found


def report(model: str, found: dict[str, Runs]) -> str:
    lines = [f"### {model}", "", "| variant | mean CV of a point | picks (layout/batch) |",
             "|---|---:|---|"]  # fmt: skip
    for name, runs in found.items():
        lines.append(f"| {name} | {runs.mean_cv():.3f} | {', '.join(runs.picks)} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="medium,small-cnn")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "load_tests" / "report")
    args = parser.parse_args()
    out = []
    with tempfile.TemporaryDirectory() as work:
        for case in CASES:
            if case.name not in args.models.split(","):
                continue
            path = Path(work) / case.name / "1" / "model.onnx"
            case.write(path)
            print(case.name, flush=True)
            out.append(report(case.name, tunings(path, args.runs)))
    text = HEADER.format(runs=args.runs) + "\n".join(out)
    (args.out / "TUNING_NOISE.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()

"""What metrics cost: throughput with metrics on and off, in alternating rounds of one run.

    python -m load_tests.bench_metrics [--rounds 5 --duration 4 --concurrency 64]

The same working tree twice, one server with BATCHSERVE_METRICS=false (load_tests/bench_ab).
"""

from __future__ import annotations

import sys

from load_tests import bench_ab


def main() -> None:
    sys.argv[1:1] = ["--env-b", "BATCHSERVE_METRICS=false", "--encodings", "json"]
    bench_ab.main()


if __name__ == "__main__":
    main()

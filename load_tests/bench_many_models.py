"""Many models in bounded memory: a fleet of 22 models made from the shipped ones (text
int8, image int8, digits), open-loop Zipf traffic (s = 1.1) at a fixed offered rate, served
with every model resident and with a memory budget of a quarter of their measured cost, in
alternating rounds; the resident set over time (plotted), refusals, the hottest model's p99
against the all-resident run, cold loads per kind, hit ratio, loads and evictions; what each
model's unload gives back against its measured cost; and a cold load against raw ONNX
Runtime creating the same sessions and running one batch (load_tests/report/MANY_MODELS.md).

    python -m load_tests.bench_many_models --out load_tests/report [--rounds 2] [--seconds 90]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from app.cpuinfo import cpu_identity
from load_tests.studies.many_models import (
    RssSampler,
    Traffic,
    build_fleet,
    closed_loop,
    request_bodies,
    tree_rss_mib,
    zipf_traffic,
    zipf_weights,
)
from load_tests.studies.many_models_report import plot, report
from testing.server_process import ServerProcess

FLEET = {"text": 4, "image": 6, "digits": 12}
ZIPF_S = 1.1
MiB = 1 << 20
LOADED = re.compile(r"model (\S+): loaded in ([\d.]+) s for request")


def serve(repository: Path, cache: Path, budget: int | None = None) -> ServerProcess:
    env = {"BATCHSERVE_CACHE_DIR": str(cache), "BATCHSERVE_MODEL_CONTROL": "true",
           "BATCHSERVE_AUTOTUNE": "on"}  # fmt: skip
    if budget is not None:
        env["BATCHSERVE_MODEL_MEMORY"] = str(budget)
    return ServerProcess(repository, env=env)


def index(server: ServerProcess) -> list[dict[str, Any]]:
    return list(httpx.post(f"{server.url}/v2/repository/index", timeout=30).json())


def run_traffic(server: ServerProcess, plan: dict[str, Any], seed: int) -> tuple[Traffic, list]:
    with RssSampler(server.pid) as sampler:
        traffic = asyncio.run(
            zipf_traffic(
                server.url, weights=plan["weights"], bodies=plan["bodies"],
                rate=plan["rate"], seconds=plan["seconds"], seed=seed,
            )
        )  # fmt: skip
    return traffic, sampler.samples


def unload_gives_back(server: ServerProcess, costs: dict[str, int]) -> dict[str, dict[str, float]]:
    """Unload each model in turn: the resident set it gave back against its measured cost.
    One unload and load first, so that its trim hands back what the traffic left freed
    rather than the first model's unload."""
    first = next(iter(costs))
    for action in ("unload", "load"):
        answer = httpx.post(f"{server.url}/v2/repository/models/{first}/{action}", timeout=60)
        answer.raise_for_status()
    given = {}
    for name, cost in costs.items():
        released = server.log.count(f"model {name}: released ")
        before = tree_rss_mib(server.pid)
        answer = httpx.post(f"{server.url}/v2/repository/models/{name}/unload", timeout=60)
        answer.raise_for_status()
        deadline = time.monotonic() + 60
        while server.log.count(f"model {name}: released ") == released:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} was not released:\n{server.log}")
            time.sleep(0.02)
        returned = before - tree_rss_mib(server.pid)
        given[name] = {"cost_mib": cost / MiB, "returned_mib": returned,
                       "ratio": returned * MiB / cost if cost else float("nan")}  # fmt: skip
    return given


def budget_round(
    repository: Path, cache: Path, fraction: float, costs: dict[str, int], plan: dict, seed: int
) -> dict[str, Any]:
    budget = int(sum(costs.values()) * fraction)
    server = serve(repository, cache, budget)
    try:
        base = tree_rss_mib(server.pid)
        traffic, samples = run_traffic(server, plan, seed)
        metric = server.metric
        loads = {
            name: metric("batchserve_model_loads_total", model=name) for name in plan["weights"]
        }
        waits = sum(metric("batchserve_model_load_waits_total", model=n) for n in loads)
        evictions = sum(metric("batchserve_model_evictions_total", model=n) for n in loads)
        cold = [(m[1], float(m[2])) for m in LOADED.finditer(server.log)]
    finally:
        server.stop()
    return {"traffic": traffic, "samples": samples, "base_mib": base, "loads": loads,
            "waits": waits, "evictions": evictions, "cold": cold, "fraction": fraction,
            "budget": budget, "round": seed}  # fmt: skip


def raw_cold_load(model_path: Path, sessions: list[int], feeds: str) -> float:
    """Seconds raw ONNX Runtime takes to create one session per entry of `sessions` (with
    that many threads) and run one batch, timed in a fresh process after its imports."""
    code = f"""
import time, json, numpy as np, onnxruntime as ort
feeds = {{k: np.array(v[0], dtype=v[1]) for k, v in json.loads({feeds!r}).items()}}
began = time.perf_counter()
sessions = []
for threads in {sessions!r}:
    options = ort.SessionOptions(); options.intra_op_num_threads = threads
    sessions.append(ort.InferenceSession(
        {str(model_path)!r}, options, providers=["CPUExecutionProvider"]))
sessions[0].run(None, feeds)
print(time.perf_counter() - began)
"""
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return float(out.stdout.strip().splitlines()[-1])


def our_cold_load(
    repository: Path, cache: Path, names: list[str], body: dict
) -> tuple[float, list[int]]:
    """Seconds from the first request for a model not in memory to its answer (load,
    warm-up, first answer), caches warm, on a server started for it whose request path a
    first model has warmed, over the one connection the first request opened; and the
    sessions it made (threads of each: one-thread workers share one)."""
    server = serve(repository, cache, budget=1 << 34)
    try:
        warm, cold = names
        with httpx.Client(base_url=server.url, timeout=120) as client:
            client.post(f"/v2/models/{warm}/infer", json=body).raise_for_status()
            began = time.perf_counter()
            answer = client.post(f"/v2/models/{cold}/infer", json=body)
            seconds = time.perf_counter() - began
            answer.raise_for_status()
            workers = client.get(f"/v2/models/{cold}").json()["parameters"]["instances"]
    finally:
        server.stop()
    return seconds, sorted({worker["threads"] for worker in workers})


def raw_feeds(kind: str) -> str:
    """The raw session's one batch, as JSON: what a first request of `kind` computes."""
    if kind == "text":
        ids = [[101, *range(2000, 2014), 102]]
        mask = [[1] * len(ids[0])]
        return json.dumps({"input_ids": [ids, "int64"], "attention_mask": [mask, "int64"],
                           "token_type_ids": [[[0] * len(ids[0])], "int64"]})  # fmt: skip
    return json.dumps({"input": [[[1.0] * 64], "float32"]})


def cold_loads(root: Path, cache: Path, rounds: int) -> dict:
    """Per kind: ours and raw ONNX Runtime's creating the sessions ours made, alternating,
    and their ratio."""
    result = {}
    for kind, body in (
        ("text", request_bodies("text", 1)[0]),
        ("digits", request_bodies("digits", 1)[0]),
    ):
        repository = root / f"cold-{kind}"
        names = sorted(build_fleet(repository, {kind: 2}))
        model_path = next(repository.glob(f"{names[1]}/*/model.onnx"))
        ours, raw, made = [], [], []
        for _ in range(rounds):
            # The sessions the server made (tuning may pick another layout on another run).
            seconds, threads = our_cold_load(repository, cache, names, body)
            ours.append(seconds)
            made.append(threads)
            raw.append(raw_cold_load(model_path, threads, raw_feeds(kind)))
        result[kind] = {"ours_s": ours, "raw_s": raw, "sessions": made[-1],
                        "ratio": statistics.median(ours) / statistics.median(raw)}  # fmt: skip
    return result


def alone_or_among_idle(root: Path, cache: Path, fleet: Path, rounds: int) -> dict:
    """The text model's closed-loop throughput on a server of its own and on one where the
    whole fleet is resident and idle, alternating."""
    own = root / "alone"
    name = next(iter(build_fleet(own, {"text": 1})))
    bodies = request_bodies("text", 64)
    speeds: dict[str, list[float]] = {"alone": [], "among_idle": []}
    for _ in range(rounds):
        for case, repository in (("alone", own), ("among_idle", fleet)):
            server = serve(repository, cache)
            try:
                speeds[case].append(
                    asyncio.run(closed_loop(server.url, name, bodies, concurrency=8, seconds=20))
                )
            finally:
                server.stop()
    ratio = statistics.median(speeds["among_idle"]) / statistics.median(speeds["alone"])
    return {"model": name, "requests_per_s": speeds, "ratio": ratio}


def summarize(kinds: dict[str, str], plan: dict, resident: list, budgeted: list) -> dict:
    hottest = max(plan["weights"], key=plan["weights"].get)
    rounds = []
    for within in budgeted:
        all_in, budget = resident[within["round"]], within["budget"]
        t_all, t_in = all_in["traffic"], within["traffic"]
        answered = t_in.total()
        refused = sum(c[503] for c in t_in.statuses.values())
        other = answered - refused - t_in.total(200)
        peak = max(rss for _, rss in within["samples"])
        bound = budget / MiB + within["base_mib"]
        by_kind: dict[str, list[float]] = {}
        for name, seconds in within["cold"]:
            by_kind.setdefault(kinds[name], []).append(seconds)
        rounds.append({
            "round": within["round"] + 1, "fraction": within["fraction"],
            "budget_mib": budget / MiB,
            "hottest_p99_ms": {"all_resident": t_all.p99_ms(hottest),
                               "budget": t_in.p99_ms(hottest)},
            "hottest_p99_ratio": t_in.p99_ms(hottest) / t_all.p99_ms(hottest),
            "answers": answered, "refused_503": refused, "refused_share": refused / answered,
            "other_than_200_or_503": other, "dropped": t_in.dropped + t_all.dropped,
            "all_resident_non_200": t_all.total() - t_all.total(200),
            "rss_peak_mib": peak, "rss_base_mib": within["base_mib"],
            "rss_bound_mib": bound * 1.1, "rss_peak_over_budget_plus_base": peak / bound,
            "all_resident_rss_peak_mib": max(rss for _, rss in all_in["samples"]),
            "loads": sum(within["loads"].values()), "evictions": within["evictions"],
            "hit_ratio": 1 - within["waits"] / answered if answered else float("nan"),
            "cold_load_s": {k: {"p50": float(np.percentile(v, 50)),
                                "p99": float(np.percentile(v, 99)), "count": len(v)}
                            for k, v in by_kind.items()},
        })  # fmt: skip
    return {"hottest": hottest, "hottest_kind": kinds[hottest], "rounds": rounds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("load_tests/report"))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=90.0)
    parser.add_argument("--rate", type=float, default=30.0, help="requests/s over the fleet")
    parser.add_argument("--cold-rounds", type=int, default=5)
    parser.add_argument(
        "--fractions", default="0.25,0.5", help="budgets, as shares of the summed cost"
    )
    parser.add_argument(
        "--cold-only",
        action="store_true",
        help="measure the cold loads against raw ONNX Runtime again, into the last report",
    )
    args = parser.parse_args()
    if args.cold_only:
        remeasure_cold_loads(args.out, args.cold_rounds)
        return
    with tempfile.TemporaryDirectory(prefix="many-models-") as scratch:
        root, cache = Path(scratch), Path(scratch) / "cache"
        kinds = build_fleet(root / "fleet", FLEET)
        plan = {"weights": zipf_weights(sorted(kinds), ZIPF_S, seed=7), "rate": args.rate,
                "seconds": args.seconds,
                "bodies": {name: request_bodies(kind) for name, kind in kinds.items()}}  # fmt: skip
        resident, budgeted, given = [], [], {}
        fractions = [float(f) for f in args.fractions.split(",")]
        for round_ in range(args.rounds):
            server = serve(root / "fleet", cache)
            try:
                rows = index(server)
                costs = {row["name"]: row["memory_bytes"] for row in rows}
                traffic, samples = run_traffic(server, plan, seed=round_)
                resident.append({"traffic": traffic, "samples": samples})
                if round_ == 0:
                    given = unload_gives_back(server, costs)
            finally:
                server.stop()
            for fraction in fractions:
                budgeted.append(
                    budget_round(root / "fleet", cache, fraction, costs, plan, seed=round_)
                )
            print(f"round {round_ + 1} done", flush=True)
        cold = cold_loads(root, cache, args.cold_rounds)
        alone = alone_or_among_idle(root, cache, root / "fleet", args.rounds + 1)
    data = {
        "machine": cpu_identity(), "fleet": FLEET, "zipf_s": ZIPF_S, "rate": args.rate,
        "seconds": args.seconds, "fractions": fractions,
        "summed_cost_mib": sum(costs.values()) / MiB,
        "costs_mib": {n: c / MiB for n, c in costs.items()},
        **summarize(kinds, plan, resident, budgeted),
        "unload_gives_back": given, "cold_load_vs_raw": cold, "alone_or_among_idle": alone,
    }  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "many_models.json").write_text(json.dumps(data, indent=1, sort_keys=True))
    plot(budgeted, args.out / "many_models.png")
    (args.out / "MANY_MODELS.md").write_text(report(data))
    print(report(data))


def remeasure_cold_loads(out: Path, rounds: int) -> None:
    """The cold loads against raw ONNX Runtime alone, put into the report in `out`."""
    data = json.loads((out / "many_models.json").read_text())
    with tempfile.TemporaryDirectory(prefix="many-models-") as scratch:
        root = Path(scratch)
        data["cold_load_vs_raw"] = cold_loads(root, root / "cache", rounds)
    (out / "many_models.json").write_text(json.dumps(data, indent=1, sort_keys=True))
    (out / "MANY_MODELS.md").write_text(report(data))
    print(report(data))


if __name__ == "__main__":
    main()

"""Structured pruning with and without reconstruction, on digits and the text model, through
the `batchserve optimize` commands a user runs (load_tests/report/PRUNE.md).

digits: fp32 v1; 30/50/70% of hidden units removed, by weight magnitude, without and with
least-squares reconstruction (calibrated on the training rows, measured on the held-out
ones); static int8 of v1 and of the 50% reconstructed version; then one interleaved
`optimize evaluate` of all of them, so every ratio comes from one run. A second table ranks
the importance scores and rankings by accuracy at 50% and 70%.

minilm (when built): FFN units removed at a range of sparsities with the surgeon's ranking and
reconstruction, calibrated on models/minilm/calibration.npz (not the reference sentences);
the importance variants at 10%; then one evaluate at batch 8 on the reference sentences
(128 tokens), for the worst and mean cosine to fp32 and throughput.

    python -m load_tests.studies.prune_study --out load_tests/report [--skip-text]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
BATCHSERVE = [sys.executable, "-m", "app"]
DIGITS_DATA = ROOT / "models" / "digits" / "data"
MINILM = ROOT / "models" / "minilm"


def optimize(*args: str) -> None:
    command = [*BATCHSERVE, "optimize", *args]
    print("$ batchserve optimize " + " ".join(args), flush=True)
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    if result.returncode not in (0, 3):
        raise SystemExit(f"failed ({result.returncode}): {result.stderr[-2000:]}")
    for line in result.stdout.splitlines():
        if line.startswith(("wrote", "searched")):
            print("  " + line, flush=True)


def scratch(name: str, source: Path, work: Path) -> Path:
    """A repository under `work` holding `source`'s v1 and its files (no other version)."""
    repo = work / name
    shutil.rmtree(repo, ignore_errors=True)
    (repo / name).mkdir(parents=True)
    shutil.copytree(source / "1", repo / name / "1")
    for item in source.iterdir():
        if item.is_file():
            shutil.copy(item, repo / name / item.name)
    return repo


def evaluate(repo: Path, model: str, out: Path, *args: str) -> dict[str, Any]:
    optimize("evaluate", "--model-repository", str(repo), "--model", model, "--out", str(out),
             "--title", f"{model}: structured pruning", *args)  # fmt: skip
    return json.loads((out / "evaluation.json").read_text())  # type: ignore[no-any-return]


def digits(work: Path, report: Path) -> list[str]:
    repo = scratch("digits", ROOT / "models" / "digits", work)
    data = ["--data", str(DIGITS_DATA / "test_x.npy"), "--labels", str(DIGITS_DATA / "test_y.npy")]
    calibration = ["--calibration", str(DIGITS_DATA / "calibration_x.npy")]
    common = ["--model-repository", str(repo), "--model", "digits", *data, "--batch-sizes"]
    labels = {1: "fp32"}
    version = 1
    for reconstruct in (False, True):
        for sparsity in (0.3, 0.5, 0.7):
            version += 1
            flag = [*calibration] if reconstruct else []
            optimize("prune", *common, "--from-version", "1", "--sparsity", str(sparsity),
                     *flag, "--force")  # fmt: skip
            labels[version] = f"{sparsity:.0%} {'with' if reconstruct else 'without'} recon."
    optimize("quantize", *common, "--from-version", "1", "--mode", "static", *calibration)
    labels[version + 1] = "int8 (static, per channel)"
    optimize("quantize", *common, "--from-version", "6", "--mode", "static", *calibration,
             "--max-drop", "1.5")  # fmt: skip
    labels[version + 2] = "50% with recon., then int8"
    result = evaluate(repo, "digits", work / "eval-digits", *data, "--batch-sizes", "1", "64",
                      "--rounds", "7", "--window-s", "0.3")  # fmt: skip
    shutil.copy(work / "eval-digits" / "evaluation.png", report / "prune_digits.png")
    lines = [
        "## digits (64-256-256-10 MLP), held-out set of 360 rows",
        "",
        "| version | what | accuracy | size KiB | batch 1 x fp32 | batch 64 x fp32 |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for number, variant in enumerate(result["variants"], start=1):
        perf = {p["batch_size"]: p["throughput_ratio"] for p in variant["perf"]}
        lines.append(
            f"| v{number} | {labels[number]} | {variant['accuracy']:.4f} | "
            f"{variant['size_bytes'] / 1024:.1f} | x{perf[1]:.2f} | x{perf[64]:.2f} |"
        )
    lines += ["", "Importance and ranking (accuracy, reconstruction on; fp32 0.9750):", ""]
    lines += importance_table(repo, common, calibration)
    return lines


def importance_table(repo: Path, common: list[str], calibration: list[str]) -> list[str]:
    rows = ["| importance | ranking | 50% | 70% |", "|---|---|---:|---:|"]
    for importance in ("magnitude", "activation", "surgeon"):
        for ranking in ("layer", "global"):
            cells = []
            for sparsity in ("0.5", "0.7"):
                optimize("prune", *common, "--from-version", "1", "--sparsity", sparsity,
                         *calibration, "--importance", importance, "--ranking", ranking,
                         "--force")  # fmt: skip
                newest = max(int(p.name) for p in (repo / "digits").iterdir() if p.name.isdigit())
                document = json.loads((repo / "digits" / str(newest) / "optimize.json").read_text())
                cells.append(f"{document['evaluation']['variants'][1]['accuracy']:.4f}")
                shutil.rmtree(repo / "digits" / str(newest))
            rows.append(f"| {importance} | {ranking} | {cells[0]} | {cells[1]} |")
    return rows


def minilm(work: Path, report: Path) -> list[str]:
    repo = scratch("minilm", MINILM, work)
    reference = ["--data", str(MINILM / "reference.npz"), "--output", "sentence_embedding"]
    common = ["--model-repository", str(repo), "--model", "minilm", *reference, "--threads",
              "2", "--batch-sizes"]  # fmt: skip
    calibration = ["--calibration", str(MINILM / "calibration.npz")]
    labels = {1: "fp32"}
    runs = [(s, "surgeon", "layer", True) for s in (0.03, 0.05, 0.1, 0.2, 0.3, 0.5)]
    runs += [(0.1, "magnitude", "layer", False), (0.1, "magnitude", "layer", True),
             (0.1, "activation", "layer", True), (0.1, "surgeon", "global", True)]  # fmt: skip
    for number, (sparsity, importance, ranking, reconstruct) in enumerate(runs, start=2):
        optimize("prune", *common, "--from-version", "1", "--sparsity", str(sparsity),
                 *calibration, "--importance", importance, "--ranking", ranking,
                 "--reconstruct" if reconstruct else "--no-reconstruct", "--min-cosine", "0.97",
                 "--force")  # fmt: skip
        labels[number] = (
            f"{sparsity:.0%} FFN units, {importance}/{ranking}, "
            f"{'with' if reconstruct else 'without'} recon."
        )
    timing = ["--threads", "2", "--batch-sizes", "8", "--rounds", "9", "--window-s", "0.5"]
    result = evaluate(repo, "minilm", work / "eval-minilm", *reference, *timing, "--no-plot")
    lines = [
        "## minilm (all-MiniLM-L6-v2): FFN units, 24 reference sentences, batch 8 x 128 tokens",
        "",
        "| version | what | worst cosine | mean cosine | size MB | batch 8 x fp32 |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for number, variant in enumerate(result["variants"], start=1):
        agreement = variant["agreement"] or {"cosine_min": 1.0, "cosine_mean": 1.0}
        ratio = variant["perf"][0]["throughput_ratio"]
        lines.append(
            f"| v{number} | {labels[number]} | {agreement['cosine_min']:.4f} | "
            f"{agreement['cosine_mean']:.4f} | {variant['size_bytes'] / 1e6:.1f} | x{ratio:.2f} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "load_tests" / "report")
    parser.add_argument("--skip-text", action="store_true")
    args = parser.parse_args()
    work = ROOT / "build" / "prune-study"
    work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    lines = ["# Structured pruning with reconstruction (load_tests/studies/prune_study.py)", ""]
    lines += digits(work, args.out)
    if not args.skip_text and (MINILM / "1" / "model.onnx").exists():
        lines += ["", *minilm(work, args.out)]
    (args.out / "PRUNE.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

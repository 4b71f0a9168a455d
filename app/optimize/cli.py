"""`batchserve optimize quantize|prune|evaluate`: argument parsing and the commands' flow.

quantize and prune make a variant of a model version in a scratch directory, measure it
against that version, and write it as the model's next version (report beside it) only if
the accuracy guard passes or --force is given. evaluate measures versions side by side.

Exit status: 0 done; 1 an error (the message says what to fix); 2 bad arguments; 3 the
variant missed the accuracy guard and was not written.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.optimize.errors import GuardMissed, OptimizeError

EXIT_ERROR = 1
EXIT_GUARD = 3

Producer = Callable[[Path, Path, Any], tuple[str, dict[str, Any]]]


def add_parser(commands: Any) -> None:
    """Add `optimize` and its subcommands to the `batchserve` parser's subparsers."""
    optimize = commands.add_parser(
        "optimize",
        help="quantize, prune or evaluate a model into new versions",
        description="Make faster or smaller versions of a model in a repository and measure "
        "them. Needs the optimize extra: pip install 'batchserve[optimize]'.",
        epilog="Exit status: 0 done, 1 error, 2 bad arguments, 3 the variant missed the "
        "accuracy guard and was not written.",
    )
    sub = optimize.add_subparsers(dest="optimize_command", required=True)

    quantize = sub.add_parser(
        "quantize",
        help="int8 (dynamic or static QDQ) or fp16, with ONNX Runtime's quantization tools",
        description="Quantize a version with onnxruntime.quantization and write the result as "
        "the model's next version, if it passes the accuracy guard.",
    )
    quantize.add_argument("--mode", required=True, choices=["dynamic", "static", "fp16"])
    quantize.add_argument(
        "--calibration",
        type=Path,
        metavar="FILE",
        help="representative inputs for static calibration (.npy/.npz; default: --data, "
        "which makes the guard's accuracy optimistic: prefer data the evaluation does not use)",
    )
    quantize.add_argument(
        "--calibrate-method", choices=["minmax", "entropy", "percentile"], default="minmax"
    )
    quantize.add_argument("--calibration-batch-size", type=int, default=32, metavar="N")
    quantize.add_argument(
        "--per-tensor",
        action="store_true",
        help="one scale per weight tensor instead of per output channel (the default)",
    )
    quantize.add_argument("--weight-type", choices=["int8", "uint8"], default="int8")
    quantize.add_argument("--activation-type", choices=["int8", "uint8"], default="int8")
    quantize.add_argument(
        "--reduce-range",
        action="store_true",
        help="7-bit weights: avoids saturation on x86 CPUs without VNNI",
    )
    quantize.add_argument(
        "--exclude-nodes",
        default="",
        metavar="A,B",
        help="comma-separated node names to keep in float (sensitive layers)",
    )
    quantize.add_argument(
        "--no-preprocess",
        action="store_true",
        help="skip ORT's pre-processing (shape inference, graph optimization)",
    )
    _add_variant_arguments(quantize)
    quantize.set_defaults(handler=_guarded(_quantize))

    prune = sub.add_parser(
        "prune",
        help="magnitude pruning: remove hidden units (structured) or zero weights",
        description="Prune a version's weights by magnitude and write the result as the "
        "model's next version, if it passes the accuracy guard. structured removes whole "
        "hidden units between consecutive MatMul/Gemm layers (smaller and faster); "
        "unstructured zeroes weights (smaller compressed only: dense kernels are no faster).",
    )
    prune.add_argument("--method", choices=["structured", "unstructured"], default="structured")
    prune.add_argument(
        "--sparsity",
        type=float,
        required=True,
        help="share of hidden units (structured) or weights (unstructured) to remove, 0..1",
    )
    _add_variant_arguments(prune)
    prune.set_defaults(handler=_guarded(_prune))

    evaluate = sub.add_parser(
        "evaluate",
        help="measure versions side by side: accuracy, agreement, size, speed",
        description="Measure versions of a model against a baseline version and write "
        "evaluation.json, evaluation.md and evaluation.png.",
    )
    _add_model_arguments(evaluate)
    evaluate.add_argument(
        "--versions",
        type=int,
        nargs="+",
        metavar="N",
        help="versions to measure (default: every version on disk)",
    )
    evaluate.add_argument(
        "--baseline", type=int, metavar="N", help="the version the others compare to "
        "(default: the first of --versions)"
    )  # fmt: skip
    evaluate.add_argument(
        "--out", type=Path, metavar="DIR", help="where to write the reports (default: "
        "./evaluation-<model>)"
    )  # fmt: skip
    evaluate.add_argument("--title", help="title of the report and plot")
    evaluate.add_argument("--no-plot", action="store_true", help="skip the PNG plot")
    evaluate.set_defaults(handler=_guarded(_evaluate))


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model-repository", type=Path, default=Path("models"), metavar="DIR",
        help="model repository (default ./models)",
    )  # fmt: skip
    parser.add_argument("--model", required=True, help="model name (its directory)")
    parser.add_argument(
        "--data", type=Path, required=True, metavar="FILE",
        help="inputs to measure on: .npy (a single-input model) or .npz (one array per input)",
    )  # fmt: skip
    parser.add_argument(
        "--labels", type=Path, metavar="FILE", help="integer class labels (.npy), one per "
        "sample: accuracy is measured; without them, agreement with the baseline",
    )  # fmt: skip
    parser.add_argument(
        "--output", metavar="NAME", help="output to compare: its argmax (or integer value) "
        "is the prediction, and cosine and differences are measured on it alone (default: "
        "the first integer output of rank 1, else the first float output; cosine over all)",
    )  # fmt: skip
    parser.add_argument(
        "--device", default="cpu", help="measure speed on 'cpu' or 'cuda:N' (default cpu)"
    )
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (default 1)")
    parser.add_argument(
        "--batch-sizes", type=int, nargs="*", default=[1, 8, 64], metavar="N",
        help="batch sizes to time (default 1 8 64; none: skip timing)",
    )  # fmt: skip
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    parser.add_argument(
        "--window-s", type=float, default=0.2, metavar="S",
        help="seconds each variant runs per round and batch size (default 0.2)",
    )  # fmt: skip


def _add_variant_arguments(parser: argparse.ArgumentParser) -> None:
    _add_model_arguments(parser)
    parser.add_argument(
        "--from-version", type=int, metavar="N", help="version to start from (default: the "
        "highest on disk)",
    )  # fmt: skip
    parser.add_argument(
        "--max-accuracy-drop", type=float, metavar="POINTS", help="largest accuracy loss "
        "allowed, in percentage points (default 1, with --labels)",
    )  # fmt: skip
    parser.add_argument(
        "--min-agreement", type=float, metavar="FRACTION", help="smallest top-1 agreement "
        "with the source version allowed (default 0.99 without --labels)",
    )  # fmt: skip
    parser.add_argument(
        "--min-cosine", type=float, metavar="COSINE", help="smallest cosine of any sample's "
        "float outputs to the source version's (e.g. 0.98 for embeddings)",
    )  # fmt: skip
    parser.add_argument(
        "--force", action="store_true", help="write the variant even if it misses the guard"
    )


Command = Callable[[argparse.Namespace], int]


def _guarded(command: Command) -> Command:
    """The command with its errors turned into a message on stderr and an exit status."""

    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except GuardMissed as exc:
            print(f"batchserve optimize: not written: {exc}", file=sys.stderr)
            return EXIT_GUARD
        except OptimizeError as exc:
            print(f"batchserve optimize: error: {exc}", file=sys.stderr)
            return EXIT_ERROR

    return run


# -- the commands --------------------------------------------------------------------------


def _settings(args: argparse.Namespace) -> Any:
    from app.optimize.evaluate import BenchSettings

    if args.rounds < 1 or args.window_s <= 0 or any(b < 1 for b in args.batch_sizes):
        raise OptimizeError("--rounds and --batch-sizes must be >= 1, --window-s > 0")
    return BenchSettings(
        device=args.device,
        threads=args.threads,
        batch_sizes=tuple(args.batch_sizes),
        rounds=args.rounds,
        window_s=args.window_s,
    )


def _describe_version(version_dir: Path) -> str:
    """A version's description from the report written with it, or "original"."""
    try:
        report = json.loads((version_dir / "optimize.json").read_text(encoding="utf-8"))
        return str(report["variant"]["description"])
    except (OSError, ValueError, KeyError, TypeError):
        return "original"


def _quantize(args: argparse.Namespace) -> int:
    from app.optimize.data import load_inputs
    from app.optimize.quantize import Mode, QuantizeOptions, quantize

    options = QuantizeOptions(
        mode=Mode(args.mode),
        per_channel=not args.per_tensor,
        calibrate_method=args.calibrate_method,
        weight_type=args.weight_type,
        activation_type=args.activation_type,
        reduce_range=args.reduce_range,
        exclude_nodes=tuple(n.strip() for n in args.exclude_nodes.split(",") if n.strip()),
        preprocess=not args.no_preprocess,
        calibration_batch_size=args.calibration_batch_size,
    )

    def produce(source: Path, target: Path, specs: Any) -> tuple[str, dict[str, Any]]:
        calibration = None
        if options.mode is Mode.STATIC:
            calibration_file = args.calibration or args.data
            calibration = load_inputs(calibration_file, specs)
        details = quantize(source, target, options, calibration)
        if options.mode is Mode.STATIC:
            details["calibration_file"] = str(args.calibration or args.data)
            if args.calibration is None:
                details["calibration_note"] = (
                    "calibrated on the evaluation data (--data): the accuracy is optimistic"
                )
        return options.describe(), details

    return _make_variant(args, "quantize", produce)


def _prune(args: argparse.Namespace) -> int:
    import dataclasses

    import onnx

    from app.optimize.prune import prune_structured, prune_unstructured

    def produce(source: Path, target: Path, specs: Any) -> tuple[str, dict[str, Any]]:
        model = onnx.load(str(source))
        pruner = prune_structured if args.method == "structured" else prune_unstructured
        report = pruner(model, args.sparsity)
        onnx.save(model, str(target))
        what = "hidden units" if args.method == "structured" else "weights"
        return (
            f"pruned {args.method} {args.sparsity:.0%} of {what}",
            dataclasses.asdict(report),
        )

    return _make_variant(args, "prune", produce)


def _make_variant(args: argparse.Namespace, command: str, produce: Producer) -> int:
    """Make, measure, guard and publish one variant of a model version."""
    from app.optimize import guard, report, versions
    from app.optimize.data import load_dataset
    from app.optimize.evaluate import Candidate, evaluate, open_instance

    settings = _settings(args)
    directory = versions.model_dir(args.model_repository, args.model)
    source_version, source = versions.source_path(directory, args.from_version)
    specs = open_instance(source, "cpu", 1).inputs
    data = load_dataset(args.data, args.labels, specs)
    number = versions.next_version(directory)
    with tempfile.TemporaryDirectory(prefix="batchserve-optimize-") as work:
        target = Path(work) / "model.onnx"
        description, details = produce(source, target, specs)
        evaluation = evaluate(
            [
                Candidate(f"v{source_version}", source, _describe_version(source.parent)),
                Candidate(f"v{number}", target, description),
            ],
            data,
            settings,
            args.output,
        )
        variant = evaluation.variants[1]
        limits = guard.Guard(args.max_accuracy_drop, args.min_agreement, args.min_cosine)
        verdict = guard.check(limits, evaluation, variant)
        title = f"{args.model} v{number}: {description} (from v{source_version})"
        markdown = report.to_markdown(evaluation, title)
        guard_lines = "\n".join(
            f"- {'passed' if c.passed else 'MISSED'}: {c.message}" for c in verdict.checks
        )
        forced = not verdict.passed and args.force
        markdown += f"\nAccuracy guard{' (missed, written with --force)' if forced else ''}:\n"
        markdown += guard_lines + "\n" + _details_markdown(details)
        if not verdict.passed and not args.force:
            print(markdown)
            raise GuardMissed(f"{verdict.summary()}; rerun with --force to write it anyway")
        document = {
            "schema": report.OPTIMIZE_SCHEMA,
            "command": command,
            "argv": sys.argv[1:],
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "model": args.model,
            "source_version": source_version,
            "version": number,
            "variant": {"kind": command, "description": description, "details": details},
            "guard": {
                "passed": verdict.passed,
                "forced": forced,
                "checks": [vars(c) for c in verdict.checks],
            },
            "evaluation": report.evaluation_dict(evaluation),
        }
        _, written = versions.publish(
            directory,
            target,
            {"optimize.json": report.to_json(document), "optimize.md": markdown},
            version=number,
        )
    print(markdown)
    speed = ""
    if settings.batch_sizes:
        largest = max(settings.batch_sizes)
        speed = f", batch-{largest} throughput x{evaluation.throughput_ratio(variant, largest):.2f}"
    base = evaluation.variants[0]
    print(
        f"wrote {args.model} v{number} ({description}) to {written}: size "
        f"{variant.size_bytes / 1024:.1f} KiB vs {base.size_bytes / 1024:.1f} KiB{speed}; "
        f"report {written / 'optimize.md'}"
    )
    print(versions.serving_note(directory, number))
    return 0


def _details_markdown(details: dict[str, Any]) -> str:
    """What the command did, one bullet per item (settings, pre-processing, layers)."""
    lines = ["", "Details:"]
    for key, value in details.items():
        if isinstance(value, list) and value and isinstance(value[0], dict):
            lines.append(f"- {key}:")
            lines.extend(f"  - {json.dumps(item)}" for item in value)
        else:
            lines.append(f"- {key}: {json.dumps(value)}")
    return "\n".join(lines) + "\n"


def _evaluate(args: argparse.Namespace) -> int:
    from app.optimize import report, versions
    from app.optimize.data import load_dataset
    from app.optimize.evaluate import Candidate, evaluate, open_instance

    settings = _settings(args)
    directory = versions.model_dir(args.model_repository, args.model)
    chosen = args.versions or versions.versions_on_disk(directory)
    if args.baseline is not None:
        chosen = [args.baseline, *[v for v in chosen if v != args.baseline]]
    paths = [versions.source_path(directory, v)[1] for v in chosen]
    if not args.no_plot:  # fail before measuring, not after
        from app.optimize.errors import require

        require("matplotlib", "the accuracy-vs-throughput plot (or pass --no-plot)")
    specs = open_instance(paths[0], "cpu", 1).inputs
    data = load_dataset(args.data, args.labels, specs)
    candidates = [
        Candidate(f"v{v}", p, _describe_version(p.parent))
        for v, p in zip(chosen, paths, strict=True)
    ]
    evaluation = evaluate(candidates, data, settings, args.output)
    title = args.title or f"{args.model}: versions {', '.join(c.name for c in candidates)}"
    out = args.out or Path(f"evaluation-{args.model}")
    out.mkdir(parents=True, exist_ok=True)
    markdown = report.to_markdown(evaluation, title)
    (out / "evaluation.json").write_text(report.to_json(report.evaluation_dict(evaluation)))
    (out / "evaluation.md").write_text(markdown, encoding="utf-8")
    if not args.no_plot and settings.batch_sizes:
        report.plot(evaluation, out / "evaluation.png", title)
    print(markdown)
    print(
        f"wrote {out / 'evaluation.md'}, evaluation.json"
        + ("" if args.no_plot else ", evaluation.png")
    )
    return 0

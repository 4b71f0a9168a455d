"""The flows of `batchserve optimize quantize|prune|evaluate` (parsed by app.optimize.cli).

quantize and prune make a variant of a model version in a scratch directory, measure it
against that version, and write it as the model's next version (report beside it) only if
the accuracy guard passes or --force is given. evaluate measures versions side by side.
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

EXIT_GUARD = 3

Producer = Callable[[Path, Path, Any], tuple[str, dict[str, Any]]]


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


def quantize(args: argparse.Namespace) -> int:
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


def prune(args: argparse.Namespace) -> int:
    import dataclasses

    import onnx

    from app.optimize import guard
    from app.optimize.data import load_dataset, load_inputs
    from app.optimize.prune import (
        Importance,
        Ranking,
        StructuredOptions,
        prune_structured,
        prune_unstructured,
    )

    structured = args.method == "structured"
    importance = Importance(args.importance)
    reconstruct = args.reconstruct
    if reconstruct is None:  # on whenever there is calibration data to fit on
        reconstruct = structured and args.calibration is not None
    calibrated = structured and (reconstruct or importance is not Importance.MAGNITUDE)
    if not structured and (reconstruct or importance is not Importance.MAGNITUDE):
        raise OptimizeError("--reconstruct and --importance apply to --method structured only")

    def options(sparsity: float) -> StructuredOptions:
        return StructuredOptions(sparsity, importance, Ranking(args.ranking), reconstruct)

    def prune_to(source: Path, sparsity: float, target: Path, specs: Any) -> dict[str, Any]:
        model = onnx.load(str(source))
        if structured:
            calibration = load_inputs(args.calibration or args.data, specs) if calibrated else None
            report = prune_structured(model, options(sparsity), calibration)
        else:
            report = prune_unstructured(model, sparsity)
        onnx.save(model, str(target))
        return dataclasses.asdict(report)

    def produce(source: Path, target: Path, specs: Any) -> tuple[str, dict[str, Any]]:
        sparsity, searched = args.sparsity, None
        if sparsity is None:
            from app.optimize.prune_search import search

            if not structured:
                raise OptimizeError("the sparsity search is for --method structured")
            limits = guard.Guard(args.max_accuracy_drop, args.min_agreement, args.min_cosine)
            data = load_dataset(args.data, args.labels, specs)
            sparsity, searched = search(
                source,
                lambda s, path: prune_to(source, s, path, specs),
                data,
                limits,
                args.output,
                args.device,
            )
            print(f"searched: {sparsity:.1%} is the highest sparsity within the budget")
        details = prune_to(source, sparsity, target, specs)
        if calibrated:
            details["calibration_file"] = str(args.calibration or args.data)
            if args.calibration is None:
                details["calibration_note"] = (
                    "calibrated on the evaluation data (--data): the accuracy is optimistic"
                )
        if searched is not None:
            details["search"] = [dataclasses.asdict(step) for step in searched]
        if structured:
            return options(sparsity).describe(), details
        return f"pruned unstructured {sparsity:.0%} of weights", details

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


def evaluate(args: argparse.Namespace) -> int:
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

"""`batchserve profile MODEL`: argument parsing and the command's flow.

Exit status: 0 done; 1 an error (the message says what to fix); 2 bad arguments.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

from app.optimize.errors import OptimizeError
from app.profile.errors import ProfileError
from app.tuning.errors import TuningError
from app.tuning.plan import DEFAULT_MAX_BATCH_SIZE, DEFAULT_SEQUENCE_LENGTH
from app.tuning.points import Layout

EXIT_ERROR = 1


def add_parser(commands: Any) -> None:
    """Add `profile` to the `batchserve` parser's subparsers."""
    parser = commands.add_parser(
        "profile",
        help="measure a model per batch size and instance layout; recommend its batching",
        description="Measure a model's compute latency and throughput per batch size and, on "
        "CPU, per instance layout (count x threads), with sessions set up as the server sets "
        "them up; recommend max_batch_size, preferred_batch_sizes and [[instances]] for a "
        "latency target, and with --write put them into the model's config.toml. Writes "
        "profile.md, profile.json and profile.png to --out. The plot and --write need the "
        "optimize extra: pip install 'batchserve[optimize]'.",
        epilog="Rule (the one tuning at load uses): a batch may compute for at most half the "
        "latency target (at saturation a request waits for about one batch and computes in "
        "the next); the layout with the best throughput within that bound wins (past 20,000 "
        "samples/s, more than the HTTP path carries, layouts tie and fewer instances win); "
        "the batch the server forms is, among the layout's batches within the bound (25 ms "
        "at least on a CPU with the default target), the largest (one instance) or the "
        "middle one (several) of those within 5% of the best served throughput; "
        "max_batch_size is that batch on a CPU, the largest within the bound on a GPU, 32 at "
        "least. Default target: max(10 x batch-1 latency, 5 ms). Exit status: 0 done, "
        "1 error, 2 bad arguments.",
    )
    parser.add_argument("model", help="model name (its directory in the repository)")
    parser.add_argument(
        "--model-repository", type=Path, default=Path("models"), metavar="DIR",
        help="model repository (default ./models)",
    )  # fmt: skip
    parser.add_argument(
        "--version", type=int, metavar="N", help="version to profile (default: the highest)"
    )
    parser.add_argument(
        "--device", default="cpu", help="'cpu' (default) or 'cuda:N'; --write sets the "
        "[[instances]] line of this device",
    )  # fmt: skip
    parser.add_argument(
        "--latency-target-ms", type=float, metavar="MS", help="latency a request may take, "
        "queue wait and compute (default: max(10 x batch-1 latency, 5 ms))",
    )  # fmt: skip
    parser.add_argument(
        "--layouts", metavar="CxT,...", help="instance layouts to measure, e.g. 1x2,2x1 "
        "(default on CPU: every count x threads using all the cores, count a power of two; "
        "on a GPU: 1 instance)",
    )  # fmt: skip
    parser.add_argument(
        "--max-batch-size", type=int, metavar="N", help="largest batch size to measure "
        f"(default {DEFAULT_MAX_BATCH_SIZE}); powers of two up to it are measured, with the "
        "config's preferred sizes and max_batch_size",
    )  # fmt: skip
    parser.add_argument(
        "--sequence-length", type=int, metavar="N", help="length of variable non-batch axes "
        f"(token sequences): default {DEFAULT_SEQUENCE_LENGTH}, or the [tokenizer] "
        "max_length if lower; the full length is the worst case",
    )  # fmt: skip
    parser.add_argument(
        "--data", type=Path, metavar="FILE", help="real inputs (.npy for a single input, .npz "
        "one array per input) instead of synthetic ones; batches repeat its rows",
    )  # fmt: skip
    parser.add_argument(
        "--window-s", type=float, default=0.2, metavar="S",
        help="seconds per timing window (default 0.2)",
    )  # fmt: skip
    parser.add_argument(
        "--max-seconds-per-point", type=float, default=8.0, metavar="S", help="give up waiting "
        "for three windows within 5%% of each other after this long (default 8)",
    )  # fmt: skip
    parser.add_argument(
        "--passes", type=int, default=2, metavar="N", help="measure every point N times, in "
        "alternating orders, and keep its least disturbed (fastest) pass (default 2)",
    )  # fmt: skip
    parser.add_argument(
        "--out", type=Path, metavar="DIR", help="where to write profile.md, profile.json and "
        "profile.png (default ./profile-<model>)",
    )  # fmt: skip
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG plot")
    parser.add_argument(
        "--json", action="store_true", help="print the JSON document instead of the table "
        "(progress goes to stderr either way)",
    )  # fmt: skip
    parser.add_argument(
        "--write", action="store_true", help="put the recommendation into the model's "
        "config.toml, keeping comments and other keys",
    )  # fmt: skip
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    try:
        return _profile(args)
    except (ProfileError, TuningError, OptimizeError) as exc:
        print(f"batchserve profile: error: {exc}", file=sys.stderr)
        return EXIT_ERROR


def _layouts(text: str | None, device: str, cores: int) -> tuple[Layout, ...]:
    from app.tuning.measure import default_layouts

    if text is None:
        return default_layouts(device, cores)
    try:
        layouts = tuple(dict.fromkeys(Layout.parse(part) for part in text.split(",")))
    except ValueError as exc:
        raise ProfileError(f"--layouts: {exc}") from None
    return layouts


def _profile(args: argparse.Namespace) -> int:
    import onnxruntime as ort

    from app.errors import ModelLoadError
    from app.optimize import versions
    from app.optimize.errors import require
    from app.profile import report
    from app.profile.write import write_config
    from app.repository.autotune import model_limits
    from app.repository.config import load_model_config
    from app.tensors import fixed_batch_input
    from app.tuning import measure
    from app.tuning.plan import plan
    from app.tuning.timing import Stability

    if args.device != "cpu" and not re.fullmatch(r"cuda:\d+", args.device):
        raise ProfileError(f"--device {args.device!r}: use 'cpu' or 'cuda:N' (N = GPU index)")
    for name in ("max_batch_size", "sequence_length"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ProfileError(f"--{name.replace('_', '-')} must be at least 1")
    if args.window_s <= 0 or args.max_seconds_per_point <= 0 or args.passes < 1:
        raise ProfileError("--window-s and --max-seconds-per-point must be > 0, --passes >= 1")
    if args.latency_target_ms is not None and args.latency_target_ms <= 0:
        raise ProfileError("--latency-target-ms must be > 0")
    # Fail on a missing optional package before minutes of measuring, not after.
    if not args.no_plot:
        require("matplotlib", "the profile plot (or pass --no-plot)")
    if args.write:
        require("tomlkit", "--write (editing config.toml with its comments kept)")

    directory = versions.model_dir(args.model_repository, args.model)
    version, path = versions.source_path(directory, args.version)
    try:
        config = load_model_config(directory)
    except ModelLoadError as exc:
        raise ProfileError(f"{exc}; fix the config first") from None
    cores = measure.cpu_cores()
    layouts = _layouts(args.layouts, args.device, cores)
    specs = measure.open_instances(path, args.device, Layout(1, 1))[0].inputs
    fixed = fixed_batch_input(specs)
    batching = fixed is None
    variable = any(d < 0 for s in specs for d in s.shape[1:])
    sequence_length = None
    if args.data is not None:
        from app.optimize.data import load_dataset

        dataset = load_dataset(args.data, None, specs)
        feeds_for = dataset.batch
        data = str(args.data)
    else:
        if variable:
            sequence_length = args.sequence_length or model_limits(config).sequence_length
        length = sequence_length or 1

        def feeds_for(size: int) -> dict[str, Any]:
            return measure.synthetic_feeds(specs, size if batching else None, length)

        data = "synthetic (floats uniform in [0, 1), integers 1)"
    if batching:
        extra = [*config.batching.preferred_batch_sizes, config.max_batch_size or 0]
        sizes = measure.batch_sizes(args.max_batch_size or DEFAULT_MAX_BATCH_SIZE, extra)
    else:
        sizes = (fixed.shape[0] if fixed is not None and fixed.shape else 1,)
    settings = measure.ProfileSettings(
        device=args.device,
        layouts=layouts,
        batch_sizes=sizes,
        stop_above_ms=args.latency_target_ms,
        window_s=args.window_s,
        stability=Stability(max_seconds=args.max_seconds_per_point),
        passes=args.passes,
    )
    print(
        f"profiling {args.model} v{version} on {args.device} ({cores} cores): layouts "
        f"{', '.join(x.label for x in layouts)}; batch sizes {', '.join(map(str, sizes))}"
        + (f"; sequence length {sequence_length}" if sequence_length else ""),
        file=sys.stderr,
        flush=True,
    )

    def progress(point: Any) -> None:
        print(
            f"  {point.layout.label} batch {point.batch_size}: {point.latency_ms_p50:.3f} ms "
            f"p50, {point.throughput_sps:,.0f} samples/s ({point.windows} windows"
            f"{'' if point.stable else ', not settled'})",
            file=sys.stderr,
            flush=True,
        )

    def pass_started(number: int) -> None:
        if settings.passes > 1:
            order = "in reverse order, " if number > 1 else ""
            print(f" pass {number} of {settings.passes} ({order}the fastest pass of each point "
                  "counts):", file=sys.stderr, flush=True)  # fmt: skip

    result = measure.profile(path, settings, feeds_for, progress, pass_started)
    recommendation = plan(result.points, batching=batching, device=args.device,
                          target_ms=args.latency_target_ms)  # fmt: skip
    if args.device == "cpu":
        from app.tuning.low_load import for_lone_requests

        print(" lone requests: spinning, and a low-load-only instance", file=sys.stderr)
        recommendation = for_lone_requests(path, recommendation, result.points, feeds_for,
                                           settings)  # fmt: skip
    context = report.Context(
        model=args.model,
        version=version,
        device=args.device,
        cores=cores,
        onnxruntime=ort.__version__,
        sequence_length=sequence_length,
        data=data,
    )
    document = report.to_dict(context, result, recommendation)
    markdown = report.to_markdown(context, result, recommendation)
    out = args.out or Path(f"profile-{args.model}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "profile.json").write_text(report.to_json(document), encoding="utf-8")
    (out / "profile.md").write_text(markdown, encoding="utf-8")
    written = ["profile.md", "profile.json"]
    if not args.no_plot:
        report.plot(context, result, recommendation, out / "profile.png")
        written.append("profile.png")
    if args.write:
        config_path = write_config(directory, recommendation, args.device)
        document["written_to"] = str(config_path)
    print(report.to_json(document) if args.json else markdown, end="")
    notes = [f"wrote {', '.join(str(out / name) for name in written)}"]
    if args.write:
        notes.append(f"wrote the recommendation into {document['written_to']}")
    print("\n".join(notes), file=sys.stderr if args.json else sys.stdout)
    return 0

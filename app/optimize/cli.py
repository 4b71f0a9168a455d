"""`batchserve optimize quantize|prune|evaluate`: argument parsing and error handling; the
commands' flows are app.optimize.commands.

Exit status: 0 done; 1 an error (the message says what to fix); 2 bad arguments; 3 the
variant missed the accuracy guard and was not written.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.optimize import commands as flows
from app.optimize.errors import GuardMissed, OptimizeError

EXIT_ERROR = 1


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
        action=argparse.BooleanOptionalAction,
        default=None,
        help="7-bit weights, which cannot saturate the int8 kernels of x86 CPUs without VNNI "
        "(default: on exactly where this CPU lacks VNNI; the report says which)",
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
    quantize.set_defaults(handler=_guarded(flows.quantize))

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
        help="share of hidden units (structured) or weights (unstructured) to remove, 0..1; "
        "without it, the highest structured sparsity within the guard's budget "
        "(--max-drop, --min-cosine) is searched for on --data",
    )
    prune.add_argument(
        "--calibration",
        type=Path,
        metavar="FILE",
        help="representative inputs (.npy/.npz) whose activations rank units and refit the "
        "next layer (default: --data, which flatters the accuracy)",
    )
    prune.add_argument(
        "--importance",
        choices=["magnitude", "activation", "surgeon"],
        default="magnitude",
        help="how units are ranked: weight magnitude; |activations| x |outgoing weights| on "
        "the calibration data; or Optimal Brain Surgeon (the error a unit's loss leaves once "
        "the others are refitted). The last two need calibration data",
    )
    prune.add_argument(
        "--ranking",
        choices=["layer", "global"],
        default="layer",
        help="remove the same share at every layer, or rank units across layers",
    )
    prune.add_argument(
        "--reconstruct",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="refit each pruned layer's successor by least squares on the calibration "
        "activations (default: on when --calibration is given)",
    )
    _add_variant_arguments(prune)
    prune.set_defaults(handler=_guarded(flows.prune))

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
    evaluate.set_defaults(handler=_guarded(flows.evaluate))


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
        "--max-accuracy-drop", "--max-drop", type=float, metavar="POINTS", help="largest "
        "accuracy loss allowed, in percentage points (default 1, with --labels)",
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
            return flows.EXIT_GUARD
        except OptimizeError as exc:
            print(f"batchserve optimize: error: {exc}", file=sys.stderr)
            return EXIT_ERROR

    return run


# -- the commands --------------------------------------------------------------------------

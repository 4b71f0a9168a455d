"""The `batchserve` command line.

`batchserve serve [--model-repository DIR] [--host H] [--port P]`; every option also reads
BATCHSERVE_* from the environment (app.settings). `batchserve optimize quantize|prune|evaluate`
makes and measures optimized versions of a model (app.optimize.cli). `batchserve profile MODEL`
measures it per batch size and instance layout and recommends its batching (app.profile.cli).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from app.optimize.cli import add_parser as add_optimize_parser
from app.profile.cli import add_parser as add_profile_parser

if TYPE_CHECKING:
    from app.settings import Settings

log = logging.getLogger("batchserve")


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Flags given on the command line override BATCHSERVE_* variables and defaults."""
    from app.settings import Settings

    overrides: dict[str, Any] = {
        key: value
        for key, value in {
            "model_repository": args.model_repository,
            "host": args.host,
            "port": args.port,
            "grpc_port": args.grpc_port,
            "log_level": args.log_level,
            "metrics_port": args.metrics_port,
            "repository_poll_s": args.repository_poll_s,
            "model_memory": args.model_memory,
            "preload": args.preload,
        }.items()
        if value is not None
    }
    return Settings(**overrides)


def _serve(args: argparse.Namespace) -> int:
    # The server is imported here, not at the top: worker processes that multiprocessing
    # starts (app.api.json_pool) re-import this console script, and should not pay for
    # importing the whole server (a noticeable amount of core time each).
    import uvicorn

    from app.api.guard import ConnectionGuard, HttpLimits, raise_open_files_limit
    from app.api.protocol import guarded_protocol
    from app.main import create_app
    from app.runtime.memory import fix_mmap_threshold
    from app.server import BatchserveServer
    from app.startup import StartupError, bind_http, check_free, check_repository, read_settings

    try:
        settings = read_settings(lambda: settings_from_args(args))
        check_repository(settings)
        check_free(settings)
        http_socket = bind_http(settings)  # the port is ours before any model loads
    except StartupError as exc:
        print(f"batchserve: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    open_files = raise_open_files_limit()
    fix_mmap_threshold(settings.malloc_mmap_threshold)  # before any model is loaded
    application = create_app(settings)
    metrics = application.service.metrics
    guard = ConnectionGuard(
        HttpLimits.from_settings(settings, open_files), on_refusal=metrics.http_refused
    )
    metrics.watch_connections(lambda: guard.open)
    log.info(
        "HTTP front: at most %d connections for the API, headers within %g s, bodies within "
        "%g s (+1 s per %d bytes)", guard.limits.max_connections, settings.header_timeout_s,
        settings.body_timeout_s, settings.min_body_bytes_per_s,
    )  # fmt: skip
    config = uvicorn.Config(
        application.asgi,
        http=guarded_protocol(guard),
        timeout_keep_alive=settings.keep_alive_timeout_s,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,  # one log line per request costs more than small models' inference
        lifespan="on",
        timeout_graceful_shutdown=settings.drain_timeout_s,
        proxy_headers=False,  # nothing here uses the client address; saves work per request
        server_header=False,
    )
    server = BatchserveServer(config, application.service)
    server.run(sockets=[http_socket])
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="batchserve", description="Serve ONNX models over the KServe v2 protocol."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve",
        help="serve a model repository",
        description="Serve every model in a repository. Each option can also be set with the "
        "environment variable BATCHSERVE_<OPTION>, e.g. BATCHSERVE_PORT=9000.",
    )
    serve.add_argument(
        "--model-repository", metavar="DIR", help="model repository (default ./models)"
    )
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on, 0 for any (default 8000)")
    serve.add_argument(
        "--grpc-port", type=int, help="port of the gRPC service, 0 to turn it off (default 8001)"
    )
    serve.add_argument(
        "--metrics-port",
        type=int,
        help="also serve /metrics on this port, from a thread of its own (as Triton's 8002)",
    )
    serve.add_argument(
        "--repository-poll-s",
        type=float,
        metavar="SECONDS",
        help="scan the repository this often: load new or changed models, unload removed ones",
    )
    serve.add_argument(
        "--model-memory",
        metavar="BYTES",
        help="memory budget for loaded models (8GiB, or 0.5 of the container's limit): models "
        "load on their first request and idle ones, those asked least per byte, make room",
    )
    serve.add_argument(
        "--preload",
        metavar="MODEL",
        action="append",
        help="under --model-memory, load this model at start and never unload it (repeatable)",
    )
    serve.add_argument(
        "--log-level", choices=["critical", "error", "warning", "info", "debug"], default=None
    )
    serve.set_defaults(handler=_serve)
    add_optimize_parser(commands)
    add_profile_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = args.handler
    result: int = handler(args)
    return result

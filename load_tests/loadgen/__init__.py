"""Load generators for any KServe v2 server: HTTP (rest.py, JSON or binary tensors) and gRPC
(grpc_client.py), closed or open loop; targets.py points a bench at either, and
locustfile.py drives Locust. `python -m load_tests.loadgen --help` is the command line.

The HTTP generator's names are re-exported here, as the benches and tests use them.
"""

from load_tests.loadgen.rest import (
    BINARY_HEADER,
    LoadGenerator,
    Loops,
    PreparedRequest,
    Result,
    build_request,
    client_session,
    prepare_request,
    sample_inputs,
    settle,
)

__all__ = [
    "BINARY_HEADER",
    "LoadGenerator",
    "Loops",
    "PreparedRequest",
    "Result",
    "build_request",
    "client_session",
    "prepare_request",
    "sample_inputs",
    "settle",
]

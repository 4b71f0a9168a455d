"""Schemathesis against a real server: every operation of its own OpenAPI document, with
generated valid and invalid requests. No answer may be a 500, and every answer must be one
the document declares, with the declared content type and body schema."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from app.main import create_app
from app.settings import Settings
from testing.server_process import ServerProcess
from tests.conftest import MODELS

pytestmark = pytest.mark.integration

EXAMPLES = 25  # per operation and mode: 16 operations x 2 modes x 25, a few seconds in all

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,  # a request the schema forbids must not be answered 2xx
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root: Path = tmp_path_factory.mktemp("fuzz") / "repository"
    for name in ("digits", "spare"):
        shutil.copytree(MODELS / "digits", root / name, ignore=shutil.ignore_patterns("*.py"))
    process = ServerProcess(root, env={"BATCHSERVE_MODEL_CONTROL": "true"})
    yield process
    process.stop()


#: The document, built in-process to list the operations; the test sends to the real server.
DOCUMENT = create_app(Settings(model_repository=MODELS)).api.openapi()
API = schemathesis.openapi.from_dict(DOCUMENT)
OPERATIONS = {
    f"{op.method.upper()} {op.path}": op for op in (r.ok() for r in API.get_all_operations())
}


def test_the_served_document_is_the_one_fuzzed(server: ServerProcess) -> None:
    assert httpx.get(f"{server.url}/openapi.json").json() == DOCUMENT
    assert {"POST /v2/models/{model_name}/infer", "GET /v2/health/ready"} <= set(OPERATIONS)


#: Negative cases need something to break: only the operations with a body (a string path
#: parameter has no invalid value).
CASES = [(label, GenerationMode.POSITIVE) for label in sorted(OPERATIONS)] + [
    (label, GenerationMode.NEGATIVE)
    for label, operation in sorted(OPERATIONS.items())
    if operation.definition.raw.get("requestBody")
]


@pytest.mark.parametrize(("label", "mode"), CASES)
def test_every_operation_answers_as_documented(
    server: ServerProcess, label: str, mode: GenerationMode
) -> None:
    operation = OPERATIONS[label]
    # Random model names would only ever meet 404 (the access tests cover those): name a
    # served model so that the bodies and parameters are what gets fuzzed. Load and unload
    # get a model of their own, so that unloading it leaves the others serving.
    model = "spare" if operation.path.startswith("/v2/repository/") else "digits"
    names = {"model_name": model, "model_version": "1"}
    path = {k: v for k, v in names.items() if f"{{{k}}}" in operation.path}

    @given(case=operation.as_strategy(generation_mode=mode, path_parameters=path or None))
    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
    def fuzz(case: schemathesis.Case) -> None:
        case.call_and_validate(base_url=server.url, checks=CHECKS, timeout=10)

    fuzz()

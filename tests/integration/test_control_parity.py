"""REST and gRPC answer every operation alike: the control plane's own list of operations
(app.dataplane.access.Operation) is run through both transports of one real server, with no
token, a wrong one and the one the access policy asks for, and for an unknown model; an
operation missing on either transport fails the test, as does any difference in the answer,
the status or the message."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from app.dataplane.access import POLICY, Access, Operation
from testing.server_process import ServerProcess
from tests.conftest import MODELS

pytestmark = pytest.mark.integration

API, MANAGEMENT = "api-token", "management-token"
#: REST statuses as the gRPC codes the error table pairs them with (app.errors).
HTTP_AS_GRPC = {200: "OK", 400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED",
                403: "PERMISSION_DENIED", 404: "NOT_FOUND", 503: "UNAVAILABLE"}  # fmt: skip
SAMPLE = np.load(MODELS / "digits" / "data" / "test_x.npy")[:2].astype(np.float32)

#: (gRPC code name, the answer's comparable content or the error's message)
Outcome = tuple[str, Any]


@dataclass
class Transports:
    http: httpx.Client
    stub: pb_grpc.GRPCInferenceServiceStub

    def rest(self, method: str, path: str, token: str | None, **kwargs: Any) -> tuple[str, Any]:
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        response = self.http.request(method, path, headers=headers, **kwargs)
        code = HTTP_AS_GRPC[response.status_code]
        return code, response.json() if code == "OK" else response.json()["error"]

    def grpc(self, method: str, message: Any, token: str | None) -> tuple[str, Any]:
        metadata = () if token is None else (("authorization", f"Bearer {token}"),)
        try:
            return "OK", getattr(self.stub, method)(message, metadata=metadata, timeout=60)
        except grpc.RpcError as exc:
            return exc.code().name, exc.details()


def _metadata(m: Any) -> dict[str, Any]:
    tensors = [(t.name, t.datatype, [int(d) for d in t.shape]) for t in m.inputs]
    return {"name": m.name, "versions": list(m.versions), "platform": m.platform,
            "inputs": tensors}  # fmt: skip


def _rest_metadata(m: dict[str, Any]) -> dict[str, Any]:
    tensors = [(t["name"], t["datatype"], t["shape"]) for t in m["inputs"]]
    return {"name": m["name"], "versions": m["versions"], "platform": m["platform"],
            "inputs": tensors}  # fmt: skip


def _infer_rest(model: str) -> dict[str, Any]:
    return {"inputs": [{"name": "input", "shape": list(SAMPLE.shape), "datatype": "FP32",
                        "data": SAMPLE.ravel().tolist()}]}  # fmt: skip


def _infer_grpc(model: str) -> Any:
    tensor = pb.ModelInferRequest.InferInputTensor(
        name="input", datatype="FP32", shape=list(SAMPLE.shape)
    )
    return pb.ModelInferRequest(
        model_name=model, inputs=[tensor], raw_input_contents=[SAMPLE.tobytes()]
    )


def _label(raw: bytes) -> list[int]:
    return np.frombuffer(raw, np.int64).tolist()


@dataclass(frozen=True)
class Case:
    """One operation on `model` through each transport, answers made comparable."""

    rest: Callable[[Transports, str, str | None], Outcome]
    grpc: Callable[[Transports, str, str | None], Outcome]
    #: Whether asking about a model that does not exist is an error on both transports.
    model_errors: bool = True


def ok(outcome: Outcome, content: Callable[[Any], Any]) -> Outcome:
    code, answer = outcome
    return (code, content(answer)) if code == "OK" else outcome


CASES: dict[Operation, Case] = {
    Operation.SERVER_LIVE: Case(
        lambda t, m, k: ok(t.rest("GET", "/v2/health/live", k), lambda a: a["live"]),
        lambda t, m, k: ok(t.grpc("ServerLive", pb.ServerLiveRequest(), k), lambda a: a.live),
        model_errors=False,
    ),
    Operation.SERVER_READY: Case(
        lambda t, m, k: ok(t.rest("GET", "/v2/health/ready", k), lambda a: a["ready"]),
        lambda t, m, k: ok(t.grpc("ServerReady", pb.ServerReadyRequest(), k), lambda a: a.ready),
        model_errors=False,
    ),
    Operation.SERVER_METADATA: Case(
        lambda t, m, k: t.rest("GET", "/v2", k),
        lambda t, m, k: ok(
            t.grpc("ServerMetadata", pb.ServerMetadataRequest(), k),
            lambda a: {"name": a.name, "version": a.version, "extensions": list(a.extensions)},
        ),
        model_errors=False,
    ),
    Operation.MODEL_READY: Case(
        lambda t, m, k: ok(t.rest("GET", f"/v2/models/{m}/ready", k), lambda a: a["ready"]),
        lambda t, m, k: ok(
            t.grpc("ModelReady", pb.ModelReadyRequest(name=m), k), lambda a: a.ready
        ),
        model_errors=False,  # gRPC answers ready=false where REST answers 404
    ),
    Operation.MODEL_METADATA: Case(
        lambda t, m, k: ok(t.rest("GET", f"/v2/models/{m}", k), _rest_metadata),
        lambda t, m, k: ok(t.grpc("ModelMetadata", pb.ModelMetadataRequest(name=m), k), _metadata),
    ),
    Operation.MODEL_CONFIG: Case(
        lambda t, m, k: ok(
            t.rest("GET", f"/v2/models/{m}/config", k),
            lambda a: (a["name"], a["max_batch_size"], [i["name"] for i in a["input"]]),
        ),
        lambda t, m, k: ok(
            t.grpc("ModelConfig", pb.ModelConfigRequest(name=m), k),
            lambda a: (a.config.name, a.config.max_batch_size, [i.name for i in a.config.input]),
        ),
    ),
    Operation.MODEL_STATISTICS: Case(
        lambda t, m, k: ok(
            t.rest("GET", f"/v2/models/{m}/stats", k),
            lambda a: [(s["name"], s["version"]) for s in a["model_stats"]],
        ),
        lambda t, m, k: ok(
            t.grpc("ModelStatistics", pb.ModelStatisticsRequest(name=m), k),
            lambda a: [(s.name, s.version) for s in a.model_stats],
        ),
    ),
    Operation.REPOSITORY_INDEX: Case(
        lambda t, m, k: ok(
            t.rest("POST", "/v2/repository/index", k, json={"ready": True}),
            lambda a: sorted((r["name"], r["state"]) for r in a),
        ),
        lambda t, m, k: ok(
            t.grpc("RepositoryIndex", pb.RepositoryIndexRequest(ready=True), k),
            lambda a: sorted((r.name, r.state) for r in a.models),
        ),
        model_errors=False,
    ),
    Operation.MODEL_LOAD: Case(
        lambda t, m, k: t.rest("POST", f"/v2/repository/models/{m}/load", k),
        lambda t, m, k: ok(
            t.grpc("RepositoryModelLoad", pb.RepositoryModelLoadRequest(model_name=m), k),
            lambda a: {},
        ),
    ),
    Operation.MODEL_UNLOAD: Case(
        lambda t, m, k: t.rest("POST", f"/v2/repository/models/{m}/unload", k),
        lambda t, m, k: ok(
            t.grpc("RepositoryModelUnload", pb.RepositoryModelUnloadRequest(model_name=m), k),
            lambda a: {},
        ),
    ),
    Operation.INFER: Case(
        lambda t, m, k: ok(
            t.rest("POST", f"/v2/models/{m}/infer", k, json=_infer_rest(m)),
            lambda a: a["outputs"][0]["data"],
        ),
        lambda t, m, k: ok(
            t.grpc("ModelInfer", _infer_grpc(m), k), lambda a: _label(a.raw_output_contents[0])
        ),
    ),
}

#: The model each operation is asked about: load and unload take the spare copy.
TARGET = {Operation.MODEL_LOAD: "spare", Operation.MODEL_UNLOAD: "spare"}


@pytest.fixture(scope="module")
def transports(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Transports]:
    root = tmp_path_factory.mktemp("parity")
    for name in ("digits", "spare"):
        shutil.copytree(MODELS / "digits", root / name, ignore=shutil.ignore_patterns("*.py"))
    (root / "broken" / "1").mkdir(parents=True)
    (root / "broken" / "1" / "model.onnx").write_bytes(b"not a model")
    env = {
        "BATCHSERVE_MODEL_CONTROL": "true",
        "BATCHSERVE_API_TOKEN": API,
        "BATCHSERVE_MANAGEMENT_TOKEN": MANAGEMENT,
        "BATCHSERVE_STRICT_READINESS": "false",  # ready with one broken model among them
    }
    server = ServerProcess(root, env=env, grpc=True)
    channel = grpc.insecure_channel(server.grpc_target)
    try:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            yield Transports(http, pb_grpc.GRPCInferenceServiceStub(channel))
    finally:
        channel.close()
        server.stop()


def test_every_operation_has_a_case_on_both_transports() -> None:
    assert set(CASES) == set(Operation), "an operation the control plane lists is untested"


def token_for(access: Access) -> str | None:
    return {Access.OPEN: None, Access.API: API, Access.MANAGEMENT: MANAGEMENT}[access]


@pytest.mark.parametrize("operation", list(Operation), ids=lambda o: o.value)
def test_rest_and_grpc_answer_alike(transports: Transports, operation: Operation) -> None:
    case = CASES[operation]
    model = TARGET.get(operation, "digits")
    right = token_for(POLICY[operation])
    wrong = "not-a-token"
    for token in (None, wrong, right):
        rest = case.rest(transports, model, token)
        over_grpc = case.grpc(transports, model, token)
        assert rest == over_grpc, f"{operation.value} with token {token!r}"
        expected_ok = POLICY[operation] is Access.OPEN or token == right
        assert (rest[0] == "OK") == expected_ok, (operation.value, token, rest)
    if case.model_errors:
        rest = case.rest(transports, "nosuch", right)
        assert rest == case.grpc(transports, "nosuch", right)
        assert rest[0] == "NOT_FOUND", rest


def test_the_index_filters_on_ready_over_both(transports: Transports) -> None:
    everything = transports.rest("POST", "/v2/repository/index", API)[1]
    assert "broken" in {row["name"] for row in everything}
    ready = CASES[Operation.REPOSITORY_INDEX].rest(transports, "", API)
    assert ready[0] == "OK" and "broken" not in {name for name, _ in ready[1]}
    empty_body = transports.rest("POST", "/v2/repository/index", API, content=b"")
    assert empty_body[0] == "OK" and empty_body[1] == everything
    bad = transports.rest("POST", "/v2/repository/index", API, json={"ready": "yes"})
    assert bad[0] == "INVALID_ARGUMENT"

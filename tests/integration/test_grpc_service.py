"""The KServe v2 gRPC service's health, metadata, config, statistics and repository
(load and unload) against a real server, through tritonclient.grpc as Triton users call
them, and its tokens, taken from the authorization metadata."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from testing.server_process import ServerProcess
from testing.triton_models import write_repository
from tests.grpc_helpers import client as client  # fixture: a client of this module's server
from tests.grpc_helpers import server as server  # fixture: a server per test module
from tests.grpc_helpers import tensor

pytestmark = pytest.mark.integration


# -- metadata, config, statistics, repository ----------------------------------------------


def test_health_metadata_config_and_statistics(
    client: grpcclient.InferenceServerClient, server: ServerProcess
) -> None:
    assert client.is_server_live(headers={"test": "1"}) and client.is_server_ready()
    assert client.is_model_ready("simple") and not client.is_model_ready("nope")
    assert client.get_server_metadata().name == "batchserve"
    metadata = client.get_model_metadata("digits")
    assert [(i.name, i.datatype, list(i.shape)) for i in metadata.inputs] == [
        ("input", "FP32", [-1, 64])
    ]
    with pytest.raises(InferenceServerException) as unknown:
        client.get_model_metadata("wrong_model_name")
    assert "Request for unknown model" in unknown.value.message()
    config = client.get_model_config("digits", as_json=True)["config"]
    rest = httpx.get(f"{server.url}/v2/models/digits/config").json()
    assert config["name"] == rest["name"] == "digits"
    assert config["max_batch_size"] == rest["max_batch_size"] == 64
    assert [(i["name"], i["data_type"], [int(d) for d in i["dims"]]) for i in config["input"]] == [
        (i["name"], i["data_type"], i["dims"]) for i in rest["input"]
    ]
    assert config["instance_group"][0]["kind"] == "KIND_CPU"
    client.infer("simple", [tensor("INPUT0", np.zeros((1, 16), np.int32), "INT32"),
                            tensor("INPUT1", np.zeros((1, 16), np.int32), "INT32")])  # fmt: skip
    stats = client.get_inference_statistics("simple").model_stats
    assert len(stats) == 1 and stats[0].inference_count >= 1
    assert stats[0].inference_stats.success.count >= 1


def test_one_value_per_sample_is_declared_and_taken_as_triton_does(
    client: grpcclient.InferenceServerClient, server: ServerProcess
) -> None:
    """An input of shape [batch] shows as [-1, 1], dims [1] reshaped to [] (perf_analyzer
    builds its shapes from those), and is taken as [n, 1] or [n]."""
    metadata = client.get_model_metadata("score")
    assert [(i.name, list(i.shape)) for i in metadata.inputs] == [("user", [-1, 1])]
    rest = httpx.get(f"{server.url}/v2/models/score/config").json()
    assert (rest["input"][0]["dims"], rest["input"][0]["reshape"]) == ([1], {"shape": []})
    users = np.array([[2], [7], [10]], dtype=np.int64)
    for sent in (users, users.reshape(-1)):
        result = client.infer("score", [tensor("user", sent, "INT64")])
        np.testing.assert_array_equal(result.as_numpy("score"), [1.0, 3.5, 5.0])
    with pytest.raises(InferenceServerException, match=r"shape \[3, 2\] does not match"):
        client.infer("score", [tensor("user", np.zeros((3, 2), np.int64), "INT64")])


def test_load_and_unload(client: grpcclient.InferenceServerClient) -> None:
    names = {m.name for m in client.get_model_repository_index().models}
    assert {"digits", "simple", "held"} <= names
    client.unload_model("half")
    assert not client.is_model_ready("half")
    client.load_model("half")
    assert client.is_model_ready("half")
    with pytest.raises(InferenceServerException, match="failed to load 'wrong_model_name'"):
        client.load_model("wrong_model_name")


# -- tokens --------------------------------------------------------------------------------


def test_tokens_come_from_the_authorization_metadata(tmp_path: Path) -> None:
    write_repository(tmp_path)
    server = ServerProcess(tmp_path, grpc=True, env={"BATCHSERVE_API_TOKEN": "s3cret"})
    try:
        client = grpcclient.InferenceServerClient(server.grpc_target)
        assert client.is_server_live()  # health stays open
        with pytest.raises(InferenceServerException) as missing:
            client.get_model_metadata("simple")
        assert missing.value.status() == "StatusCode.UNAUTHENTICATED"
        with pytest.raises(InferenceServerException) as wrong:
            client.get_model_metadata("simple", headers={"authorization": "Bearer nope"})
        assert wrong.value.status() == "StatusCode.PERMISSION_DENIED"
        good = client.get_model_metadata("simple", headers={"authorization": "Bearer s3cret"})
        assert good.name == "simple"
        client.close()
    finally:
        server.stop()

"""Encoded images in, through a real server: a model with `[image]` takes JPEG and PNG files
as a BYTES input (binary extension, base64 in JSON, gRPC), answers Triton's classification
extension with its labels, and refuses hostile files with a 400 that says what is wrong,
leaving every other request's answer alone (tests/image_models.py's colour model)."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from PIL import Image

from testing.server_process import ServerProcess
from tests.image_models import encoded, plain, png_declaring, write_colour_model

pytestmark = pytest.mark.integration

#: The test server's pixel limit (BATCHSERVE_MAX_IMAGE_PIXELS): 1000 x 1000.
MAX_PIXELS = 1_000_000


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repository = tmp_path_factory.mktemp("images")
    write_colour_model(repository)
    process = ServerProcess(
        repository, env={"BATCHSERVE_MAX_IMAGE_PIXELS": str(MAX_PIXELS)}, grpc=True
    )
    yield process
    process.stop()


def binary_body(images: list[bytes], classes: int = 1) -> tuple[bytes, dict[str, str]]:
    """A v2 request with the images as one BYTES input in the binary data extension."""
    inputs = [httpclient.InferInput("image", [len(images)], "BYTES")]
    inputs[0].set_data_from_numpy(np.array(images, dtype=object), binary_data=True)
    outputs = [httpclient.InferRequestedOutput("logits", binary_data=False, class_count=classes)]
    body, header_length = httpclient.InferenceServerClient.generate_request_body(
        inputs, outputs=outputs
    )
    headers = {"Content-Type": "application/octet-stream"}
    if header_length is not None:
        headers["Inference-Header-Content-Length"] = str(header_length)
    return body, headers


def classify(server: ServerProcess, images: list[bytes]) -> httpx.Response:
    body, headers = binary_body(images)
    return httpx.post(
        f"{server.url}/v2/models/colours/infer", content=body, headers=headers, timeout=30
    )


def top1(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    (output,) = response.json()["outputs"]
    assert output["datatype"] == "BYTES"
    return [entry.split(":")[2] for entry in output["data"]]


def test_metadata_offers_the_image_input_beside_the_tensor(server: ServerProcess) -> None:
    metadata = httpx.get(f"{server.url}/v2/models/colours").json()
    assert [(i["name"], i["datatype"]) for i in metadata["inputs"]] == [
        ("image", "BYTES"),
        ("input", "FP32"),
    ]


@pytest.mark.parametrize("kind", ["PNG", "JPEG", "WEBP", "BMP"])
def test_encoded_images_are_decoded_as_what_they_show(server: ServerProcess, kind: str) -> None:
    colours = [(230, 20, 20), (20, 200, 30), (10, 20, 220), (15, 15, 15)]
    images = [encoded(plain(c), kind) for c in colours]
    assert top1(classify(server, images)) == ["red", "green", "blue", "dark"]


def test_classification_returns_the_top_k_with_scores_and_labels(server: ServerProcess) -> None:
    body, headers = binary_body([encoded(plain((230, 20, 20)))], classes=3)
    response = httpx.post(f"{server.url}/v2/models/colours/infer", content=body, headers=headers)
    (output,) = response.json()["outputs"]
    assert output["shape"] == [1, 3]
    scores = [float(entry.split(":")[0]) for entry in output["data"]]
    assert scores == sorted(scores, reverse=True)
    assert output["data"][0].endswith(":0:red")


def test_json_clients_send_images_base64_encoded(server: ServerProcess) -> None:
    data = base64.b64encode(encoded(plain((20, 200, 30)))).decode()
    body = {
        "inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [data]}],
        "outputs": [{"name": "logits", "parameters": {"classification": 1}}],
    }
    response = httpx.post(f"{server.url}/v2/models/colours/infer", json=body)
    assert top1(response) == ["green"]
    body["inputs"][0]["data"] = ["not base64!"]  # type: ignore[index]
    refused = httpx.post(f"{server.url}/v2/models/colours/infer", json=body)
    assert refused.status_code == 400 and "base64" in refused.json()["error"]


def test_tritonclient_grpc_sends_images_and_reads_class_count(server: ServerProcess) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_target)
    image = grpcclient.InferInput("image", [2], "BYTES")
    image.set_data_from_numpy(
        np.array([encoded(plain((10, 20, 220))), encoded(plain((230, 20, 20)), "JPEG")], object)
    )
    result = client.infer(
        "colours", [image], outputs=[grpcclient.InferRequestedOutput("logits", class_count=2)]
    )
    answer = result.as_numpy("logits")
    assert answer.shape == (2, 2)
    assert [bytes(row[0]).decode().split(":")[2] for row in answer] == ["blue", "red"]


def truncated_jpeg() -> bytes:
    whole = encoded(plain((230, 20, 20), (400, 300)), "JPEG", quality=95)
    return whole[: len(whole) // 2]


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"this is not an image", "not an image file"),
        (b"", "empty"),
        (truncated_jpeg(), "truncated or corrupt"),
        (png_declaring(40_000, 40_000), "1,600,000,000 pixels"),
        (encoded(plain((20, 20, 20), (1100, 1000))), "over the limit of 1,000,000 pixels"),
    ],
    ids=["not-an-image", "empty", "truncated", "bomb", "over-the-setting"],
)
def test_hostile_files_are_a_400_saying_what_is_wrong(
    server: ServerProcess, data: bytes, says: str
) -> None:
    response = classify(server, [encoded(plain((20, 200, 30))), data])
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert says in error and "image 1" in error, error


def sixteen_bit_grey() -> bytes:
    return encoded(Image.fromarray(np.full((40, 50), 3000, dtype=np.uint16)))


def rgba_red_on_transparent() -> bytes:
    image = Image.new("RGBA", (50, 40), (230, 20, 20, 255))
    return encoded(image)


@pytest.mark.parametrize(
    ("data", "shows"),
    [
        (encoded(Image.new("L", (50, 40), 20)), "dark"),
        (encoded(Image.new("CMYK", (50, 40), (0, 230, 230, 20)), "JPEG"), "red"),
        (sixteen_bit_grey(), "dark"),  # 3000 of 65535: dark, not clipped to white
        (rgba_red_on_transparent(), "red"),
        (encoded(Image.new("P", (50, 40), 0)), "dark"),
    ],
    ids=["grey", "cmyk-jpeg", "16-bit-png", "rgba", "palette"],
)
def test_unusual_but_valid_images_get_a_correct_answer(
    server: ServerProcess, data: bytes, shows: str
) -> None:
    assert top1(classify(server, [data])) == [shows]


def test_a_bad_image_fails_its_request_only(server: ServerProcess) -> None:
    """Good and hostile requests at once: every good one is answered right, every bad one
    is a 400, and the server goes on serving."""
    good = [encoded(plain((230, 20, 20))), encoded(plain((10, 20, 220)), "JPEG")]
    bad = [b"garbage", truncated_jpeg(), png_declaring(50_000, 50_000)]
    url = f"{server.url}/v2/models/colours/infer"

    async def send_all() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=30) as client:
            requests = []
            for round_index in range(6):
                for data in [*good, bad[round_index % len(bad)]]:
                    body, headers = binary_body([data])
                    requests.append(client.post(url, content=body, headers=headers))
            return await asyncio.gather(*requests)

    responses = asyncio.run(send_all())
    for index, response in enumerate(responses):
        kind = index % 3
        if kind == 2:
            assert response.status_code == 400, response.text
        else:
            assert top1(response) == [["red", "blue"][kind]]
    assert top1(classify(server, good)) == ["red", "blue"]


def test_clients_that_decode_themselves_still_send_the_tensor(server: ServerProcess) -> None:
    client = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
    tensor = httpclient.InferInput("input", [1, 3, 32, 32], "FP32")
    pixels = np.zeros((1, 3, 32, 32), dtype=np.float32)
    pixels[:, 2] = 0.9  # blue
    tensor.set_data_from_numpy(pixels)
    result = client.infer(
        "colours", [tensor], outputs=[httpclient.InferRequestedOutput("logits", class_count=1)]
    )
    assert result.as_numpy("logits")[0][0].decode().endswith(":2:blue")


def test_decoding_is_timed_as_a_stage(server: ServerProcess) -> None:
    classify(server, [encoded(plain((230, 20, 20)))])
    metrics = httpx.get(f"{server.url}/metrics").text
    assert 'stage="decode_image"' in metrics


def test_image_path_fixtures_exist(tmp_path: Path) -> None:
    model_dir = write_colour_model(tmp_path)
    assert (model_dir / "labels.txt").read_text().split() == ["red", "green", "blue", "dark"]


def test_sigterm_answers_the_images_still_being_decoded(tmp_path: Path) -> None:
    """24 requests of large images; SIGTERM once the first are decoded and held in the
    model's queue (a 20 s batching delay), while later ones are still being decoded: every
    one is answered at once (not after the delay), decoded after the signal or not, and the
    process exits 0."""
    model_dir = write_colour_model(tmp_path)
    config = (model_dir / "config.toml").read_text()
    (model_dir / "config.toml").write_text(
        config.replace("max_batch_size = 8", "max_batch_size = 32")
        + "threads = 1\n[batching]\nmax_queue_delay_ms = 20000\npreferred_batch_sizes = [32]\n"
    )
    server = ServerProcess(tmp_path, env={"BATCHSERVE_DRAIN_TIMEOUT_S": "30"})
    colours = [(230, 20, 20), (10, 20, 220)]
    bodies = [binary_body([encoded(plain(colours[i % 2], (3000, 2400)))]) for i in range(24)]

    async def scenario() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=32)
        async with httpx.AsyncClient(base_url=server.url, timeout=60, limits=limits) as client:
            sent = [
                asyncio.ensure_future(
                    client.post("/v2/models/colours/infer", content=body, headers=headers)
                )
                for body, headers in bodies
            ]
            for _ in range(1000):  # until decoded requests wait in the model's queue
                if server.metric("batchserve_queue_depth", model="colours") >= 1:
                    break
                await asyncio.sleep(0.01)
            else:
                raise AssertionError("no request reached the model's queue")
            signalled = time.monotonic()
            server.signal_term()
            answered = await asyncio.gather(*sent)
            assert time.monotonic() - signalled < 15  # not held for the 20 s delay
            return answered

    responses = asyncio.run(scenario())
    assert [top1(r)[0] for r in responses] == ["red", "blue"] * 12
    assert server.wait(timeout=30) == 0, server.log


def test_triton_config_lists_the_image_input_and_the_labels_file(server: ServerProcess) -> None:
    config = httpx.get(f"{server.url}/v2/models/colours/config").json()
    inputs = {i["name"]: i for i in config["input"]}
    assert inputs["image"]["data_type"] == "TYPE_STRING" and inputs["image"]["dims"] == [1]
    assert inputs["image"]["reshape"] == {"shape": []}  # one file per sample
    # Either the file or the float tensor: neither is required on its own.
    assert (
        inputs["image"]["optional"]
        and inputs["input"]["optional"]
        and inputs["input"]["dims"] == [3, 32, 32]
    )
    assert config["output"][0]["label_filename"] == "labels.txt"

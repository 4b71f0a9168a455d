"""The ImageNet classifier (models/effnet, `make image-model`; make test builds it) served
from raw photos: scikit-image's cat and coffee photos, sent as PNG and as JPEG through
tritonclient, get their unambiguous top-1 from the fp32 and the int8 version, read through
the classification extension with the ImageNet labels."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from PIL import Image

from app.repository.config import load_model_config
from app.repository.image import image_transform
from app.repository.samples import tuning_samples
from app.tensors import TensorSpec
from testing.server_process import ServerProcess
from tests.conftest import MODELS

MODEL_DIR = MODELS / "effnet"

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not (MODEL_DIR / "2" / "model.onnx").exists(),
        reason="models/effnet is not built: `make image-model` (make test does)",
    ),
]

#: ImageNet classes a test photo's top-1 must be one of.
EXPECTED = {
    "chelsea.png": {"tabby, tabby cat", "tiger cat", "Egyptian cat"},
    "coffee.png": {"espresso"},
}


def photo(name: str, kind: str) -> bytes:
    import skimage

    path = Path(skimage.__file__).parent / "data" / name
    if kind == "PNG":
        return path.read_bytes()
    out = io.BytesIO()
    Image.open(path).convert("RGB").save(out, format="JPEG", quality=90)
    return out.getvalue()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repository = tmp_path_factory.mktemp("effnet")
    (repository / "effnet").symlink_to(MODEL_DIR.resolve(), target_is_directory=True)
    process = ServerProcess(repository, grpc=True)
    yield process
    process.stop()


def labels_of(entries: np.ndarray) -> list[str]:
    return [bytes(e).decode().split(":", 2)[2] if isinstance(e, bytes) else e.split(":", 2)[2]
            for e in entries]  # fmt: skip


@pytest.mark.parametrize("version", ["1", "2"])
@pytest.mark.parametrize("kind", ["PNG", "JPEG"])
def test_photos_sent_raw_get_their_class_over_http(
    server: ServerProcess, version: str, kind: str
) -> None:
    client = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
    names = list(EXPECTED)
    images = httpclient.InferInput("image", [len(names)], "BYTES")
    images.set_data_from_numpy(np.array([photo(n, kind) for n in names], dtype=object))
    result = client.infer(
        "effnet", [images], model_version=version,
        outputs=[httpclient.InferRequestedOutput("logits", class_count=5)],
    )  # fmt: skip
    answers = result.as_numpy("logits")
    assert answers.shape == (len(names), 5)
    for name, row in zip(names, answers, strict=True):
        assert labels_of(row)[0] in EXPECTED[name], (name, labels_of(row))


def test_photos_sent_raw_get_their_class_over_grpc(server: ServerProcess) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_target)
    for name, expected in EXPECTED.items():
        image = grpcclient.InferInput("image", [1], "BYTES")
        image.set_data_from_numpy(np.array([photo(name, "JPEG")], dtype=object))
        result = client.infer(
            "effnet", [image], outputs=[grpcclient.InferRequestedOutput("logits", class_count=3)]
        )
        assert labels_of(result.as_numpy("logits")[0])[0] in expected


@pytest.mark.parametrize("version", ["1", "2"])
def test_the_readme_sample_request_is_a_cat(server: ServerProcess, version: str) -> None:
    body = (MODEL_DIR / "sample_request.json").read_bytes()
    url = f"{server.url}/v2/models/effnet/versions/{version}/infer"
    answer = httpx.post(url, content=body, headers={"Content-Type": "application/json"})
    assert answer.status_code == 200, answer.text
    (logits,) = answer.json()["outputs"]
    assert logits["shape"] == [1, 3]
    assert labels_of(np.array(logits["data"]))[0] in EXPECTED["chelsea.png"]


def test_tuning_at_load_measures_on_the_sample_photo_decoded_as_served() -> None:
    config = load_model_config(MODEL_DIR)
    specs = (TensorSpec("input", "FP32", (-1, 3, 224, 224)),)
    inputs = tuning_samples(config, MODEL_DIR)
    feeds = inputs.read(specs, (TensorSpec("logits", "FP32", (-1, 1000)),))
    assert inputs.label == "sample_request.json" and feeds is not None
    assert config.image is not None
    transform, _ = image_transform(config.image, specs, max_pixels=10**8)
    served = transform.decode((MODEL_DIR / "sample.jpg").read_bytes())
    np.testing.assert_array_equal(feeds["input"], served[None])

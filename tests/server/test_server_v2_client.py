"""A standard Open Inference Protocol v2 client (tritonclient) works against the server unchanged."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import numpy as np
import pytest
from server_helpers import ThreadedServer

pytestmark = pytest.mark.timeout(120)

http = pytest.importorskip("tritonclient.http", reason="tritonclient[http] is in the dev extra")


@pytest.fixture(scope="module")
def server(checkpoint) -> Iterator[ThreadedServer]:
    from deepdetect_server.config import ServerSettings

    settings = ServerSettings(checkpoint=checkpoint, device="cpu", host="127.0.0.1", model_name="faces",
                              shutdown_drain_s=0)
    srv = ThreadedServer(settings).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server: ThreadedServer):  # -> tritonclient.http.InferenceServerClient
    c = http.InferenceServerClient(server.url.removeprefix("http://"))
    yield c
    c.close()


def _single_scores(server: ThreadedServer, images: list[bytes]) -> list[float]:
    import httpx

    return [httpx.post(f"{server.url}/v1/detect", content=i, timeout=30).json()["score"] for i in images]


def test_health_and_metadata_through_the_client(client) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("faces")
    assert not client.is_model_ready("other")
    meta = client.get_model_metadata("faces")
    assert meta["name"] == "faces" and meta["inputs"][0]["datatype"] == "BYTES"
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]


def test_binary_bytes_input_and_default_binary_outputs(client, server: ThreadedServer, photos) -> None:
    images = [photos["astronaut"], photos["coffee"], photos["chelsea"]]
    inp = http.InferInput("image", [3], "BYTES")
    inp.set_data_from_numpy(np.array(images, dtype=np.object_), binary_data=True)
    result = client.infer("faces", [inp])
    scores = result.as_numpy("score")
    labels = result.as_numpy("label")
    assert scores.dtype == np.float32 and scores.shape == (3,)
    assert [lbl.decode() for lbl in labels] == [("fake" if s >= 0.5 else "real") for s in scores]
    assert np.allclose(scores, _single_scores(server, images), atol=1e-4)


def test_json_base64_input_and_json_outputs(client, server: ThreadedServer, photos) -> None:
    images = [photos["rocket"], photos["coffee"]]
    inp = http.InferInput("image", [2], "BYTES")
    inp.set_data_from_numpy(np.array([base64.b64encode(i).decode() for i in images], dtype=np.object_),
                            binary_data=False)
    outputs = [http.InferRequestedOutput("score", binary_data=False)]
    result = client.infer("faces", [inp], outputs=outputs, request_id="abc")
    assert result.get_response()["id"] == "abc"
    assert result.as_numpy("label") is None
    assert np.allclose(result.as_numpy("score"), _single_scores(server, images), atol=1e-4)


def test_client_sees_protocol_errors(client) -> None:
    from tritonclient.utils import InferenceServerException

    inp = http.InferInput("image", [1], "BYTES")
    inp.set_data_from_numpy(np.array([b"not an image"], dtype=np.object_), binary_data=True)
    with pytest.raises(InferenceServerException, match="unsupported image type"):
        client.infer("faces", [inp])
    with pytest.raises(InferenceServerException, match="unknown model"):
        client.infer("nope", [inp])

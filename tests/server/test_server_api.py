"""The server over a real socket: v1, v2 (OIP), probes, metrics, hardening, auth, concurrency."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import struct
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from deepdetect_server.checkpoint import load_checkpoint
from deepdetect_server.config import ServerSettings
from deepdetect_server.model import Detector
from deepdetect_server.preprocess import Preprocessor
from server_helpers import ThreadedServer, encode

pytestmark = pytest.mark.timeout(120)

KEY = "test-key-7f3a9c"
AUTH = {"Authorization": f"Bearer {KEY}"}
UPLOAD_MB = 1.0


@pytest.fixture(scope="module")
def server(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadedServer]:
    keys = tmp_path_factory.mktemp("auth") / "api-key"
    keys.write_text(f"other-key\n{KEY}\n")
    settings = ServerSettings(checkpoint=checkpoint, device="cpu", host="127.0.0.1", auth_mode="apiKey",
                              api_key_file=keys, max_upload_mb=UPLOAD_MB, max_image_pixels=1_000_000,
                              max_batch_size=8, max_delay_ms=10, max_batch_inputs=16, decode_workers=2,
                              shutdown_drain_s=0, shutdown_grace_s=5,
                              cache_enabled=False)  # these tests count batches: every image reaches the model
    srv = ThreadedServer(settings).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server: ThreadedServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def local_scores(checkpoint: Path):  # -> Callable[[list[bytes]], list[float]]
    """The same model and preprocessing, in-process: what the server must answer."""
    loaded = load_checkpoint(checkpoint)
    det = Detector(loaded.card, loaded.tensors, device="cpu")
    pre = Preprocessor(loaded.card, 10**9)
    return lambda images: det.predict([pre(d) for d in images])


def detect(client: httpx.Client, data: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
    return client.post("/v1/detect", files={"file": ("x.jpg", data, "image/jpeg")},
                       headers=AUTH if headers is None else headers)


def metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        starts = line.startswith(name + "{") or line.startswith(name + " ")
        if starts and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


# --- v1 ------------------------------------------------------------------------------------------------


def test_v1_multipart_and_raw_body(client: httpx.Client, photos: dict[str, bytes], local_scores) -> None:
    expected = local_scores([photos["astronaut"]])[0]
    multipart = detect(client, photos["astronaut"])
    raw = client.post("/v1/detect", content=photos["astronaut"],
                      headers={**AUTH, "Content-Type": "image/jpeg"})
    for resp in (multipart, raw):
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert set(body) == {"label", "score", "threshold", "model", "latency_ms"}
        assert body["score"] == pytest.approx(expected, abs=1e-5)
        assert body["label"] == ("fake" if body["score"] >= body["threshold"] else "real")
        assert body["model"]["name"] == "deepdetect" and body["model"]["digest"].startswith("sha256:")
        assert body["latency_ms"] > 0


def test_v1_serves_the_cards_reduced_decode(start_server, tmp_path: Path, photos: dict[str, bytes]) -> None:
    """`decode: reduced` is the card's declared path: the server scores those pixels, not a full decode."""
    from server_helpers import make_checkpoint

    ckpt = make_checkpoint(tmp_path / "reduced.safetensors", 64, decode="reduced")
    loaded = load_checkpoint(ckpt)
    det = Detector(loaded.card, loaded.tensors, device="cpu")
    full_card = loaded.card.model_copy(update={"decode": "full"})
    data = photos["astronaut"]  # 512 px: a 64 px input lets the JPEG decoder scale by 1/4
    reduced = Preprocessor(loaded.card, 10**9)(data)
    full = Preprocessor(full_card, 10**9)(data)
    assert not np.array_equal(reduced, full)  # the two paths really differ on this photo
    srv = start_server(checkpoint=ckpt, cache_enabled=False)
    with httpx.Client(base_url=srv.url, timeout=30) as c:
        body = c.post("/v1/detect", content=data, headers={"Content-Type": "image/jpeg"}).json()
    assert body["score"] == pytest.approx(det.predict([reduced])[0], abs=1e-6)


def test_v1_accepts_each_image_format(client: httpx.Client, photo_arrays: dict[str, np.ndarray]) -> None:
    arr = photo_arrays["chelsea"]
    for fmt in ("PNG", "WEBP", "GIF", "JPEG"):
        assert detect(client, encode(arr, fmt)).status_code == 200, fmt


def test_50_concurrent_requests_each_get_their_own_answer(
    client: httpx.Client, server: ThreadedServer, distinct_images: list[bytes], local_scores
) -> None:
    singles = [detect(client, img).json()["score"] for img in distinct_images]
    assert np.allclose(singles, local_scores(distinct_images), atol=1e-5)
    assert len({round(s, 6) for s in singles}) > 40  # the images really are distinct to the model
    before = client.get("/metrics").text

    async def burst() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=50)
        async with httpx.AsyncClient(base_url=server.url, timeout=60, limits=limits) as ac:
            return await asyncio.gather(*(
                ac.post("/v1/detect", content=img, headers=AUTH) for img in distinct_images))

    responses = asyncio.run(burst())
    assert [r.status_code for r in responses] == [200] * 50
    assert np.allclose([r.json()["score"] for r in responses], singles, atol=1e-4)
    after = client.get("/metrics").text
    batches = metric(after, "deepdetect_batch_size_count") - metric(before, "deepdetect_batch_size_count")
    images = metric(after, "deepdetect_batch_size_sum") - metric(before, "deepdetect_batch_size_sum")
    assert images == 50 and batches < 50  # they were really batched together


# --- hardening: each refusal gets its status, then the server keeps serving ---------------------------


def _bomb() -> bytes:
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", 20_000, 20_000, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(
        b"IEND", b"")


def _stream(total: int, chunk: int = 64 * 1024) -> Iterator[bytes]:
    sent = 0
    while sent < total:
        yield b"\xff\xd8\xff" + b"\0" * (chunk - 3)
        sent += chunk


def _multipart_stream(total: int) -> Iterator[bytes]:
    yield (b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="x.jpg"\r\n'
           b"Content-Type: image/jpeg\r\n\r\n")
    yield from _stream(total)
    yield b"\r\n--xyz--\r\n"


CASES = {
    "oversize": (lambda p: {"content": b"\xff\xd8\xff" + b"\0" * int(UPLOAD_MB * 1024 * 1024 + 10)}, 413),
    "oversize_streamed": (lambda p: {"content": _stream(int(UPLOAD_MB * 1024 * 1024 * 1.5))}, 413),
    "oversize_multipart_streamed": (lambda p: {
        "content": _multipart_stream(int(UPLOAD_MB * 1024 * 1024 * 1.5)),
        "headers": {**AUTH, "Content-Type": "multipart/form-data; boundary=xyz"}}, 413),
    "wrong_type": (lambda p: {"content": b"%PDF-1.7 not an image" * 10}, 415),
    "truncated": (lambda p: {"content": p["coffee"][: len(p["coffee"]) // 2]}, 400),
    "bomb": (lambda p: {"content": _bomb()}, 422),
    "empty": (lambda p: {"content": b""}, 400),
    "multipart_without_file": (lambda p: {"files": {"image": ("x.jpg", p["coffee"], "image/jpeg")}}, 400),
    "no_key": (lambda p: {"content": p["coffee"], "headers": {}}, 401),
    "wrong_key": (lambda p: {"content": p["coffee"], "headers": {"Authorization": "Bearer nope"}}, 401),
}


@pytest.mark.parametrize("case", list(CASES))
def test_refusals_get_their_status_and_the_server_keeps_serving(
    client: httpx.Client, photos: dict[str, bytes], case: str
) -> None:
    build, status = CASES[case]
    kwargs = build(photos)
    kwargs.setdefault("headers", AUTH)
    resp = client.post("/v1/detect", **kwargs)
    assert resp.status_code == status, resp.text
    assert resp.json()["error"]
    if status == 401:
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        assert KEY not in resp.text
    ok = detect(client, photos["rocket"])
    assert ok.status_code == 200, ok.text


# --- v2 / Open Inference Protocol ----------------------------------------------------------------------


def test_v2_probes_and_metadata(client: httpx.Client) -> None:
    assert client.get("/v2/health/live").status_code == 200  # no key needed for probes
    assert client.get("/v2/health/ready").json() == {"ready": True}
    assert client.get("/v2/models/deepdetect/ready").status_code == 200
    assert client.get("/v2").json()["extensions"] == ["binary_tensor_data"]
    assert client.get("/v2/models/deepdetect").status_code == 401
    meta = client.get("/v2/models/deepdetect", headers=AUTH).json()
    assert meta["name"] == "deepdetect" and meta["inputs"][0]["datatype"] == "BYTES"
    assert {o["name"] for o in meta["outputs"]} == {"score", "label"}
    missing = client.get("/v2/models/nope", headers=AUTH)
    assert missing.status_code == 404 and "unknown model" in missing.json()["error"]
    assert client.get("/v2/models/nope/ready").status_code == 404
    version = meta["versions"][0]
    assert client.get(f"/v2/models/deepdetect/versions/{version}", headers=AUTH).status_code == 200
    assert client.get("/v2/models/deepdetect/versions/99", headers=AUTH).status_code == 404


def test_v2_infer_json_batch_of_three(client: httpx.Client, photos: dict[str, bytes], local_scores) -> None:
    images = [photos["astronaut"], photos["coffee"], photos["chelsea"]]
    request = {"id": "req-1", "inputs": [{"name": "image", "shape": [3], "datatype": "BYTES",
                                          "data": [base64.b64encode(i).decode() for i in images]}]}
    resp = client.post("/v2/models/deepdetect/infer", json=request, headers=AUTH)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["model_name"] == "deepdetect" and body["id"] == "req-1"
    outputs = {o["name"]: o for o in body["outputs"]}
    assert outputs["score"]["datatype"] == "FP32" and outputs["score"]["shape"] == [3]
    assert outputs["label"]["datatype"] == "BYTES" and len(outputs["label"]["data"]) == 3
    assert np.allclose(outputs["score"]["data"], local_scores(images), atol=1e-4)
    singles = [detect(client, i).json()["score"] for i in images]
    assert np.allclose(outputs["score"]["data"], singles, atol=1e-4)


def test_v2_infer_binary_extension_as_tritonclient_sends_it(
    client: httpx.Client, photos: dict[str, bytes]
) -> None:
    """tritonclient: BYTES input as binary (u32 length prefixes), no outputs named -> binary outputs."""
    images = [photos["rocket"], photos["coffee"]]
    blob = b"".join(struct.pack("<I", len(i)) + i for i in images)
    header = json.dumps({"inputs": [{"name": "INPUT0", "shape": [2, 1], "datatype": "BYTES",
                                     "parameters": {"binary_data_size": len(blob)}}],
                         "parameters": {"binary_data_output": True}}).encode()
    resp = client.post("/v2/models/deepdetect/infer", content=header + blob,
                       headers={**AUTH, "Inference-Header-Content-Length": str(len(header)),
                                "Content-Type": "application/octet-stream"})
    assert resp.status_code == 200, resp.text
    n = int(resp.headers["Inference-Header-Content-Length"])
    meta = json.loads(resp.content[:n])
    rest = resp.content[n:]
    score_out, _ = meta["outputs"]
    size = score_out["parameters"]["binary_data_size"]
    scores = struct.unpack("<2f", rest[:size])
    labels, off = [], size
    while off < len(rest):
        (k,) = struct.unpack_from("<I", rest, off)
        labels.append(rest[off + 4 : off + 4 + k].decode())
        off += 4 + k
    encoded = [base64.b64encode(i).decode() for i in images]
    json_resp = client.post("/v2/models/deepdetect/infer", headers=AUTH, json={
        "inputs": [{"name": "x", "shape": [2], "datatype": "BYTES", "data": encoded}],
        "outputs": [{"name": "score"}]}).json()
    assert [o["name"] for o in json_resp["outputs"]] == ["score"]
    assert np.allclose(scores, json_resp["outputs"][0]["data"], atol=1e-6)
    assert all(lbl in ("real", "fake") for lbl in labels) and len(labels) == 2


@pytest.mark.parametrize(("body", "status", "message"), [
    ({"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "data": ["***"]}]}, 400, "base64"),
    ({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}]}, 400, "BYTES"),
    ({"inputs": [{"name": "x", "shape": [2], "datatype": "BYTES", "data": ["AAAA"]}]}, 400, "says 2"),
    ({"inputs": []}, 400, "exactly one input"),
    ({"inputs": [{"name": "x", "shape": [17], "datatype": "BYTES", "data": ["AAAA"] * 17}]}, 400, "limit"),
    ({"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES",
                  "data": [base64.b64encode(b"GIF89a").decode()]}]}, 400, "GIF"),
    ({"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES",
                  "data": [base64.b64encode(b"hello").decode()]}]}, 415, "unsupported"),
    ({"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "data": ["AAAA"]}],
      "outputs": [{"name": "logits"}]}, 400, "unknown output"),
])
def test_v2_errors_use_the_protocol_shape(
    client: httpx.Client, body: dict, status: int, message: str
) -> None:
    resp = client.post("/v2/models/deepdetect/infer", json=body, headers=AUTH)
    assert resp.status_code == status, resp.text
    assert message in resp.json()["error"]


def test_v2_infer_unknown_model_bad_json_and_auth(client: httpx.Client) -> None:
    ok_body = {"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "data": ["AAAA"]}]}
    assert client.post("/v2/models/other/infer", json=ok_body, headers=AUTH).status_code == 404
    bad = client.post("/v2/models/deepdetect/infer", content=b"{nope", headers=AUTH)
    assert bad.status_code == 400 and "JSON" in bad.json()["error"]
    assert client.post("/v2/models/deepdetect/infer", json=ok_body).status_code == 401
    assert client.get("/no/such/route").json() == {"error": "Not Found"}


# --- metrics -------------------------------------------------------------------------------------------


CONTRACT = ["requests_total", "request_duration_seconds", "queue_depth", "queue_wait_seconds", "batch_size",
            "inference_seconds", "predictions_total", "model_info", "runtime_info", "model_ready",
            "inflight_requests"]


def test_metrics_scrape_has_the_contract_names(client: httpx.Client, photos: dict[str, bytes]) -> None:
    detect(client, photos["coffee"])
    text = client.get("/metrics").text  # open: no key
    for name in CONTRACT:
        assert re.search(rf"^deepdetect_{name}(_bucket|_count|_sum)?[{{ ]", text, re.M), name
    assert metric(text, "deepdetect_model_ready") == 1
    assert metric(text, "deepdetect_requests_total", route="/v1/detect", status="200") >= 1
    assert 'architecture="test_efficientnet"' in text
    info = r'^deepdetect_runtime_info\{precision="fp32",runtime="(torch|onnxruntime)",threads="\d+"\} 1'
    assert re.search(info, text, re.M), text
    assert metric(text, "deepdetect_predictions_total") >= 1
    assert "gpu_memory_bytes{" not in text  # CUDA only
    assert "/no/such/route" not in text  # raw paths never become labels

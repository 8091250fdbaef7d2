"""KServe Open Inference Protocol v2 (REST), so standard v2 clients work unchanged.

Input: one BYTES tensor of shape [N] (or [N, 1]); each element is one encoded image or video (video when
the server enables it; each element is then judged like /v1/detect judges it). In JSON, BYTES
elements are strings, so images travel base64-encoded (a `{"b64": ...}` object is accepted too). With the
binary tensor data extension (header `Inference-Header-Content-Length`, `binary_data_size` on the input)
elements are raw bytes, each prefixed by its 4-byte little-endian length, as tritonclient sends them.
Outputs: `score` FP32 [N] and `label` BYTES [N] (`no_face` with a null/NaN score when a face card found
no face), as JSON, or binary when the request asks for it
(`binary_data` on an output or `binary_data_output` on the request: tritonclient's default).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import math
import struct
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from ..core import Core, Prediction
from ..errors import BadRequest
from ..services import Services
from .tenancy import authorize

HEADER_LENGTH = "inference-header-content-length"
OUTPUTS = ("score", "label")


def split_body(body: bytes, header_length: str | None) -> tuple[dict[str, Any], bytes]:
    """The JSON request object and, with the binary extension, the bytes that follow it."""
    if header_length is None:
        json_part, binary = body, b""
    else:
        try:
            n = int(header_length)
        except ValueError:
            raise BadRequest("Inference-Header-Content-Length must be an integer") from None
        if not 0 < n <= len(body):
            raise BadRequest("Inference-Header-Content-Length is larger than the body")
        json_part, binary = body[:n], body[n:]
    try:
        request = json.loads(json_part)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(f"request is not valid JSON: {exc}") from None
    if not isinstance(request, dict):
        raise BadRequest("request must be a JSON object")
    return request, binary


def _flatten(data: Any) -> list[Any]:
    if isinstance(data, list):
        return [x for item in data for x in _flatten(item)]
    return [data]


def _b64(element: Any, index: int) -> bytes:
    if isinstance(element, dict) and isinstance(element.get("b64"), str):
        element = element["b64"]
    if not isinstance(element, str):
        raise BadRequest(f"BYTES element {index} must be a base64 string")
    try:
        return base64.b64decode(element, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"BYTES element {index} is not valid base64") from None


def _unpack_bytes(buf: bytes) -> list[bytes]:
    """Binary BYTES tensor: <u32 little-endian length><bytes>, repeated."""
    out, off = [], 0
    while off < len(buf):
        if off + 4 > len(buf):
            raise BadRequest("binary BYTES tensor is truncated")
        (n,) = struct.unpack_from("<I", buf, off)
        off += 4
        if off + n > len(buf):
            raise BadRequest("binary BYTES tensor is truncated")
        out.append(buf[off : off + n])
        off += n
    return out


def extract_images(request: dict[str, Any], binary: bytes, max_inputs: int) -> list[bytes]:
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise BadRequest("expected exactly one input: a BYTES tensor of encoded images")
    tensor = inputs[0]
    if tensor.get("datatype") != "BYTES":
        raise BadRequest(f"input datatype must be BYTES, got {tensor.get('datatype')!r}")
    shape = tensor.get("shape")
    if (not isinstance(shape, list) or not shape or not all(isinstance(d, int) and d >= 0 for d in shape)
            or any(d != 1 for d in shape[1:])):
        raise BadRequest("input shape must be [N] (or [N, 1])")
    n = math.prod(shape)
    params = tensor.get("parameters") or {}
    if "binary_data_size" in params:
        size = params["binary_data_size"]
        if not isinstance(size, int) or size < 0 or size != len(binary):
            raise BadRequest("binary_data_size does not match the binary part of the body")
        images = _unpack_bytes(binary)
    else:
        if "data" not in tensor:
            raise BadRequest("input has neither 'data' nor binary_data_size")
        images = [_b64(e, i) for i, e in enumerate(_flatten(tensor["data"]))]
    if len(images) != n:
        raise BadRequest(f"input shape {shape} says {n} images, data holds {len(images)}")
    if n == 0:
        raise BadRequest("input holds no image")
    if n > max_inputs:
        raise BadRequest(f"{n} images in one request: the limit is {max_inputs}")
    return images


def requested_outputs(request: dict[str, Any]) -> list[tuple[str, bool]]:
    """(name, as_binary) for each output to return, in the requested order."""
    params = request.get("parameters") or {}
    default_binary = bool(params.get("binary_data_output", False))
    wanted = request.get("outputs")
    if not wanted:
        return [(name, default_binary) for name in OUTPUTS]
    out = []
    for spec in wanted:
        name = spec.get("name") if isinstance(spec, dict) else None
        if name not in OUTPUTS:
            raise BadRequest(f"unknown output {name!r}: this model has {list(OUTPUTS)}")
        binary = (spec.get("parameters") or {}).get("binary_data", default_binary)
        out.append((name, bool(binary)))
    return out


def parse_request(
    body: bytes, header_length: str | None, max_inputs: int
) -> tuple[dict[str, Any], list[tuple[str, bool]], list[bytes]]:
    request, binary = split_body(body, header_length)
    return request, requested_outputs(request), extract_images(request, binary, max_inputs)


def build_response(
    core: Core, request: dict[str, Any], preds: list[Prediction | None], outputs: list[tuple[str, bool]]
) -> Response:
    assert core.card is not None
    body: dict[str, Any] = {"model_name": core.settings.model_name, "model_version": core.card.version}
    if "id" in request:
        body["id"] = request["id"]
    tensors, blobs = [], []
    for name, as_binary in outputs:
        if name == "score":
            tensor: dict[str, Any] = {"name": "score", "datatype": "FP32", "shape": [len(preds)]}
            # No face found: no score (null in JSON, NaN in binary), label "no_face"
            values: list[Any] = [p.score if p is not None else None for p in preds]
            blob = struct.pack(f"<{len(preds)}f", *(math.nan if v is None else v for v in values))
        else:
            tensor = {"name": "label", "datatype": "BYTES", "shape": [len(preds)]}
            values = [p.label if p is not None else "no_face" for p in preds]
            blob = b"".join(struct.pack("<I", len(v.encode())) + v.encode() for v in values)
        if as_binary:
            tensor["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            tensor["data"] = values
        tensors.append(tensor)
    body["outputs"] = tensors
    if not blobs:
        return JSONResponse(body)
    header = json.dumps(body).encode()
    return Response(header + b"".join(blobs), media_type="application/octet-stream",
                    headers={"Inference-Header-Content-Length": str(len(header))})


def register(app: FastAPI, core: Core, services: Services) -> None:
    @app.get("/v2")
    async def server_metadata() -> JSONResponse:
        return JSONResponse({**core.server_metadata(), **services.metadata()})

    @app.get("/v2/models/{name}")
    async def model_metadata(name: str, request: Request) -> JSONResponse:
        authorize(request, core)
        core.check_model(name)
        return JSONResponse(core.model_metadata())

    @app.get("/v2/models/{name}/versions/{version}")
    async def model_version_metadata(name: str, version: str, request: Request) -> JSONResponse:
        authorize(request, core)
        core.check_model(name, version)
        return JSONResponse(core.model_metadata())

    async def infer(name: str, version: str | None, request: Request) -> Response:
        tenant = authorize(request, core)
        core.check_model(name, version)
        if services.limiter is not None:
            await services.limiter.admit(tenant)
        body = await request.body()
        # JSON + base64 of a large batch takes milliseconds: parse off the event loop.
        infer_request, outputs, images = await asyncio.to_thread(
            parse_request, body, request.headers.get(HEADER_LENGTH), core.settings.max_batch_inputs)
        if services.limiter is not None:
            await services.limiter.charge_media(tenant, sum(core.media_cost(d, {}) for d in images))
        preds = await core.predict_many(images)
        return build_response(core, infer_request, preds, outputs)

    @app.post("/v2/models/{name}/infer")
    async def infer_latest(name: str, request: Request) -> Response:
        return await infer(name, None, request)

    @app.post("/v2/models/{name}/versions/{version}/infer")
    async def infer_version(name: str, version: str, request: Request) -> Response:
        return await infer(name, version, request)

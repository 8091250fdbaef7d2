"""Shared helpers of the rollout tests (a uniquely named module: `conftest` is ambiguous across folders)."""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass, field
from typing import Any

S3_CREDS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}


def make_safetensors(payload: bytes = b"\x00" * 16, **metadata: str) -> bytes:
    """A valid one-tensor safetensors file (uint8 vector) built by hand: no torch/numpy needed."""
    n = len(payload)
    header: dict[str, Any] = {"w": {"dtype": "U8", "shape": [n], "data_offsets": [0, n]}}
    if metadata:
        header["__metadata__"] = metadata
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)  # the format pads the header to 8 bytes
    return struct.pack("<Q", len(raw)) + raw + payload


@dataclass
class Served:
    body: bytes
    etag: str | None = None  # sent verbatim (include quotes / W/)
    last_modified: float | None = None  # epoch seconds
    content_length: bool = True
    cut_at: int | None = None  # announce the full length, send this many bytes, hang up


@dataclass
class FileServer:
    """What the handler serves, mutable from the test while the server runs."""

    url: str
    files: dict[str, Served] = field(default_factory=dict)
    delay_s: float = 0.0
    fail_5xx: int = 0  # answer this many requests with 503 first
    head_not_allowed: bool = False
    require_token: str = ""
    requests: list[tuple[str, str]] = field(default_factory=list)

    def put(self, path: str, body: bytes, **kw: Any) -> None:
        self.files[path] = Served(body, **kw)

    def publish_sha256(self, path: str, *, style: str = "gnu") -> str:
        digest = hashlib.sha256(self.files[path].body).hexdigest()
        name = path.rsplit("/", 1)[-1]
        text = f"{digest}  {name}\n" if style == "gnu" else f"SHA256 ({name}) = {digest}\n"
        self.files[path + ".sha256"] = Served(text.encode())
        return digest


@dataclass
class Bucket:
    client: Any  # boto3 S3 client
    name: str
    endpoint: str

"""`deepdetect-server publish`: put a checkpoint where the operator's resolver looks, with its `.sha256`.

The bytes go first and the `<target>.sha256` sidecar (one line, `<hex>  <name>`) second, so a resolver that
reads the sidecar never announces bytes that are not there yet. Targets: `file://` (written to a temporary
name and renamed), `s3://BUCKET/KEY` (boto3; AWS_* environment, `--s3-endpoint` or AWS_ENDPOINT_URL), and
`http(s)://` (PUT; `DEEPDETECT_FETCH_TOKEN` or `..._USERNAME`/`..._PASSWORD` as `fetch` reads them).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit


class PublishError(RuntimeError):
    pass


def sidecar_text(hexdigest: str, name: str) -> str:
    return f"{hexdigest}  {name}\n"  # sha256sum's format; the resolver reads the first 64 hex chars


def publish(
    path: Path | str, target: str, *, s3_endpoint: str = "", timeout_s: float = 60.0
) -> dict[str, str]:
    data = Path(path).read_bytes()
    hexdigest = hashlib.sha256(data).hexdigest()
    parts = urlsplit(target)
    name = os.path.basename(parts.path) or "model.safetensors"
    side = sidecar_text(hexdigest, name).encode()
    if parts.scheme == "file":
        dest = Path(parts.netloc + parts.path) if parts.netloc else Path(parts.path)
        _write_atomic(dest, data)
        _write_atomic(dest.with_name(dest.name + ".sha256"), side)
    elif parts.scheme == "s3":
        from .s3 import make_s3_client

        key = parts.path.lstrip("/")
        if not parts.netloc or not key:
            raise PublishError(f"{target}: s3 targets take the form s3://BUCKET/KEY")
        client = make_s3_client(s3_endpoint or os.environ.get("AWS_ENDPOINT_URL"), os.environ, timeout_s)
        client.put_object(Bucket=parts.netloc, Key=key, Body=data)
        client.put_object(Bucket=parts.netloc, Key=key + ".sha256", Body=side)
    elif parts.scheme in ("http", "https"):
        _put(target, data, timeout_s)
        _put(
            urlunsplit((parts.scheme, parts.netloc, parts.path + ".sha256", parts.query, "")), side, timeout_s
        )
    else:
        raise PublishError(f"{target}: publish supports file://, s3:// and http(s):// targets")
    return {"target": target, "digest": f"sha256:{hexdigest}", "sidecar": target + ".sha256"}


def _write_atomic(dest: Path, data: bytes) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(dest)


def _put(url: str, body: bytes, timeout_s: float) -> None:
    import httpx

    headers = {"Content-Type": "application/octet-stream"}
    auth = None
    if os.environ.get("DEEPDETECT_FETCH_TOKEN"):
        headers["Authorization"] = f"Bearer {os.environ['DEEPDETECT_FETCH_TOKEN'].strip()}"
    elif os.environ.get("DEEPDETECT_FETCH_USERNAME"):
        auth = (os.environ["DEEPDETECT_FETCH_USERNAME"], os.environ.get("DEEPDETECT_FETCH_PASSWORD", ""))
    try:
        resp = httpx.put(url, content=body, headers=headers, auth=auth, timeout=timeout_s)
    except httpx.HTTPError as exc:
        raise PublishError(f"PUT {urlsplit(url).netloc}{urlsplit(url).path}: {exc}") from None
    if resp.status_code >= 300:
        raise PublishError(f"PUT {urlsplit(url).path} answered {resp.status_code}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=Path, help="the checkpoint to publish")
    parser.add_argument("target", help="file:///PATH, s3://BUCKET/KEY or https://HOST/PATH")
    parser.add_argument("--s3-endpoint", default="", help="custom S3 endpoint (MinIO and friends)")


def run(args: argparse.Namespace) -> int:
    try:
        print(json.dumps(publish(args.file, args.target, s3_endpoint=args.s3_endpoint)))
    except (PublishError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # boto3's errors: one line, no traceback
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0

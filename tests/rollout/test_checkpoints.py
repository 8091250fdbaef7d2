"""Checkpoint resolvers against real sources: files on disk, a local HTTP server, moto's S3 server."""

from __future__ import annotations

import hashlib
import os
import socket
from pathlib import Path

import pytest
from deepdetect_operator.api import CheckpointSpec
from deepdetect_operator.checkpoints import (
    CheckpointResolveError,
    parse_duration,
    redact_uri,
    resolve_checkpoint,
)
from rollout_helpers import S3_CREDS, Bucket, FileServer

PIN = "c" * 64


def spec(uri: str, **kw: str) -> CheckpointSpec:
    return CheckpointSpec(uri=uri, **kw)


def unchecked(uri: str) -> CheckpointSpec:
    """A spec the API validation would refuse: the resolver must still answer with a clear error."""
    return CheckpointSpec.model_construct(uri=uri)


# ---------------------------------------------------------------- durations


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("5m", 300.0), ("1h30m", 5400.0), ("90s", 90.0), ("0", 0.0), ("250ms", 0.25), ("1.5h", 5400.0),
     ("2h0m10s", 7210.0)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5", "m", "5x", "5m junk", "-5m", "1h 30m"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


def test_redact_uri_drops_secrets() -> None:
    assert redact_uri("https://user:pw@host/p/m.safetensors?X-Amz-Signature=s3cr3t#f") == (
        "https://host/p/m.safetensors"
    )


# ---------------------------------------------------------------- pin / pvc


async def test_pin_wins_without_touching_the_source() -> None:
    got = await resolve_checkpoint(spec("https://127.0.0.1:9/never-asked", sha256=PIN))
    assert (got.digest, got.source) == (f"sha256:{PIN}", "pin")


async def test_pvc_needs_a_pin() -> None:
    with pytest.raises(CheckpointResolveError, match=r"pvc:// checkpoints need spec.model.checkpoint.sha256"):
        await resolve_checkpoint(unchecked("pvc://models/detector.safetensors"))
    got = await resolve_checkpoint(spec("pvc://models/detector.safetensors", sha256=PIN))
    assert got.digest == f"sha256:{PIN}"


# ---------------------------------------------------------------- file://


async def test_file_digest_is_sha256_and_follows_content(tmp_path: Path) -> None:
    ckpt = tmp_path / "model.safetensors"
    ckpt.write_bytes(b"first version")
    got = await resolve_checkpoint(spec(f"file://{ckpt}"))
    assert got.digest == "sha256:" + hashlib.sha256(b"first version").hexdigest()
    assert got.source == "file"
    ckpt.write_bytes(b"second version, longer")
    got2 = await resolve_checkpoint(spec(f"file://{ckpt}"))
    assert got2.digest == "sha256:" + hashlib.sha256(b"second version, longer").hexdigest()


async def test_file_cache_hit_does_not_reread(tmp_path: Path) -> None:
    ckpt = tmp_path / "model.safetensors"
    ckpt.write_bytes(b"AAAA" * 1000)
    first = await resolve_checkpoint(spec(f"file://{ckpt}"))
    st = os.stat(ckpt)
    # Same size, same mtime, different bytes: only a cache hit can still answer the old digest.
    ckpt.write_bytes(b"BBBB" * 1000)
    os.utime(ckpt, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (await resolve_checkpoint(spec(f"file://{ckpt}"))).digest == first.digest
    # A real rewrite moves mtime: rehashed.
    os.utime(ckpt, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert (await resolve_checkpoint(spec(f"file://{ckpt}"))).digest == (
        "sha256:" + hashlib.sha256(b"BBBB" * 1000).hexdigest()
    )


async def test_file_missing_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointResolveError, match=r"checkpoint file not found: .*nope\.safetensors"):
        await resolve_checkpoint(spec(f"file://{tmp_path}/nope.safetensors"))
    with pytest.raises(CheckpointResolveError, match="is a directory"):
        await resolve_checkpoint(spec(f"file://{tmp_path}"))


# ---------------------------------------------------------------- http(s)://


async def test_http_etag_strong_and_weak_and_change(file_server: FileServer) -> None:
    file_server.put("/m.safetensors", b"v1", etag='"abc123"')
    uri = f"{file_server.url}/m.safetensors"
    got = await resolve_checkpoint(spec(uri))
    assert (got.digest, got.source) == ("etag:abc123", "http-etag")
    file_server.put("/m.safetensors", b"v1", etag='W/"abc123"')
    assert (await resolve_checkpoint(spec(uri))).digest == "etag:abc123"  # weak == strong
    file_server.put("/m.safetensors", b"v2", etag='"def456"')  # the file is replaced
    assert (await resolve_checkpoint(spec(uri))).digest == "etag:def456"
    assert ("HEAD", "/m.safetensors") in file_server.requests
    assert ("GET", "/m.safetensors") not in file_server.requests  # the operator never downloads


async def test_http_length_and_last_modified(file_server: FileServer) -> None:
    file_server.put("/m.safetensors", b"12345", last_modified=1_700_000_000)
    uri = f"{file_server.url}/m.safetensors"
    got = await resolve_checkpoint(spec(uri))
    assert (got.digest, got.source) == ("http:5-1700000000", "http-meta")
    file_server.put("/m.safetensors", b"123456", last_modified=1_700_000_100)
    assert (await resolve_checkpoint(spec(uri))).digest == "http:6-1700000100"


@pytest.mark.parametrize("style", ["gnu", "bsd"])
async def test_http_published_sha256_wins(file_server: FileServer, style: str) -> None:
    file_server.put("/m.safetensors", b"weights-v1", etag='"e1"')
    digest = file_server.publish_sha256("/m.safetensors", style=style)
    uri = f"{file_server.url}/m.safetensors"
    got = await resolve_checkpoint(spec(uri))
    assert (got.digest, got.source) == (f"sha256:{digest}", "http-sha256")
    file_server.put("/m.safetensors", b"weights-v2", etag='"e2"')
    digest2 = file_server.publish_sha256("/m.safetensors", style=style)
    assert (await resolve_checkpoint(spec(uri))).digest == f"sha256:{digest2}" != got.digest


async def test_http_checksum_file_without_digest_falls_back_to_etag(file_server: FileServer) -> None:
    file_server.put("/m.safetensors", b"w", etag='"e1"')
    file_server.put("/m.safetensors.sha256", b"<html>not a checksum</html>")
    assert (await resolve_checkpoint(spec(f"{file_server.url}/m.safetensors"))).digest == "etag:e1"


async def test_http_head_not_allowed_uses_get_headers(file_server: FileServer) -> None:
    file_server.head_not_allowed = True
    file_server.put("/m.safetensors", b"w" * 100_000, etag='"big"')
    assert (await resolve_checkpoint(spec(f"{file_server.url}/m.safetensors"))).digest == "etag:big"


async def test_http_404_is_an_error(file_server: FileServer) -> None:
    with pytest.raises(CheckpointResolveError, match=r"HTTP 404") as info:
        await resolve_checkpoint(spec(f"{file_server.url}/missing.safetensors?token=s3cr3t"))
    assert "s3cr3t" not in str(info.value)
    assert "\n" not in str(info.value)


async def test_http_without_validators_is_an_error(file_server: FileServer) -> None:
    file_server.put("/m.safetensors", b"w", content_length=False)
    with pytest.raises(CheckpointResolveError, match="no ETag"):
        await resolve_checkpoint(spec(f"{file_server.url}/m.safetensors"))


async def test_http_timeout_is_an_error(file_server: FileServer) -> None:
    file_server.put("/m.safetensors", b"w", etag='"e"')
    file_server.delay_s = 1.0
    with pytest.raises(CheckpointResolveError, match=r"timed out after 0.3s"):
        await resolve_checkpoint(spec(f"{file_server.url}/m.safetensors"), timeout_s=0.3)


async def test_http_5xx_is_retried(file_server: FileServer) -> None:
    file_server.put("/m.safetensors", b"w", etag='"e"')
    file_server.fail_5xx = 2
    assert (await resolve_checkpoint(spec(f"{file_server.url}/m.safetensors"))).digest == "etag:e"


async def test_http_connection_refused_is_an_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(CheckpointResolveError, match=rf"cannot reach http://127.0.0.1:{port}/m"):
        await resolve_checkpoint(spec(f"http://127.0.0.1:{port}/m"), timeout_s=1)


async def test_http_bearer_token_from_secret(file_server: FileServer) -> None:
    file_server.require_token = "tok3n"
    file_server.put("/m.safetensors", b"w", etag='"e"')
    uri = f"{file_server.url}/m.safetensors"
    with pytest.raises(CheckpointResolveError, match="HTTP 401") as info:
        await resolve_checkpoint(spec(uri))
    assert "tok3n" not in str(info.value)
    got = await resolve_checkpoint(spec(uri), secret_data={"token": "tok3n"})
    assert got.digest == "etag:e"


# ---------------------------------------------------------------- s3://


async def test_s3_etag_changes_on_overwrite(s3: Bucket) -> None:
    s3.client.put_object(Bucket=s3.name, Key="det/model.safetensors", Body=b"v1")
    uri = f"s3://{s3.name}/det/model.safetensors"
    cp = spec(uri, s3Endpoint=s3.endpoint)
    got = await resolve_checkpoint(cp, secret_data=S3_CREDS)
    assert got.source == "s3-etag"
    assert got.digest == "etag:" + hashlib.md5(b"v1").hexdigest()  # single-part ETag is the MD5
    s3.client.put_object(Bucket=s3.name, Key="det/model.safetensors", Body=b"v2")
    got2 = await resolve_checkpoint(cp, secret_data=S3_CREDS)
    assert got2.digest == "etag:" + hashlib.md5(b"v2").hexdigest() != got.digest


async def test_s3_missing_key_is_an_error(s3: Bucket) -> None:
    cp = spec(f"s3://{s3.name}/nope.safetensors", s3Endpoint=s3.endpoint)
    with pytest.raises(CheckpointResolveError, match=rf"s3 object not found: s3://{s3.name}/nope.safetensors"):
        await resolve_checkpoint(cp, secret_data=S3_CREDS)


def _no_ambient_aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


async def test_s3_credentials_come_from_the_secret(
    s3: Bucket, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    s3.client.put_object(Bucket=s3.name, Key="m.safetensors", Body=b"v1")
    _no_ambient_aws(monkeypatch, tmp_path)
    cp = spec(f"s3://{s3.name}/m.safetensors", s3Endpoint=s3.endpoint)
    with pytest.raises(CheckpointResolveError, match="no S3 credentials") as info:
        await resolve_checkpoint(cp, secret_data={"AWS_REGION": "us-east-1"})
    assert "\n" not in str(info.value)
    got = await resolve_checkpoint(cp, secret_data=S3_CREDS)
    assert got.digest.startswith("etag:")


async def test_s3_default_chain_when_secret_is_absent(
    s3: Bucket, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    s3.client.put_object(Bucket=s3.name, Key="m.safetensors", Body=b"v1")
    _no_ambient_aws(monkeypatch, tmp_path)
    for key, value in S3_CREDS.items():
        monkeypatch.setenv(key, value)
    got = await resolve_checkpoint(spec(f"s3://{s3.name}/m.safetensors", s3Endpoint=s3.endpoint))
    assert got.digest == "etag:" + hashlib.md5(b"v1").hexdigest()


async def test_s3_unreachable_endpoint_is_an_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cp = spec("s3://b/m.safetensors", s3Endpoint=f"http://127.0.0.1:{port}")
    with pytest.raises(CheckpointResolveError, match=rf"cannot reach http://127.0.0.1:{port}"):
        await resolve_checkpoint(cp, secret_data=S3_CREDS, timeout_s=1)


async def test_bad_s3_uri_is_an_error() -> None:
    with pytest.raises(CheckpointResolveError, match="expected s3://BUCKET/KEY"):
        await resolve_checkpoint(unchecked("s3://bucket-only"))


async def test_file_uri_without_third_slash_is_absolute(tmp_path: Path) -> None:
    ckpt = tmp_path / "m.safetensors"
    ckpt.write_bytes(b"x")
    relative_looking = "file://" + str(ckpt).lstrip("/")  # file://tmp/... means /tmp/..., as in the renderer
    assert (await resolve_checkpoint(spec(relative_looking))).digest == (
        "sha256:" + hashlib.sha256(b"x").hexdigest()
    )

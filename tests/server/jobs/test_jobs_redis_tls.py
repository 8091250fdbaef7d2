"""Redis over TLS with a password (rediss://:pw@host, the server cert checked against our own CA): jobs and
the cache work; a wrong password or an untrusted certificate is an unreachable store (503 for jobs, detect
still served), never a silent plaintext fallback."""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from jobs_helpers import metric, wait_job
from server_helpers import RedisProcess

pytestmark = pytest.mark.timeout(120)

PASSWORD = "s3cret-redis-pw"


def _key():  # -> rsa.RSAPrivateKey
    from cryptography.hazmat.primitives.asymmetric import rsa

    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _cert(subject: str, key, issuer: str, issuer_key, ca: bool, san_ip: str | None = None):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
               .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(hours=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if san_ip is not None:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(san_ip))]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def write_pki(root: Path, name: str) -> tuple[Path, Path, Path]:
    """(server cert, server key, CA cert) for 127.0.0.1, signed by a fresh CA."""
    from cryptography.hazmat.primitives import serialization

    ca_key, server_key = _key(), _key()
    ca = _cert(f"{name}-ca", ca_key, f"{name}-ca", ca_key, ca=True)
    server = _cert("127.0.0.1", server_key, f"{name}-ca", ca_key, ca=False, san_ip="127.0.0.1")
    paths = (root / f"{name}-server.crt", root / f"{name}-server.key", root / f"{name}-ca.crt")
    paths[0].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(server_key.private_bytes(serialization.Encoding.PEM,
                                                  serialization.PrivateFormat.TraditionalOpenSSL,
                                                  serialization.NoEncryption()))
    paths[2].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    return paths


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path, Path]]:
    root = tmp_path_factory.mktemp("pki")
    return {"good": write_pki(root, "good"), "other": write_pki(root, "other")}


@pytest.fixture(scope="module")
def tls_redis(pki) -> Iterator[RedisProcess]:
    proc = RedisProcess(tls=pki["good"], password=PASSWORD).start()
    yield proc
    proc.stop()


def test_jobs_and_cache_over_tls_with_a_password(start_server, tls_redis: RedisProcess, pki, tmp_path: Path,
                                                 photos: dict[str, bytes]) -> None:
    url_file = tmp_path / "redis-url"  # as the operator mounts it from spec.redis.urlSecret
    url_file.write_text(tls_redis.url + "\n")
    srv = start_server(redis_url_file=url_file, redis_ca_file=pki["good"][2], jobs_poll_s=0.05)
    assert httpx.get(f"{srv.url}/v2").json()["jobs"]["store"] == "redis"
    image = photos["coffee"]
    assert httpx.post(f"{srv.url}/v1/detect", content=image).headers["X-Cache"] == "miss"
    assert httpx.post(f"{srv.url}/v1/detect", content=image).headers["X-Cache"] == "hit"
    resp = httpx.post(f"{srv.url}/v1/jobs", content=photos["rocket"])
    assert resp.status_code == 202
    assert wait_job(srv.url, resp.headers["Location"], {})["status"] == "succeeded"
    assert metric(httpx.get(f"{srv.url}/metrics").text, "deepdetect_redis_up") == 1


@pytest.mark.parametrize(("case", "why"), [("wrong-password", "auth"), ("untrusted-ca", "tls")])
def test_a_wrong_password_or_an_untrusted_cert_is_an_unreachable_store(
        start_server, tls_redis: RedisProcess, pki, case: str, why: str, photos: dict[str, bytes],
        caplog: pytest.LogCaptureFixture) -> None:
    if case == "wrong-password":
        url, ca = tls_redis.url.replace(PASSWORD, "wrong"), pki["good"][2]
    else:
        url, ca = tls_redis.url, pki["other"][2]  # a CA that did not sign the server's certificate
    srv = start_server(redis_url=url, redis_ca_file=ca)
    assert httpx.post(f"{srv.url}/v1/detect", content=photos["chelsea"]).headers["X-Cache"] == "bypass"
    jobs = httpx.post(f"{srv.url}/v1/jobs", content=photos["chelsea"])
    assert jobs.status_code == 503 and "job store is unavailable" in jobs.json()["error"]
    assert PASSWORD not in jobs.text and "wrong" not in jobs.json()["error"]  # host:port only
    assert metric(httpx.get(f"{srv.url}/metrics").text, "deepdetect_redis_up") == 0
    assert PASSWORD not in caplog.text

"""The real `fetch` command as a subprocess, against a local HTTP server, files, a mounted claim and moto."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from deepdetect_server.fetch import FetchError, fetch_checkpoint
from rollout_helpers import S3_CREDS, Bucket, FileServer, make_safetensors

VENV_BIN = Path(sys.executable).parent
CKPT = make_safetensors(b"\x01\x02" * 512, architecture="test_efficientnet", version="1")
CKPT_SHA = hashlib.sha256(CKPT).hexdigest()


@pytest.fixture(scope="module")
def fetch_cmd() -> list[str]:
    """The console script when the CLI registers `fetch`, else the module's own entry point."""
    script = VENV_BIN / "deepdetect-server"
    if script.exists():
        probe = subprocess.run([str(script), "fetch", "--help"], capture_output=True, timeout=60)
        if probe.returncode == 0 and b"--sha256" in probe.stdout:
            return [str(script), "fetch"]
    return [sys.executable, "-m", "deepdetect_server.fetch"]


Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def run_fetch(fetch_cmd: list[str], tmp_path: Path) -> Run:
    def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        full_env.update(
            AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
            AWS_CONFIG_FILE=str(tmp_path / "none"),
            AWS_EC2_METADATA_DISABLED="true",
        )
        full_env.update(env or {})
        return subprocess.run(
            [*fetch_cmd, "--termination-log", str(tmp_path / "termination-log"), *args],
            capture_output=True,
            text=True,
            env=full_env,
            timeout=60,
        )

    return run


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    return tmp_path / "models" / "model.safetensors"


def assert_refused(proc: subprocess.CompletedProcess[str], dest: Path, reason: str) -> str:
    """Non-zero, exactly one `fetch: ...` line on stderr containing `reason`, nothing left at dest."""
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("fetch: ")
    assert reason in lines[0], lines[0]
    assert not dest.exists()
    assert not Path(str(dest) + ".partial").exists()
    return lines[0]


# ---------------------------------------------------------------- success


def test_http_with_matching_sha256(run_fetch: Run, file_server: FileServer, dest: Path) -> None:
    file_server.put("/det/m.safetensors", CKPT, etag='"v1"')
    uri = f"{file_server.url}/det/m.safetensors"
    proc = run_fetch("--uri", uri, "--sha256", CKPT_SHA, "--dest", str(dest))
    assert proc.returncode == 0, proc.stderr
    assert dest.read_bytes() == CKPT
    assert proc.stderr == ""
    assert f"sha256:{CKPT_SHA}" in proc.stdout
    assert sorted(p.name for p in dest.parent.iterdir()) == ["model.safetensors"]


def test_file_with_matching_sha256_prefixed(run_fetch: Run, tmp_path: Path, dest: Path) -> None:
    src = tmp_path / "src.safetensors"
    src.write_bytes(CKPT)
    proc = run_fetch("--uri", f"file://{src}", "--sha256", f"sha256:{CKPT_SHA}", "--dest", str(dest))
    assert proc.returncode == 0, proc.stderr
    assert dest.read_bytes() == CKPT


def test_no_pin_still_verifies_the_format(run_fetch: Run, file_server: FileServer, dest: Path) -> None:
    file_server.put("/m.safetensors", CKPT)
    proc = run_fetch("--uri", f"{file_server.url}/m.safetensors", "--dest", str(dest))
    assert proc.returncode == 0, proc.stderr
    assert dest.read_bytes() == CKPT


def test_pvc_reads_the_mounted_claim(run_fetch: Run, tmp_path: Path, dest: Path) -> None:
    root = tmp_path / "claim"
    (root / "detectors").mkdir(parents=True)
    (root / "detectors" / "v1.safetensors").write_bytes(CKPT)
    args = ("--source-root", str(root), "--sha256", CKPT_SHA, "--dest", str(dest))
    proc = run_fetch("--uri", "pvc://models/detectors/v1.safetensors", *args)
    assert proc.returncode == 0, proc.stderr
    assert dest.read_bytes() == CKPT
    other = dest.parent / "other.safetensors"
    escape = run_fetch(
        "--uri", "pvc://models/../../etc/passwd", "--source-root", str(root), "--dest", str(other)
    )
    assert_refused(escape, other, "outside the mounted claim")


def test_restarted_init_container_keeps_verified_file(run_fetch: Run, tmp_path: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True)
    dest.write_bytes(CKPT)
    uri = f"file://{tmp_path}/gone.safetensors"
    proc = run_fetch("--uri", uri, "--sha256", CKPT_SHA, "--dest", str(dest))
    assert proc.returncode == 0, proc.stderr
    assert "kept verified" in proc.stdout


def test_5xx_is_retried(run_fetch: Run, file_server: FileServer, dest: Path) -> None:
    file_server.put("/m.safetensors", CKPT)
    file_server.fail_5xx = 2
    proc = run_fetch("--uri", f"{file_server.url}/m.safetensors", "--dest", str(dest), "--backoff", "0.05")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("retrying") == 2
    assert dest.read_bytes() == CKPT


def test_s3_from_moto(run_fetch: Run, s3: Bucket, dest: Path) -> None:
    s3.client.put_object(Bucket=s3.name, Key="det/m.safetensors", Body=CKPT)
    env = {**S3_CREDS, "DEEPDETECT_S3_ENDPOINT": s3.endpoint}
    uri = f"s3://{s3.name}/det/m.safetensors"
    proc = run_fetch("--uri", uri, "--sha256", CKPT_SHA, "--dest", str(dest), env=env)
    assert proc.returncode == 0, proc.stderr
    assert dest.read_bytes() == CKPT
    dest.unlink()
    missing = run_fetch("--uri", uri + ".nope", "--dest", str(dest), env=env)
    assert_refused(missing, dest, f"s3 object not found: {uri}.nope")
    nocreds = run_fetch("--uri", uri, "--dest", str(dest), env={"DEEPDETECT_S3_ENDPOINT": s3.endpoint,
                                                                 "AWS_REGION": "us-east-1"})
    assert_refused(nocreds, dest, "no S3 credentials")


# ---------------------------------------------------------------- refusals


def test_sha256_mismatch_is_refused(
    run_fetch: Run, file_server: FileServer, dest: Path, tmp_path: Path
) -> None:
    file_server.put("/m.safetensors", CKPT)
    wrong = "0" * 64
    proc = run_fetch("--uri", f"{file_server.url}/m.safetensors", "--sha256", wrong, "--dest", str(dest))
    line = assert_refused(proc, dest, "sha256 mismatch")
    assert line == f"fetch: sha256 mismatch: expected {wrong}, got {CKPT_SHA}; refusing checkpoint"
    # The same line becomes the pod's termination message, where the operator reads it.
    assert (tmp_path / "termination-log").exists() is False  # only written when kubelet created it
    (tmp_path / "termination-log").write_text("")
    run_fetch("--uri", f"{file_server.url}/m.safetensors", "--sha256", wrong, "--dest", str(dest))
    assert (tmp_path / "termination-log").read_text() == line + "\n"


def test_mismatch_from_file_leaves_no_partial(run_fetch: Run, tmp_path: Path, dest: Path) -> None:
    src = tmp_path / "src.safetensors"
    src.write_bytes(CKPT)
    proc = run_fetch("--uri", f"file://{src}", "--sha256", "f" * 64, "--dest", str(dest))
    assert_refused(proc, dest, "sha256 mismatch")
    assert list(dest.parent.iterdir()) == []


def test_size_cap_from_content_length(run_fetch: Run, file_server: FileServer, dest: Path) -> None:
    file_server.put("/m.safetensors", CKPT)
    proc = run_fetch("--uri", f"{file_server.url}/m.safetensors", "--dest", str(dest), "--max-bytes", "100")
    assert_refused(proc, dest, f"checkpoint is {len(CKPT)} bytes, over the --max-bytes cap of 100")


def test_size_cap_while_streaming(run_fetch: Run, file_server: FileServer, dest: Path) -> None:
    file_server.put("/m.safetensors", CKPT, content_length=False)  # no announced length: counted as it comes
    proc = run_fetch("--uri", f"{file_server.url}/m.safetensors", "--dest", str(dest), "--max-bytes", "100")
    assert_refused(proc, dest, "exceeds the --max-bytes cap of 100 bytes")


def test_truncated_safetensors_is_refused(run_fetch: Run, file_server: FileServer, dest: Path) -> None:
    file_server.put("/m.safetensors", CKPT[:-10])
    proc = run_fetch("--uri", f"{file_server.url}/m.safetensors", "--dest", str(dest))
    assert_refused(proc, dest, "not a safetensors file: tensor 'w' lies outside")


def test_padded_safetensors_is_refused(run_fetch: Run, file_server: FileServer, dest: Path) -> None:
    file_server.put("/m.safetensors", CKPT + b"junk")
    proc = run_fetch("--uri", f"{file_server.url}/m.safetensors", "--dest", str(dest))
    assert_refused(proc, dest, "truncated or padded safetensors file")


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"<html><body>login</body></html>", "not a safetensors file: header length"),
        (b"\x05\x00\x00\x00\x00\x00\x00\x00hello", "the header is not JSON"),
        (b"tiny", "not a safetensors file: only 4 bytes"),
        (b"\x02\x00\x00\x00\x00\x00\x00\x00[]", "not a JSON object"),
    ],
)
def test_non_safetensors_is_refused(
    run_fetch: Run, file_server: FileServer, dest: Path, body: bytes, reason: str
) -> None:
    file_server.put("/m.safetensors", body)
    proc = run_fetch("--uri", f"{file_server.url}/m.safetensors", "--dest", str(dest))
    assert_refused(proc, dest, reason)


def test_http_404_fails_fast(run_fetch: Run, file_server: FileServer, dest: Path) -> None:
    proc = run_fetch("--uri", f"{file_server.url}/gone.safetensors?sig=s3cr3t", "--dest", str(dest))
    line = assert_refused(proc, dest, "HTTP 404")
    assert "s3cr3t" not in line
    assert [r for r in file_server.requests if r[0] == "GET"] == [("GET", "/gone.safetensors?sig=s3cr3t")]


def test_bad_pin_argument_is_a_usage_error(run_fetch: Run, dest: Path) -> None:
    proc = run_fetch("--uri", "file:///x", "--sha256", "xyz", "--dest", str(dest))
    assert proc.returncode == 2
    assert proc.stderr.strip() == "fetch: --sha256 must be 64 hex characters"


def test_fetch_does_not_import_torch() -> None:
    code = "import sys, deepdetect_server.fetch; print([m for m in ('torch', 'timm') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "[]"


# ---------------------------------------------------------------- library


def test_library_timeout_retries_then_fails(file_server: FileServer, dest: Path) -> None:
    file_server.put("/m.safetensors", CKPT)
    file_server.delay_s = 0.5
    logs: list[str] = []
    with pytest.raises(FetchError, match=r"timed out after 0\.2s"):
        fetch_checkpoint(
            f"{file_server.url}/m.safetensors", str(dest), timeout_s=0.2, retries=1, backoff_s=0.01,
            log=logs.append,
        )
    assert len(logs) == 1 and "retrying" in logs[0]
    assert not dest.exists()


def test_library_result(file_server: FileServer, dest: Path) -> None:
    file_server.put("/m.safetensors", CKPT)
    got = fetch_checkpoint(f"{file_server.url}/m.safetensors", str(dest), sha256=CKPT_SHA)
    assert (got.sha256, got.size, got.reused) == (CKPT_SHA, len(CKPT), False)


def test_library_cut_connection_is_retried_then_refused(file_server: FileServer, dest: Path) -> None:
    file_server.put("/m.safetensors", CKPT, cut_at=100)
    logs: list[str] = []
    uri = f"{file_server.url}/m.safetensors"
    with pytest.raises(FetchError, match=r"cannot read http://127\.0\.0\.1:\d+/m\.safetensors"):
        fetch_checkpoint(uri, str(dest), retries=2, backoff_s=0.01, log=logs.append)
    assert len(logs) == 2
    assert not dest.exists() and not Path(str(dest) + ".partial").exists()
    file_server.put("/m.safetensors", CKPT)  # the source recovers: the next attempt succeeds
    assert fetch_checkpoint(uri, str(dest)).size == len(CKPT)

"""`deepdetect-server fetch`: the init container that puts a verified checkpoint where the server loads it.

It runs before the server in every new pod, so a bad checkpoint stops here, with one line that says why,
instead of crash-looping the server or (worse) serving the wrong weights. It streams the source into
`<dest>.partial` next to the destination, hashing as it goes, enforces a size cap, checks that the bytes
are a well-formed safetensors file, fsyncs and renames atomically: `dest` is either absent or complete
and verified. It must start fast, so it never imports torch, and imports httpx/boto3 only for their schemes.

Exit status 0 on success, 1 on a failed fetch (one `fetch: <reason>` line on stderr, also written to the
pod's termination message), 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import posixpath
import re
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit, urlunsplit

from .s3 import make_s3_client

__all__ = ["FetchError", "FetchResult", "add_arguments", "fetch_checkpoint", "main", "run"]

DEFAULT_MAX_BYTES = 4 << 30  # 4 GiB: far above any detector we ship, low enough to stop a runaway download
DEFAULT_SOURCE_ROOT = "/mnt/checkpoint-source"  # where the Deployment mounts a pvc:// claim (render.py)
DEFAULT_TERMINATION_LOG = "/dev/termination-log"
CHUNK = 1 << 20
MAX_HEADER_BYTES = 100_000_000  # the safetensors format's own limit on the JSON header
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class FetchError(Exception):
    """A fetch that failed; `retryable` when another attempt may succeed (network, 5xx, truncation)."""

    def __init__(self, reason: str, *, retryable: bool = False) -> None:
        super().__init__(reason)
        self.retryable = retryable


@dataclass(frozen=True)
class FetchResult:
    path: str
    sha256: str  # hex
    size: int
    reused: bool  # dest already held the pinned bytes (a restarted init container)


# ---------------------------------------------------------------- library entry point


def fetch_checkpoint(
    uri: str,
    dest: str,
    *,
    sha256: str | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    retries: int = 3,
    timeout_s: float = 30.0,
    backoff_s: float = 1.0,
    source_root: str = DEFAULT_SOURCE_ROOT,
    s3_endpoint: str | None = None,
    env: Mapping[str, str] | None = None,
    log: Callable[[str], None] | None = None,
) -> FetchResult:
    """Fetch `uri` to `dest`, verified. Raises FetchError; never leaves anything at `dest` on failure."""
    env = os.environ if env is None else env
    log = log or (lambda _msg: None)
    expected = _normalise_sha256(sha256) if sha256 else None
    if expected and os.path.isfile(dest):
        # An init container restarted in the same pod finds its emptyDir filled: no need to download again.
        size, got = _hash_file(dest)
        if got == expected:
            _check_safetensors(dest, size)
            return FetchResult(dest, got, size, reused=True)
    parent = os.path.dirname(os.path.abspath(dest))
    os.makedirs(parent, exist_ok=True)
    attempt = 0
    while True:
        attempt += 1
        try:
            size, got = _fetch_once(uri, dest, expected, max_bytes, timeout_s, source_root, s3_endpoint, env)
            return FetchResult(dest, got, size, reused=False)
        except FetchError as exc:
            if not exc.retryable or attempt > retries:
                raise
            delay = min(backoff_s * 2 ** (attempt - 1), 30.0)
            log(f"fetch: attempt {attempt} failed: {exc}; retrying in {delay:g}s")
            time.sleep(delay)


def _fetch_once(
    uri: str,
    dest: str,
    expected: str | None,
    max_bytes: int,
    timeout_s: float,
    source_root: str,
    s3_endpoint: str | None,
    env: Mapping[str, str],
) -> tuple[int, str]:
    partial = dest + ".partial"  # same directory: the final rename cannot cross file systems
    try:
        digest = hashlib.sha256()
        written = 0
        with _open_source(uri, timeout_s, source_root, s3_endpoint, env) as (chunks, length):
            if length is not None and length > max_bytes:
                raise FetchError(f"checkpoint is {length} bytes, over the --max-bytes cap of {max_bytes}")
            with open(partial, "wb") as out:
                for chunk in chunks:
                    written += len(chunk)
                    if written > max_bytes:
                        raise FetchError(f"checkpoint exceeds the --max-bytes cap of {max_bytes} bytes")
                    digest.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
        if length is not None and written != length:
            raise FetchError(f"truncated download: got {written} of {length} bytes", retryable=True)
        got = digest.hexdigest()
        if expected and got != expected:
            raise FetchError(f"sha256 mismatch: expected {expected}, got {got}; refusing checkpoint")
        _check_safetensors(partial, written)
        os.replace(partial, dest)
        _fsync_dir(os.path.dirname(os.path.abspath(dest)))
        return written, got
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)


# ---------------------------------------------------------------- sources

Chunks = Iterator[bytes]


@contextlib.contextmanager
def _open_source(
    uri: str, timeout_s: float, source_root: str, s3_endpoint: str | None, env: Mapping[str, str]
) -> Iterator[tuple[Chunks, int | None]]:
    """(chunk iterator, announced length or None) for the URI's scheme."""
    scheme = uri.split("://", 1)[0].lower() if "://" in uri else ""
    if scheme == "file":
        with _open_path(_file_path(uri)) as opened:
            yield opened
    elif scheme == "pvc":
        with _open_path(_pvc_path(uri, source_root)) as opened:
            yield opened
    elif scheme in ("http", "https"):
        with _open_http(uri, timeout_s, env) as opened:
            yield opened
    elif scheme == "s3":
        with _open_s3(uri, timeout_s, s3_endpoint, env) as opened:
            yield opened
    else:
        raise FetchError(f"unsupported URI scheme {scheme or '(none)'!r}: use file, http(s), s3 or pvc")


def _file_path(uri: str) -> str:
    # file:///a/b and file://a/b both mean /a/b (as the renderer reads them).
    parts = urlsplit(uri)
    return posixpath.normpath("/" + unquote(parts.netloc + parts.path).lstrip("/"))


def _pvc_path(uri: str, source_root: str) -> str:
    """pvc://CLAIM/PATH read from where the pod mounts the claim; PATH may not climb out of it."""
    parts = urlsplit(uri)
    rel = unquote(parts.path).lstrip("/")
    if not parts.netloc or not rel:
        raise FetchError(f"invalid URI {uri!r}: expected pvc://CLAIM/PATH")
    root = os.path.realpath(source_root)
    path = os.path.realpath(os.path.join(root, rel))
    if os.path.commonpath([root, path]) != root:
        raise FetchError(f"{uri!r} points outside the mounted claim")
    return path


@contextlib.contextmanager
def _open_path(path: str) -> Iterator[tuple[Chunks, int | None]]:
    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed by the with below, after the caller is done
    except FileNotFoundError:
        raise FetchError(f"source file not found: {path}") from None
    except IsADirectoryError:
        raise FetchError(f"source is a directory, not a file: {path}") from None
    except PermissionError:
        raise FetchError(f"permission denied reading {path}") from None
    except OSError as exc:
        raise FetchError(f"cannot open {path}: {exc.strerror or exc}") from None
    with fh:
        size = os.fstat(fh.fileno()).st_size

        def chunks() -> Chunks:
            while chunk := fh.read(CHUNK):
                yield chunk

        yield chunks(), size


def _redact(uri: str) -> str:
    parts = urlsplit(uri)
    return urlunsplit((parts.scheme, parts.netloc.rsplit("@", 1)[-1], parts.path, "", ""))


@contextlib.contextmanager
def _open_http(uri: str, timeout_s: float, env: Mapping[str, str]) -> Iterator[tuple[Chunks, int | None]]:
    try:
        import httpx
    except ImportError:
        raise FetchError("http(s):// needs httpx in the image") from None
    headers: dict[str, str] = {}
    auth: tuple[str, str] | None = None
    if env.get("DEEPDETECT_FETCH_TOKEN"):
        headers["Authorization"] = f"Bearer {env['DEEPDETECT_FETCH_TOKEN'].strip()}"
    elif env.get("DEEPDETECT_FETCH_USERNAME"):
        auth = (env["DEEPDETECT_FETCH_USERNAME"], env.get("DEEPDETECT_FETCH_PASSWORD", ""))
    shown = _redact(uri)
    try:
        with (
            httpx.Client(
                timeout=httpx.Timeout(timeout_s), follow_redirects=True, headers=headers, auth=auth
            ) as c,
            c.stream("GET", uri) as resp,
        ):
            if resp.status_code >= 400:
                retryable = resp.status_code >= 500 or resp.status_code in (408, 429)
                msg = f"GET {shown}: HTTP {resp.status_code} {resp.reason_phrase}".rstrip()
                raise FetchError(msg, retryable=retryable)
            length = resp.headers.get("content-length")
            # identity transfer only: with Content-Encoding the header counts compressed bytes
            announced = (
                int(length)
                if length and length.isdigit() and "content-encoding" not in resp.headers
                else None
            )
            yield resp.iter_bytes(CHUNK), announced
    except httpx.TimeoutException:
        raise FetchError(f"timed out after {timeout_s:g}s reading {shown}", retryable=True) from None
    except httpx.TransportError as exc:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise FetchError(f"cannot read {shown}: {reason}", retryable=True) from None


def _s3_endpoint(explicit: str | None, env: Mapping[str, str]) -> str | None:
    return (
        explicit
        or env.get("DEEPDETECT_S3_ENDPOINT")
        or env.get("AWS_ENDPOINT_URL_S3")
        or env.get("AWS_ENDPOINT_URL")
        or None
    )


@contextlib.contextmanager
def _open_s3(
    uri: str, timeout_s: float, endpoint: str | None, env: Mapping[str, str]
) -> Iterator[tuple[Chunks, int | None]]:
    try:
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError
    except ImportError:
        raise FetchError("s3:// needs boto3 in the image") from None
    parts = urlsplit(uri)
    bucket, key = parts.netloc, unquote(parts.path.lstrip("/"))
    if not bucket or not key:
        raise FetchError(f"invalid URI {_redact(uri)!r}: expected s3://BUCKET/KEY")
    shown = f"s3://{bucket}/{key}"
    url = _s3_endpoint(endpoint, env)
    try:
        client = make_s3_client(url, env, timeout_s)
        obj = client.get_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in ("404", "NoSuchKey", "NoSuchBucket", "NotFound"):
            raise FetchError(f"s3 object not found: {shown}") from None
        if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            raise FetchError(f"access denied to {shown} ({code})") from None
        raise FetchError(f"GET {shown} failed: {code}", retryable=True) from None
    except NoCredentialsError:
        raise FetchError(
            f"no S3 credentials for {shown}: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"
        ) from None
    except (BotoCoreError, ValueError) as exc:
        raise FetchError(f"GET {shown} failed: {type(exc).__name__}", retryable=True) from None
    body = obj["Body"]
    length = obj.get("ContentLength")

    def chunks() -> Chunks:
        try:
            yield from body.iter_chunks(CHUNK)
        except BotoCoreError as exc:
            raise FetchError(f"reading {shown} failed: {type(exc).__name__}", retryable=True) from None

    try:
        yield chunks(), length if isinstance(length, int) else None
    finally:
        body.close()


# ---------------------------------------------------------------- verification


def _normalise_sha256(value: str) -> str:
    hexdigest = value.strip().lower().removeprefix("sha256:")
    if not _HEX64.match(hexdigest):
        raise FetchError("--sha256 must be 64 hex characters")
    return hexdigest


def _hash_file(path: str) -> tuple[int, str]:
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def _check_safetensors(path: str, size: int) -> None:
    """Refuse bytes that are not one complete safetensors file: header length, JSON, and tensors that
    exactly cover the data (a truncated or padded download fails here even without a pin)."""
    with open(path, "rb") as fh:
        prefix = fh.read(8)
        if len(prefix) < 8:
            raise FetchError(f"not a safetensors file: only {size} bytes")
        n = int.from_bytes(prefix, "little")
        if n < 2 or n > MAX_HEADER_BYTES or 8 + n > size:
            raise FetchError(f"not a safetensors file: header length {n} does not fit a {size}-byte file")
        raw = fh.read(n)
    try:
        header = json.loads(raw)
    except ValueError:
        raise FetchError("not a safetensors file: the header is not JSON") from None
    if not isinstance(header, dict):
        raise FetchError("not a safetensors file: the header is not a JSON object")
    data_len = size - 8 - n
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1] <= data_len
        ):
            raise FetchError(f"not a safetensors file: tensor {name!r} lies outside the {data_len}-byte data")
        end = max(end, offsets[1])
    if end != data_len:
        raise FetchError(
            f"truncated or padded safetensors file: tensors cover {end} of {data_len} data bytes"
        )


def _fsync_dir(path: str) -> None:
    # The rename is durable only once the directory entry is; some file systems refuse O_RDONLY dirs.
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# ---------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--uri", required=True, help="file://, http(s)://, s3://BUCKET/KEY or pvc://CLAIM/PATH"
    )
    parser.add_argument("--sha256", default="", help="expected sha256 (64 hex, optional 'sha256:' prefix)")
    parser.add_argument("--dest", required=True, help="where to write the verified checkpoint")
    parser.add_argument("--max-bytes", type=int, default=DEFAULT_MAX_BYTES, help="refuse larger checkpoints")
    parser.add_argument("--retries", type=int, default=3, help="extra attempts on network errors and 5xx")
    parser.add_argument("--timeout", type=float, default=30.0, help="connect/read timeout in seconds")
    parser.add_argument("--backoff", type=float, default=1.0, help="first retry delay in seconds (doubles)")
    parser.add_argument(
        "--source-root", default=DEFAULT_SOURCE_ROOT, help="where a pvc:// claim is mounted in this pod"
    )
    parser.add_argument(
        "--s3-endpoint",
        default=None,
        help="S3 endpoint URL (default: $DEEPDETECT_S3_ENDPOINT, $AWS_ENDPOINT_URL)",
    )
    parser.add_argument(
        "--termination-log",
        default=DEFAULT_TERMINATION_LOG,
        help="also write the failure reason here when the file exists (Kubernetes' termination message)",
    )


def run(args: argparse.Namespace) -> int:
    try:
        pin = _normalise_sha256(args.sha256) if args.sha256 else None
    except FetchError as exc:
        return _fail(str(exc), args.termination_log, code=2)
    try:
        result = fetch_checkpoint(
            args.uri,
            args.dest,
            sha256=pin,
            max_bytes=args.max_bytes,
            retries=max(0, args.retries),
            timeout_s=args.timeout,
            backoff_s=args.backoff,
            source_root=args.source_root,
            s3_endpoint=args.s3_endpoint,
            log=lambda msg: print(msg, flush=True),  # progress on stdout: stderr carries only the verdict
        )
    except FetchError as exc:
        return _fail(str(exc), args.termination_log)
    except OSError as exc:  # the destination side: disk full, read-only mount, ...
        return _fail(f"cannot write {args.dest}: {exc.strerror or exc}", args.termination_log)
    except Exception as exc:  # one line even for the unforeseen; a traceback would bury the reason
        return _fail(f"unexpected {type(exc).__name__}: {exc}", args.termination_log)
    verb = "kept verified" if result.reused else "wrote"
    print(f"fetch: {verb} {result.path} ({result.size} bytes, sha256:{result.sha256})", flush=True)
    return 0


def _fail(reason: str, termination_log: str, code: int = 1) -> int:
    line = "fetch: " + " ".join(reason.split())
    print(line, file=sys.stderr, flush=True)
    if termination_log and os.path.exists(termination_log):
        with contextlib.suppress(OSError), open(termination_log, "w") as fh:
            fh.write(line + "\n")
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="deepdetect-server fetch", description="Download and verify a safetensors checkpoint."
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

"""Errors the server raises inside, and the one table that turns them into HTTP at the edge.

The core and the batcher know nothing about HTTP; they raise these. `api/__init__.py` installs a single
exception handler that looks the class up in `HTTP_STATUS` (kserve copies a handler per status; we don't).
"""

from __future__ import annotations


class DeepDetectError(Exception):
    """Base class: `message` is safe to show to a client (never a key or image bytes)."""

    retry_after_s: int | None = None
    www_authenticate: str | None = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(DeepDetectError):
    """The request is malformed (missing file, bad JSON, wrong tensor shape)."""


class CorruptImage(BadRequest):
    """The bytes claim to be an image but do not decode (truncated, damaged)."""


class Unauthorized(DeepDetectError):
    """No or wrong API key."""

    www_authenticate = 'Bearer realm="deepdetect"'


class PayloadTooLarge(DeepDetectError):
    """The request body is over the upload limit."""


class ImageTooLarge(DeepDetectError):
    """The image header declares more pixels than allowed: a decompression bomb or simply too big."""


class UnsupportedMediaType(DeepDetectError):
    """The bytes are not an accepted image or video type (or video is disabled, or it is a playlist)."""


class MediaTooLarge(PayloadTooLarge):
    """A video is over its byte limit (`max_video_mb`): refused before it is opened."""


class CorruptVideo(BadRequest):
    """The bytes claim to be a video but do not demux or decode (truncated, zero frames, lying header)."""


class VideoRefused(DeepDetectError):
    """A video over a limit its header declares: duration, pixels, frame rate, streams. Refused before
    decoding."""


class DecodeFailed(DeepDetectError):
    """The decode worker ran past the decode deadline, or died (crash, memory limit): it was replaced."""


class ModelNotFound(DeepDetectError):
    """The v2 API was asked for a model name or version this server does not serve."""


class NotReady(DeepDetectError):
    """The model is still loading, or the server is draining."""

    retry_after_s = 5


class Overloaded(DeepDetectError):
    """The batch queue is full: shed load instead of queueing without bound."""

    retry_after_s = 1


class DeadlineExceeded(DeepDetectError):
    """The request did not finish within `request_timeout_s`."""

    retry_after_s = 1


class InferenceFailed(DeepDetectError):
    """The forward pass of the batch this request was in failed."""


class TooManyRequests(DeepDetectError):
    """A tenant is over its request or media rate limit; `retry_after_s` says when its window frees up."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = max(1, retry_after_s)


class JobNotFound(DeepDetectError):
    """No such job for this API key: never existed, expired after its retention, or another tenant's."""


class FeatureDisabled(DeepDetectError):
    """The route exists but this server is configured without it (jobs, callbacks)."""


class Conflict(DeepDetectError):
    """An Idempotency-Key reused with another request body, or a cancel of a job that already finished."""


class StoreUnavailable(DeepDetectError):
    """The shared store (Redis) cannot be reached: the jobs API cannot promise anything, so it says so."""

    retry_after_s = 5


class StartupError(DeepDetectError):
    """The server cannot start as configured (bad checkpoint, missing key file, unusable device)."""


class CheckpointError(StartupError):
    """A checkpoint is unreadable, malformed, or does not match its pinned digest."""


# One table: class -> HTTP status. Lookup walks the MRO, so subclasses inherit their parent's status.
HTTP_STATUS: dict[type[DeepDetectError], int] = {
    BadRequest: 400,
    Unauthorized: 401,
    ModelNotFound: 404,
    JobNotFound: 404,
    FeatureDisabled: 404,
    Conflict: 409,
    TooManyRequests: 429,
    PayloadTooLarge: 413,
    UnsupportedMediaType: 415,
    ImageTooLarge: 422,
    VideoRefused: 422,
    DecodeFailed: 422,
    InferenceFailed: 500,
    StartupError: 500,
    NotReady: 503,
    Overloaded: 503,
    DeadlineExceeded: 503,
    StoreUnavailable: 503,
}


def status_for(exc: DeepDetectError) -> int:
    """HTTP status for an error, through the table (500 for anything not listed)."""
    for cls in type(exc).__mro__:
        if cls in HTTP_STATUS:
            return HTTP_STATUS[cls]
    return 500


def headers_for(exc: DeepDetectError) -> dict[str, str]:
    """Headers a status needs by protocol: Retry-After on 503/429, WWW-Authenticate on 401."""
    headers: dict[str, str] = {}
    if exc.retry_after_s is not None:
        headers["Retry-After"] = str(exc.retry_after_s)
    if exc.www_authenticate is not None:
        headers["WWW-Authenticate"] = exc.www_authenticate
    return headers

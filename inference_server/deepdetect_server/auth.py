"""Bearer API keys read from a file (the operator mounts a Secret there), compared in constant time.

Fail closed: with `auth_mode: apiKey` and no usable key file the server refuses to start rather than
serve unauthenticated. Keys never reach a log line or an error message.
"""

from __future__ import annotations

import hmac
from pathlib import Path

from .errors import StartupError, Unauthorized


class AuthConfigError(StartupError):
    """Raised at start-up when auth is on but no key can be read (a start-up failure, like a bad model)."""


def read_keys(path: Path) -> list[bytes]:
    """One key per line; blank lines and `#` comments ignored."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise AuthConfigError(f"cannot read API key file {path}: {exc.strerror}") from exc
    keys = [line.strip().encode() for line in text.splitlines()]
    keys = [k for k in keys if k and not k.startswith(b"#")]
    if not keys:
        raise AuthConfigError(f"API key file {path} holds no key")
    return keys


class ApiKeyAuth:
    """Checks `Authorization: Bearer <key>` against the configured keys."""

    def __init__(self, keys: list[bytes]) -> None:
        self._keys = keys

    @classmethod
    def from_file(cls, path: Path | None) -> ApiKeyAuth:
        if path is None:
            raise AuthConfigError("auth_mode is apiKey but api_key_file is not set")
        return cls(read_keys(path))

    def check(self, authorization: str | None) -> None:
        if not authorization:
            raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("malformed Authorization header: expected 'Bearer <key>'")
        given = token.strip().encode()
        # Compare against every key, without early exit, so timing says nothing about which key is close.
        matched = False
        for key in self._keys:
            matched |= hmac.compare_digest(given, key)
        if not matched:
            error = Unauthorized("invalid API key")
            error.www_authenticate = 'Bearer realm="deepdetect", error="invalid_token"'
            raise error


class NoAuth:
    def check(self, authorization: str | None) -> None:
        return None

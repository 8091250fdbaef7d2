"""Bearer API keys with names (one tenant per name), read from a file the operator mounts from a Secret.

Fail closed: with `auth_mode: apiKey` and no usable key file the server refuses to start rather than
serve unauthenticated. A key is only ever compared (in constant time, against every key); what travels on
into logs, metrics, rate limits and job ownership is the key's *name*, never the key.

File formats (`#` comments and blank lines ignored):
- lines `name:key` (or `name: key`); a name may appear on several lines: each of its keys is valid, which is
  how a key is rotated without downtime (add the new key, move clients, remove the old one);
- a bare `key` on a line belongs to the tenant `default` (the single-tenant file the operator generates);
- a YAML mapping `name: key` or `name: [key, ...]`.
The file is re-read when it changes (a Secret update reaches the mount within a minute or so), so a rotation
needs no restart; a file that turns unreadable or empty keeps the last good keys and logs an error.
"""

from __future__ import annotations

import hmac
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from .errors import StartupError, Unauthorized

log = logging.getLogger("deepdetect.auth")

DEFAULT_TENANT = "default"
ANONYMOUS = "anonymous"  # the tenant of every request when auth is off
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


class AuthConfigError(StartupError):
    """Raised at start-up when auth is on but no key can be read (a start-up failure, like a bad model)."""


@dataclass(frozen=True)
class NamedKey:
    name: str
    key: bytes

    def __repr__(self) -> str:  # never the key, even in a traceback
        return f"NamedKey(name={self.name!r})"


def _from_yaml_lists(text: str) -> list[NamedKey] | None:
    """The YAML form with lists (`name: [k1, k2]`); None when the text is not that form."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        return None
    if not isinstance(data, dict) or not any(isinstance(v, list) for v in data.values()):
        return None
    out = []
    for name, value in data.items():
        for key in value if isinstance(value, list) else [value]:
            out.append(NamedKey(str(name), str(key).strip().encode()))
    return out


def _from_lines(text: str) -> list[NamedKey]:
    out = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, key = line.partition(":")
        if sep and _NAME.match(name.strip()):
            out.append(NamedKey(name.strip(), key.strip().encode()))
        else:
            out.append(NamedKey(DEFAULT_TENANT, line.encode()))
    return out


def parse_keys(text: str, source: str) -> list[NamedKey]:
    """Named keys from the text of a key file; AuthConfigError names the problem (never a key)."""
    keys = _from_yaml_lists(text)
    if keys is None:
        keys = _from_lines(text)
    owners: dict[bytes, str] = {}
    for entry in keys:
        if not _NAME.match(entry.name):
            raise AuthConfigError(f"{source}: tenant name {entry.name!r} is not [A-Za-z0-9_.-], 1-63 long")
        if not entry.key or any(c.isspace() for c in entry.key.decode(errors="replace")):
            raise AuthConfigError(f"{source}: tenant {entry.name!r} has an empty key or one with spaces")
        if owners.setdefault(entry.key, entry.name) != entry.name:
            raise AuthConfigError(
                f"{source}: tenants {owners[entry.key]!r} and {entry.name!r} share a key")
    if not keys:
        raise AuthConfigError(f"API key file {source} holds no key")
    return keys


def read_keys(path: Path) -> list[NamedKey]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise AuthConfigError(f"cannot read API key file {path}: {exc.strerror}") from exc
    return parse_keys(text, str(path))


def _signature(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)  # follows the Secret mount's ..data symlink: a new inode on every update
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


class ApiKeyAuth:
    """Checks `Authorization: Bearer <key>` against the configured keys and names the tenant."""

    def __init__(self, keys: list[NamedKey], path: Path | None = None) -> None:
        self._keys = keys
        self._path = path
        self._seen = _signature(path) if path is not None else None

    @classmethod
    def from_file(cls, path: Path | None) -> ApiKeyAuth:
        if path is None:
            raise AuthConfigError("auth_mode is apiKey but api_key_file is not set")
        return cls(read_keys(path), path)

    @property
    def tenants(self) -> list[str]:
        return sorted({k.name for k in self._keys})

    def reload_if_changed(self) -> bool:
        """Re-read the file if it changed; True when new keys are in force."""
        if self._path is None:
            return False
        seen = _signature(self._path)
        if seen is None or seen == self._seen:
            return False
        self._seen = seen
        try:
            keys = read_keys(self._path)
        except AuthConfigError as exc:
            log.error("API key file changed but is unusable: keeping the previous keys",
                      extra={"error": exc.message})
            return False
        self._keys = keys
        log.info("API keys reloaded", extra={"tenants": self.tenants, "keys": len(keys)})
        return True

    def check(self, authorization: str | None) -> str:
        """The tenant (key name) of a valid `Authorization` header; Unauthorized otherwise."""
        if not authorization:
            raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("malformed Authorization header: expected 'Bearer <key>'")
        given = token.strip().encode()
        # Compare against every key, without early exit, so timing says nothing about which key is close.
        tenant = None
        for entry in self._keys:
            if hmac.compare_digest(given, entry.key):
                tenant = entry.name
        if tenant is None:
            error = Unauthorized("invalid API key")
            error.www_authenticate = 'Bearer realm="deepdetect", error="invalid_token"'
            raise error
        return tenant


class NoAuth:
    tenants: list[str] = []

    def reload_if_changed(self) -> bool:
        return False

    def check(self, authorization: str | None) -> str:
        return ANONYMOUS

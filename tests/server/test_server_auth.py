"""API keys: file parsing, Bearer checks, fail-closed start-up."""

from __future__ import annotations

from pathlib import Path

import pytest
from deepdetect_server.auth import ApiKeyAuth, AuthConfigError, read_keys
from deepdetect_server.config import ServerSettings
from deepdetect_server.core import Core
from deepdetect_server.errors import Unauthorized, headers_for, status_for

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def auth(tmp_path: Path) -> ApiKeyAuth:
    f = tmp_path / "api-key"
    f.write_text("# rotated 2026-11\nfirst-key\n\n  second-key  \n")
    return ApiKeyAuth.from_file(f)


def test_key_file_skips_blanks_and_comments(tmp_path: Path) -> None:
    f = tmp_path / "k"
    f.write_text("# comment\n\nabc\n def \n")
    assert read_keys(f) == [b"abc", b"def"]


@pytest.mark.parametrize("header", ["Bearer first-key", "Bearer second-key", "bearer first-key"])
def test_any_configured_key_is_accepted(auth: ApiKeyAuth, header: str) -> None:
    auth.check(header)


@pytest.mark.parametrize(("header", "reason"), [
    (None, "missing API key"),
    ("", "missing API key"),
    ("Bearer", "malformed"),
    ("Basic Zmlyc3Qta2V5", "malformed"),
    ("first-key", "malformed"),
    ("Bearer first-ke", "invalid API key"),
    ("Bearer first-key-and-more", "invalid API key"),
    ("Bearer # rotated 2026-11", "invalid API key"),
])
def test_missing_or_wrong_key_is_401_with_www_authenticate(auth: ApiKeyAuth, header: str | None,
                                                          reason: str) -> None:
    with pytest.raises(Unauthorized, match=reason) as err:
        auth.check(header)
    assert status_for(err.value) == 401
    assert headers_for(err.value)["WWW-Authenticate"].startswith("Bearer")
    assert "first-key" not in err.value.message  # never echo a key


def test_empty_or_missing_key_file_fails_closed(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("\n# nothing\n")
    with pytest.raises(AuthConfigError, match="holds no key"):
        ApiKeyAuth.from_file(empty)
    with pytest.raises(AuthConfigError, match="cannot read"):
        ApiKeyAuth.from_file(tmp_path / "absent")
    with pytest.raises(AuthConfigError, match="api_key_file is not set"):
        ApiKeyAuth.from_file(None)


async def test_server_with_auth_on_and_no_keys_refuses_to_start(checkpoint: Path, tmp_path: Path) -> None:
    core = Core(ServerSettings(checkpoint=checkpoint, auth_mode="apiKey", api_key_file=tmp_path / "none"))
    with pytest.raises(AuthConfigError):
        await core.start()
    assert not core.ready

"""API keys: file parsing, named keys (tenants), Bearer checks, reload on change, fail-closed start-up."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from deepdetect_server.auth import ApiKeyAuth, AuthConfigError, NamedKey, parse_keys, read_keys
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
    assert read_keys(f) == [NamedKey("default", b"abc"), NamedKey("default", b"def")]


@pytest.mark.parametrize("text", [
    "acme:k-acme-1\nacme: k-acme-2\nglobex:k-globex\n",
    "acme: [k-acme-1, k-acme-2]\nglobex: k-globex\n",
    "# tenants\nacme:\n  - k-acme-1\n  - k-acme-2\nglobex:\n  - k-globex\n",
])
def test_named_keys_in_lines_or_yaml(text: str) -> None:
    keys = parse_keys(text, "keys")
    assert sorted((k.name, k.key) for k in keys) == [
        ("acme", b"k-acme-1"), ("acme", b"k-acme-2"), ("globex", b"k-globex")]
    auth = ApiKeyAuth(keys)
    assert auth.check("Bearer k-acme-2") == "acme"
    assert auth.check("Bearer k-globex") == "globex"
    assert auth.tenants == ["acme", "globex"]


@pytest.mark.parametrize(("text", "problem"), [
    ("acme:same\nglobex:same\n", "share a key"),
    ("acme:\n", "empty key"),
    ("acme: two words\n", "with spaces"),
    ("bad name!:k\n", "holds no key|spaces"),
])
def test_bad_key_files_are_refused_without_echoing_keys(text: str, problem: str) -> None:
    with pytest.raises(AuthConfigError, match=problem) as err:
        parse_keys(text, "keys")
    assert "same" not in err.value.message and "two words" not in err.value.message


def test_keys_never_appear_in_their_repr() -> None:
    assert "s3cret" not in repr(parse_keys("acme:s3cret", "keys"))


def test_rotation_by_reload_old_and_new_valid_during_the_roll(tmp_path: Path) -> None:
    f = tmp_path / "api-key"
    f.write_text("acme:old-key\nglobex:g-key\n")
    auth = ApiKeyAuth.from_file(f)
    assert not auth.reload_if_changed()  # nothing changed
    f.write_text("acme:old-key\nacme:new-key\nglobex:g-key\n")
    os.utime(f, ns=(1, 1))  # a new mtime even within the filesystem's timestamp granularity
    assert auth.reload_if_changed()
    assert auth.check("Bearer old-key") == auth.check("Bearer new-key") == "acme"
    f.write_text("acme:new-key\nglobex:g-key\n")
    os.utime(f, ns=(2, 2))
    assert auth.reload_if_changed()
    assert auth.check("Bearer new-key") == "acme"
    with pytest.raises(Unauthorized):
        auth.check("Bearer old-key")


def test_a_broken_key_file_keeps_the_last_good_keys(tmp_path: Path) -> None:
    f = tmp_path / "api-key"
    f.write_text("acme:k1\n")
    auth = ApiKeyAuth.from_file(f)
    f.write_text("# emptied by mistake\n")
    os.utime(f, ns=(3, 3))
    assert not auth.reload_if_changed()
    assert auth.check("Bearer k1") == "acme"


@pytest.mark.parametrize("header", ["Bearer first-key", "Bearer second-key", "bearer first-key"])
def test_any_configured_key_is_accepted(auth: ApiKeyAuth, header: str) -> None:
    assert auth.check(header) == "default"  # bare keys: the single tenant "default"


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

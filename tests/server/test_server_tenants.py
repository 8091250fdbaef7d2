"""Tenants over a real socket: several named keys, rotation without restart, logs carry the name only."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.timeout(120)


def status(url: str, key: str, image: bytes) -> int:
    headers = {"Authorization": f"Bearer {key}"}
    return httpx.post(f"{url}/v1/detect", content=image, headers=headers).status_code


def wait_status(url: str, key: str, image: bytes, want: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if status(url, key, image) == want:
            return
        time.sleep(0.05)
    raise AssertionError(f"key never answered {want}")


def test_a_rotated_key_works_during_the_roll(start_server, tmp_path: Path, photos: dict[str, bytes]) -> None:
    keys = tmp_path / "api-key"
    keys.write_text("acme:acme-old\nglobex:globex-key\n")
    srv = start_server(auth_mode="apiKey", api_key_file=keys, api_key_reload_s=0.1)
    image = photos["coffee"]
    assert status(srv.url, "acme-old", image) == 200 and status(srv.url, "acme-new", image) == 401

    # Step 1 of the roll: the Secret holds both keys (as a Secret update lands: a new file swapped in).
    staged = tmp_path / "api-key.new"
    staged.write_text("acme:acme-old\nacme:acme-new\nglobex:globex-key\n")
    os.replace(staged, keys)
    wait_status(srv.url, "acme-new", image, 200)
    assert status(srv.url, "acme-old", image) == 200  # clients not yet moved keep working

    # Step 2: every client uses the new key; the old one is removed.
    staged.write_text("acme:acme-new\nglobex:globex-key\n")
    os.replace(staged, keys)
    wait_status(srv.url, "acme-old", image, 401)
    assert status(srv.url, "acme-new", image) == 200 and status(srv.url, "globex-key", image) == 200


def test_access_log_names_the_tenant_never_the_key(start_server, tmp_path: Path, photos: dict[str, bytes],
                                                   caplog: pytest.LogCaptureFixture) -> None:
    from deepdetect_server.logging_setup import JsonFormatter

    keys = tmp_path / "api-key"
    keys.write_text("acme:acme-secret-key\n")
    srv = start_server(auth_mode="apiKey", api_key_file=keys)

    def detect_lines() -> list[dict[str, Any]]:
        access = [r for r in caplog.records if r.name == "deepdetect.access"]
        lines = [json.loads(JsonFormatter().format(r)) for r in access]
        return [line for line in lines if line["route"] == "/v1/detect"]

    with caplog.at_level(logging.INFO, logger="deepdetect"):
        assert status(srv.url, "acme-secret-key", photos["rocket"]) == 200
        assert status(srv.url, "wrong-key", photos["rocket"]) == 401
        # The access line is written after the response is sent: the client can be faster than the log.
        deadline = time.monotonic() + 5
        while len(detect_lines()) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
    detect = detect_lines()
    assert [(line["status"], line.get("tenant")) for line in detect] == [(200, "acme"), (401, None)]
    assert "acme-secret-key" not in caplog.text and "wrong-key" not in caplog.text

"""The app in-process: nothing at import time, several apps side by side, never ready without a model."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from deepdetect_server.app import create_app
from deepdetect_server.config import ServerSettings

pytestmark = pytest.mark.timeout(60)


def test_several_apps_in_one_process_have_their_own_metrics(checkpoint: Path) -> None:
    a = create_app(ServerSettings(checkpoint=checkpoint))
    b = create_app(ServerSettings(checkpoint=checkpoint))
    assert a.state.core.metrics.registry is not b.state.core.metrics.registry


async def test_not_ready_until_the_model_is_loaded(checkpoint: Path, photos: dict[str, bytes]) -> None:
    app = create_app(ServerSettings(checkpoint=checkpoint, device="cpu"))
    # ASGITransport does not run the lifespan: the model is never loaded, like a pod still starting.
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        assert (await client.get("/v2/health/live")).status_code == 200
        ready = await client.get("/v2/health/ready")
        assert ready.status_code == 503 and ready.json() == {"ready": False}
        resp = await client.post("/v1/detect", content=photos["coffee"])
        assert resp.status_code == 503 and resp.headers["Retry-After"] == "5"
        assert "not ready" in resp.json()["error"]
        assert "deepdetect_model_ready 0.0" in (await client.get("/metrics")).text


async def test_lifespan_loads_warms_and_stops(checkpoint: Path, photos: dict[str, bytes]) -> None:
    app = create_app(ServerSettings(checkpoint=checkpoint, device="cpu", shutdown_grace_s=2))
    core = app.state.core
    async with app.router.lifespan_context(app):
        assert core.ready and core.digest.startswith("sha256:")
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            assert (await client.post("/v1/detect", content=photos["coffee"])).status_code == 200
    assert not core.ready and core.state == "stopped" and core.detector is None


def test_importing_the_package_starts_nothing() -> None:
    import subprocess
    import sys

    code = ("import sys, deepdetect_server.app, deepdetect_server.cli, deepdetect_server.serve;"
            "print('torch' in sys.modules, 'timm' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[1] == "False"  # no model library loaded, no server started, just definitions

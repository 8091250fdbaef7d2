"""Shared fixtures for the server tests: real photos, tiny real checkpoints, a real server on a socket."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import numpy as np
import pytest
from deepdetect_server.config import ServerSettings
from server_helpers import RedisProcess, ThreadedServer, jpeg, make_checkpoint


@pytest.fixture(scope="session")
def photo_arrays() -> dict[str, np.ndarray]:
    from skimage import data

    return {"astronaut": data.astronaut(), "coffee": data.coffee(), "chelsea": data.chelsea(),
            "rocket": data.rocket()}


@pytest.fixture(scope="session")
def photos(photo_arrays: dict[str, np.ndarray]) -> dict[str, bytes]:
    return {name: jpeg(arr) for name, arr in photo_arrays.items()}


@pytest.fixture(scope="session")
def distinct_images(photo_arrays: dict[str, np.ndarray]) -> list[bytes]:
    """50 different real-photo JPEGs: crops at different places, sizes and qualities."""
    out = []
    arrays = list(photo_arrays.values())
    for i in range(50):
        arr = arrays[i % len(arrays)]
        h, w = arr.shape[:2]
        y, x = (i * 7) % (h // 3), (i * 13) % (w // 3)
        out.append(jpeg(arr[y : y + h // 2 + i, x : x + w // 2 + 2 * i], quality=70 + i % 25))
    return out


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.safetensors")


@pytest.fixture
def start_server(checkpoint: Path):  # -> Callable[..., Iterator[ThreadedServer]]
    """Factory: start a threaded server with settings overrides; all are stopped at teardown."""
    started: list[ThreadedServer] = []

    def start(**overrides: object) -> ThreadedServer:
        base: dict[str, object] = {"checkpoint": checkpoint, "device": "cpu", "host": "127.0.0.1",
                                   "shutdown_drain_s": 0.0, "shutdown_grace_s": 5.0, "decode_workers": 2}
        base.update(overrides)
        srv = ThreadedServer(ServerSettings(**base)).start()
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.stop()


@pytest.fixture(scope="session")
def redis_server():  # -> Iterator[RedisProcess]
    """One real redis-server for the session; tests keep apart by key prefix (`redis_prefix`)."""
    proc = RedisProcess().start()
    yield proc
    proc.stop()


@pytest.fixture
def redis_prefix(request: pytest.FixtureRequest) -> str:
    name = re.sub(r"[^\w.-]", "_", request.node.name)[:80]  # a valid prefix: no spaces or braces
    return f"test:{name}:{uuid.uuid4().hex[:8]}"

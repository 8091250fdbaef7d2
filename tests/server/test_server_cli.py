"""The `deepdetect-server` CLI wiring, JSON logging, and `make demo`'s script end to end."""

from __future__ import annotations

import importlib
import json
import logging
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from deepdetect_server import cli
from deepdetect_server.logging_setup import JsonFormatter

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[2]


def test_subcommands_are_registered() -> None:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert {"serve", "checkpoint"} <= set(sub.choices)
    args = parser.parse_args(["serve", "--checkpoint", "/m.safetensors", "--port", "9000",
                              "--precision", "bf16"])
    assert args.port == 9000 and args.precision == "bf16" and args.handler.__module__.endswith("serve")


def test_cli_works_without_fetch_module(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.import_module

    def no_fetch(name: str, package: str | None = None) -> ModuleType:
        if name == "deepdetect_server.fetch":
            raise ImportError("not built yet")
        return real(name, package)

    monkeypatch.setattr(importlib, "import_module", no_fetch)
    sub = next(a for a in cli.build_parser()._actions if a.dest == "command")
    assert "fetch" not in sub.choices and {"serve", "checkpoint"} <= set(sub.choices)


def test_json_formatter_one_object_per_line_without_bytes() -> None:
    record = logging.LogRecord("deepdetect.test", logging.INFO, __file__, 1, "hello %s", ("world",), None)
    record.route = "/v1/detect"
    record.body = b"\xff\xd8\xff secret image"
    line = JsonFormatter().format(record)
    assert "\n" not in line
    obj = json.loads(line)
    assert obj["msg"] == "hello world" and obj["route"] == "/v1/detect" and obj["level"] == "info"
    assert "body" not in obj


def test_demo_runs_end_to_end() -> None:
    result = subprocess.run([sys.executable, "-m", "deepdetect_server.demo"], capture_output=True, text=True,
                            timeout=110, cwd=REPO)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    out = result.stdout
    assert "UNTRAINED" in out
    verdict = json.loads(out[out.index("{\n"): out.index("\n}\n") + 2])
    assert verdict["label"] in ("real", "fake") and verdict["model"]["digest"].startswith("sha256:")
    assert "server stopped (SIGTERM, exit code 0)" in out

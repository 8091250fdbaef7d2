"""Settings: YAML file, env vars and explicit overrides, in that order of precedence."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from deepdetect_server.config import load_settings
from pydantic import ValidationError

pytestmark = pytest.mark.timeout(60)


def test_yaml_then_env_then_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump({"max_batch_size": 8, "max_delay_ms": 7, "model_name": "faces",
                                   "shutdown_drain_s": 1.5, "port": 9000}))
    monkeypatch.setenv("DEEPDETECT_MAX_DELAY_MS", "3")
    s = load_settings(cfg, port=8081, host=None)
    assert (s.max_batch_size, s.max_delay_ms, s.model_name, s.port) == (8, 3.0, "faces", 8081)
    assert s.shutdown_drain_s == 1.5 and s.host == "0.0.0.0"
    assert s.config_file == cfg


def test_unknown_keys_are_refused(tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text("max_batch_sise: 8\n")
    with pytest.raises(ValidationError):
        load_settings(cfg)


def test_limits_are_validated() -> None:
    with pytest.raises(ValidationError):
        load_settings(max_batch_size=0)
    assert load_settings(max_upload_mb=2).max_upload_bytes == 2 * 1024 * 1024


def test_operator_rendered_config_loads(tmp_path: Path) -> None:
    render = pytest.importorskip("deepdetect_operator.render", reason="operator package not installed")
    from deepdetect_operator.api import DeepDetectServiceSpec

    spec = DeepDetectServiceSpec.model_validate(
        {"model": {"architecture": "efficientnet_b4", "inputSize": 380,
                   "checkpoint": {"uri": "file:///models/b4.safetensors"}}})
    inp = render.RenderInputs(name="faces", namespace="ts", uid="u", spec=spec)
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(render.render_server_config(inp)))
    s = load_settings(cfg)
    assert s.port == 8080 and s.model_name

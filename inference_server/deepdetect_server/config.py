"""One settings model for the server, shared by the CLI, the app and the operator's ConfigMap.

Values come from (highest first) explicit arguments, `DEEPDETECT_*` environment variables, then a YAML
file (the operator mounts its ConfigMap as one). The operator renders that YAML from a CR; a test loads
the rendered file with this exact model, so the two can never drift apart.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

Precision = Literal["fp32", "fp16", "bf16", "int8"]
RuntimeName = Literal["torch", "onnxruntime", "auto"]
GpuMode = Literal["eager", "graphs", "compile"]
AuthMode = Literal["apiKey", "none"]


class ServerSettings(BaseSettings):
    """Everything the inference server reads at start-up."""

    model_config = SettingsConfigDict(env_prefix="DEEPDETECT_", extra="forbid", populate_by_name=True)

    # Model
    checkpoint: Path = Field(Path("/models/model.safetensors"), description="local .safetensors file")
    checkpoint_sha256: str = Field("", description="optional pin (hex, with or without 'sha256:')")
    model_name: str = Field("deepdetect", description="name in the v2 API (/v2/models/{name})")
    precision: Precision = Field(
        "fp32", description="fp16/bf16 need CUDA (fp32 on CPU); int8 is CPU-only (fp16 on CUDA), drift-gated"
    )
    runtime: RuntimeName = Field("auto", description="auto: the fastest runtime that passes parity, measured")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    threshold: float | None = Field(None, ge=0.0, le=1.0, description="overrides the card's threshold")
    warmup_batches: int = Field(1, ge=0)
    # What the deployment expects (the CR's spec.model): a checkpoint whose card says otherwise is refused,
    # so a wrong file fails the rollout instead of silently serving another model. Empty/0 = no check.
    expect_architecture: str = ""
    expect_input_size: int = Field(0, ge=0)

    # Batching
    max_batch_size: int = Field(32, ge=1, le=1024)
    max_delay_ms: float = Field(5.0, ge=0.0, le=10_000)
    max_queue: int = Field(256, ge=1)
    request_timeout_s: float = Field(30.0, gt=0)
    decode_workers: int = Field(
        0, ge=0, description="decode threads; 0 = planned with cpu_threads (GPU: the CPUs it may use)"
    )
    cpu_threads: int = Field(
        0, ge=0, description="intra-op threads on CPU; 0 = planned at start-up from measured decode and "
        "forward costs"
    )

    # Runtimes (runtimes/): graph cache, parity, int8 gate, GPU mode
    runtime_cache_dir: Path | None = Field(
        None, description="graphs by checkpoint digest (default <checkpoint dir>/runtime-cache)"
    )
    onnx_graph: Path | None = Field(
        None, description="a supplied ONNX graph (default: <checkpoint>.onnx when present); parity-checked"
    )
    parity_tolerance: float | None = Field(
        None, gt=0, le=1, description="max |Δscore| against torch on the warm-up batch (default by precision)"
    )
    samples: Path | None = Field(
        None, description="int8 sample set: a folder (label sub-folders) or a packed .safetensors file"
    )
    int8_max_score_drift: float = Field(0.05, gt=0, le=1, description="int8 gate: max |Δscore| held out")
    int8_max_auc_drop: float = Field(0.01, ge=0, le=1, description="int8 gate: max AUC drop (labelled sets)")
    gpu_mode: GpuMode = Field(
        "graphs", description="CUDA: eager, captured CUDA graphs per bucket, or torch.compile per bucket"
    )

    # Input limits
    max_upload_mb: float = Field(50.0, gt=0)
    max_image_pixels: int = Field(40_000_000, ge=1, description="decompression-bomb limit")
    max_batch_inputs: int = Field(64, ge=1, description="images in one v2 infer request")

    # Auth
    auth_mode: AuthMode = "none"
    api_key_file: Path | None = Field(None, description="file with one or more keys, one per line")

    # Process
    host: str = "0.0.0.0"
    port: int = Field(8080, ge=1, le=65535)
    shutdown_grace_s: float = Field(25.0, ge=0, description="time to finish in-flight work on SIGTERM")
    shutdown_drain_s: float = Field(
        3.0, ge=0, description="after SIGTERM, keep serving (not ready) this long so endpoints drop the pod; "
        "counted within shutdown_grace_s"
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    config_file: Path | None = Field(None, exclude=True, description="YAML file these settings came from")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings


def load_settings(config_file: Path | str | None = None, **overrides: Any) -> ServerSettings:
    """Build settings from an optional YAML file, then env vars, then explicit overrides (highest)."""
    data: dict[str, Any] = {}
    if config_file is not None:
        raw = yaml.safe_load(Path(config_file).read_text()) or {}
        if not isinstance(raw, dict):
            raise ValueError(f"{config_file}: expected a mapping at the top level")
        data.update(raw)
        data["config_file"] = Path(config_file)
    from_env = ServerSettings()  # env vars only (plus defaults)
    for name in from_env.model_fields_set:
        data[name] = getattr(from_env, name)
    data.update({k: v for k, v in overrides.items() if v is not None})
    return ServerSettings(**data)

"""One settings model for the server, shared by the CLI, the app and the operator's ConfigMap.

Values come from (highest first) explicit arguments, `DEEPDETECT_*` environment variables, then a YAML
file (the operator mounts its ConfigMap as one). The operator renders that YAML from a CR; a test loads
the rendered file with this exact model, so the two can never drift apart.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

Precision = Literal["fp32", "fp16", "bf16", "int8"]
RuntimeName = Literal["torch", "onnxruntime", "auto"]
GpuMode = Literal["eager", "graphs", "compile"]
AuthMode = Literal["apiKey", "none"]
CacheScope = Literal["tenant", "global"]


def check_rate(text: str) -> str:
    """A `limits` rate string ("600/minute", "10/second;500/hour"); "" means unlimited."""
    if text.strip():
        from limits import parse_many

        try:
            parse_many(text)
        except ValueError as exc:
            raise ValueError(f"{text!r} is not a rate such as '600/minute' or '10/second;500/hour'") \
                from exc
    return text.strip()


class TenantLimits(BaseModel):
    """One tenant's limits, overriding `rate_limit_requests` / `rate_limit_media` (None = the default)."""

    model_config = ConfigDict(extra="forbid")

    requests: str | None = None
    media: str | None = None

    @field_validator("requests", "media")
    @classmethod
    def _rate(cls, value: str | None) -> str | None:
        return None if value is None else check_rate(value)


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

    # Video (video.py, decode_workers.py): off by default; every limit is checked before the work it guards
    video_enabled: bool = Field(False, description="accept MP4/MOV, WebM/Matroska and AVI uploads")
    max_video_mb: float = Field(50.0, gt=0, description="video bytes, refused before opening -> 413")
    max_video_seconds: float = Field(600.0, gt=0, description="declared duration -> 422")
    max_video_pixels: int = Field(1920 * 1080, ge=1, description="width x height of the video stream -> 422")
    max_video_fps: float = Field(120.0, gt=0, description="declared frame rate -> 422")
    max_video_streams: int = Field(4, ge=1, description="streams of any kind in the container -> 422")
    video_decode_timeout_s: float = Field(
        20.0, gt=0, description="wall time of one video's decode; the worker is killed past it -> 422")
    max_video_frames: int = Field(32, ge=1, le=1024, description="frames sampled per video, at most")
    video_workers: int = Field(2, ge=1, le=64, description="decode worker processes (killable)")
    video_worker_memory_mb: int = Field(
        2048, ge=256, description="address-space limit of a decode worker: a bomb kills only the worker")

    # Auth and tenants
    auth_mode: AuthMode = "none"
    api_key_file: Path | None = Field(
        None, description="keys, one per line: 'name:key' (a tenant per name, several keys per name while "
        "rotating) or a bare key (tenant 'default'), or a YAML mapping name -> key | [keys]")
    api_key_reload_s: float = Field(
        10.0, ge=0, description="re-read api_key_file this often when it changed (0 = only at start)")

    # Redis: the shared store of jobs, cache and rate limits across replicas (none = in-process)
    redis_url: SecretStr = Field(
        SecretStr(""), description="redis[s]://[user:password@]host:port/db; rediss:// is TLS")
    redis_url_file: Path | None = Field(None, description="file holding the URL (a Secret mount)")
    redis_ca_file: Path | None = Field(None, description="CA bundle that signs the rediss:// server cert")
    redis_key_prefix: str = Field("", pattern=r"^[^{}\s]*$",
                                  description="namespace of our keys; default deepdetect:<model_name>")
    redis_timeout_s: float = Field(
        0.5, gt=0, le=30, description="per command: a slow Redis must not stall /v1/detect")

    # Jobs: POST /v1/jobs
    jobs_enabled: bool = True
    jobs_result_ttl_s: float = Field(86_400.0, gt=0, description="results are kept this long, then 404")
    jobs_max_payload_mb: float = Field(50.0, gt=0, description="media stored with a job, at most")
    jobs_max_queued: int = Field(1000, ge=1, description="queued jobs (all replicas); more -> 503")
    jobs_concurrency: int = Field(1, ge=0, description="jobs this replica runs at once (0 = accept only)")
    jobs_lease_s: float = Field(
        30.0, gt=0, description="a running job's lease, renewed every third of it; when it lapses (the pod "
        "died) another replica takes the job over")
    jobs_max_attempts: int = Field(
        3, ge=1, description="a job whose replica is lost this many times fails (a poison input)")
    jobs_timeout_s: float = Field(600.0, gt=0, description="scoring deadline of one job")
    jobs_poll_s: float = Field(0.5, gt=0, le=60, description="idle replicas look for work this often")
    callback_allowed_hosts: list[str] = Field(
        default_factory=list, description="hosts (or *.domain) a job's callback_url may name; empty = "
        "callbacks refused")
    callback_secret_file: Path | None = Field(
        None, description="HMAC secrets: 'tenant:secret' lines or one bare secret for every tenant")
    callback_max_attempts: int = Field(8, ge=1, le=100)
    callback_timeout_s: float = Field(10.0, gt=0)
    callback_backoff_s: float = Field(1.0, gt=0, description="first retry delay; doubles, at most 5 min")

    # Result cache
    cache_enabled: bool = True
    cache_ttl_s: float = Field(3600.0, gt=0)
    cache_max_entries: int = Field(10_000, ge=1, description="in-process LRU size (without Redis)")
    cache_scope: CacheScope = Field(
        "tenant", description="tenant: one tenant never sees another's cached verdicts (nor learns that "
        "someone sent the same bytes); global: shared by all")

    # Rate limits, per tenant (the API key's name)
    rate_limit_requests: str = Field("", description="e.g. '600/minute'; '' = unlimited")
    rate_limit_media: str = Field(
        "", description="media units (an image is 1, a video its sampled frames), e.g. '6000/minute'")
    rate_limit_tenants: dict[str, TenantLimits] = Field(default_factory=dict)

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

    @property
    def max_video_bytes(self) -> int:
        return int(self.max_video_mb * 1024 * 1024)

    @property
    def jobs_max_payload_bytes(self) -> int:
        return int(min(self.jobs_max_payload_mb, self.max_upload_mb) * 1024 * 1024)

    @property
    def key_prefix(self) -> str:
        return self.redis_key_prefix or f"deepdetect:{self.model_name}"

    @field_validator("rate_limit_requests", "rate_limit_media")
    @classmethod
    def _rate(cls, value: str) -> str:
        return check_rate(value)

    @model_validator(mode="after")
    def _one_redis_url(self) -> ServerSettings:
        if self.redis_url.get_secret_value() and self.redis_url_file is not None:
            raise ValueError("set redis_url or redis_url_file, not both")
        return self

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

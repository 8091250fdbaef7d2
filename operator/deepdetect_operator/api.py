"""Pydantic models of the DeepDetectService spec and status: the single source of truth.

The CRD in `crds/` is generated from these models (see `crd.py`), the renderer reads the spec through
them, and status is written from `DeepDetectServiceStatus`. Field names are snake_case in Python and
camelCase on the wire (`alias_generator=to_camel`); always dump with `by_alias=True`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

GROUP = "deepdetect.io"
VERSION = "v1alpha1"
KIND = "DeepDetectService"
PLURAL = "deepdetectservices"
SINGULAR = "deepdetectservice"
SHORT_NAMES = ["dds"]
API_VERSION = f"{GROUP}/{VERSION}"

# Pod-template annotations that make Kubernetes roll the pods when what they read changes.
ANNOTATION_CHECKPOINT_DIGEST = f"{GROUP}/checkpoint-digest"
ANNOTATION_CONFIG_HASH = f"{GROUP}/config-hash"
ANNOTATION_SECRET_HASH = f"{GROUP}/secret-hash"

DEFAULT_SERVER_IMAGE = "ghcr.io/deepdetect/deepdetect-server:0.1.0"


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class CheckpointSpec(_Model):
    uri: str = Field(
        ...,
        min_length=1,
        pattern=r"^(file|https?|s3|pvc)://.+",
        description="file:// (node/PVC path), http(s)://, s3://bucket/key or pvc://CLAIM/PATH",
    )
    sha256: str = Field(
        "",
        pattern=r"^([0-9a-f]{64})?$",
        description="optional pin (64 hex chars): pods refuse other bytes; required for pvc://",
    )
    poll_interval: str = Field(
        "5m",
        pattern=r"^(0|([0-9]+(\.[0-9]+)?(ms|s|m|h))+)$",
        description="re-resolve the digest this often; 0 = only on spec change",
    )
    credentials_secret: str = Field("", description="Secret with s3/http credentials in the CR's namespace")
    s3_endpoint: str = Field("", description="custom S3 endpoint URL (MinIO and friends)")


class ModelSpec(_Model):
    architecture: str = Field("efficientnet_b4", min_length=1, description="timm model name")
    input_size: int = Field(380, ge=16, le=4096)
    precision: Literal["fp32", "fp16", "bf16"] = "fp16"
    checkpoint: CheckpointSpec
    threshold: float | None = Field(None, ge=0.0, le=1.0, description="overrides the checkpoint's own")


class AutoscalingSpec(_Model):
    enabled: bool = True
    min_replicas: int = Field(1, ge=1)
    max_replicas: int = Field(8, ge=1)
    target_cpu_utilization: int = Field(70, ge=1, le=100, alias="targetCPUUtilization")
    target_inflight_per_pod: int = Field(
        0, ge=0, description=">0 adds a Pods metric deepdetect_inflight_requests (needs a metrics adapter)"
    )


class ResourcesSpec(_Model):
    gpus: int = Field(1, ge=0, le=16)
    gpu_resource: str = Field("nvidia.com/gpu", min_length=1)
    cpu: str = Field("4", pattern=r"^[0-9]+(\.[0-9]+)?m?$")
    memory: str = Field("16Gi", pattern=r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|K|M|G|T)?$")


class SchedulingSpec(_Model):
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[dict[str, Any]] = Field(default_factory=list)
    affinity: dict[str, Any] = Field(default_factory=dict)
    priority_class_name: str = ""


class BatchingSpec(_Model):
    max_batch_size: int = Field(32, ge=1, le=1024)
    max_delay_ms: int = Field(5, ge=0, le=10_000)
    max_queue: int = Field(256, ge=1, le=100_000)


class ServerSpec(_Model):
    max_upload_mb: int = Field(50, ge=1, le=1024)
    request_timeout_seconds: int = Field(30, ge=1, le=3600)


class AuthSpec(_Model):
    mode: Literal["apiKey", "none"] = "apiKey"
    secret_name: str = Field(
        "", description="Secret with key 'api-key'; generated when empty, never overwritten"
    )


class RolloutSpec(_Model):
    max_surge: int = Field(1, ge=0)
    max_unavailable: int = Field(0, ge=0)
    progress_deadline_seconds: int = Field(600, ge=30)
    auto_rollback: bool = True


class DisruptionSpec(_Model):
    min_available: int = Field(1, ge=0)


class MonitoringSpec(_Model):
    service_monitor: bool = False


class ServiceSpec(_Model):
    type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = "ClusterIP"
    port: int = Field(80, ge=1, le=65535)


class DeepDetectServiceSpec(_Model):
    model: ModelSpec
    image: str = Field("", description="server image; the operator's default when empty")
    replicas: int = Field(1, ge=0, description="ignored while autoscaling is enabled")
    autoscaling: AutoscalingSpec = Field(default_factory=AutoscalingSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    scheduling: SchedulingSpec = Field(default_factory=SchedulingSpec)
    batching: BatchingSpec = Field(default_factory=BatchingSpec)
    server: ServerSpec = Field(default_factory=ServerSpec)
    auth: AuthSpec = Field(default_factory=AuthSpec)
    rollout: RolloutSpec = Field(default_factory=RolloutSpec)
    disruption: DisruptionSpec = Field(default_factory=DisruptionSpec)
    monitoring: MonitoringSpec = Field(default_factory=MonitoringSpec)
    service: ServiceSpec = Field(default_factory=ServiceSpec)


# ---------------------------------------------------------------- status

ConditionType = Literal["Ready", "Progressing", "Degraded", "CheckpointResolved"]
Phase = Literal["Pending", "Progressing", "Ready", "Degraded", "Failed"]


class Condition(_Model):
    """metav1.Condition shape."""

    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str = Field(..., pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")
    message: str = ""
    last_transition_time: str
    observed_generation: int | None = None


class ModelStatus(_Model):
    uri: str = ""
    digest: str = ""
    resolved_at: str = ""
    last_good_digest: str = ""


class RolloutStatus(_Model):
    target_digest: str = ""
    started_at: str = ""
    state: Literal["", "Progressing", "Complete", "Failed"] = ""
    message: str = ""


class DeepDetectServiceStatus(_Model):
    observed_generation: int | None = None
    phase: Phase = "Pending"
    conditions: list[Condition] = Field(default_factory=list)
    replicas: int = 0
    ready_replicas: int = 0
    selector: str = ""
    endpoint: str = ""
    model: ModelStatus = Field(default_factory=ModelStatus)
    rollout: RolloutStatus = Field(default_factory=RolloutStatus)


def parse_spec(raw: dict[str, Any]) -> DeepDetectServiceSpec:
    """Validate a CR's `spec` (raises pydantic.ValidationError on a bad one)."""
    return DeepDetectServiceSpec.model_validate(raw)

"""Pydantic models of the DeepDetectService spec and status: the single source of truth.

The CRD in `crds/` is generated from these models (see `crd.py`), the renderer reads the spec through
them, and status is written from `DeepDetectServiceStatus`. Field names are snake_case in Python and
camelCase on the wire (`alias_generator=to_camel`); always dump with `by_alias=True`.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
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
        max_length=2048,
        pattern=r"^(file|https?|s3|pvc)://.+",
        description="file:///PATH (node file, hostPath), http(s)://, s3://BUCKET/KEY or pvc://CLAIM/PATH",
    )
    sha256: str = Field(
        "",
        max_length=64,
        pattern=r"^([0-9a-f]{64})?$",
        description="optional pin (64 hex chars): pods refuse other bytes; required for pvc://",
    )
    poll_interval: str = Field(
        "5m",
        pattern=r"^(0|([0-9]+(\.[0-9]+)?(ms|s|m|h))+)$",
        description="re-resolve the digest this often; 0 = only on spec change",
    )
    credentials_secret: str = Field(
        "",
        max_length=253,
        description="Secret in the CR's namespace with AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/AWS_REGION"
        " (s3) or token / username+password (http)",
    )
    s3_endpoint: str = Field("", max_length=2048, description="custom S3 endpoint URL (MinIO and friends)")

    @model_validator(mode="after")
    def _uri_form(self) -> CheckpointSpec:
        # Mirrors the CEL rules in crd.py, so the operator rejects what the API server rejects.
        if self.uri.startswith("pvc://"):
            if not self.sha256:
                raise ValueError("checkpoint.sha256 is required for pvc:// URIs")
            if not re.match(r"^pvc://[a-z0-9]([-a-z0-9.]*[a-z0-9])?/.+$", self.uri):
                raise ValueError("pvc:// URIs take the form pvc://CLAIM/PATH")
        if self.uri.startswith("s3://") and not re.match(r"^s3://[^/]+/.+$", self.uri):
            raise ValueError("s3:// URIs take the form s3://BUCKET/KEY")
        return self


class SampleSetSpec(_Model):
    uri: str = Field(
        ...,
        min_length=1,
        max_length=2048,
        pattern=r"^(https?|s3)://.+",
        description="packed sample file (`deepdetect-server samples pack`), http(s):// or s3://BUCKET/KEY; "
        "fetched like the checkpoint, with its credentialsSecret and s3Endpoint",
    )
    sha256: str = Field("", max_length=64, pattern=r"^([0-9a-f]{64})?$", description="optional pin")


class ModelSpec(_Model):
    architecture: str = Field("efficientnet_b4", min_length=1, max_length=128, description="timm model name")
    input_size: int = Field(380, ge=16, le=4096, description="square input resolution in pixels")
    precision: Literal["fp32", "fp16", "bf16", "int8"] = Field(
        "fp16",
        description="inference precision: fp16/bf16 fall back to fp32 on CPU; int8 is CPU-only (fp16 on "
        "GPU), calibrated on model.samples and refused past the drift gate",
    )
    runtime: Literal["auto", "torch", "onnxruntime"] = Field(
        "auto", description="auto: the fastest runtime that matches torch on the warm-up batch (measured)"
    )
    samples: SampleSetSpec | None = Field(
        None, description="int8 calibration and held-out images (required for precision int8)"
    )
    checkpoint: CheckpointSpec = Field(..., description="where the .safetensors checkpoint comes from")
    threshold: float | None = Field(None, ge=0.0, le=1.0, description="overrides the checkpoint's own")

    @model_validator(mode="after")
    def _int8_needs_samples(self) -> ModelSpec:
        # Mirrors the CEL rules in crd.py.
        if self.precision == "int8" and self.samples is None:
            raise ValueError("model.precision int8 needs model.samples (the calibration and held-out set)")
        if self.precision == "int8" and self.runtime == "torch":
            raise ValueError(
                "model.precision int8 runs on onnxruntime: set model.runtime to auto or onnxruntime")
        return self


class AutoscalingSpec(_Model):
    enabled: bool = Field(True, description="render an HPA (autoscaling/v2) that owns the replica count")
    min_replicas: int = Field(1, ge=1, description="HPA floor")
    max_replicas: int = Field(8, ge=1, description="HPA ceiling (>= minReplicas)")
    target_cpu_utilization: int = Field(
        70, ge=1, le=100, alias="targetCPUUtilization", description="average CPU utilization target, %"
    )
    target_inflight_per_pod: int = Field(
        0, ge=0, description=">0 adds a Pods metric deepdetect_inflight_requests (needs a metrics adapter)"
    )

    @model_validator(mode="after")
    def _min_le_max(self) -> AutoscalingSpec:
        if self.min_replicas > self.max_replicas:
            raise ValueError("autoscaling.minReplicas must not exceed autoscaling.maxReplicas")
        return self


class ResourcesSpec(_Model):
    gpus: int = Field(1, ge=0, le=16, description="GPUs per pod (limits[gpuResource]); 0 = CPU only")
    gpu_resource: str = Field(
        "nvidia.com/gpu", min_length=1, max_length=253, description="extended resource name of the GPU"
    )
    cpu: str = Field("4", pattern=r"^[0-9]+(\.[0-9]+)?m?$", description="CPU request and limit per pod")
    memory: str = Field(
        "16Gi", pattern=r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|k|M|G|T)?$", description="memory request and limit"
    )


class SchedulingSpec(_Model):
    node_selector: dict[str, str] = Field(default_factory=dict, description="pod nodeSelector")
    tolerations: list[dict[str, Any]] = Field(
        default_factory=list,
        description="pod tolerations (core/v1 Toleration); one for the GPU taint is added when gpus>0",
    )
    affinity: dict[str, Any] = Field(default_factory=dict, description="pod affinity (core/v1 Affinity)")
    priority_class_name: str = Field("", max_length=253, description="pod priorityClassName")


class BatchingSpec(_Model):
    max_batch_size: int = Field(32, ge=1, le=1024, description="a batch runs when it has this many images")
    max_delay_ms: int = Field(5, ge=0, le=10_000, description="... or when its first image waited this long")
    max_queue: int = Field(256, ge=1, le=100_000, description="queued images beyond this get 503")


class ServerSpec(_Model):
    max_upload_mb: int = Field(50, ge=1, le=1024, alias="maxUploadMB", description="request body limit (413)")
    request_timeout_seconds: int = Field(
        30, ge=1, le=3600, description="per-request timeout (503); also the server's shutdown grace"
    )


class VideoLimitsSpec(_Model):
    max_video_mb: int = Field(50, ge=1, le=1024, alias="maxVideoMB", description="video bytes (413)")
    max_duration_seconds: int = Field(600, ge=1, le=86_400, description="declared duration (422)")
    max_pixels: int = Field(1920 * 1080, ge=1, le=100_000_000, description="width x height (422)")
    max_fps: int = Field(120, ge=1, le=1000, description="declared frame rate (422)")
    max_streams: int = Field(4, ge=1, le=64, description="streams in the container (422)")
    max_frames: int = Field(32, ge=1, le=1024, description="frames sampled per video, at most")
    decode_timeout_seconds: int = Field(
        20, ge=1, le=3600, description="decode wall time; the worker is killed past it (422); must not "
        "exceed server.requestTimeoutSeconds")


class MediaSpec(_Model):
    video: bool = Field(False, description="accept video uploads (MP4/MOV, WebM/Matroska, AVI); see "
                        "docs/operator.md for the resources a video pod needs")
    decode_workers: int = Field(2, ge=1, le=64, description="video decode worker processes per pod")
    worker_memory_mb: int = Field(2048, ge=256, le=65_536, alias="workerMemoryMB",
                                  description="address-space limit of one decode worker")
    limits: VideoLimitsSpec = Field(default_factory=VideoLimitsSpec)


class AuthSpec(_Model):
    mode: Literal["apiKey", "none"] = Field("apiKey", description="apiKey: Authorization: Bearer <key>")
    secret_name: str = Field(
        "", max_length=253, description="Secret with key 'api-key'; generated when empty, never overwritten"
    )


class RolloutSpec(_Model):
    max_surge: int = Field(1, ge=0, description="Deployment RollingUpdate maxSurge")
    max_unavailable: int = Field(0, ge=0, description="Deployment RollingUpdate maxUnavailable")
    progress_deadline_seconds: int = Field(
        600, ge=30, description="a rollout not done by then is Degraded (RolloutFailed)"
    )
    auto_rollback: bool = Field(True, description="on RolloutFailed, pin the pods back to lastGoodDigest")

    @model_validator(mode="after")
    def _can_progress(self) -> RolloutSpec:
        if self.max_surge == 0 and self.max_unavailable == 0:
            raise ValueError("rollout.maxSurge and rollout.maxUnavailable cannot both be 0")
        return self


class DisruptionSpec(_Model):
    min_available: int = Field(
        1,
        ge=0,
        description="PDB minAvailable; rendered as maxUnavailable 1 when it would block every eviction",
    )


class MonitoringSpec(_Model):
    service_monitor: bool = Field(False, description="render a ServiceMonitor (when its CRD exists)")


# A `limits` rate as the server reads it: "600/minute", "10/second;500/hour"; "" = unlimited.
RATE_PATTERN = (r"^$|^[0-9]+/([0-9]+ ?)?(second|minute|hour|day)s?"
                r"(;[0-9]+/([0-9]+ ?)?(second|minute|hour|day)s?)*$")


class RedisSpec(_Model):
    url_secret: str = Field(
        "", max_length=253, description="Secret holding the Redis URL (redis://[user:password@]host:port/db; "
        "rediss:// for TLS); empty = no Redis: jobs, cache and limits stay in each pod")
    url_key: str = Field("url", min_length=1, max_length=253, description="key of the URL in urlSecret")
    ca_key: str = Field(
        "", max_length=253, description="key in urlSecret holding the CA bundle of a rediss:// server "
        "(empty: the image's system CAs)")
    key_prefix: str = Field(
        "", max_length=200, pattern=r"^[^{}\s]*$",
        description="prefix of every key (no braces, no spaces); default deepdetect:<namespace>/<name>")
    port: int = Field(6379, ge=1, le=65535, description="Redis port, for the NetworkPolicy's egress rule")


class CallbacksSpec(_Model):
    allowed_hosts: list[str] = Field(
        default_factory=list, description="hosts (or *.domain) a job's callback_url may name; empty = no "
        "callbacks")
    secret_name: str = Field(
        "", max_length=253, description="Secret with key 'secrets': 'tenant:secret' lines (or one bare "
        "secret for every tenant) that sign callbacks; required with allowedHosts")
    max_attempts: int = Field(8, ge=1, le=100, description="deliveries tried before giving up")


class JobsSpec(_Model):
    enabled: bool = Field(
        False, description="POST /v1/jobs; more than one replica needs spec.redis (else Degraded, "
        "JobsNeedRedis)")
    result_ttl_seconds: int = Field(86_400, ge=60, alias="resultTTLSeconds",
                                    description="final jobs are kept this long, then 404")
    max_payload_mb: int = Field(50, ge=1, le=1024, alias="maxPayloadMB", description="media kept per job")
    max_queued: int = Field(1000, ge=1, le=1_000_000, description="queued jobs (all replicas); more: 503")
    concurrency: int = Field(1, ge=0, le=64, description="jobs one pod runs at once")
    timeout_seconds: int = Field(600, ge=1, le=86_400, description="scoring deadline of one job")
    lease_seconds: int = Field(
        30, ge=3, le=3600,
        description="a pod that stops renewing its lease this long loses the job to another")
    max_attempts: int = Field(3, ge=1, le=100, description="a job whose pod is lost this many times fails")
    callbacks: CallbacksSpec = Field(default_factory=CallbacksSpec)


class CacheSpec(_Model):
    enabled: bool = Field(True, description="result cache (Redis with spec.redis, else in each pod)")
    ttl_seconds: int = Field(3600, ge=1, description="a cached verdict lives this long")
    max_entries: int = Field(10_000, ge=1, description="in-pod LRU size (without Redis)")
    scope: Literal["tenant", "global"] = Field(
        "tenant", description="tenant: tenants never share verdicts; global: all share")


class TenantLimitsSpec(_Model):
    requests: str | None = Field(None, pattern=RATE_PATTERN, description="overrides rateLimits.requests")
    media: str | None = Field(None, pattern=RATE_PATTERN, description="overrides rateLimits.media")


class RateLimitsSpec(_Model):
    requests: str = Field("", pattern=RATE_PATTERN, description="per tenant, e.g. '600/minute'; '' = none")
    media: str = Field(
        "", pattern=RATE_PATTERN, description="media units per tenant (an image 1, a video its sampled "
        "frames), e.g. '6000/minute'")
    tenants: dict[str, TenantLimitsSpec] = Field(
        default_factory=dict, description="per tenant (API key name) overrides")


class NetworkPolicySpec(_Model):
    enabled: bool = Field(False, description="render a NetworkPolicy for the server pods")
    ingress_from: list[dict[str, Any]] = Field(
        default_factory=list, description="NetworkPolicyPeers (namespaceSelector/podSelector/ipBlock) "
        "allowed to call the API; empty = none besides metricsFrom")
    metrics_from: list[dict[str, Any]] = Field(
        default_factory=list, description="peers allowed to scrape /metrics; empty: the namespace "
        "'monitoring'")
    dns_to: list[dict[str, Any]] = Field(
        default_factory=list, description="where DNS is served (port 53 UDP/TCP); empty: kube-dns pods in "
        "kube-system")
    redis_to: list[dict[str, Any]] = Field(
        default_factory=list, description="peers running Redis (empty: any address on redis.port)")
    checkpoint_store_to: list[dict[str, Any]] = Field(
        default_factory=list, description="peers of the checkpoint store (empty: any address on its port)")
    callbacks_to: list[dict[str, Any]] = Field(
        default_factory=list, description="peers receiving job callbacks (empty: any address on 80/443)")


class ServiceSpec(_Model):
    type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = Field("ClusterIP", description="Service type")
    port: int = Field(80, ge=1, le=65535, description="Service port (targets the pods' 8080)")


class DeepDetectServiceSpec(_Model):
    model: ModelSpec = Field(..., description="the model to serve")
    image: str = Field("", max_length=512, description="server image; the operator's default when empty")
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
    redis: RedisSpec = Field(default_factory=RedisSpec)
    jobs: JobsSpec = Field(default_factory=JobsSpec)
    cache: CacheSpec = Field(default_factory=CacheSpec)
    rate_limits: RateLimitsSpec = Field(default_factory=RateLimitsSpec)
    network_policy: NetworkPolicySpec = Field(default_factory=NetworkPolicySpec)
    media: MediaSpec = Field(default_factory=MediaSpec)

    @model_validator(mode="after")
    def _decode_within_request(self) -> DeepDetectServiceSpec:
        # Mirrors the CEL rule in crd.py: a decode deadline past the request's could never be reached.
        if self.media.limits.decode_timeout_seconds > self.server.request_timeout_seconds:
            raise ValueError("media.limits.decodeTimeoutSeconds must not exceed server.requestTimeoutSeconds")
        return self

    @model_validator(mode="after")
    def _callbacks_signed(self) -> DeepDetectServiceSpec:
        if self.jobs.callbacks.allowed_hosts and not self.jobs.callbacks.secret_name:
            raise ValueError("jobs.callbacks.secretName is required with allowedHosts: callbacks are signed")
        return self

    @model_validator(mode="after")
    def _disruption_fits(self) -> DeepDetectServiceSpec:
        ceiling = self.autoscaling.max_replicas if self.autoscaling.enabled else self.replicas
        if ceiling and self.disruption.min_available > ceiling:
            raise ValueError(
                "disruption.minAvailable must not exceed replicas (or autoscaling.maxReplicas)"
            )
        return self


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


def max_pods(spec: DeepDetectServiceSpec) -> int:
    """The most pods the spec lets exist at once (the HPA's ceiling while autoscaling)."""
    return spec.autoscaling.max_replicas if spec.autoscaling.enabled else spec.replicas


def jobs_need_redis(spec: DeepDetectServiceSpec) -> str | None:
    """Why this spec cannot run jobs as asked (None when it can): pods without a shared store each keep
    their own jobs, so a GET reaching another pod would 404 and a job would die with its pod."""
    if spec.jobs.enabled and not spec.redis.url_secret and max_pods(spec) > 1:
        return (f"jobs.enabled with up to {max_pods(spec)} replicas needs spec.redis.urlSecret: without a "
                "shared store each pod keeps its own jobs (another pod answers 404, a pod's jobs die with "
                "it); set spec.redis, or run one replica")
    return None


def parse_spec(raw: dict[str, Any]) -> DeepDetectServiceSpec:
    """Validate a CR's `spec` (raises pydantic.ValidationError on a bad one)."""
    return DeepDetectServiceSpec.model_validate(raw)

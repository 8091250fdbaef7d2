"""Desired child manifests of a DeepDetectService, computed from its spec: pure, no I/O.

One small builder per child kind (`build_configmap`, `build_service`, `build_deployment`, `build_hpa`,
`build_pdb`, `build_service_monitor`, `build_network_policy`) and `render_children`, which picks the ones
the spec asks for. The reconciler server-side-applies what comes out; the `render` CLI prints it.
Everything the reconciler learned from the cluster (checkpoint digest, secret hash, whether the
ServiceMonitor CRD exists) comes in through `RenderInputs`, so the same inputs always give byte-identical
output and a re-apply is a no-op.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import posixpath
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import yaml

from deepdetect_operator import naming, quantity
from deepdetect_operator.api import (
    ANNOTATION_CHECKPOINT_DIGEST,
    ANNOTATION_CONFIG_HASH,
    ANNOTATION_SECRET_HASH,
    API_VERSION,
    DEFAULT_SERVER_IMAGE,
    KIND,
    DeepDetectServiceSpec,
)

Manifest = dict[str, Any]

# Paths and ports of the server pod (docs/CONTRACTS.md).
HTTP_PORT = 8080
PORT_NAME = "http"
CONFIG_DIR = "/etc/deepdetect"
CONFIG_KEY = "config.yaml"
CONFIG_PATH = f"{CONFIG_DIR}/{CONFIG_KEY}"
MODELS_DIR = "/models"
CHECKPOINT_PATH = f"{MODELS_DIR}/model.safetensors"
AUTH_DIR = "/var/run/deepdetect/auth"
API_KEY_KEY = "api-key"
API_KEY_PATH = f"{AUTH_DIR}/{API_KEY_KEY}"
REDIS_DIR = "/var/run/deepdetect/redis"
REDIS_URL_PATH = f"{REDIS_DIR}/url"
REDIS_CA_PATH = f"{REDIS_DIR}/ca.crt"
CALLBACKS_DIR = "/var/run/deepdetect/callbacks"
CALLBACK_SECRETS_KEY = "secrets"
CALLBACK_SECRETS_PATH = f"{CALLBACKS_DIR}/{CALLBACK_SECRETS_KEY}"
DNS_PORT = 53
SOURCE_DIR = "/mnt/checkpoint-source"  # pvc:// claim / file:// source for `fetch` (its --source-root)
READY_PATH = "/v2/health/ready"
LIVE_PATH = "/v2/health/live"
METRICS_PATH = "/metrics"

RUN_AS_ID = 10001
PRESTOP_SLEEP_S = 5  # let endpoints controllers and kube-proxy drop the pod before the server stops
TERMINATION_SLACK_S = 10  # on top of preStop + the server's own shutdown grace
REVISION_HISTORY_LIMIT = 5
# Exported/quantized graphs, by checkpoint digest: the tmp emptyDir lives as long as the pod, so a restarted
# container reuses them and a new pod (a new checkpoint) starts clean. /models stays read-only.
RUNTIME_CACHE_DIR = "/tmp/runtime-cache"
SAMPLES_PATH = f"{MODELS_DIR}/samples.safetensors"
STARTUP_BUDGET_S = 600  # model load + warm-up may take minutes on a cold GPU node
INFLIGHT_METRIC = "deepdetect_inflight_requests"

# (env var of the `fetch` init container, key in `checkpoint.credentialsSecret`): the same keys the
# operator's checkpoint resolver reads (checkpoints.py), each optional.
CREDENTIAL_ENV = (
    ("AWS_ACCESS_KEY_ID", "AWS_ACCESS_KEY_ID"),
    ("AWS_SECRET_ACCESS_KEY", "AWS_SECRET_ACCESS_KEY"),
    ("AWS_SESSION_TOKEN", "AWS_SESSION_TOKEN"),
    ("AWS_REGION", "AWS_REGION"),
    ("AWS_DEFAULT_REGION", "AWS_DEFAULT_REGION"),
    ("DEEPDETECT_FETCH_TOKEN", "token"),
    ("DEEPDETECT_FETCH_USERNAME", "username"),
    ("DEEPDETECT_FETCH_PASSWORD", "password"),
)


@dataclass(frozen=True)
class RenderInputs:
    """Everything a render depends on; the reconciler fills in what it learned from the cluster."""

    name: str
    namespace: str
    uid: str
    spec: DeepDetectServiceSpec
    default_image: str = DEFAULT_SERVER_IMAGE
    checkpoint_digest: str = ""  # pod-template annotation; fetch gets --sha256 when it is "sha256:<hex>"
    secret_hash: str = ""  # hash of the data of the Secret the pods read
    service_monitor_available: bool = False


# ---------------------------------------------------------------- helpers


def selector_labels(name: str) -> dict[str, str]:
    """Labels that select the instance's pods (Deployment selector, Service selector, status.selector)."""
    return naming.selector_labels(name)


def api_key_secret_name(name: str, spec: DeepDetectServiceSpec) -> str:
    """The user's `auth.secretName`, else the name of the Secret the operator generates."""
    return spec.auth.secret_name or naming.generated_api_key_secret_name(name)


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def secret_data_hash(data: dict[str, str] | None) -> str:
    """Stable hash of a Secret's `data` (for `RenderInputs.secret_hash`); "" when there is none."""
    if not data:
        return ""
    return sha256_text(yaml.safe_dump(dict(sorted(data.items())), sort_keys=True))


def owner_reference(inp: RenderInputs) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": inp.name,
        "uid": inp.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _metadata(inp: RenderInputs, name: str, component: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": inp.namespace,
        "labels": naming.child_labels(inp.name, component),
        "ownerReferences": [owner_reference(inp)],
    }


def _image(inp: RenderInputs) -> str:
    return inp.spec.image or inp.default_image


def _pin_hex(inp: RenderInputs) -> str:
    """The sha256 the fetched bytes must have: the spec's pin, else a resolved sha256 digest, else ""."""
    if inp.spec.model.checkpoint.sha256:
        return inp.spec.model.checkpoint.sha256
    if inp.checkpoint_digest.startswith("sha256:"):
        return inp.checkpoint_digest.removeprefix("sha256:")
    return ""


def shutdown_grace_s(spec: DeepDetectServiceSpec) -> int:
    """In-flight requests end within their own timeout, so the server waits that long on SIGTERM."""
    return spec.server.request_timeout_seconds


def termination_grace_s(spec: DeepDetectServiceSpec) -> int:
    return PRESTOP_SLEEP_S + shutdown_grace_s(spec) + TERMINATION_SLACK_S


def _auth_enabled(spec: DeepDetectServiceSpec) -> bool:
    return spec.auth.mode == "apiKey"


def _redis_enabled(spec: DeepDetectServiceSpec) -> bool:
    return bool(spec.redis.url_secret)


def _callbacks_enabled(spec: DeepDetectServiceSpec) -> bool:
    return spec.jobs.enabled and bool(spec.jobs.callbacks.allowed_hosts)


def redis_key_prefix(inp: RenderInputs) -> str:
    """Keys of one DeepDetectService: two services sharing a Redis never see each other's jobs."""
    return inp.spec.redis.key_prefix or f"deepdetect:{inp.namespace}/{inp.name}"


def _shared_state_config(inp: RenderInputs) -> dict[str, Any]:
    """Redis, jobs, cache and rate-limit settings of config.yaml."""
    spec = inp.spec
    jobs, cache, limits = spec.jobs, spec.cache, spec.rate_limits
    config: dict[str, Any] = {
        "jobs_enabled": jobs.enabled,
        "jobs_result_ttl_s": jobs.result_ttl_seconds,
        "jobs_max_payload_mb": jobs.max_payload_mb,
        "jobs_max_queued": jobs.max_queued,
        "jobs_concurrency": jobs.concurrency,
        "jobs_timeout_s": jobs.timeout_seconds,
        "jobs_lease_s": jobs.lease_seconds,
        "jobs_max_attempts": jobs.max_attempts,
        "cache_enabled": cache.enabled,
        "cache_ttl_s": cache.ttl_seconds,
        "cache_max_entries": cache.max_entries,
        "cache_scope": cache.scope,
        "rate_limit_requests": limits.requests,
        "rate_limit_media": limits.media,
    }
    if limits.tenants:
        config["rate_limit_tenants"] = {
            name: t.model_dump(exclude_none=True) for name, t in sorted(limits.tenants.items())}
    if _redis_enabled(spec):
        config["redis_url_file"] = REDIS_URL_PATH
        config["redis_key_prefix"] = redis_key_prefix(inp)
        if spec.redis.ca_key:
            config["redis_ca_file"] = REDIS_CA_PATH
    if _callbacks_enabled(spec):
        config["callback_allowed_hosts"] = list(jobs.callbacks.allowed_hosts)
        config["callback_secret_file"] = CALLBACK_SECRETS_PATH
        config["callback_max_attempts"] = jobs.callbacks.max_attempts
    return config


# ---------------------------------------------------------------- server config (ConfigMap)


def render_server_config(inp: RenderInputs) -> dict[str, Any]:
    """The config.yaml mapping: `deepdetect_server.config.ServerSettings` fields, snake_case."""
    spec = inp.spec
    config: dict[str, Any] = {
        "model_name": inp.name,
        "checkpoint": CHECKPOINT_PATH,
        "checkpoint_sha256": spec.model.checkpoint.sha256,
        "expect_architecture": spec.model.architecture,
        "expect_input_size": spec.model.input_size,
        "precision": spec.model.precision,
        "runtime": spec.model.runtime,
        "runtime_cache_dir": RUNTIME_CACHE_DIR,
        "device": "auto",
        "max_batch_size": spec.batching.max_batch_size,
        "max_delay_ms": spec.batching.max_delay_ms,
        "max_queue": spec.batching.max_queue,
        "request_timeout_s": spec.server.request_timeout_seconds,
        "max_upload_mb": spec.server.max_upload_mb,
        "auth_mode": spec.auth.mode,
        "host": "0.0.0.0",
        "port": HTTP_PORT,
        "shutdown_grace_s": shutdown_grace_s(spec),
        "log_level": "info",
    }
    if spec.model.threshold is not None:
        config["threshold"] = spec.model.threshold
    if spec.model.samples is not None:
        config["samples"] = SAMPLES_PATH
    if _auth_enabled(spec):
        config["api_key_file"] = API_KEY_PATH
    config.update(_shared_state_config(inp))
    config.update(_media_config(inp))
    return config


def _media_config(inp: RenderInputs) -> dict[str, Any]:
    """The video switch and the limits of config.yaml (rendered even when video is off: one shape)."""
    media, limits = inp.spec.media, inp.spec.media.limits
    return {
        "video_enabled": media.video,
        "video_workers": media.decode_workers,
        "video_worker_memory_mb": media.worker_memory_mb,
        "max_video_mb": limits.max_video_mb,
        "max_video_seconds": limits.max_duration_seconds,
        "max_video_pixels": limits.max_pixels,
        "max_video_fps": limits.max_fps,
        "max_video_streams": limits.max_streams,
        "max_video_frames": limits.max_frames,
        "video_decode_timeout_s": limits.decode_timeout_seconds,
    }


def render_config_yaml(inp: RenderInputs) -> str:
    """config.yaml text, key-sorted so the same spec always hashes the same."""
    return yaml.safe_dump(render_server_config(inp), sort_keys=True, default_flow_style=False)


def config_hash(inp: RenderInputs) -> str:
    return sha256_text(render_config_yaml(inp))


def build_configmap(inp: RenderInputs) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(inp, naming.configmap_name(inp.name), naming.COMPONENT_CONFIG),
        "data": {CONFIG_KEY: render_config_yaml(inp)},
    }


# ---------------------------------------------------------------- API-key Secret


def render_api_key_secret(inp: RenderInputs, api_key: str) -> Manifest:
    """The generated API-key Secret: the reconciler creates it once and never overwrites it."""
    encoded = base64.b64encode(api_key.encode()).decode()
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": _metadata(inp, api_key_secret_name(inp.name, inp.spec), naming.COMPONENT_AUTH),
        "data": {API_KEY_KEY: encoded},
    }


# ---------------------------------------------------------------- Service


def build_service(inp: RenderInputs) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(inp, naming.service_name(inp.name), naming.COMPONENT_INFERENCE),
        "spec": {
            "type": inp.spec.service.type,
            "selector": selector_labels(inp.name),
            "ports": [
                {
                    "name": PORT_NAME,
                    "port": inp.spec.service.port,
                    "targetPort": PORT_NAME,
                    "protocol": "TCP",
                }
            ],
        },
    }


def endpoint(inp: RenderInputs) -> str:
    """In-cluster URL of the Service (for `status.endpoint`)."""
    return f"http://{naming.service_name(inp.name)}.{inp.namespace}.svc:{inp.spec.service.port}"


# ---------------------------------------------------------------- Deployment: pieces


def _restricted_security_context() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_ID,
        "runAsGroup": RUN_AS_ID,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _pod_security_context() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_ID,
        "runAsGroup": RUN_AS_ID,
        "fsGroup": RUN_AS_ID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _resources(spec: DeepDetectServiceSpec) -> dict[str, Any]:
    """Requests = limits, in the canonical form the API server stores (quantity.py)."""
    res = spec.resources
    cpu, memory = quantity.canonical(res.cpu), quantity.canonical(res.memory)
    requests = {"cpu": cpu, "memory": memory}
    limits: dict[str, Any] = {"cpu": cpu, "memory": memory}
    if res.gpus > 0:
        limits[res.gpu_resource] = str(res.gpus)
    return {"requests": requests, "limits": limits}


def _checkpoint_source(inp: RenderInputs) -> tuple[str, Manifest | None]:
    """(URI the fetch container reads, volume holding the source or None) for the spec's checkpoint URI.

    pvc://CLAIM/PATH: the claim is mounted read-only at SOURCE_DIR, where `fetch` looks for pvc:// paths
    (it refuses PATHs that climb out). file:///PATH: the node's file (hostPath, type File) is mounted
    read-only under SOURCE_DIR and fetched as file:// from there. Either way `fetch` verifies and copies
    the bytes like any other source. http(s):// and s3:// pass through.
    """
    uri = inp.spec.model.checkpoint.uri
    parts = urlsplit(uri)
    if parts.scheme == "pvc":
        volume = {
            "name": "checkpoint-source",
            "persistentVolumeClaim": {"claimName": parts.netloc, "readOnly": True},
        }
        return uri, volume
    if parts.scheme == "file":
        host_path = _file_path(uri)
        volume = {"name": "checkpoint-source", "hostPath": {"path": host_path, "type": "File"}}
        return f"file://{SOURCE_DIR}/{posixpath.basename(host_path)}", volume
    return uri, None


def _file_path(uri: str) -> str:
    """Absolute node path of a file:// URI (file:///a/b and file://a/b both mean /a/b)."""
    parts = urlsplit(uri)
    return posixpath.normpath("/" + (parts.netloc + parts.path).lstrip("/"))


def _source_mount_path(inp: RenderInputs) -> str:
    uri = inp.spec.model.checkpoint.uri
    if uri.startswith("file://"):
        return f"{SOURCE_DIR}/{posixpath.basename(_file_path(uri))}"
    return SOURCE_DIR


def _fetch_env(inp: RenderInputs) -> list[dict[str, Any]]:
    ckpt = inp.spec.model.checkpoint
    env: list[dict[str, Any]] = []
    if ckpt.s3_endpoint:
        env.append({"name": "AWS_ENDPOINT_URL", "value": ckpt.s3_endpoint})
    if ckpt.credentials_secret:
        for env_name, key in CREDENTIAL_ENV:
            ref = {"name": ckpt.credentials_secret, "key": key, "optional": True}
            env.append({"name": env_name, "valueFrom": {"secretKeyRef": ref}})
    return env


def build_fetch_container(inp: RenderInputs) -> Manifest:
    """Init container: download (or copy) the checkpoint into the `models` emptyDir and verify it."""
    uri, source_volume = _checkpoint_source(inp)
    command = ["deepdetect-server", "fetch", "--uri", uri]
    pin = _pin_hex(inp)
    if pin:
        command += ["--sha256", pin]
    command += ["--dest", CHECKPOINT_PATH]
    mounts = [{"name": "models", "mountPath": MODELS_DIR}, {"name": "tmp", "mountPath": "/tmp"}]
    if source_volume is not None:
        mounts.append({"name": "checkpoint-source", "mountPath": _source_mount_path(inp), "readOnly": True})
    container: Manifest = {
        "name": "fetch",
        "image": _image(inp),
        "imagePullPolicy": "IfNotPresent",
        "command": command,
        "env": [{"name": "HOME", "value": "/tmp"}, *_fetch_env(inp)],
        "resources": {
            "requests": {"cpu": "100m", "memory": "256Mi"},
            "limits": {"cpu": "1", "memory": "1Gi"},
        },
        "securityContext": _restricted_security_context(),
        "volumeMounts": mounts,
        # fetch writes its failure reason to /dev/termination-log; status shows it (CheckpointFetchFailed).
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    return container


def build_fetch_samples_container(inp: RenderInputs) -> Manifest:
    """Init container for the int8 sample set: the same `fetch` (a packed sample file is safetensors)."""
    samples = inp.spec.model.samples
    assert samples is not None
    command = ["deepdetect-server", "fetch", "--uri", samples.uri]
    if samples.sha256:
        command += ["--sha256", samples.sha256]
    command += ["--dest", SAMPLES_PATH]
    container = build_fetch_container(inp)
    container.update({
        "name": "fetch-samples",
        "command": command,
        "volumeMounts": [{"name": "models", "mountPath": MODELS_DIR}, {"name": "tmp", "mountPath": "/tmp"}],
    })
    return container


def _http_probe(path: str, period: int, failures: int, timeout: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": PORT_NAME, "scheme": "HTTP"},
        "periodSeconds": period,
        "failureThreshold": failures,
        "timeoutSeconds": timeout,
        "successThreshold": 1,
    }


def build_server_container(inp: RenderInputs) -> Manifest:
    mounts = [
        {"name": "models", "mountPath": MODELS_DIR, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "dshm", "mountPath": "/dev/shm"},
        {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
    ]
    if _auth_enabled(inp.spec):
        mounts.append({"name": "api-key", "mountPath": AUTH_DIR, "readOnly": True})
    if _redis_enabled(inp.spec):
        mounts.append({"name": "redis", "mountPath": REDIS_DIR, "readOnly": True})
    if _callbacks_enabled(inp.spec):
        mounts.append({"name": "callbacks", "mountPath": CALLBACKS_DIR, "readOnly": True})
    return {
        "name": "server",
        "image": _image(inp),
        "imagePullPolicy": "IfNotPresent",
        "command": ["deepdetect-server", "serve", "--config", CONFIG_PATH],
        "ports": [{"name": PORT_NAME, "containerPort": HTTP_PORT, "protocol": "TCP"}],
        "env": [
            # Read-only root filesystem: every cache torch/timm/HF might write goes to the tmp emptyDir.
            {"name": "HOME", "value": "/tmp"},
            {"name": "XDG_CACHE_HOME", "value": "/tmp/.cache"},
            {"name": "TORCH_HOME", "value": "/tmp/torch"},
            {"name": "HF_HOME", "value": "/tmp/huggingface"},
        ],
        "resources": _resources(inp.spec),
        "startupProbe": _http_probe(READY_PATH, period=5, failures=STARTUP_BUDGET_S // 5, timeout=2),
        "readinessProbe": _http_probe(READY_PATH, period=5, failures=3, timeout=2),
        "livenessProbe": _http_probe(LIVE_PATH, period=10, failures=3, timeout=5),
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", str(PRESTOP_SLEEP_S)]}}},
        "securityContext": _restricted_security_context(),
        "volumeMounts": mounts,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }


def _volumes(inp: RenderInputs) -> list[Manifest]:
    volumes: list[Manifest] = [
        {"name": "models", "emptyDir": {}},
        {"name": "tmp", "emptyDir": {}},
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}},
        {"name": "config", "configMap": {"name": naming.configmap_name(inp.name)}},
    ]
    if _auth_enabled(inp.spec):
        secret = {
            "secretName": api_key_secret_name(inp.name, inp.spec),
            "items": [{"key": API_KEY_KEY, "path": API_KEY_KEY}],
            "defaultMode": 0o440,
        }
        volumes.append({"name": "api-key", "secret": secret})
    if _redis_enabled(inp.spec):
        redis = inp.spec.redis
        items = [{"key": redis.url_key, "path": "url"}]
        if redis.ca_key:
            items.append({"key": redis.ca_key, "path": "ca.crt"})
        volumes.append({"name": "redis", "secret": {"secretName": redis.url_secret, "items": items,
                                                     "defaultMode": 0o440}})
    if _callbacks_enabled(inp.spec):
        items = [{"key": CALLBACK_SECRETS_KEY, "path": CALLBACK_SECRETS_KEY}]
        volumes.append({"name": "callbacks", "secret": {
            "secretName": inp.spec.jobs.callbacks.secret_name, "items": items, "defaultMode": 0o440}})
    _, source_volume = _checkpoint_source(inp)
    if source_volume is not None:
        volumes.append(source_volume)
    return volumes


def _tolerations(spec: DeepDetectServiceSpec) -> list[dict[str, Any]]:
    """The user's tolerations, plus one for the usual `<gpu resource>:NoSchedule` taint of GPU nodes."""
    tolerations = copy.deepcopy(spec.scheduling.tolerations)
    if spec.resources.gpus > 0 and not any(t.get("key") == spec.resources.gpu_resource for t in tolerations):
        tolerations.append({"key": spec.resources.gpu_resource, "operator": "Exists", "effect": "NoSchedule"})
    return tolerations


def _scheduling(spec: DeepDetectServiceSpec) -> dict[str, Any]:
    sched = spec.scheduling
    out: dict[str, Any] = {}
    if sched.node_selector:
        out["nodeSelector"] = dict(sched.node_selector)
    tolerations = _tolerations(spec)
    if tolerations:
        out["tolerations"] = tolerations
    if sched.affinity:
        out["affinity"] = copy.deepcopy(sched.affinity)  # callers may mutate the output; never the spec
    if sched.priority_class_name:
        out["priorityClassName"] = sched.priority_class_name
    return out


def _pod_annotations(inp: RenderInputs) -> dict[str, str]:
    return {
        ANNOTATION_CHECKPOINT_DIGEST: inp.checkpoint_digest,
        ANNOTATION_CONFIG_HASH: config_hash(inp),
        ANNOTATION_SECRET_HASH: inp.secret_hash,
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(HTTP_PORT),
        "prometheus.io/path": METRICS_PATH,
    }


def build_pod_template(inp: RenderInputs) -> Manifest:
    pod_spec: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": _pod_security_context(),
        "terminationGracePeriodSeconds": termination_grace_s(inp.spec),
        **_scheduling(inp.spec),
        "initContainers": [build_fetch_container(inp),
                           *([build_fetch_samples_container(inp)] if inp.spec.model.samples else [])],
        "containers": [build_server_container(inp)],
        "volumes": _volumes(inp),
    }
    return {
        "metadata": {
            "labels": naming.pod_labels(inp.name, naming.COMPONENT_INFERENCE),
            "annotations": _pod_annotations(inp),
        },
        "spec": pod_spec,
    }


def build_deployment(inp: RenderInputs) -> Manifest:
    """The inference Deployment; no `spec.replicas` while the HPA owns it."""
    spec = inp.spec
    dep_spec: dict[str, Any] = {}
    if not spec.autoscaling.enabled:
        dep_spec["replicas"] = spec.replicas
    dep_spec |= {
        "selector": {"matchLabels": selector_labels(inp.name)},
        "strategy": {
            "type": "RollingUpdate",
            "rollingUpdate": {
                "maxSurge": spec.rollout.max_surge,
                "maxUnavailable": spec.rollout.max_unavailable,
            },
        },
        "progressDeadlineSeconds": spec.rollout.progress_deadline_seconds,
        "revisionHistoryLimit": REVISION_HISTORY_LIMIT,
        "template": build_pod_template(inp),
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(inp, naming.deployment_name(inp.name), naming.COMPONENT_INFERENCE),
        "spec": dep_spec,
    }


# ---------------------------------------------------------------- HPA, PDB, ServiceMonitor


def _hpa_metrics(spec: DeepDetectServiceSpec) -> list[dict[str, Any]]:
    auto = spec.autoscaling
    metrics: list[dict[str, Any]] = [
        {
            "type": "Resource",
            "resource": {
                "name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": auto.target_cpu_utilization},
            },
        }
    ]
    if auto.target_inflight_per_pod > 0:
        metrics.append(
            {
                "type": "Pods",
                "pods": {
                    "metric": {"name": INFLIGHT_METRIC},
                    "target": {"type": "AverageValue", "averageValue": str(auto.target_inflight_per_pod)},
                },
            }
        )
    return metrics


def _hpa_behavior() -> dict[str, Any]:
    """Scale up at once (a GPU pod takes minutes to start), scale down slowly and by halves at most."""
    return {
        "scaleUp": {
            "stabilizationWindowSeconds": 0,
            "selectPolicy": "Max",
            "policies": [
                {"type": "Pods", "value": 4, "periodSeconds": 60},
                {"type": "Percent", "value": 100, "periodSeconds": 60},
            ],
        },
        "scaleDown": {
            "stabilizationWindowSeconds": 300,
            "selectPolicy": "Min",
            "policies": [{"type": "Percent", "value": 50, "periodSeconds": 60}],
        },
    }


def build_hpa(inp: RenderInputs) -> Manifest:
    auto = inp.spec.autoscaling
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _metadata(inp, naming.hpa_name(inp.name), naming.COMPONENT_AUTOSCALER),
        "spec": {
            "scaleTargetRef": {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "name": naming.deployment_name(inp.name),
            },
            "minReplicas": auto.min_replicas,
            "maxReplicas": max(auto.max_replicas, auto.min_replicas),
            "metrics": _hpa_metrics(inp.spec),
            "behavior": _hpa_behavior(),
        },
    }


def guaranteed_replicas(spec: DeepDetectServiceSpec) -> int:
    """Pods the spec always asks for: `replicas`, or the HPA's floor while autoscaling."""
    return spec.autoscaling.min_replicas if spec.autoscaling.enabled else spec.replicas


def _pdb_budget(spec: DeepDetectServiceSpec) -> dict[str, int]:
    """`minAvailable` from the spec, unless it would block every eviction.

    With `minAvailable >= replicas` (the default 1 of 1) a PDB makes `kubectl drain` hang forever. Then we
    render `maxUnavailable: 1` instead: drains proceed one pod at a time. The PDB always exists, so the
    set of children does not change when someone scales.
    """
    min_available = spec.disruption.min_available
    if min_available < guaranteed_replicas(spec):
        return {"minAvailable": min_available}
    return {"maxUnavailable": 1}


def build_pdb(inp: RenderInputs) -> Manifest:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(inp, naming.pdb_name(inp.name), naming.COMPONENT_DISRUPTION),
        "spec": {
            **_pdb_budget(inp.spec),
            "selector": {"matchLabels": selector_labels(inp.name)},
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }


def build_service_monitor(inp: RenderInputs) -> Manifest:
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": _metadata(inp, naming.service_monitor_name(inp.name), naming.COMPONENT_MONITORING),
        "spec": {
            "selector": {
                "matchLabels": {
                    **selector_labels(inp.name),
                    naming.LABEL_COMPONENT: naming.COMPONENT_INFERENCE,
                }
            },
            "namespaceSelector": {"matchNames": [inp.namespace]},
            "endpoints": [{"port": PORT_NAME, "path": METRICS_PATH, "interval": "30s", "scheme": "http"}],
        },
    }


# ---------------------------------------------------------------- NetworkPolicy

# Conventional places of the metrics scraper and of cluster DNS, used when the spec names none.
DEFAULT_METRICS_FROM = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
DEFAULT_DNS_TO = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                   "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}]


def checkpoint_store_port(inp: RenderInputs) -> int | None:
    """The TCP port `fetch` connects to for the checkpoint (None: a file or a claim, no network)."""
    ckpt = inp.spec.model.checkpoint
    scheme = urlsplit(ckpt.uri).scheme
    if scheme in ("file", "pvc"):
        return None
    target = urlsplit(ckpt.s3_endpoint) if scheme == "s3" and ckpt.s3_endpoint else urlsplit(ckpt.uri)
    if target.port:
        return target.port
    return 80 if target.scheme == "http" else 443


def _egress(peers: list[dict[str, Any]], ports: list[tuple[str, int]]) -> dict[str, Any]:
    """One egress rule; without peers it allows any address, but only on these ports."""
    rule: dict[str, Any] = {"ports": [{"protocol": proto, "port": port} for proto, port in ports]}
    if peers:
        rule["to"] = copy.deepcopy(peers)
    return rule


def build_network_policy(inp: RenderInputs) -> Manifest:
    """Ingress only from the peers the spec names plus the metrics scraper; egress only to DNS, Redis,
    the checkpoint store and callback receivers (those the spec uses)."""
    spec, net = inp.spec, inp.spec.network_policy
    http = [{"protocol": "TCP", "port": HTTP_PORT}]
    ingress: list[dict[str, Any]] = []
    if net.ingress_from:
        ingress.append({"from": copy.deepcopy(net.ingress_from), "ports": http})
    ingress.append({"from": copy.deepcopy(net.metrics_from or DEFAULT_METRICS_FROM), "ports": http})
    egress = [_egress(net.dns_to or DEFAULT_DNS_TO, [("UDP", DNS_PORT), ("TCP", DNS_PORT)])]
    if _redis_enabled(spec):
        egress.append(_egress(net.redis_to, [("TCP", spec.redis.port)]))
    store_port = checkpoint_store_port(inp)
    if store_port is not None:
        egress.append(_egress(net.checkpoint_store_to, [("TCP", store_port)]))
    if _callbacks_enabled(spec):
        egress.append(_egress(net.callbacks_to, [("TCP", 443), ("TCP", 80)]))
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(inp, naming.network_policy_name(inp.name), naming.COMPONENT_NETWORK),
        "spec": {
            "podSelector": {"matchLabels": selector_labels(inp.name)},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": ingress,
            "egress": egress,
        },
    }


# ---------------------------------------------------------------- the picker


def render_children(inp: RenderInputs) -> list[Manifest]:
    """All children the spec asks for, except the generated API-key Secret (see `render_api_key_secret`).

    Order: what the pods read first (ConfigMap), the NetworkPolicy (before the pods it fences exist),
    then Service, Deployment, HPA, PDB, ServiceMonitor.
    """
    children = [build_configmap(inp)]
    if inp.spec.network_policy.enabled:
        children.append(build_network_policy(inp))
    children += [build_service(inp), build_deployment(inp)]
    if inp.spec.autoscaling.enabled:
        children.append(build_hpa(inp))
    children.append(build_pdb(inp))
    if inp.spec.monitoring.service_monitor and inp.service_monitor_available:
        children.append(build_service_monitor(inp))
    return children

"""The pure renderer: every child for a table of specs is a valid, labelled, owned, deterministic manifest.

Kubernetes kinds are checked with kubernetes-validate --strict for the oldest and newest versions we
support; the ServiceMonitor (a CRD, unknown to kubernetes-validate) against a small embedded schema; the
ConfigMap's config.yaml with the server's own settings loader.
"""

from __future__ import annotations

import base64
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from deepdetect_operator import naming
from deepdetect_operator.api import API_VERSION, KIND, DeepDetectServiceSpec, parse_spec
from deepdetect_operator.render import (
    API_KEY_PATH,
    CHECKPOINT_PATH,
    SAMPLES_PATH,
    RenderInputs,
    build_deployment,
    config_hash,
    render_api_key_secret,
    render_children,
    render_server_config,
    secret_data_hash,
    shutdown_grace_s,
)
from deepdetect_server.config import load_settings

K8S_VERSIONS = ["1.29.0", "1.33.0"]
HEX = "0123456789abcdef" * 4
HTTPS = "https://models.example/deepdetect/b4.safetensors"
LONG_NAME = "a-very-long-deepdetect-service-name-for-the-trust-and-safety-team-faces-v2"
DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")

# A ServiceMonitor is a CRD kubernetes-validate does not know: check the fields we write, strictly.
SERVICE_MONITOR_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {"type": "object"},
        "spec": {
            "type": "object",
            "required": ["selector", "endpoints"],
            "additionalProperties": False,
            "properties": {
                "selector": {
                    "type": "object",
                    "properties": {
                        "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}}
                    },
                    "additionalProperties": False,
                },
                "namespaceSelector": {
                    "type": "object",
                    "properties": {"matchNames": {"type": "array", "items": {"type": "string"}}},
                    "additionalProperties": False,
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string"},
                            "interval": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                            "scheme": {"enum": ["http", "https"]},
                        },
                    },
                },
            },
        },
    },
}


def spec_of(**overrides: Any) -> DeepDetectServiceSpec:
    raw: dict[str, Any] = {"model": {"checkpoint": {"uri": HTTPS}}}
    for key, value in overrides.items():
        raw[key] = value
    return parse_spec(raw)


def inputs(name: str = "faces", **kwargs: Any) -> RenderInputs:
    spec = kwargs.pop("spec", None) or spec_of()
    return RenderInputs(name=name, namespace="trust-safety", uid="0c6a5f1e-uid", spec=spec, **kwargs)


CASES: dict[str, RenderInputs] = {
    "gpu-default": inputs(checkpoint_digest="sha256:" + HEX, secret_hash="s1"),
    "cpu-only": inputs(
        spec=spec_of(
            model={
                "architecture": "test_efficientnet",
                "inputSize": 160,
                "precision": "fp32",
                "checkpoint": {"uri": HTTPS},
            },
            resources={"gpus": 0, "cpu": "1", "memory": "2Gi"},
            autoscaling={"enabled": False},
            replicas=1,
            auth={"mode": "none"},
        )
    ),
    "autoscaling-off-3": inputs(spec=spec_of(autoscaling={"enabled": False}, replicas=3)),
    "inflight-metric": inputs(spec=spec_of(autoscaling={"targetInflightPerPod": 8, "minReplicas": 2})),
    "pvc": inputs(
        spec=spec_of(model={"checkpoint": {"uri": "pvc://models/b4/model.safetensors", "sha256": HEX}})
    ),
    "hostpath": inputs(
        spec=spec_of(model={"checkpoint": {"uri": "file:///var/lib/deepdetect/b4.safetensors"}})
    ),
    "s3-credentials": inputs(
        spec=spec_of(
            model={
                "checkpoint": {
                    "uri": "s3://bucket/b4.safetensors",
                    "credentialsSecret": "s3-creds",
                    "s3Endpoint": "http://minio.storage.svc:9000",
                }
            },
            auth={"secretName": "my-keys"},
        ),
        checkpoint_digest="etag:abc",
    ),
    "int8-samples": inputs(
        spec=spec_of(
            model={
                "precision": "int8",
                "runtime": "onnxruntime",
                "samples": {"uri": "s3://bucket/samples.safetensors", "sha256": HEX},
                "checkpoint": {"uri": "s3://bucket/b4.safetensors", "credentialsSecret": "s3-creds"},
            },
            resources={"gpus": 0},
        )
    ),
    "long-name": inputs(name=LONG_NAME),
    "dotted-digit-name": inputs(name="2024.faces.v1"),
    "service-monitor": inputs(
        spec=spec_of(monitoring={"serviceMonitor": True}), service_monitor_available=True
    ),
    "scheduling": inputs(
        spec=spec_of(
            scheduling={
                "nodeSelector": {"pool": "gpu"},
                "tolerations": [
                    {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}
                ],
                "affinity": {
                    "nodeAffinity": {
                        "requiredDuringSchedulingIgnoredDuringExecution": {
                            "nodeSelectorTerms": [
                                {"matchExpressions": [{"key": "gpu", "operator": "In", "values": ["a100"]}]}
                            ]
                        }
                    }
                },
                "priorityClassName": "inference",
            },
            service={"type": "LoadBalancer", "port": 8443},
        )
    ),
    "jobs-redis-limits-netpol": inputs(
        spec=spec_of(
            redis={"urlSecret": "redis-url", "caKey": "ca.crt", "port": 6380},
            jobs={"enabled": True, "concurrency": 2, "leaseSeconds": 20,
                  "callbacks": {"allowedHosts": ["hooks.acme.io", "*.example.com"], "secretName": "hooks"}},
            cache={"scope": "global", "ttlSeconds": 600},
            rateLimits={"requests": "10/second;600/minute", "media": "6000/minute",
                        "tenants": {"vip": {"requests": "100/second"}, "trial": {"media": "100/hour"}}},
            networkPolicy={"enabled": True,
                           "ingressFrom": [{"namespaceSelector": {"matchLabels": {"team": "trust"}}},
                                           {"podSelector": {"matchLabels": {"app": "gateway"}}}],
                           "redisTo": [{"namespaceSelector": {"matchLabels": {
                               "kubernetes.io/metadata.name": "data"}}}]},
        )
    ),
    "jobs-single-replica-no-redis": inputs(
        spec=spec_of(jobs={"enabled": True}, autoscaling={"enabled": False}, replicas=1,
                     networkPolicy={"enabled": True},
                     model={"checkpoint": {"uri": "pvc://models/b4/model.safetensors", "sha256": HEX}})
    ),
    "video": inputs(spec=spec_of(media={"video": True, "decodeWorkers": 3, "workerMemoryMB": 1024, "limits": {
        "maxVideoMB": 100, "maxDurationSeconds": 120, "maxPixels": 1280 * 720, "maxFps": 60, "maxStreams": 2,
        "maxFrames": 16, "decodeTimeoutSeconds": 10}})),
}
IDS = list(CASES)
ALL = list(CASES.values())


def by_kind(children: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    kinds = [c["kind"] for c in children]
    assert len(kinds) == len(set(kinds)), kinds
    return {c["kind"]: c for c in children}


def validate_strict(obj: dict[str, Any]) -> None:
    if obj["kind"] == "ServiceMonitor":
        jsonschema.validate(obj, SERVICE_MONITOR_SCHEMA)
        return
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(obj, version, strict=True)


@pytest.mark.parametrize("inp", ALL, ids=IDS)
def test_every_child_validates_strict(inp: RenderInputs) -> None:
    for child in render_children(inp):
        validate_strict(child)
    validate_strict(render_api_key_secret(inp, "k3y"))


@pytest.mark.parametrize("inp", ALL, ids=IDS)
def test_every_child_is_labelled_owned_and_short_named(inp: RenderInputs) -> None:
    for child in [*render_children(inp), render_api_key_secret(inp, "k3y")]:
        meta = child["metadata"]
        assert len(meta["name"]) <= 63 and DNS1123.match(meta["name"]), meta["name"]
        assert meta["namespace"] == "trust-safety"
        labels = meta["labels"]
        assert labels[naming.LABEL_NAME] == "deepdetect-server"
        assert labels[naming.LABEL_MANAGED_BY] == "deepdetect-operator"
        assert labels[naming.LABEL_INSTANCE] == naming.label_value(inp.name)
        assert labels[naming.LABEL_COMPONENT] and labels[naming.LABEL_VERSION]
        assert all(LABEL_VALUE.match(v) and len(v) <= 63 for v in labels.values()), labels
        assert meta["ownerReferences"] == [
            {
                "apiVersion": API_VERSION,
                "kind": KIND,
                "name": inp.name,
                "uid": inp.uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
        if child["kind"] == "Service":
            assert DNS1035.match(meta["name"]), meta["name"]


@pytest.mark.parametrize("inp", ALL, ids=IDS)
def test_render_is_deterministic(inp: RenderInputs) -> None:
    again = replace(inp, spec=DeepDetectServiceSpec.model_validate(inp.spec.model_dump(by_alias=True)))
    first = yaml.safe_dump_all(render_children(inp))
    assert first == yaml.safe_dump_all(render_children(again))
    assert first == yaml.safe_dump_all(render_children(inp))


@pytest.mark.parametrize("inp", ALL, ids=IDS)
def test_config_yaml_loads_in_server_settings(inp: RenderInputs, tmp_path: Path) -> None:
    configmap = by_kind(render_children(inp))["ConfigMap"]
    path = tmp_path / "config.yaml"
    path.write_text(configmap["data"]["config.yaml"])
    settings = load_settings(path)
    spec = inp.spec
    assert settings.model_name == inp.name
    assert str(settings.checkpoint) == CHECKPOINT_PATH
    assert settings.checkpoint_sha256 == spec.model.checkpoint.sha256
    assert settings.precision == spec.model.precision
    assert settings.expect_architecture == spec.model.architecture
    assert settings.expect_input_size == spec.model.input_size
    assert settings.threshold == spec.model.threshold
    assert settings.max_batch_size == spec.batching.max_batch_size
    assert settings.max_delay_ms == spec.batching.max_delay_ms
    assert settings.max_queue == spec.batching.max_queue
    assert settings.request_timeout_s == spec.server.request_timeout_seconds
    assert settings.max_upload_mb == spec.server.max_upload_mb
    assert settings.auth_mode == spec.auth.mode
    assert settings.port == 8080 and settings.device == "auto"
    assert settings.runtime == spec.model.runtime
    assert settings.runtime_cache_dir is not None and str(settings.runtime_cache_dir).startswith("/tmp/")
    if spec.model.samples is not None:
        assert str(settings.samples) == SAMPLES_PATH
    else:
        assert settings.samples is None
    if spec.auth.mode == "apiKey":
        assert str(settings.api_key_file) == API_KEY_PATH
    else:
        assert settings.api_key_file is None
    assert settings.jobs_enabled == spec.jobs.enabled
    assert settings.jobs_lease_s == spec.jobs.lease_seconds
    assert settings.jobs_concurrency == spec.jobs.concurrency
    assert settings.jobs_result_ttl_s == spec.jobs.result_ttl_seconds
    assert settings.cache_enabled == spec.cache.enabled and settings.cache_scope == spec.cache.scope
    assert settings.rate_limit_requests == spec.rate_limits.requests
    assert settings.rate_limit_media == spec.rate_limits.media
    assert {n: t.model_dump() for n, t in settings.rate_limit_tenants.items()} == {
        n: t.model_dump() for n, t in spec.rate_limits.tenants.items()}
    if spec.redis.url_secret:
        assert str(settings.redis_url_file) == "/var/run/deepdetect/redis/url"
        assert settings.redis_key_prefix == f"deepdetect:trust-safety/{inp.name}"
    else:
        assert settings.redis_url_file is None and settings.redis_key_prefix == ""
    assert settings.callback_allowed_hosts == (spec.jobs.callbacks.allowed_hosts if spec.jobs.enabled else [])
    media, limits = spec.media, spec.media.limits
    assert settings.video_enabled == media.video and settings.video_workers == media.decode_workers
    assert settings.video_worker_memory_mb == media.worker_memory_mb
    assert (settings.max_video_mb, settings.max_video_seconds, settings.max_video_pixels,
            settings.max_video_fps, settings.max_video_streams, settings.max_video_frames,
            settings.video_decode_timeout_s) == (
        limits.max_video_mb, limits.max_duration_seconds, limits.max_pixels, limits.max_fps,
        limits.max_streams, limits.max_frames, limits.decode_timeout_seconds)


def test_config_keys_are_server_settings_fields() -> None:
    from deepdetect_server.config import ServerSettings

    inp = inputs(spec=spec_of(model={"threshold": 0.4, "checkpoint": {"uri": HTTPS}}))
    assert set(render_server_config(inp)) <= set(ServerSettings.model_fields)


@pytest.mark.parametrize("inp", ALL, ids=IDS)
def test_replicas_only_without_hpa(inp: RenderInputs) -> None:
    kinds = by_kind(render_children(inp))
    deployment = kinds["Deployment"]
    if inp.spec.autoscaling.enabled:
        assert "replicas" not in deployment["spec"]
        hpa = kinds["HorizontalPodAutoscaler"]
        assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
        assert hpa["spec"]["minReplicas"] == inp.spec.autoscaling.min_replicas
    else:
        assert deployment["spec"]["replicas"] == inp.spec.replicas
        assert "HorizontalPodAutoscaler" not in kinds


def test_inflight_metric_only_when_asked() -> None:
    plain = by_kind(render_children(CASES["gpu-default"]))["HorizontalPodAutoscaler"]
    assert [m["type"] for m in plain["spec"]["metrics"]] == ["Resource"]
    hpa = by_kind(render_children(CASES["inflight-metric"]))["HorizontalPodAutoscaler"]
    pods = [m["pods"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    assert pods == [
        {
            "metric": {"name": "deepdetect_inflight_requests"},
            "target": {"type": "AverageValue", "averageValue": "8"},
        }
    ]
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 60


def pod_spec(inp: RenderInputs) -> dict[str, Any]:
    return build_deployment(inp)["spec"]["template"]["spec"]


def container(inp: RenderInputs, name: str) -> dict[str, Any]:
    spec = pod_spec(inp)
    return next(c for c in [*spec["containers"], *spec["initContainers"]] if c["name"] == name)


def test_gpu_limits_and_default_toleration() -> None:
    server = container(CASES["gpu-default"], "server")
    assert server["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert server["resources"]["requests"] == {"cpu": "4", "memory": "16Gi"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod_spec(
        CASES["gpu-default"]
    )["tolerations"]
    cpu = CASES["cpu-only"]
    assert not any("gpu" in k for k in container(cpu, "server")["resources"]["limits"])
    assert "tolerations" not in pod_spec(cpu)


def test_custom_gpu_resource_name() -> None:
    inp = inputs(spec=spec_of(resources={"gpus": 2, "gpuResource": "amd.com/gpu"}))
    assert container(inp, "server")["resources"]["limits"]["amd.com/gpu"] == "2"


def test_scheduling_fields_pass_through() -> None:
    inp = CASES["scheduling"]
    spec = pod_spec(inp)
    assert spec["nodeSelector"] == {"pool": "gpu"}
    assert spec["priorityClassName"] == "inference"
    assert spec["affinity"] == inp.spec.scheduling.affinity
    assert inp.spec.scheduling.tolerations[0] in spec["tolerations"]


def test_server_container_probes_security_and_shutdown() -> None:
    inp = CASES["gpu-default"]
    server = container(inp, "server")
    assert server["command"] == ["deepdetect-server", "serve", "--config", "/etc/deepdetect/config.yaml"]
    assert server["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert server["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert server["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert server["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    for c in (server, container(inp, "fetch")):
        sc = c["securityContext"]
        assert sc["runAsNonRoot"] and sc["runAsUser"] == 10001 and sc["readOnlyRootFilesystem"]
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    spec = pod_spec(inp)
    assert spec["automountServiceAccountToken"] is False
    prestop = int(server["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert spec["terminationGracePeriodSeconds"] > prestop + shutdown_grace_s(inp.spec)
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["models"] == {"name": "models", "emptyDir": {}}
    assert volumes["dshm"]["emptyDir"]["medium"] == "Memory"
    assert volumes["api-key"]["secret"]["secretName"] == "faces-api-key"
    mounts = {m["mountPath"]: m for m in server["volumeMounts"]}
    assert mounts["/var/run/deepdetect/auth"]["readOnly"] is True
    assert {"/models", "/tmp", "/dev/shm", "/etc/deepdetect"} <= set(mounts)


def test_no_api_key_volume_without_auth() -> None:
    names = {v["name"] for v in pod_spec(CASES["cpu-only"])["volumes"]}
    assert "api-key" not in names


def test_user_secret_name_is_mounted() -> None:
    volumes = {v["name"]: v for v in pod_spec(CASES["s3-credentials"])["volumes"]}
    assert volumes["api-key"]["secret"]["secretName"] == "my-keys"


FETCH_CASES = [
    ("digest-sha256", CASES["gpu-default"], HTTPS, HEX),
    ("digest-etag", CASES["s3-credentials"], "s3://bucket/b4.safetensors", None),
    (
        "pin-wins",
        inputs(spec=CASES["pvc"].spec, checkpoint_digest="sha256:" + "f" * 64),
        "pvc://models/b4/model.safetensors",
        HEX,
    ),
    ("hostpath", CASES["hostpath"], "file:///mnt/checkpoint-source/b4.safetensors", None),
]


@pytest.mark.parametrize(("inp", "uri", "sha"), [c[1:] for c in FETCH_CASES], ids=[c[0] for c in FETCH_CASES])
def test_fetch_init_container_command(inp: RenderInputs, uri: str, sha: str | None) -> None:
    command = container(inp, "fetch")["command"]
    expected = ["deepdetect-server", "fetch", "--uri", uri]
    if sha:
        expected += ["--sha256", sha]
    assert command == [*expected, "--dest", "/models/model.safetensors"]


def test_pvc_and_hostpath_sources_are_read_only() -> None:
    pvc = {v["name"]: v for v in pod_spec(CASES["pvc"])["volumes"]}["checkpoint-source"]
    assert pvc["persistentVolumeClaim"] == {"claimName": "models", "readOnly": True}
    host = {v["name"]: v for v in pod_spec(CASES["hostpath"])["volumes"]}["checkpoint-source"]
    assert host["hostPath"] == {"path": "/var/lib/deepdetect/b4.safetensors", "type": "File"}
    for case in ("pvc", "hostpath"):
        mounts = {m["name"]: m for m in container(CASES[case], "fetch")["volumeMounts"]}
        assert mounts["checkpoint-source"]["readOnly"] is True
        assert "checkpoint-source" not in {
            m["name"] for m in container(CASES[case], "server")["volumeMounts"]
        }


def test_s3_credentials_are_optional_secret_refs() -> None:
    env = {e["name"]: e for e in container(CASES["s3-credentials"], "fetch")["env"]}
    assert env["AWS_ENDPOINT_URL"]["value"] == "http://minio.storage.svc:9000"
    ref = env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "s3-creds", "key": "AWS_ACCESS_KEY_ID", "optional": True}
    assert "AWS_ACCESS_KEY_ID" not in {e["name"] for e in container(CASES["gpu-default"], "fetch")["env"]}


def test_pod_template_annotations() -> None:
    inp = CASES["gpu-default"]
    annotations = build_deployment(inp)["spec"]["template"]["metadata"]["annotations"]
    assert annotations["deepdetect.io/checkpoint-digest"] == "sha256:" + HEX
    assert annotations["deepdetect.io/config-hash"] == config_hash(inp)
    assert annotations["deepdetect.io/secret-hash"] == "s1"
    assert annotations["prometheus.io/scrape"] == "true"


def test_strategy_and_deadline_from_rollout() -> None:
    inp = inputs(spec=spec_of(rollout={"maxSurge": 2, "maxUnavailable": 1, "progressDeadlineSeconds": 120}))
    spec = build_deployment(inp)["spec"]
    assert spec["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 2, "maxUnavailable": 1},
    }
    assert spec["progressDeadlineSeconds"] == 120
    assert spec["revisionHistoryLimit"] > 0


SAME_CONFIG = [
    ("replicas", {"autoscaling": {"enabled": False}, "replicas": 4}),
    ("image", {"image": "registry.example/dd:2"}),
    ("gpus", {"resources": {"gpus": 2}}),
    ("rollout", {"rollout": {"maxSurge": 3}}),
]
OTHER_CONFIG = [
    ("batching", {"batching": {"maxBatchSize": 8}}),
    ("precision", {"model": {"precision": "bf16", "checkpoint": {"uri": HTTPS}}}),
    ("threshold", {"model": {"threshold": 0.3, "checkpoint": {"uri": HTTPS}}}),
    ("auth", {"auth": {"mode": "none"}}),
    ("timeout", {"server": {"requestTimeoutSeconds": 60}}),
]


@pytest.mark.parametrize("change", [c for _, c in SAME_CONFIG], ids=[i for i, _ in SAME_CONFIG])
def test_config_hash_ignores_what_the_config_does_not_hold(change: dict[str, Any]) -> None:
    base = inputs()
    assert config_hash(inputs(spec=spec_of(**change))) == config_hash(base)
    assert config_hash(replace(base, checkpoint_digest="sha256:" + "1" * 64, secret_hash="x")) == config_hash(
        base
    )


@pytest.mark.parametrize("change", [c for _, c in OTHER_CONFIG], ids=[i for i, _ in OTHER_CONFIG])
def test_config_hash_follows_the_config(change: dict[str, Any]) -> None:
    assert config_hash(inputs(spec=spec_of(**change))) != config_hash(inputs())


PDB_CASES = [
    ("one-replica-default", {"autoscaling": {"enabled": False}, "replicas": 1}, {"maxUnavailable": 1}),
    ("three-replicas", {"autoscaling": {"enabled": False}, "replicas": 3}, {"minAvailable": 1}),
    ("hpa-floor-1", {}, {"maxUnavailable": 1}),
    (
        "hpa-floor-3",
        {"autoscaling": {"minReplicas": 3}, "disruption": {"minAvailable": 2}},
        {"minAvailable": 2},
    ),
    (
        "min-zero",
        {"autoscaling": {"enabled": False}, "replicas": 1, "disruption": {"minAvailable": 0}},
        {"minAvailable": 0},
    ),
]


@pytest.mark.parametrize(("change", "budget"), [c[1:] for c in PDB_CASES], ids=[c[0] for c in PDB_CASES])
def test_pdb_never_blocks_every_eviction(change: dict[str, Any], budget: dict[str, int]) -> None:
    pdb = by_kind(render_children(inputs(spec=spec_of(**change))))["PodDisruptionBudget"]
    assert {k: v for k, v in pdb["spec"].items() if k in ("minAvailable", "maxUnavailable")} == budget
    assert pdb["spec"]["selector"]["matchLabels"] == naming.selector_labels("faces")


def test_service_targets_the_named_port() -> None:
    service = by_kind(render_children(CASES["scheduling"]))["Service"]
    assert service["spec"]["type"] == "LoadBalancer"
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 8443, "targetPort": "http", "protocol": "TCP"}
    ]
    deployment = by_kind(render_children(CASES["scheduling"]))["Deployment"]
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]


@pytest.mark.parametrize(
    ("requested", "available", "present"),
    [(True, True, True), (True, False, False), (False, True, False)],
)
def test_service_monitor_only_when_asked_and_available(
    requested: bool, available: bool, present: bool
) -> None:
    inp = inputs(spec=spec_of(monitoring={"serviceMonitor": requested}), service_monitor_available=available)
    assert ("ServiceMonitor" in by_kind(render_children(inp))) is present


def test_api_key_secret() -> None:
    inp = CASES["gpu-default"]
    secret = render_api_key_secret(inp, "s3cr3t")
    assert secret["metadata"]["name"] == "faces-api-key"
    assert secret["type"] == "Opaque"
    assert base64.b64decode(secret["data"]["api-key"]).decode() == "s3cr3t"
    assert secret_data_hash(secret["data"]) == secret_data_hash(dict(secret["data"]))
    assert secret_data_hash({}) == ""


def test_long_names_are_shortened_uniquely() -> None:
    other = LONG_NAME[:-1] + "3"
    a, b = render_children(inputs(name=LONG_NAME)), render_children(inputs(name=other))
    for x, y in zip(a, b, strict=True):
        assert x["metadata"]["name"] != y["metadata"]["name"]
        assert len(x["metadata"]["name"]) <= 63
    assert naming.shorten("short") == "short"
    assert naming.service_name("2024.faces.v1")[0].isalpha()


def test_output_does_not_alias_the_spec() -> None:
    inp = CASES["scheduling"]
    before = inp.spec.model_dump()
    for child in render_children(inp):
        if child["kind"] == "Deployment":
            pod = child["spec"]["template"]["spec"]
            pod["affinity"].clear()
            pod["tolerations"][0]["key"] = "mutated"
    assert inp.spec.model_dump() == before


def _pod(inp: RenderInputs) -> dict[str, Any]:
    return by_kind(render_children(inp))["Deployment"]["spec"]["template"]["spec"]


def test_redis_and_callback_secrets_are_mounted_read_only() -> None:
    pod = _pod(CASES["jobs-redis-limits-netpol"])
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["redis"]["secret"] == {"secretName": "redis-url", "defaultMode": 0o440, "items": [
        {"key": "url", "path": "url"}, {"key": "ca.crt", "path": "ca.crt"}]}
    assert volumes["callbacks"]["secret"]["secretName"] == "hooks"
    mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
    assert mounts["redis"] == {"name": "redis", "mountPath": "/var/run/deepdetect/redis", "readOnly": True}
    assert mounts["callbacks"]["readOnly"] is True
    assert "redis" not in {v["name"] for v in _pod(inputs())["volumes"]}
    config = render_server_config(CASES["jobs-redis-limits-netpol"])
    assert config["redis_ca_file"] == "/var/run/deepdetect/redis/ca.crt"
    assert config["callback_secret_file"] == "/var/run/deepdetect/callbacks/secrets"
    text = yaml.safe_dump(config)
    assert "redis://" not in text and "rediss://" not in text  # the URL stays in its Secret


def test_network_policy_fences_ingress_and_egress() -> None:
    policy = by_kind(render_children(CASES["jobs-redis-limits-netpol"]))["NetworkPolicy"]["spec"]
    assert policy["podSelector"] == {"matchLabels": naming.selector_labels("faces")}
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    api, scrape = policy["ingress"]
    assert api["from"] == [{"namespaceSelector": {"matchLabels": {"team": "trust"}}},
                           {"podSelector": {"matchLabels": {"app": "gateway"}}}]
    assert api["ports"] == scrape["ports"] == [{"protocol": "TCP", "port": 8080}]
    monitoring = {"kubernetes.io/metadata.name": "monitoring"}
    assert scrape["from"] == [{"namespaceSelector": {"matchLabels": monitoring}}]
    dns, redis, store, callbacks = policy["egress"]
    assert dns["ports"] == [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]
    assert dns["to"][0]["podSelector"] == {"matchLabels": {"k8s-app": "kube-dns"}}
    assert redis == {"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "data"}}}],
                     "ports": [{"protocol": "TCP", "port": 6380}]}
    assert store == {"ports": [{"protocol": "TCP", "port": 443}]}  # https checkpoint, no peers named
    assert callbacks["ports"] == [{"protocol": "TCP", "port": 443}, {"protocol": "TCP", "port": 80}]


def test_network_policy_opens_only_what_the_spec_uses() -> None:
    policy = by_kind(render_children(CASES["jobs-single-replica-no-redis"]))["NetworkPolicy"]["spec"]
    assert len(policy["ingress"]) == 1  # no ingressFrom: only the scraper may connect
    assert [rule["ports"][0]["port"] for rule in policy["egress"]] == [53]  # pvc://: no store, no Redis
    s3 = inputs(spec=spec_of(networkPolicy={"enabled": True}, model={"checkpoint": {
        "uri": "s3://bucket/b4.safetensors", "s3Endpoint": "http://minio.storage.svc:9000"}}))
    egress = by_kind(render_children(s3))["NetworkPolicy"]["spec"]["egress"]
    assert egress[-1] == {"ports": [{"protocol": "TCP", "port": 9000}]}
    assert "NetworkPolicy" not in by_kind(render_children(inputs()))


def test_jobs_need_redis_only_with_several_replicas() -> None:
    from deepdetect_operator.api import jobs_need_redis

    assert jobs_need_redis(spec_of(jobs={"enabled": True})) is not None  # the HPA may scale to 8
    assert jobs_need_redis(spec_of(jobs={"enabled": True}, autoscaling={"maxReplicas": 1})) is None
    one = spec_of(jobs={"enabled": True}, autoscaling={"enabled": False}, replicas=1)
    assert jobs_need_redis(one) is None
    assert jobs_need_redis(spec_of(jobs={"enabled": True}, redis={"urlSecret": "r"})) is None
    assert jobs_need_redis(spec_of()) is None  # jobs off (the default)


def test_int8_samples_are_fetched_and_verified_by_a_second_init_container() -> None:
    deployment = by_kind(render_children(CASES["int8-samples"]))["Deployment"]
    init = deployment["spec"]["template"]["spec"]["initContainers"]
    assert [c["name"] for c in init] == ["fetch", "fetch-samples"]
    samples = init[1]
    assert samples["command"] == ["deepdetect-server", "fetch", "--uri", "s3://bucket/samples.safetensors",
                                  "--sha256", HEX, "--dest", SAMPLES_PATH]
    # The same credentials as the checkpoint: one bucket, one secret.
    assert samples["env"] == init[0]["env"]
    plain = by_kind(render_children(CASES["cpu-only"]))["Deployment"]
    assert [c["name"] for c in plain["spec"]["template"]["spec"]["initContainers"]] == ["fetch"]

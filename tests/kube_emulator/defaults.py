"""Defaults a real API server fills into built-in kinds before storing them.

Each function names its source in kubernetes/kubernetes (v1.36):
- `pkg/apis/core/v1/defaults.go`: SetDefaults_PodSpec, _Container, _Probe, _HTTPGetAction, _Volume and its
  sources, _Service, _Secret, _Namespace, _Pod, _ObjectFieldSelector; `zz_generated.defaults.go` adds the
  declarative ones (ContainerPort and ServicePort `protocol: TCP`) and says which apply to a pod template;
- `pkg/apis/apps/v1/defaults.go`: SetDefaults_Deployment, _ReplicaSet, _StatefulSet, _DaemonSet;
- `pkg/apis/batch/v1/defaults.go`: SetDefaults_Job, plus the Job strategy's generated selector
  (`pkg/registry/batch/job/strategy.go`, generateSelector);
- `pkg/apis/autoscaling/v2/defaults.go`: SetDefaults_HorizontalPodAutoscaler and its scaling rules;
- `pkg/registry/core/service/storage` (IP allocation: clusterIP, clusterIPs, ipFamilies, ipFamilyPolicy)
  and `pkg/registry/core/namespace/strategy.go` (the `kubernetes` finalizer, phase Active).

They matter to an operator that compares what it applied with what it reads back: everything here shows
up in the live object although nobody sent it.
"""

from __future__ import annotations

import base64
import copy
import itertools
from typing import Any

Obj = dict[str, Any]

_TEMPLATE_PATHS: dict[tuple[str, str], tuple[str, ...]] = {
    ("apps", "Deployment"): ("spec", "template"),
    ("apps", "ReplicaSet"): ("spec", "template"),
    ("apps", "StatefulSet"): ("spec", "template"),
    ("apps", "DaemonSet"): ("spec", "template"),
    ("batch", "Job"): ("spec", "template"),
    ("batch", "CronJob"): ("spec", "jobTemplate", "spec", "template"),
    ("", "PodTemplate"): ("template",),
    ("", "ReplicationController"): ("spec", "template"),
}


def _dig(obj: Obj, path: tuple[str, ...]) -> Obj | None:
    node: Any = obj
    for key in path:
        node = node.get(key) if isinstance(node, dict) else None
    return node if isinstance(node, dict) else None


def _image_tag(image: str) -> str:
    """parsers.ParseImageName's tag: `latest` when none is given, "" for a digest-only reference."""
    name, _, digest = image.partition("@")
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        return last.rsplit(":", 1)[1]
    return "" if digest else "latest"


def _http_get(action: Obj | None) -> None:
    if isinstance(action, dict):
        if not action.get("path"):
            action["path"] = "/"
        if not action.get("scheme"):
            action["scheme"] = "HTTP"


def _probe(probe: Obj | None) -> None:
    """SetDefaults_Probe (zero means unset), then the HTTP action's defaults."""
    if not isinstance(probe, dict):
        return
    for key, value in (
        ("timeoutSeconds", 1),
        ("periodSeconds", 10),
        ("successThreshold", 1),
        ("failureThreshold", 3),
    ):
        if not probe.get(key):
            probe[key] = value
    _http_get(probe.get("httpGet"))


def _field_ref(source: Obj | None) -> None:
    ref = (source or {}).get("fieldRef")
    if isinstance(ref, dict) and not ref.get("apiVersion"):
        ref["apiVersion"] = "v1"


def _container(c: Obj) -> None:
    """SetDefaults_Container, plus what zz_generated.defaults.go runs for each container."""
    if not c.get("imagePullPolicy"):
        c["imagePullPolicy"] = "Always" if _image_tag(str(c.get("image", ""))) == "latest" else "IfNotPresent"
    if not c.get("terminationMessagePath"):
        c["terminationMessagePath"] = "/dev/termination-log"
    if not c.get("terminationMessagePolicy"):
        c["terminationMessagePolicy"] = "File"
    c.setdefault("resources", {})  # a non-pointer struct: always serialized, `{}` when empty
    for port in c.get("ports") or []:
        if not port.get("protocol"):
            port["protocol"] = "TCP"
    for env in c.get("env") or []:
        _field_ref(env.get("valueFrom"))
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        _probe(c.get(probe))
    for hook in ((c.get("lifecycle") or {}).get(h) for h in ("postStart", "preStop")):
        _http_get((hook or {}).get("httpGet"))


_VOLUME_SOURCES = {"secret", "configMap", "downwardAPI", "projected"}


def _volume(v: Obj) -> None:
    """SetDefaults_Volume (no source: an emptyDir) and the per-source defaults (mode 0644 = 420)."""
    if not set(v) - {"name"}:
        v["emptyDir"] = {}
    for source in _VOLUME_SOURCES & set(v):
        if isinstance(v[source], dict) and v[source].get("defaultMode") is None:
            v[source]["defaultMode"] = 420
    if isinstance(v.get("hostPath"), dict) and "type" not in v["hostPath"]:
        v["hostPath"]["type"] = ""  # HostPathUnset
    for item in (v.get("downwardAPI") or {}).get("items") or []:
        _field_ref(item)
    for source in (v.get("projected") or {}).get("sources") or []:
        for item in (source.get("downwardAPI") or {}).get("items") or []:
            _field_ref(item)
        token = source.get("serviceAccountToken")
        if isinstance(token, dict) and token.get("expirationSeconds") is None:
            token["expirationSeconds"] = 3600


def pod_spec(spec: Obj) -> None:
    """SetDefaults_PodSpec and everything below it (volumes, containers, probes)."""
    defaults = (
        ("dnsPolicy", "ClusterFirst"),
        ("restartPolicy", "Always"),
        ("schedulerName", "default-scheduler"),
    )
    for key, value in defaults:
        if not spec.get(key):
            spec[key] = value
    if spec.get("securityContext") is None:
        spec["securityContext"] = {}
    if spec.get("terminationGracePeriodSeconds") is None:
        spec["terminationGracePeriodSeconds"] = 30
    for volume in spec.get("volumes") or []:
        if isinstance(volume, dict):
            _volume(volume)
    for c in itertools.chain(
        *(spec.get(k) or [] for k in ("initContainers", "containers", "ephemeralContainers"))
    ):
        if isinstance(c, dict):
            _container(c)


def _pod(pod: Obj) -> None:
    """SetDefaults_Pod: requests default to limits, service links on; the strategy sets phase Pending."""
    spec = pod.setdefault("spec", {})
    for c in itertools.chain(spec.get("containers") or [], spec.get("initContainers") or []):
        limits = (c.get("resources") or {}).get("limits")
        if limits:
            requests = c.setdefault("resources", {}).setdefault("requests", {})
            for key, value in limits.items():
                requests.setdefault(key, value)
    if spec.get("enableServiceLinks") is None:
        spec["enableServiceLinks"] = True
    pod_spec(spec)


def _deployment(obj: Obj) -> None:
    spec = obj.setdefault("spec", {})
    if spec.get("replicas") is None:
        spec["replicas"] = 1
    strategy = spec.setdefault("strategy", {})
    if not strategy.get("type"):
        strategy["type"] = "RollingUpdate"
    if strategy["type"] == "RollingUpdate":
        rolling = strategy.get("rollingUpdate")
        if not isinstance(rolling, dict):
            rolling = strategy["rollingUpdate"] = {}
        for key in ("maxUnavailable", "maxSurge"):
            if rolling.get(key) is None:
                rolling[key] = "25%"
    if spec.get("revisionHistoryLimit") is None:
        spec["revisionHistoryLimit"] = 10
    if spec.get("progressDeadlineSeconds") is None:
        spec["progressDeadlineSeconds"] = 600


def _replica_set(obj: Obj) -> None:
    spec = obj.setdefault("spec", {})
    if spec.get("replicas") is None:
        spec["replicas"] = 1


def _stateful_set(obj: Obj) -> None:
    spec = obj.setdefault("spec", {})
    spec.setdefault("podManagementPolicy", "OrderedReady")
    update = spec.setdefault("updateStrategy", {})
    if not update.get("type"):
        update["type"] = "RollingUpdate"
        update.setdefault("rollingUpdate", {})
    if update["type"] == "RollingUpdate" and isinstance(update.get("rollingUpdate"), dict):
        update["rollingUpdate"].setdefault("partition", 0)
    policy = spec.setdefault("persistentVolumeClaimRetentionPolicy", {})
    policy.setdefault("whenDeleted", "Retain")
    policy.setdefault("whenScaled", "Retain")
    if spec.get("replicas") is None:
        spec["replicas"] = 1
    if spec.get("revisionHistoryLimit") is None:
        spec["revisionHistoryLimit"] = 10


def _daemon_set(obj: Obj) -> None:
    spec = obj.setdefault("spec", {})
    update = spec.setdefault("updateStrategy", {})
    if not update.get("type"):
        update["type"] = "RollingUpdate"
    if update["type"] == "RollingUpdate":
        rolling = update.setdefault("rollingUpdate", {})
        rolling.setdefault("maxUnavailable", 1)
        rolling.setdefault("maxSurge", 0)
    if spec.get("revisionHistoryLimit") is None:
        spec["revisionHistoryLimit"] = 10


JOB_UID_LABEL = "batch.kubernetes.io/controller-uid"


def _job(obj: Obj) -> None:
    """SetDefaults_Job (batch/v1), then the Job strategy's generated selector and template labels."""
    spec = obj.setdefault("spec", {})
    if spec.get("completions") is None and spec.get("parallelism") is None:
        spec["completions"] = 1
    if spec.get("parallelism") is None:
        spec["parallelism"] = 1
    if spec.get("backoffLimit") is None:
        spec["backoffLimit"] = 2147483647 if spec.get("backoffLimitPerIndex") is not None else 6
    labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels")
    meta = obj.setdefault("metadata", {})
    if labels and not meta.get("labels"):
        meta["labels"] = dict(labels)
    spec.setdefault("completionMode", "NonIndexed")
    spec.setdefault("suspend", False)
    if spec.get("podFailurePolicy") is None and spec.get("podReplacementPolicy") is None:
        spec["podReplacementPolicy"] = "TerminatingOrFailed"
    if not spec.get("manualSelector") and meta.get("uid") and "selector" not in spec:
        uid, name = meta["uid"], meta.get("name", "")
        generated = {
            JOB_UID_LABEL: uid,
            "batch.kubernetes.io/job-name": name,
            "controller-uid": uid,
            "job-name": name,
        }
        template = spec.setdefault("template", {}).setdefault("metadata", {})
        template["labels"] = {**(template.get("labels") or {}), **generated}
        spec["selector"] = {"matchLabels": {JOB_UID_LABEL: uid}}


def _hpa(obj: Obj) -> None:
    spec = obj.setdefault("spec", {})
    if spec.get("minReplicas") is None:
        spec["minReplicas"] = 1
    if not spec.get("metrics"):
        spec["metrics"] = [
            {
                "type": "Resource",
                "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}},
            }
        ]
    behavior = spec.get("behavior")
    if isinstance(behavior, dict):
        up = {
            "stabilizationWindowSeconds": 0,
            "selectPolicy": "Max",
            "policies": [
                {"type": "Pods", "value": 4, "periodSeconds": 15},
                {"type": "Percent", "value": 100, "periodSeconds": 15},
            ],
        }
        down = {"selectPolicy": "Max", "policies": [{"type": "Percent", "value": 100, "periodSeconds": 15}]}
        for key, default in (("scaleUp", up), ("scaleDown", down)):
            given = behavior.get(key) or {}
            behavior[key] = {**copy.deepcopy(default), **{k: v for k, v in given.items() if v is not None}}


def _service(obj: Obj, allocate: Any) -> None:
    """SetDefaults_Service, then what the service registry allocates on create (IPv4 single stack)."""
    spec = obj.setdefault("spec", {})
    if not spec.get("sessionAffinity"):
        spec["sessionAffinity"] = "None"
    if spec["sessionAffinity"] == "None":
        spec.pop("sessionAffinityConfig", None)
    elif spec["sessionAffinity"] == "ClientIP":
        config = spec.setdefault("sessionAffinityConfig", {}).setdefault("clientIP", {})
        config.setdefault("timeoutSeconds", 10800)
    if not spec.get("type"):
        spec["type"] = "ClusterIP"
    for port in spec.get("ports") or []:
        if not port.get("protocol"):
            port["protocol"] = "TCP"
        if port.get("targetPort") in (None, 0, ""):
            port["targetPort"] = port.get("port")
    kind = spec["type"]
    if kind in ("NodePort", "LoadBalancer") and not spec.get("externalTrafficPolicy"):
        spec["externalTrafficPolicy"] = "Cluster"
    if spec.get("internalTrafficPolicy") is None and kind in ("NodePort", "LoadBalancer", "ClusterIP"):
        spec["internalTrafficPolicy"] = "Cluster"
    if kind == "LoadBalancer" and spec.get("allocateLoadBalancerNodePorts") is None:
        spec["allocateLoadBalancerNodePorts"] = True
    if kind == "ExternalName":
        return
    if not spec.get("clusterIP"):
        spec["clusterIP"] = allocate("ip")
    if not spec.get("clusterIPs"):
        spec["clusterIPs"] = [spec["clusterIP"]]
    spec.setdefault("ipFamilies", ["IPv4"])
    spec.setdefault("ipFamilyPolicy", "SingleStack")
    if kind in ("NodePort", "LoadBalancer"):
        for port in spec.get("ports") or []:
            if not port.get("nodePort"):
                port["nodePort"] = allocate("nodePort")


def _secret(obj: Obj) -> None:
    """SetDefaults_Secret; stringData is write-only (v1 -> internal conversion merges it into data)."""
    if not obj.get("type"):
        obj["type"] = "Opaque"
    string_data = obj.pop("stringData", None)
    if isinstance(string_data, dict):
        data = obj.setdefault("data", {})
        for key, value in string_data.items():
            data[key] = base64.b64encode(str(value).encode()).decode()


def _namespace(obj: Obj) -> None:
    name = (obj.get("metadata") or {}).get("name")
    if name:
        obj["metadata"].setdefault("labels", {})["kubernetes.io/metadata.name"] = name


_DEFAULTERS = {
    ("apps", "Deployment"): _deployment,
    ("apps", "ReplicaSet"): _replica_set,
    ("apps", "StatefulSet"): _stateful_set,
    ("apps", "DaemonSet"): _daemon_set,
    ("batch", "Job"): _job,
    ("autoscaling", "HorizontalPodAutoscaler"): _hpa,
    ("", "Secret"): _secret,
    ("", "Namespace"): _namespace,
    ("", "Pod"): _pod,
}


def apply_defaults(obj: Obj, group: str, kind: str, *, allocate: Any) -> None:
    """Default a built-in object in place (`allocate("ip" | "nodePort")` hands out Service addresses)."""
    if kind == "Service" and group == "":
        _service(obj, allocate)
        return
    defaulter = _DEFAULTERS.get((group, kind))
    if defaulter is not None:
        defaulter(obj)
    path = _TEMPLATE_PATHS.get((group, kind))
    if path is not None:
        template = _dig(obj, path)
        if template is not None and isinstance(template.get("spec"), dict):
            pod_spec(template["spec"])

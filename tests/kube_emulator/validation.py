"""Validation of built-in kinds: the part of `pkg/apis/*/validation` an operator runs into.

Names, labels, Events (`pkg/apis/core/validation/events.go`, legacyValidateEvent), pod templates
(containers, ports, volumes, mounts, probes, requests <= limits, restartPolicy), Deployments (selector
matches the template, immutable selector, a rolling update that can progress), Jobs (restartPolicy,
generated selector, immutable template), Services, HPAs, PDBs, Secrets and ConfigMaps. The messages
follow the real ones (`field.Error` shapes, `k8s.io/apimachinery/pkg/util/validation` wording).
Not everything is here: what is not checked is accepted, as before.
"""

from __future__ import annotations

import json
import re
from typing import Any

from kube_emulator import quantity
from kube_emulator.errors import FieldError, GoRepr, forbidden, invalid, not_supported, required

Obj = dict[str, Any]

_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_CONFIG_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
_IANA_SVC_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")

SUBDOMAIN_MSG = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', "
    "and must start and end with an alphanumeric character (e.g. 'example.com', regex used for "
    "validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
)
LABEL_MSG = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must "
    "start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for "
    "validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
)
DNS1035_MSG = (
    "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an "
    "alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', "
    "regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')"
)
LABEL_VALUE_MSG = (
    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or "
    "'.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',"
    "  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"
)
QUALIFIED_MSG = (
    "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end "
    "with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for "
    "validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"
)


def name_errors(name: str, path: str, *, style: str = "subdomain") -> list[FieldError]:
    if style == "dns1035":
        if len(name) > 63:
            return [invalid(path, name, "must be no more than 63 characters")]
        return [] if _DNS1035_LABEL.match(name) else [invalid(path, name, DNS1035_MSG)]
    if style == "label":
        if len(name) > 63:
            return [invalid(path, name, "must be no more than 63 characters")]
        return [] if _DNS1123_LABEL.match(name) else [invalid(path, name, LABEL_MSG)]
    if len(name) > 253:
        return [invalid(path, name, "must be no more than 253 characters")]
    return [] if _DNS1123_SUBDOMAIN.match(name) else [invalid(path, name, SUBDOMAIN_MSG)]


def _qualified_name(key: str, path: str) -> list[FieldError]:
    prefix, _, name = key.rpartition("/")
    errors = []
    if prefix and not _DNS1123_SUBDOMAIN.match(prefix):
        errors.append(invalid(path, key, "prefix part " + SUBDOMAIN_MSG))
    if not name or len(name) > 63 or not _QUALIFIED_NAME.match(name):
        detail = "name part must be no more than 63 characters" if len(name) > 63 else QUALIFIED_MSG
        errors.append(invalid(path, key, detail))
    return errors


def labels_errors(labels: Any, path: str) -> list[FieldError]:
    errors: list[FieldError] = []
    for key, value in (labels or {}).items():
        errors += _qualified_name(key, path)
        if not isinstance(value, str):
            continue
        if len(value) > 63:
            errors.append(invalid(path, value, "must be no more than 63 characters"))
        elif not _LABEL_VALUE.match(value):
            errors.append(invalid(path, value, LABEL_VALUE_MSG))
    return errors


def meta_errors(obj: Obj, *, name_style: str = "subdomain") -> list[FieldError]:
    meta = obj.get("metadata") or {}
    errors = (
        name_errors(str(meta.get("name", "")), "metadata.name", style=name_style) if meta.get("name") else []
    )
    errors += labels_errors(meta.get("labels"), "metadata.labels")
    for key in meta.get("annotations") or {}:
        errors += _qualified_name(key, "metadata.annotations")
    return errors


# ---------------------------------------------------------------- selectors


def selector_matches(selector: Obj, labels: dict[str, str]) -> bool:
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
        present = key in labels
        if (op == "In" and labels.get(key) not in values) or (
            op == "NotIn" and present and labels[key] in values
        ):
            return False
        if (op == "Exists" and not present) or (op == "DoesNotExist" and present):
            return False
    return True


def selector_text(selector: Obj) -> str:
    """metav1.LabelSelectorAsSelector(...).String(): what /scale reports as status.selector."""
    terms = [f"{k}={v}" for k, v in sorted((selector.get("matchLabels") or {}).items())]
    for expr in selector.get("matchExpressions") or []:
        values = ",".join(sorted(expr.get("values") or []))
        op = expr.get("operator")
        terms.append(
            {
                "In": f"{expr['key']} in ({values})",
                "NotIn": f"{expr['key']} notin ({values})",
                "Exists": expr["key"],
                "DoesNotExist": f"!{expr['key']}",
            }.get(op, "")
        )
    return ",".join(sorted(t for t in terms if t))


def _go_map(value: dict[str, str]) -> str:
    return (
        "map[string]string{"
        + ", ".join(f"{json.dumps(k)}:{json.dumps(v)}" for k, v in sorted(value.items()))
        + "}"
    )


# ---------------------------------------------------------------- pod templates


def _port_number(value: Any, path: str) -> list[FieldError]:
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 65535:
        return []
    return [invalid(path, value, "must be between 1 and 65535, inclusive")]


def _resources(resources: Obj, path: str) -> list[FieldError]:
    errors: list[FieldError] = []
    limits, requests = resources.get("limits") or {}, resources.get("requests") or {}
    for name, value in requests.items():
        if name in limits:
            try:
                over = quantity.parse(value)[0] > quantity.parse(limits[name])[0]
            except quantity.QuantityError:
                continue
            if over:
                errors.append(
                    invalid(
                        f"{path}.requests",
                        value,
                        f"must be less than or equal to {name} limit of {limits[name]}",
                    )
                )
    return errors


def _probe(probe: Obj, path: str) -> list[FieldError]:
    handlers = [k for k in ("exec", "httpGet", "tcpSocket", "grpc") if probe.get(k) is not None]
    if not handlers:
        return [required(path, "must specify a handler type")]
    if len(handlers) > 1:
        return [forbidden(f"{path}.{handlers[1]}", "may not specify more than 1 handler type")]
    return []


def _containers(containers: list[Obj], path: str, volumes: set[str], seen: set[str]) -> list[FieldError]:
    errors: list[FieldError] = []
    for i, c in enumerate(containers):
        at = f"{path}[{i}]"
        name = str(c.get("name", ""))
        if not name:
            errors.append(required(f"{at}.name", ""))
        else:
            errors += name_errors(name, f"{at}.name", style="label")
            if name in seen:
                errors.append(FieldError("Duplicate value", f"{at}.name", name))
            seen.add(name)
        if not c.get("image"):
            errors.append(required(f"{at}.image", ""))
        port_names: set[str] = set()
        for j, port in enumerate(c.get("ports") or []):
            errors += _port_number(port.get("containerPort"), f"{at}.ports[{j}].containerPort")
            pname = port.get("name")
            if pname:
                if len(pname) > 15 or not _IANA_SVC_NAME.match(pname):
                    errors.append(
                        invalid(
                            f"{at}.ports[{j}].name",
                            pname,
                            "must be no more than 15 characters"
                            if len(pname) > 15
                            else "must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)",
                        )
                    )
                if pname in port_names:
                    errors.append(FieldError("Duplicate value", f"{at}.ports[{j}].name", pname))
                port_names.add(pname)
        for j, mount in enumerate(c.get("volumeMounts") or []):
            if mount.get("name") not in volumes:
                errors.append(FieldError("Not found", f"{at}.volumeMounts[{j}].name", mount.get("name")))
            if not mount.get("mountPath"):
                errors.append(required(f"{at}.volumeMounts[{j}].mountPath", ""))
        errors += _resources(c.get("resources") or {}, f"{at}.resources")
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            if isinstance(c.get(probe), dict):
                errors += _probe(c[probe], f"{at}.{probe}")
    return errors


def pod_spec_errors(spec: Obj, path: str, *, restart: tuple[str, ...] = ()) -> list[FieldError]:
    errors: list[FieldError] = []
    volumes: set[str] = set()
    for i, v in enumerate(spec.get("volumes") or []):
        name = str(v.get("name", ""))
        errors += (
            name_errors(name, f"{path}.volumes[{i}].name", style="label")
            if name
            else [required(f"{path}.volumes[{i}].name", "")]
        )
        if name in volumes:
            errors.append(FieldError("Duplicate value", f"{path}.volumes[{i}].name", name))
        volumes.add(name)
    if not spec.get("containers"):
        errors.append(required(f"{path}.containers", ""))
    names: set[str] = set()
    errors += _containers(spec.get("initContainers") or [], f"{path}.initContainers", volumes, names)
    errors += _containers(spec.get("containers") or [], f"{path}.containers", volumes, names)
    if restart and spec.get("restartPolicy") not in restart:
        errors.append(not_supported(f"{path}.restartPolicy", spec.get("restartPolicy"), list(restart)))
    return errors


def _template_errors(obj: Obj, *, restart: tuple[str, ...]) -> list[FieldError]:
    spec = obj.get("spec") or {}
    template = spec.get("template") or {}
    errors = labels_errors((template.get("metadata") or {}).get("labels"), "spec.template.metadata.labels")
    return errors + pod_spec_errors(template.get("spec") or {}, "spec.template.spec", restart=restart)


def _selector_errors(obj: Obj, old: Obj | None) -> list[FieldError]:
    spec = obj.get("spec") or {}
    selector = spec.get("selector")
    if not isinstance(selector, dict):
        return [required("spec.selector", "")]
    if not selector.get("matchLabels") and not selector.get("matchExpressions"):
        return [invalid("spec.selector", selector, "empty selector is invalid for deployment")]
    errors: list[FieldError] = []
    labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
    if not selector_matches(selector, labels):
        errors.append(
            invalid(
                "spec.template.metadata.labels",
                GoRepr(_go_map(labels)),
                "`selector` does not match template `labels`",
            )
        )
    if old is not None and (old.get("spec") or {}).get("selector") != selector:
        shown = _go_map(selector.get("matchLabels") or {})
        value = (
            f"v1.LabelSelector{{MatchLabels:{shown}, MatchExpressions:[]v1.LabelSelectorRequirement(nil)}}"
        )
        errors.append(invalid("spec.selector", GoRepr(value), "field is immutable"))
    return errors


def _int_or_percent_zero(value: Any) -> bool:
    return value in (0, "0", "0%")


def _deployment(obj: Obj, old: Obj | None) -> list[FieldError]:
    spec = obj.get("spec") or {}
    errors = _selector_errors(obj, old) + _template_errors(obj, restart=("Always",))
    if isinstance(spec.get("replicas"), int) and spec["replicas"] < 0:
        errors.append(invalid("spec.replicas", spec["replicas"], "must be greater than or equal to 0"))
    rolling = (spec.get("strategy") or {}).get("rollingUpdate") or {}
    if (
        rolling
        and _int_or_percent_zero(rolling.get("maxSurge"))
        and _int_or_percent_zero(rolling.get("maxUnavailable"))
    ):
        errors.append(
            invalid(
                "spec.strategy.rollingUpdate.maxUnavailable",
                rolling.get("maxUnavailable"),
                "may not be 0 when `maxSurge` is 0",
            )
        )
    if (spec.get("strategy") or {}).get("type") == "Recreate" and rolling:
        errors.append(
            forbidden(
                "spec.strategy.rollingUpdate", "may not be specified when strategy `type` is 'Recreate'"
            )
        )
    return errors


def _job(obj: Obj, old: Obj | None) -> list[FieldError]:
    spec = obj.get("spec") or {}
    errors = _template_errors(obj, restart=("OnFailure", "Never"))
    if old is not None and (old.get("spec") or {}).get("template") != spec.get("template"):
        errors.append(invalid("spec.template", GoRepr("core.PodTemplateSpec{...}"), "field is immutable"))
    if old is not None and (old.get("spec") or {}).get("selector") != spec.get("selector"):
        errors.append(invalid("spec.selector", GoRepr("v1.LabelSelector{...}"), "field is immutable"))
    return errors


def _service(obj: Obj, old: Obj | None) -> list[FieldError]:
    spec = obj.get("spec") or {}
    errors: list[FieldError] = []
    kind = spec.get("type", "ClusterIP")
    if kind not in ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName"):
        errors.append(
            not_supported("spec.type", kind, ["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"])
        )
    ports = spec.get("ports") or []
    if not ports and kind != "ExternalName" and spec.get("clusterIP") != "None":
        errors.append(required("spec.ports", ""))
    names: set[str] = set()
    for i, port in enumerate(ports):
        errors += _port_number(port.get("port"), f"spec.ports[{i}].port")
        name = port.get("name") or ""
        if len(ports) > 1 and not name:
            errors.append(required(f"spec.ports[{i}].name", ""))
        if name in names:
            errors.append(FieldError("Duplicate value", f"spec.ports[{i}].name", name))
        names.add(name)
    errors += labels_errors(spec.get("selector"), "spec.selector")
    if old is not None:
        before = (old.get("spec") or {}).get("clusterIP")
        if before and spec.get("clusterIP") != before:
            errors.append(invalid("spec.clusterIPs[0]", spec.get("clusterIP"), "may not change once set"))
    return errors


def _hpa(obj: Obj, _old: Obj | None) -> list[FieldError]:
    spec = obj.get("spec") or {}
    errors: list[FieldError] = []
    most, least = spec.get("maxReplicas"), spec.get("minReplicas", 1)
    if not isinstance(most, int) or most < 1:
        errors.append(invalid("spec.maxReplicas", most, "must be greater than 0"))
    elif isinstance(least, int) and least > most:
        errors.append(invalid("spec.maxReplicas", most, "must be greater than or equal to `minReplicas`"))
    target = spec.get("scaleTargetRef") or {}
    for key in ("kind", "name"):
        if not target.get(key):
            errors.append(required(f"spec.scaleTargetRef.{key}", ""))
    return errors


def _pdb(obj: Obj, _old: Obj | None) -> list[FieldError]:
    spec = obj.get("spec") or {}
    if spec.get("minAvailable") is not None and spec.get("maxUnavailable") is not None:
        return [
            invalid(
                "spec",
                GoRepr("policy.PodDisruptionBudgetSpec{...}"),
                "minAvailable and maxUnavailable cannot be both set",
            )
        ]
    return []


def _keys(data: Any, path: str) -> list[FieldError]:
    return [
        invalid(
            path,
            key,
            "a valid config key must consist of alphanumeric characters, '-', '_' or '.' "
            "(e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is "
            "'[-._a-zA-Z0-9]+')",
        )
        for key in (data or {})
        if not _CONFIG_KEY.match(key)
    ]


def _secret(obj: Obj, _old: Obj | None) -> list[FieldError]:
    size = sum(len(str(v)) * 3 // 4 for v in (obj.get("data") or {}).values())
    errors = _keys(obj.get("data"), "data")
    if size > 1024 * 1024:
        errors.append(FieldError("Too long", "data", detail="must have at most 1048576 bytes"))
    return errors


def _config_map(obj: Obj, _old: Obj | None) -> list[FieldError]:
    return _keys(obj.get("data"), "data") + _keys(obj.get("binaryData"), "binaryData")


def _event(obj: Obj, _old: Obj | None) -> list[FieldError]:
    """legacyValidateEvent for a core/v1 Event without eventTime: the involved object's namespace must be
    the Event's (or both empty / `default`)."""
    namespace = (obj.get("metadata") or {}).get("namespace") or ""
    involved = str((obj.get("involvedObject") or {}).get("namespace") or "")
    if obj.get("eventTime"):
        errors: list[FieldError] = []
        if not involved and namespace not in ("default", "kube-system"):
            errors.append(invalid("involvedObject.namespace", involved, "does not match event.namespace"))
        for key in ("reportingComponent", "reportingInstance", "action", "reason"):
            if not obj.get(key):
                errors.append(required("source" if key == "reportingComponent" else key, ""))
        return errors
    if (not involved and namespace not in ("", "default")) or (involved and involved != namespace):
        return [invalid("involvedObject.namespace", involved, "does not match event.namespace")]
    return []


_VALIDATORS = {
    ("apps", "Deployment"): _deployment,
    ("batch", "Job"): _job,
    ("", "Service"): _service,
    ("autoscaling", "HorizontalPodAutoscaler"): _hpa,
    ("policy", "PodDisruptionBudget"): _pdb,
    ("", "Secret"): _secret,
    ("", "ConfigMap"): _config_map,
    ("", "Event"): _event,
}
_NAME_STYLE = {("", "Service"): "dns1035", ("", "Namespace"): "label"}


def builtin_errors(obj: Obj, old: Obj | None, group: str, kind: str) -> list[FieldError]:
    """Field errors the API server reports for this built-in object ([] when valid)."""
    errors = meta_errors(obj, name_style=_NAME_STYLE.get((group, kind), "subdomain"))
    validator = _VALIDATORS.get((group, kind))
    if validator is not None:
        errors += validator(obj, old)
    return errors

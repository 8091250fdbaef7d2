"""What the emulator knows about a kind: built-in (kmock's discovery data + the upstream schema) or served
from a CRD (its structural schema, subresources, names), and how the custom-resource handler treats an
object of it (`pkg/registry/customresource`, `pkg/apiserver/schema/defaulting`).
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass, field
from typing import Any

import kmock
from apiserver_rules import rule_errors, value_errors

from kube_emulator.schema import Node

# Kinds whose registry keeps metadata.generation, and what bumps it (`pkg/registry/*/strategy.go`):
# Deployments copy annotations to their ReplicaSets, so an annotation change bumps it too.
GENERATION: dict[tuple[str, str], str] = {
    ("apps", "Deployment"): "spec+annotations",
    ("apps", "ReplicaSet"): "spec",
    ("apps", "StatefulSet"): "spec",
    ("apps", "DaemonSet"): "spec",
    ("batch", "Job"): "spec",
    ("batch", "CronJob"): "spec",
    ("policy", "PodDisruptionBudget"): "spec",
    ("autoscaling", "HorizontalPodAutoscaler"): "spec",
    ("", "Pod"): "spec",
    ("apiextensions.k8s.io", "CustomResourceDefinition"): "spec",
}
# DELETE answers the deleted object for these (`ReturnDeletedObject`); a Status for the rest.
RETURNS_DELETED = {("", "Pod"), ("", "Namespace"), ("apiextensions.k8s.io", "CustomResourceDefinition")}
# PUT without metadata.resourceVersion is refused (`AllowUnconditionalUpdate` false).
CONDITIONAL_UPDATE_ONLY: set[tuple[str, str]] = set()


@dataclass
class Kind:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    node: Node
    subresources: set[str] = field(default_factory=set)
    schema: dict[str, Any] | None = None  # a custom kind's openAPIV3Schema
    scale: dict[str, str] | None = None  # a custom kind's scale subresource paths
    list_kind: str = ""

    @functools.cached_property
    def resource(self) -> kmock.resource:  # cached: building one is slow, and lists compare thousands
        return kmock.resource(group=self.group, version=self.version, plural=self.plural)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def custom(self) -> bool:
        return self.schema is not None

    @property
    def status_subresource(self) -> bool:
        return "status" in self.subresources

    @property
    def generation(self) -> str:
        return "custom" if self.custom else GENERATION.get((self.group, self.kind), "")

    @property
    def qualified_kind(self) -> str:
        """`Widget.conf.example.io`, `Deployment.apps`, `Event` (what a 422 names)."""
        return f"{self.kind}.{self.group}" if self.group else self.kind


def custom_kinds(crd: dict[str, Any]) -> list[Kind]:
    """One Kind per served version of a (defaulted, valid) CRD."""
    spec = crd["spec"]
    names = spec["names"]
    out = []
    for version in spec.get("versions") or []:
        if not version.get("served", True):
            continue
        schema = copy.deepcopy((version.get("schema") or {}).get("openAPIV3Schema") or {})
        subresources = version.get("subresources") or {}
        out.append(
            Kind(
                group=spec["group"],
                version=version["name"],
                plural=names["plural"],
                kind=names["kind"],
                namespaced=spec.get("scope") == "Namespaced",
                node=Node.structural(schema),
                subresources={k for k in ("status", "scale") if k in subresources},
                schema=schema,
                scale=subresources.get("scale"),
                list_kind=names.get("listKind", ""),
            )
        )
    return out


def resource_info(crd: dict[str, Any], kind: Kind) -> kmock.ResourceInfo:
    names = crd["spec"]["names"]
    return kmock.ResourceInfo(
        kind=kind.kind,
        singular=names.get("singular"),
        namespaced=kind.namespaced,
        verbs={"create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"},
        shortnames=set(names.get("shortNames") or []),
        categories=set(names.get("categories") or []),
        subresources=kind.subresources,
    )


# ---------------------------------------------------------------- custom resources


def structural_default(value: Any, schema: dict[str, Any]) -> None:
    """defaulting/algorithm.go Default: missing (or non-nullable null) fields with a default get it, then
    the defaulted value is defaulted in turn."""
    if isinstance(value, dict):
        for key, prop in (schema.get("properties") or {}).items():
            if "default" in prop and (key not in value or (value[key] is None and not prop.get("nullable"))):
                value[key] = copy.deepcopy(prop["default"])
        extra = schema.get("additionalProperties")
        for key, sub in value.items():
            prop = (schema.get("properties") or {}).get(key)
            if prop is not None:
                structural_default(sub, prop)
            elif isinstance(extra, dict):
                structural_default(sub, extra)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for item in value:
            structural_default(item, schema["items"])


def prune_nulls(value: Any, schema: dict[str, Any]) -> None:
    """PruneNonNullableNullsWithoutDefaults: a null where the schema allows none (and has no default) goes."""
    if isinstance(value, dict):
        props, extra = schema.get("properties") or {}, schema.get("additionalProperties")
        for key in list(value):
            prop = props.get(key, extra if isinstance(extra, dict) else None)
            if prop is None:
                continue
            if value[key] is None and not prop.get("nullable") and "default" not in prop:
                del value[key]
            else:
                prune_nulls(value[key], prop)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for item in value:
            prune_nulls(item, schema["items"])


NOT_CHECKED = (
    '<nil>: Invalid value: "null": some validation rules were not checked because the object was '
    "invalid; correct the existing errors to complete validation"
)


def _same_body(old: dict[str, Any], new: dict[str, Any]) -> bool:
    skip = ("metadata", "status")
    return {k: v for k, v in old.items() if k not in skip} == {k: v for k, v in new.items() if k not in skip}


def custom_errors(
    kind: Kind, obj: dict[str, Any], old: dict[str, Any] | None, *, status_only: bool
) -> list[str]:
    """customResourceStrategy.Validate: the schema, then (when nothing blocks them) the CEL rules.

    Validation ratcheting (CRDValidationRatcheting, on by default): an update that leaves the validated
    part unchanged keeps what was accepted before, so a metadata-only patch (kopf's finalizer and
    annotations) is not checked again."""
    assert kind.schema is not None
    schema = kind.schema
    part = "status" if status_only else "spec"
    if old is not None and old.get(part) == obj.get(part) and (status_only or _same_body(old, obj)):
        return []
    if status_only:
        sub = (schema.get("properties") or {}).get("status")
        if sub is None or "status" not in obj:
            return []
        schema, obj, old = sub, obj["status"], (old or {}).get("status")
        found = value_errors(schema, obj, "status", "status")
        path = "status"
    else:
        body = {k: v for k, v in obj.items() if k not in ("metadata", "apiVersion", "kind")}
        props = {
            k: v
            for k, v in (schema.get("properties") or {}).items()
            if k not in ("metadata", "apiVersion", "kind")
        }
        schema = {**schema, "properties": props}
        found = value_errors(schema, body)
        obj, path = body, ""
    errors = [str(e) for e in found]
    if any(e.type == "Required value" or "must be of type" in e.detail for e in found):
        return [*errors, NOT_CHECKED]
    try:
        return errors + rule_errors(schema, obj, path, old=old)
    except ImportError:  # cel-python (dev extra) missing: rules unchecked, as before
        return errors
